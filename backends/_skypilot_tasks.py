"""What the SkyPilot backend hands to SkyPilot, and how it reads back what SkyPilot returns.

Pure functions, no SDK calls: worker/accelerator configuration, the task YAML of a launch and of
an exec, the per-experiment upload directory, the run script, the log cleaner and the mapping of
SkyPilot job statuses to ours. The offline tests check them against golden files and against
SkyPilot's own schema.
"""

from __future__ import annotations

import csv
import difflib
import hashlib
import os
import re
import shlex
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from backends._runner import STATE_DIR
from backends.base import JobState
from hybrid.errors import ConfigError, reject_unknown_keys
from hybrid.secrets import is_secret

KILL_GRACE_S = 5  # SIGTERM -> SIGKILL delay of `timeout` on the cluster
RUNNING_STATUSES = frozenset({"INIT", "PENDING", "SETTING_UP", "RUNNING"})
_WORKER_KEYS = ("name", "accelerators", "infra", "cpus", "memory", "resources", "hardware", "hourly_usd")
_OWN_RESOURCE_KEYS = ("accelerators", "infra", "cpus", "memory")

# ---- workers and accelerators -------------------------------------------------------------------


@dataclass(frozen=True)
class WorkerSpec:
    """One worker as configured: its cluster and what to ask SkyPilot for."""

    name: str
    cluster: str  # <campaign>-<name>
    accelerators: tuple[tuple[str, float], ...] = ()  # alternatives, each one type:count
    ordered: bool = False  # True: a preference order (YAML list); False: any of them (YAML mapping)
    infra: str | None = None
    cpus: Any = None
    memory: Any = None
    resources: Mapping[str, Any] = field(default_factory=dict)  # passed through to SkyPilot
    hardware: str | None = None  # explicit label; None: derived from the granted accelerator
    hourly_usd: float | Mapping[str, float] = 0.0  # one price, or one per accelerator type

    def label(self, granted: Mapping[str, float] | None = None) -> str:
        """The hardware label: the granted type once known, else the preferred alternative."""
        if self.hardware:
            return self.hardware
        acc = _first(granted) if granted else (self.accelerators[0] if self.accelerators else None)
        if acc is None:
            return "cpu"
        name, count = acc
        return name.lower() + ("" if count == 1 else f"x{count:g}")

    def price(self, granted: Mapping[str, float] | None = None) -> float:
        if not isinstance(self.hourly_usd, Mapping):
            return float(self.hourly_usd)
        acc = _first(granted) if granted else (self.accelerators[0] if self.accelerators else None)
        if acc is None:
            return 0.0
        return float({k.lower(): v for k, v in self.hourly_usd.items()}.get(acc[0].lower(), 0.0))


def _first(accelerators: Mapping[str, float]) -> tuple[str, float] | None:
    return next(iter(accelerators.items()), None)


def cluster_prefix(campaign: str) -> str:
    """A campaign name made safe for cluster names on every infra (lowercase, dashes, short)."""
    text = re.sub(r"-+", "-", re.sub(r"[^a-z0-9-]", "-", str(campaign).lower())).strip("-")
    if not text:
        raise ConfigError(f"backend.campaign: {campaign!r} gives no usable cluster name; set backend.campaign=myrun")
    if not text[0].isalpha():
        text = "h-" + text
    if len(text) > 40:  # Kubernetes/Slurm names are short; keep different long names distinct
        text = text[:33].rstrip("-") + "-" + hashlib.sha1(campaign.encode()).hexdigest()[:6]
    return text


def known_accelerators(extra: Sequence[str] = ()) -> dict[str, str]:
    """lowercase name -> canonical name: SkyPilot's GPU names, the local catalog copy if any
    (never downloaded here), and the user's ``extra_accelerators``."""
    from sky.utils import gpu_names

    names = list(gpu_names.CANONICAL_GPU_NAMES)
    try:
        from sky.catalog import common as catalog_common

        path = catalog_common.get_catalog_path("common/accelerators.csv")
        if os.path.exists(path):
            with open(path, newline="") as f:
                names += [row["AcceleratorName"] for row in csv.DictReader(f) if row.get("AcceleratorName")]
    except (ImportError, OSError, KeyError, csv.Error):
        pass
    names += [str(n) for n in extra]
    return {n.lower(): n for n in names}


def parse_accelerators(value: Any, where: str, known: Mapping[str, str]) -> tuple[tuple[tuple[str, float], ...], bool]:
    """``H100`` | ``H100:2`` | ``{H100: 1, H200: 1}`` (any of) | ``[H100:1, H200:1]`` (in order)."""
    if value is None or value == "" or (isinstance(value, Mapping | list | tuple) and not value):
        return (), False
    ordered = isinstance(value, list | tuple)
    items: list[tuple[Any, Any]] = []
    if isinstance(value, str):
        items.append(_split(value, where))
    elif isinstance(value, Mapping):
        items += list(value.items())
    elif ordered:
        for i, item in enumerate(value):
            if isinstance(item, str):
                items.append(_split(item, f"{where}[{i}]"))
            elif isinstance(item, Mapping) and len(item) == 1:
                items += list(item.items())
            else:
                raise ConfigError(f"{where}[{i}]: expected 'H100:1' or {{H100: 1}}, got {item!r}")
    else:
        raise ConfigError(f"{where}: expected H100:1, {{H100: 1, H200: 1}} (any of) or [H100:1, H200:1] "
                          f"(in order of preference), got {value!r}")
    out: list[tuple[str, float]] = []
    for name, count in items:
        out.append((_canonical(str(name), where, known), _count(count, f"{where}.{name}")))
    if len({n for n, _ in out}) != len(out):
        raise ConfigError(f"{where}: an accelerator type is listed twice in {value!r}")
    return tuple(out), ordered


def _split(text: str, where: str) -> tuple[str, Any]:
    name, sep, count = text.strip().partition(":")
    return name.strip(), (count.strip() if sep else 1)


def _canonical(name: str, where: str, known: Mapping[str, str]) -> str:
    if name.lower().startswith("tpu-"):
        return name.lower()
    if name.lower() in known:
        return known[name.lower()]
    close = difflib.get_close_matches(name.lower(), list(known), n=3, cutoff=0.6)
    hint = f" (did you mean {', '.join(known[c] for c in close)}?)" if close else ""
    raise ConfigError(
        f"{where}: unknown accelerator {name!r}{hint}; use a SkyPilot name such as H100, H200, A100-80GB, L4, "
        "or list a custom one (Kubernetes/Slurm GPU type) in backend.extra_accelerators"
    )


def _count(value: Any, where: str) -> float:
    try:
        count = float(value)
    except (TypeError, ValueError):
        count = float("nan")
    if isinstance(value, bool) or not count > 0 or count != count:
        raise ConfigError(f"{where}: expected a positive accelerator count, got {value!r}")
    return count


def _price(value: Any, where: str, accelerators: Sequence[tuple[str, float]]) -> float | dict[str, float]:
    if isinstance(value, Mapping):
        names = {n.lower(): n for n, _ in accelerators}
        prices: dict[str, float] = {}
        for key, price in value.items():
            if str(key).lower() not in names:
                raise ConfigError(f"{where}.{key}: not one of this worker's accelerators "
                                  f"({', '.join(names.values()) or 'none'})")
            prices[names[str(key).lower()]] = float(_price(price, f"{where}.{key}", accelerators))
        missing = [n for n in names.values() if n not in prices]
        if missing:
            raise ConfigError(f"{where}: no price for {', '.join(missing)}; give every alternative a price")
        return prices
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise ConfigError(f"{where}: expected a price >= 0 in USD per hour (e.g. 2.5) or one per "
                          f"accelerator ({{H100: 2.5, H200: 3.5}}), got {value!r}")
    return float(value)


def build_workers(
    workers: Any, defaults: Mapping[str, Any], campaign: str, extra_accelerators: Sequence[str] = ()
) -> list[WorkerSpec]:
    """Workers from ``backend.workers`` (a number, or a list of per-worker overrides of the
    backend-level ``accelerators/infra/cpus/memory/resources/hardware/hourly_usd``)."""
    prefix = cluster_prefix(campaign)
    known = known_accelerators(extra_accelerators)
    if isinstance(workers, int) and not isinstance(workers, bool):
        if workers < 1:
            raise ConfigError(f"backend.workers: expected at least 1 worker, got {workers}")
        entries: list[Mapping[str, Any]] = [{"name": f"w{i:02d}"} for i in range(1, workers + 1)]
    elif isinstance(workers, Sequence) and not isinstance(workers, str) and workers:
        entries = list(workers)
    else:
        raise ConfigError(f"backend.workers: expected a number of workers or a non-empty list of {{name, "
                          f"accelerators, infra, hourly_usd...}}, got {workers!r}; e.g. backend.workers=4")
    out: list[WorkerSpec] = []
    for i, entry in enumerate(entries):
        where = "backend" if isinstance(workers, int) else f"backend.workers[{i}]"
        if not isinstance(entry, Mapping):
            raise ConfigError(f"backend.workers[{i}]: expected a mapping such as {{name: w01, accelerators: "
                              f"H100:1}}, got {entry!r}")
        reject_unknown_keys(f"backend.workers[{i}]", entry, _WORKER_KEYS)
        name = str(entry.get("name") or f"w{i + 1:02d}")
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9-]{0,30}", name):
            raise ConfigError(f"{where}.name: {name!r} must be letters, digits and dashes (it names a cluster)")
        if any(w.name == name for w in out):
            raise ConfigError(f"backend.workers[{i}].name: {name!r} is used twice; worker names must be unique")

        def pick(key: str, entry: Mapping[str, Any] = entry) -> Any:
            return entry[key] if key in entry else defaults.get(key)

        source = where if "accelerators" in entry else "backend"
        accelerators, ordered = parse_accelerators(pick("accelerators"), f"{source}.accelerators", known)
        resources = dict(pick("resources") or {})
        for key in _OWN_RESOURCE_KEYS:
            if key in resources:
                raise ConfigError(f"{where}.resources.{key}: set backend.{key} (or the worker's {key}) instead")
        hardware = pick("hardware")
        if hardware is not None and (not isinstance(hardware, str) or not hardware.strip()):
            raise ConfigError(f"{where}.hardware: expected a label such as h100, got {hardware!r}")
        if hardware and len(accelerators) > 1:
            raise ConfigError(f"{where}.hardware: with accelerator alternatives the label comes from the type "
                              "SkyPilot grants (h100, h200...); remove hardware")
        infra = pick("infra")
        out.append(WorkerSpec(
            name=name,
            cluster=f"{prefix}-{name.lower()}",
            accelerators=accelerators,
            ordered=ordered,
            infra=str(infra) if infra else None,
            cpus=pick("cpus"),
            memory=pick("memory"),
            resources=resources,
            hardware=hardware,
            hourly_usd=_price(pick("hourly_usd") or 0.0, f"{where}.hourly_usd", accelerators),
        ))
    return out


# ---- task YAML ------------------------------------------------------------------------------------
def _num(x: float) -> int | float:
    return int(x) if float(x).is_integer() else x


def resources_config(spec: WorkerSpec, granted: Mapping[str, float] | None = None) -> dict[str, Any]:
    """The task's ``resources``: every alternative for a launch; the granted type for an exec
    (SkyPilot refuses an exec whose request the cluster does not match)."""
    res: dict[str, Any] = dict(spec.resources)
    if spec.infra:
        res["infra"] = spec.infra
    if spec.cpus is not None:
        res["cpus"] = spec.cpus
    if spec.memory is not None:
        res["memory"] = spec.memory
    if granted is not None:
        if granted:
            res["accelerators"] = {name: _num(count) for name, count in granted.items()}
    elif spec.ordered:
        res["accelerators"] = [f"{name}:{_num(count)}" for name, count in spec.accelerators]
    elif spec.accelerators:
        res["accelerators"] = {name: _num(count) for name, count in spec.accelerators}
    return res


def task_config(
    *,
    name: str,
    stage: Path | str,
    run: str,
    envs: Mapping[str, str],
    resources: Mapping[str, Any],
    setup: str | None = None,
) -> dict[str, Any]:
    """A SkyPilot task YAML as a dict (``sky.Task.from_yaml_config`` takes it).

    ``envs`` is all the job's environment gets (SkyPilot passes nothing of this process's): its
    secret-named entries (``HF_TOKEN``...) go as SkyPilot ``secrets``, set in the job's environment
    like ``envs`` but redacted in SkyPilot's own records (dashboard, ``sky jobs``, request logs)."""
    config: dict[str, Any] = {"name": name, "workdir": str(stage)}
    if setup:
        config["setup"] = setup
    config["run"] = run
    config["envs"] = {str(k): str(v) for k, v in envs.items() if not is_secret(str(k))}
    secrets = {str(k): str(v) for k, v in envs.items() if is_secret(str(k))}
    if secrets:
        config["secrets"] = secrets
    config["resources"] = dict(resources)
    return config


def remote_dir_name(experiment_id: str) -> str:
    """The experiment's directory under the cluster's ~/sky_workdir."""
    name = re.sub(r"[^A-Za-z0-9._-]", "_", experiment_id).lstrip(".") or "experiment"
    return name


def setup_script(remote_dir: str, setup: str) -> str | None:
    """The target's setup, run once per cluster (at launch) inside the first experiment's copy."""
    if not setup.strip():
        return None
    return f"cd -- {shlex.quote(remote_dir)} || exit 97\n{setup.strip()}\n"


def run_script(remote_dir: str, command: str, timeout_s: float | None) -> str:
    """The job's ``run``: cd into the experiment's own directory, run the command under
    ``timeout`` (its own process group: a timeout or cancel kills the whole tree), then print one
    line with the exit code that ``clean_log`` reads back (SkyPilot itself only says FAILED)."""
    limit = f"{float(timeout_s):g}" if timeout_s else "0"
    floor = max(0, int(timeout_s) - 1) if timeout_s else 0
    q = shlex.quote
    return "\n".join([
        f"cd -- {q(remote_dir)} || exit 97",
        "hybrid_t0=$(date +%s)",
        "if command -v timeout >/dev/null 2>&1; then",
        f"  timeout -k {KILL_GRACE_S} {limit} /bin/sh -c {q(command)}",
        "else",
        f"  /bin/sh -c {q(command)}",
        "fi",
        "hybrid_rc=$?",
        "hybrid_end=exited",
        f"if [ {1 if timeout_s else 0} -eq 1 ] && {{ [ $hybrid_rc -eq 124 ] || [ $hybrid_rc -eq 137 ]; }} "
        f"&& [ $(( $(date +%s) - hybrid_t0 )) -ge {floor} ]; then hybrid_end=timeout; fi",
        "printf '\\nhybrid-skypilot: exit_code=%s end=%s\\n' \"$hybrid_rc\" \"$hybrid_end\"",
        "exit $hybrid_rc",
        "",
    ])


# ---- the upload directory -------------------------------------------------------------------------
def stage_upload(workdir: Path, remote_dir: str, root: str | None = None) -> Path:
    """A fresh directory holding only ``<remote_dir>/`` (the snapshot, hard-linked where possible,
    less our ``.hybrid/`` bookkeeping) and an empty ``.skyignore``.

    SkyPilot rsyncs every launch/exec into ONE ``~/sky_workdir`` per cluster without deleting
    (skypilot-org/skypilot#7309): uploading the snapshot itself would mix experiments' files.
    Uploading a directory that holds only ``<experiment_id>/`` keeps each experiment in its own
    subdirectory. The empty ``.skyignore`` stops SkyPilot from applying the target's
    ``.gitignore`` files: the snapshot already left out what should not travel.
    """
    stage = Path(tempfile.mkdtemp(prefix="hybrid-sky-", dir=root))
    src = Path(workdir)

    def ignore(directory: str, names: list[str]) -> list[str]:
        return [STATE_DIR] if Path(directory) == src and STATE_DIR in names else []

    shutil.copytree(src, stage / remote_dir, symlinks=True, ignore=ignore, copy_function=_link_or_copy)
    (stage / ".skyignore").write_text("")
    return stage


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


# ---- logs and states -------------------------------------------------------------------------------
_ANSI = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]")
_PREFIX = re.compile(r"^\([^()]*pid=\d+[^()]*\) ?")  # (task, pid=123) / (setup pid=123) / (worker1, rank=1, pid=...)
_EXIT_LINE = re.compile(r"^hybrid-skypilot: exit_code=(\d+) end=(exited|timeout)\s*$")
_SKY_FOOTER = re.compile(r"^\W*Job finished \(status: [A-Z_]+\)\.?\s*$")
# SkyPilot's own lines at the top of a job's log (no pid prefix: the job printed none of them).
_SKY_HEADER = re.compile(r"^\W*(Waiting for task resources on \d+ nodes?\.|Job started\. Streaming logs\.\.\.)")


@dataclass(frozen=True)
class ExitLine:
    exit_code: int
    timed_out: bool


def clean_log(raw: str) -> tuple[str, ExitLine | None]:
    """SkyPilot's log of a job -> (the job's own output, the exit line our run script printed).

    Strips ANSI colours, the ``(task, pid=N)`` prefix SkyPilot puts on every line, its "Waiting
    for task resources" / "Job started" header and "Job finished" footer, and our exit line (with
    the blank line the script printed before it).
    """
    lines: list[str] = []
    exit_line: ExitLine | None = None
    for line in raw.replace("\r\n", "\n").split("\n"):
        line = _ANSI.sub("", line)
        if _SKY_HEADER.match(line):
            continue
        line = _PREFIX.sub("", line, count=1)
        m = _EXIT_LINE.match(line)
        if m:
            exit_line = ExitLine(int(m.group(1)), m.group(2) == "timeout")
            if lines and lines[-1] == "":
                lines.pop()
            continue
        if _SKY_FOOTER.match(line):
            continue
        lines.append(line)
    return "\n".join(lines), exit_line


def job_state(status: str, exit_line: ExitLine | None) -> tuple[JobState, int | None, str] | None:
    """How a SkyPilot job ended, in our terms: (state, exit code, reason); None while it is queued
    or running. Our exit line is trusted over SkyPilot's SUCCEEDED/FAILED (which has no exit code);
    jobs that ended without one (setup failed, driver died) are LOST with the reason."""
    if status in RUNNING_STATUSES:
        return None
    if status == "CANCELLED":
        return JobState.CANCELLED, None, "cancelled"
    if exit_line is not None:
        if exit_line.timed_out:
            return JobState.TIMEOUT, None, "killed after the timeout"
        code = exit_line.exit_code
        return JobState.EXITED, code, "" if code == 0 else f"exit code {code}"
    if status == "SUCCEEDED":
        return JobState.EXITED, 0, ""
    if status == "FAILED_SETUP":
        return JobState.LOST, None, "the cluster's setup failed (see the log); the worker's next experiment runs it again"
    if status == "FAILED_DRIVER":
        return JobState.LOST, None, "SkyPilot's job driver died (node failure or restart?)"
    if status == "FAILED":
        return JobState.LOST, None, "the job failed without reporting an exit code (killed from outside?)"
    return JobState.LOST, None, f"SkyPilot reports an unknown job status {status}"
