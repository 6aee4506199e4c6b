"""The command line: ``hybrid [overrides]`` / ``python -m hybrid``. The only module importing Hydra.

Bad input (an unknown config option, a malformed search space, a missing target command) is
reported as one line, ``ConfigError: <field>: <what is wrong and the fix>``, with exit code 2
and nothing started.
"""

from __future__ import annotations

import os
import re
import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NoReturn

from hybrid.errors import ConfigError, HybridError

ROOT = Path(__file__).resolve().parent.parent  # the project root: conf/, examples/, model/


def _fail(kind: str, message: str) -> NoReturn:
    one_line = " ".join(part.strip() for part in str(message).strip().splitlines() if part.strip())
    print(f"{kind}: {one_line}", file=sys.stderr)
    sys.exit(2)


def _hydra_message(err: BaseException) -> str:
    """Hydra/OmegaConf errors, rewritten as one actionable line."""
    from hydra.errors import MissingConfigException

    if isinstance(err, MissingConfigException) and err.missing_cfg_file:
        group, _, option = str(err.missing_cfg_file).rpartition("/")
        options = ", ".join(sorted(err.options or []))
        if group:
            return f"{group}={option}: no such option; available: {options or 'none'}"
    text = str(err)
    m = re.search(r"Could not override '([^']+)'", text)
    if m:
        return f"{m.group(1)}: no such config field; check the spelling, or add a new key with +{m.group(1)}=..."
    from omegaconf.errors import OmegaConfBaseException

    cause: BaseException | None = err
    while cause is not None:  # a bad value: OmegaConf's error names the key and the value
        key, msg = getattr(cause, "full_key", None), getattr(cause, "msg", None)
        if isinstance(cause, OmegaConfBaseException) and key and msg:
            return f"{key}: {str(msg).strip().splitlines()[0]}"
        cause = cause.__cause__
    m = re.search(r"full_key: (\S+)", text)
    if m:
        first = text.strip().splitlines()[0]
        return f"{m.group(1)}: {first}"
    return text


def _unwrap(err: BaseException) -> BaseException:
    """Hydra's instantiate wraps constructor errors; find the HybridError inside, if any."""
    seen = err
    while seen is not None:
        if isinstance(seen, HybridError):
            return seen
        seen = seen.__cause__ or seen.__context__  # type: ignore[assignment]
    return err


def _campaign_name(cfg: Any) -> str:
    """In a multirun, every swept key beyond proposer and seed goes into the campaign name, so
    each job is its own campaign (``example-sobol-s0-budget.max_experiments=10``)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.types import RunMode

    name = str(cfg.campaign.name)
    hc = HydraConfig.get()
    if hc.mode != RunMode.MULTIRUN:
        return name
    job_overrides = {o.split("=", 1)[0].lstrip("+~"): o.split("=", 1)[-1] for o in hc.overrides.task}
    if "campaign.name" in job_overrides:
        return name
    cli = [a for a in sys.argv[1:] if "=" in a and not a.startswith("-")]
    swept = [o.get_key_element().lstrip("+~") for o in OverridesParser.create().parse_overrides(cli)
             if o.is_sweep_override()]
    extra = [f"{k}={job_overrides[k]}" for k in swept if k not in ("proposer", "campaign.seed") and k in job_overrides]
    if extra:
        name += "-" + re.sub(r"[^\w.=,+-]", "_", ",".join(extra))
    return name


def _write_job_pointer(name: str, campaign_dir: Path, container: dict[str, Any], objective: Any) -> None:
    """In a multirun, leave ``campaign.json`` in the Hydra job's output dir: which campaign this job
    runs, so ``hybrid compare SWEEP_DIR`` finds every job's campaign (``campaign.dir`` is apart from
    the sweep dir). Written before the campaign starts, so a crashed job is still found; atomically."""
    import json

    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized():
        return
    hc = HydraConfig.get()
    if hc.mode != RunMode.MULTIRUN or not hc.runtime.output_dir:
        return  # a single run's output dir is the campaign dir itself
    out = Path(hc.runtime.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    pointer = {
        "version": 1,
        "campaign": name,
        "campaign_dir": str(campaign_dir),
        "overrides": [str(o) for o in hc.overrides.task],
        "job_num": int(hc.job.num),
        "proposer": container["proposer"].get("name"),
        "surrogate": container["surrogate"].get("name"),
        "seed": int(container["campaign"]["seed"]),
        "metric": objective.metric,
        "direction": objective.direction,
        "target_hardware": container["campaign"].get("target_hardware"),
    }
    tmp = out / "campaign.json.tmp"
    tmp.write_text(json.dumps(pointer, indent=1) + "\n")
    os.replace(tmp, out / "campaign.json")


def build_and_run(cfg: Any) -> Any:
    """Validate the whole config, build every part, then run the campaign."""
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from hybrid.campaign import Campaign
    from hybrid.progress import Progress
    from hybrid.space import SearchSpace
    from hybrid.stopping import Budget, CostAwareStop
    from hybrid.targets import TargetSpec
    from hybrid.tracking import make_tracker

    container = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False)
    assert isinstance(container, dict)
    space = SearchSpace.from_config(container["space"].get("params") or {})
    target = TargetSpec.from_config(container["target"])
    budget = Budget.from_config(container["budget"])
    camp = container["campaign"]
    top_k = camp.get("validate_top_k") or 0
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 0:
        raise ConfigError(f"campaign.validate_top_k: expected an integer >= 0, got {top_k!r}")
    if top_k and camp.get("target_hardware") is None:
        raise ConfigError("campaign.validate_top_k: set campaign.target_hardware too (the hardware that validates)")
    stopping = container["stopping"]
    cost_stop = None
    if stopping.get("name") == "cost_aware":
        if container["surrogate"].get("name") != "gp":
            raise ConfigError("stopping=cost_aware: needs surrogate=gp (the GP estimates the gain per dollar)")
        cost_stop = CostAwareStop.from_config(stopping)
    elif stopping.get("name") != "budget":
        raise ConfigError(f"stopping.name: {stopping.get('name')!r} is not budget or cost_aware")
    name = _campaign_name(cfg)
    campaign_dir = Path(camp["dir"])
    if name != camp["name"]:
        campaign_dir = campaign_dir.parent / name
    campaign_dir = campaign_dir.resolve()
    _write_job_pointer(name, campaign_dir, container, target.objective)
    backend = instantiate(cfg.backend)
    # _partial_: runtime objects (space, objective) are passed as they are, not turned into config
    proposer = instantiate(cfg.proposer, _partial_=True)(space=space, objective=target.objective,
                                                         seed=int(camp["seed"]))
    ranker = instantiate(cfg.surrogate, _partial_=True)(space=space, objective=target.objective,
                                                        seed=int(camp["seed"]),
                                                        target_hardware=camp.get("target_hardware"),
                                                        validate_top_k=top_k)
    tracker = make_tracker(container["tracking"])
    progress = Progress(str(camp["progress"]))
    campaign = Campaign(
        name=name, dir=campaign_dir, space=space, target=target, backend=backend, proposer=proposer,
        ranker=ranker, budget=budget, tracker=tracker, mode=str(camp["mode"]),
        poll_interval_s=float(camp["poll_interval_s"]), max_failure_rate=float(camp["max_failure_rate"]),
        on_interrupt=str(camp["on_interrupt"]), progress=progress, config=container,
        target_hardware=camp.get("target_hardware"), cost_stop=cost_stop,
        prefetch_pool=camp.get("prefetch_pool", True), warm_start=camp.get("warm_start") or [],
        findings=camp.get("findings", True),
    )
    summary = campaign.run()
    print(summary.text(), flush=True)
    print(f"results: {campaign_dir / 'results.tsv'}", flush=True)
    if (campaign_dir / "findings.md").is_file():
        print(f"findings: {campaign_dir / 'findings.md'} (plots in {campaign_dir / 'plots'})", flush=True)
    if campaign.status == "interrupted":
        sys.exit(130)
    return summary.best_value


def _register() -> None:
    from omegaconf import OmegaConf

    from hybrid.config import register_configs

    register_configs()
    if not OmegaConf.has_resolver("hybrid_root"):
        OmegaConf.register_new_resolver("hybrid_root", lambda: str(ROOT))


def compose(overrides: list[str]) -> dict[str, Any]:
    """The config ``hybrid <overrides>`` would run with, resolved to plain data (no Hydra section)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from omegaconf import OmegaConf

    _register()
    with initialize_config_dir(version_base=None, config_dir=str(ROOT / "conf")):
        cfg = hydra_compose(config_name="config", overrides=overrides)
    container = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False)
    assert isinstance(container, dict)
    return container


# Subcommands: ``hybrid <command> ...``; anything else is a campaign (Hydra overrides).
COMMANDS = {
    "report": "hybrid report campaign.name=NAME  (re-write findings.md and the plots of a campaign)",
    "compare": "hybrid compare SWEEP_DIR  (compare the strategies of a multirun sweep)",
}


def _command(name: str, argv: list[str]) -> None:
    with _one_line_errors():
        if name == "report":
            from hybrid.reports import report_command
            from hybrid.tracking import make_tracker
            from surrogate.gp import GPSurrogate  # findings.md's GP slices: reports do not import the surrogate

            report_command(compose(argv), gp=GPSurrogate, make_tracker=make_tracker)
        elif name == "compare":
            from hybrid.reports import compare_command

            compare_command(argv)


@contextmanager
def _one_line_errors() -> Iterator[None]:
    """Our errors and Hydra's as one line with exit code 2; Ctrl-C as "interrupted", exit 130."""
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    try:
        yield
    except HybridError as err:
        _fail(type(err).__name__, str(err))
    except (HydraException, OmegaConfBaseException) as err:
        _fail("ConfigError", _hydra_message(err))
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)


def _sigterm(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt  # SIGTERM (e.g. from a scheduler) stops like Ctrl-C


def main() -> None:
    import hydra
    from hydra.errors import InstantiationException
    from omegaconf.errors import OmegaConfBaseException

    os.environ["HYDRA_FULL_ERROR"] = "1"  # let errors reach us: we print them as one line
    if len(sys.argv) > 1 and sys.argv[1] in COMMANDS:
        _command(sys.argv[1], sys.argv[2:])
        return
    _register()

    @hydra.main(version_base=None, config_path=str(ROOT / "conf"), config_name="config")
    def _app(cfg: Any) -> Any:
        # Errors are turned into SystemExit here, inside the job: Hydra would otherwise log
        # its own "Error executing job" line before ours.
        try:
            return build_and_run(cfg)
        except InstantiationException as err:
            inner = _unwrap(err)
            if isinstance(inner, HybridError):
                _fail(type(inner).__name__, str(inner))
            _fail("ConfigError", str(err))
        except HybridError as err:
            _fail(type(err).__name__, str(err))
        except OmegaConfBaseException as err:
            _fail("ConfigError", _hydra_message(err))

    signal.signal(signal.SIGTERM, _sigterm)
    with _one_line_errors():
        _app()


if __name__ == "__main__":
    main()
