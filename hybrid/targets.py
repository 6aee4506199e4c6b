"""The target contract: how a configuration becomes a command, and a finished job a Result.

A target is a shell command run in the experiment's workdir snapshot. Parameters arrive three
ways: dotted ``key=value`` arguments, ``params.json`` in the workdir, and the environment
(``HYBRID_EXPERIMENT_ID``, ``HYBRID_HARDWARE``, ``HYBRID_PARAMS``). The command prints
``name: value`` lines; the last occurrence of each name counts.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from backends.base import Finished
from hybrid.config import Direction
from hybrid.errors import ConfigError
from hybrid.history import classify
from hybrid.secrets import experiment_environ, scrub, secret_values
from hybrid.types import Objective, Result

_METRIC_LINE = re.compile(
    r"^\s*([A-Za-z_][\w./-]*)\s*[:=]\s*([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?|[-+]?nan|[-+]?inf(?:inity)?)\s*$",
    re.IGNORECASE,
)
LOG_TAIL_LINES = 40
LOG_TAIL_CHARS = 4000


@dataclass(frozen=True)
class TargetSpec:
    """A validated ``target`` config node."""

    name: str
    command: str
    workdir: Path
    objective: Objective
    timeout_s: float | None
    env: Mapping[str, str] = field(default_factory=dict)
    exclude: tuple[str, ...] = ()
    check_command: str | None = None  # run once before the first dispatch: see check_params
    editable: tuple[str, ...] = ()  # globs of the files code variants may change (hybrid.variants)
    smoke_command: str | None = None  # run on each code variant before any worker is spent on it
    smoke_timeout_s: float | None = None  # its limit (hybrid.variant_book.SMOKE_TIMEOUT_S when None)

    @property
    def secret_values(self) -> tuple[str, ...]:
        """The values of ``env``'s secret-named entries (``HF_TOKEN``...): scrubbed from every
        result's log tail and reason (``to_result(..., secrets=target.secret_values)``)."""
        return tuple(secret_values(self.env))

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any]) -> TargetSpec:
        command = cfg.get("command")
        if not command or not str(command).strip() or str(command) == "???":
            raise ConfigError('target.command: missing; set it, e.g. target.command="python train.py"')
        # types and choices were checked with the config (hybrid.config.TargetConfig); ranges and paths here
        direction = str(Direction(cfg.get("direction", "minimize")))
        metric = str(cfg.get("metric") or "val_bpb")
        if not re.fullmatch(r"[A-Za-z_][\w./-]*", metric):
            raise ConfigError(f"target.metric: {metric!r} is not a metric name like val_bpb")
        timeout = cfg.get("timeout_s")
        if timeout is not None and timeout <= 0:
            raise ConfigError(f"target.timeout_s: expected a positive number of seconds, got {timeout!r}")
        workdir = Path(cfg.get("workdir") or ".").expanduser().resolve()
        if not workdir.is_dir():
            raise ConfigError(f"target.workdir: {workdir} is not a directory; point it at the target's code")
        env = {str(k): str(v) for k, v in (cfg.get("env") or {}).items()}
        check = cfg.get("check_command")
        if check is not None and (not isinstance(check, str) or not check.strip()):
            raise ConfigError(f"target.check_command: expected a command (or null for no check), got {check!r}")
        editable = cfg.get("editable") or ()
        if isinstance(editable, str):
            editable = (editable,)
        if not all(isinstance(g, str) and g.strip() for g in editable):
            raise ConfigError(f"target.editable: expected a list of globs relative to target.workdir, e.g. "
                              f"[train.py, 'model/*.py'], got {list(editable)!r}")
        smoke = cfg.get("smoke_command")
        if smoke is not None and (not isinstance(smoke, str) or not smoke.strip()):
            raise ConfigError(f"target.smoke_command: expected a command (or null for none), got {smoke!r}")
        smoke_timeout = cfg.get("smoke_timeout_s")
        if smoke_timeout is not None and not smoke_timeout > 0:
            raise ConfigError(f"target.smoke_timeout_s: expected a positive number of seconds, got {smoke_timeout!r}")
        return cls(str(cfg.get("name") or "target"), str(command), workdir, Objective(metric, direction),
                   float(timeout) if timeout is not None else None, env, tuple(cfg.get("exclude") or ()),
                   check or None, tuple(str(g).strip() for g in editable), smoke or None,
                   float(smoke_timeout) if smoke_timeout is not None else None)


CHECK_TIMEOUT_S = 120.0  # a check validates settings; it must not train (generous for a cold start)
_ERROR_PREFIX = re.compile(r"^\w*Error:\s*")


def check_params(target: TargetSpec, params: Mapping[str, Any]) -> None:
    """Run ``target.check_command`` once, here, in ``target.workdir``, with ``params`` (the baseline's)
    passed as the experiments get them. A non-zero exit -- a space whose names the target does not
    know -- is a ConfigError before anything is dispatched, instead of every experiment crashing.
    No check_command: nothing is run."""
    if not target.check_command:
        return
    command = build_command(target.check_command, params, "check", "local")
    env = {**experiment_environ(), **build_env(target.env, "check", "local", params)}
    try:
        proc = subprocess.run(command, shell=True, cwd=target.workdir, env=env, stdin=subprocess.DEVNULL,
                              capture_output=True, text=True, timeout=CHECK_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise ConfigError(f"target.check_command: still running after {CHECK_TIMEOUT_S:g}s ({command}); "
                          "it should only validate the parameters, not train") from None
    if proc.returncode != 0:
        lines = [ln.strip() for ln in (proc.stderr.strip() or proc.stdout).splitlines() if ln.strip()]
        first = _ERROR_PREFIX.sub("", scrub(lines[0], target.secret_values)) if lines else (
            f"exit code {proc.returncode}, no output")
        raise ConfigError(f"space: target {target.name} rejects the parameters: {first}; pick a space made "
                          "for it (leave out space= to get the target's own, e.g. space=gpt_tiny for target=gpt)")


def format_value(v: Any) -> str:
    """A parameter value as the target reads it back (OmegaConf dotlist syntax)."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return repr(v)
    return str(v)


def command_args(params: Mapping[str, Any]) -> str:
    return " ".join(shlex.quote(f"{k}={format_value(v)}") for k, v in params.items())


def build_command(template: str, params: Mapping[str, Any], experiment_id: str, hardware: str) -> str:
    """Fill the command template. Plain ``str.replace`` keeps shell braces (``${X}``) intact."""
    args = command_args(params)
    cmd = template.replace("{python}", shlex.quote(sys.executable))
    cmd = cmd.replace("{experiment_id}", shlex.quote(experiment_id)).replace("{hardware}", shlex.quote(hardware))
    if "{args}" in cmd:
        return cmd.replace("{args}", args)
    return f"{cmd} {args}" if args else cmd


def build_env(target_env: Mapping[str, str], experiment_id: str, hardware: str, params: Mapping[str, Any]) -> dict[str, str]:
    return {
        **target_env,
        "HYBRID_EXPERIMENT_ID": experiment_id,
        "HYBRID_HARDWARE": hardware,
        "HYBRID_PARAMS": json.dumps(dict(params), sort_keys=True),
    }


def write_params(workdir: Path, params: Mapping[str, Any]) -> None:
    (workdir / "params.json").write_text(json.dumps(dict(params), indent=2, sort_keys=True) + "\n")


def parse_metrics(log: str) -> dict[str, float]:
    """``name: value`` lines -> {name: value}; the last occurrence of a name wins."""
    out: dict[str, float] = {}
    for line in log.splitlines():
        m = _METRIC_LINE.match(line)
        if m:
            out[m.group(1)] = float(m.group(2))
    return out


def log_tail(log: str, secrets: Iterable[str] = ()) -> str:
    """The end of a log, scrubbed (``hybrid.secrets.scrub``) before it is cut: no cut leaves half a secret."""
    tail = scrub("\n".join(log.rstrip("\n").splitlines()[-LOG_TAIL_LINES:]), secrets)
    return tail[-LOG_TAIL_CHARS:]


def to_result(finished: Finished, objective: Objective, hardware: str, hourly_usd: float,
              timeout_s: float | None = None, secrets: Iterable[str] = ()) -> Result:
    """A finished job as a Result, classified once (``hybrid.history.classify``).

    Its log tail and reason are scrubbed here, once (``hybrid.secrets.scrub``, with ``secrets``:
    ``TargetSpec.secret_values``), so the store, MLflow, the LLM prompt and the reports only ever
    see the scrubbed text. Metrics are parsed from the log as it was."""
    metrics = parse_metrics(finished.log)
    state, failure, reason = classify(finished.state, finished.exit_code, finished.log, metrics, objective,
                                      timeout_s=timeout_s, backend_reason=finished.reason)
    cost = finished.duration_s / 3600.0 * hourly_usd
    secrets = tuple(secrets)
    return Result(finished.experiment_id, state, metrics, hardware, finished.duration_s, cost,
                  log_tail(finished.log, secrets), scrub(reason, secrets), failure)
