"""The command line: ``hybrid [overrides]`` / ``python -m hybrid``, ``hybrid report``, ``hybrid compare``.

A campaign is composed by Hydra (the current directory's conf/ first, then the packaged conf/),
checked and built by :mod:`hybrid.assemble` (the same assembly benchmarks and tests use), then run.
Bad input (an unknown config option, a value of the wrong type, a malformed search space, a
missing target command) is reported as one line, ``ConfigError: <field>: <what is wrong and the
fix>``, with exit code 2, nothing started and nothing written: the campaign dir appears only once
the config is valid (Hydra's own output dir and job log are off for a single run; the ``.hydra/``
record of the composed config is written here, secrets redacted, readable by the user only).

Exit codes: 0 the campaign ran and at least one experiment succeeded; 2 bad input; 3 no experiment
succeeded (every one failed: a pipeline should notice); 130 interrupted (Ctrl-C, SIGTERM).
With hybrid.assemble, the only layer importing Hydra.
"""

from __future__ import annotations

import logging
import os
import re
import signal
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from hybrid.errors import ConfigError, HybridError

if TYPE_CHECKING:
    from hybrid.config import Config

ROOT = Path(__file__).resolve().parent.parent  # the project root: conf/, examples/, model/
NO_SUCCESS_EXIT = 3  # the campaign ran, but no experiment succeeded
RECORD = ".hydra"  # the composed config, as Hydra's own output subdir would hold it
JOB_LOG = "hybrid.log"  # Python logging of the campaign (Hydra's job log, written by us)
_no_success: list[str] = []  # campaigns of this process in which no experiment succeeded


def _fail(kind: str, message: str) -> NoReturn:
    one_line = " ".join(part.strip() for part in str(message).strip().splitlines() if part.strip())
    print(f"{kind}: {one_line}", file=sys.stderr)
    sys.exit(2)


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


def _write_job_pointer(name: str, campaign_dir: Path, cfg: Config) -> None:
    """In a multirun, leave ``campaign.json`` in the Hydra job's output dir: which campaign this job
    runs, so ``hybrid compare SWEEP_DIR`` finds every job's campaign (``campaign.dir`` is apart from
    the sweep dir). Written before the campaign is built, so a crashed job is still found; atomically."""
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
        "proposer": cfg.proposer.get("name"),
        "surrogate": cfg.surrogate.get("name"),
        "seed": cfg.campaign.seed,
        "metric": cfg.target.metric,
        "direction": cfg.target.direction.value,
        "target_hardware": cfg.campaign.target_hardware,
    }
    tmp = out / "campaign.json.tmp"
    tmp.write_text(json.dumps(pointer, indent=1) + "\n")
    os.replace(tmp, out / "campaign.json")


def _write_private(path: Path, text: str) -> None:
    """``text`` in ``path``, readable by the user only (also when the file was there before)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        os.fchmod(f.fileno(), 0o600)
        f.write(text)


def _redacted_yaml(data: Any) -> str:
    import yaml

    from hybrid.secrets import redact_nested

    return yaml.safe_dump(redact_nested(data), sort_keys=False, allow_unicode=True)


def _write_record(directory: Path, node: Any) -> list[Path]:
    """``<directory>/.hydra/``: config.yaml, hydra.yaml and overrides.yaml, as Hydra writes them
    (unresolved), with secret-looking values redacted and mode 0600. Returns the files written."""
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import OmegaConf

    hc = HydraConfig.get()
    contents = {
        "config.yaml": OmegaConf.to_container(node, resolve=False, enum_to_str=True),
        "hydra.yaml": {"hydra": OmegaConf.to_container(hc, resolve=False, enum_to_str=True)},
        "overrides.yaml": list(hc.overrides.task),
    }
    record = directory / RECORD
    record.mkdir(mode=0o700, parents=True, exist_ok=True)
    written = []
    for name, data in contents.items():
        _write_private(record / name, _redacted_yaml(data))
        written.append(record / name)
    return written


def _redact_sweep_config() -> None:
    """Hydra's basic sweeper saves the sweep's whole config, overrides included, as
    ``<sweep dir>/multirun.yaml`` before the first job: re-written redacted, mode 0600."""
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import OmegaConf

    path = Path(str(HydraConfig.get().sweep.dir)) / "multirun.yaml"
    if path.is_file():
        _write_private(path, _redacted_yaml(OmegaConf.to_container(OmegaConf.load(path), resolve=False)))


@contextmanager
def _job_log(path: Path) -> Iterator[Path]:
    """Python logging of the campaign into ``path`` too (what Hydra's job log held; appended to on a
    resume), mode 0600."""
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600))
    path.chmod(0o600)
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"))
    logging.getLogger().addHandler(handler)
    try:
        yield path
    finally:
        logging.getLogger().removeHandler(handler)
        handler.close()


def _missing_dirs(directory: Path) -> list[Path]:
    """``directory`` and its ancestors that do not exist yet, outermost first."""
    missing = []
    while not directory.exists():
        missing.append(directory)
        directory = directory.parent
    return missing[::-1]


@contextmanager
def _new_campaign_dir(campaign_dir: Path, node: Any) -> Iterator[None]:
    """A single run: the campaign dir with its ``.hydra/`` record and job log, made once the config
    is valid. A ConfigError of the campaign's own checks before it started (target.check_command,
    warm start) takes back what was made here, so a config that failed validation leaves no
    ``runs/<name>/``; nothing this process did not create is ever removed."""
    created = _missing_dirs(campaign_dir)
    for d in created:
        d.mkdir(mode=0o700)
    written = _write_record(campaign_dir, node)
    try:
        with _job_log(campaign_dir / JOB_LOG) as log:
            written.append(log)
            yield
    except ConfigError:
        ours = {campaign_dir / RECORD, *written}
        if created and all(p in ours for p in [*campaign_dir.iterdir(), *(campaign_dir / RECORD).iterdir()]):
            for path in written:
                path.unlink()
            for d in [campaign_dir / RECORD, *reversed(created)]:
                with suppress(OSError):  # a parent that holds something else stays
                    d.rmdir()
        raise


def build_and_run(node: Any) -> Any:
    """Check the whole config, build every part (hybrid.assemble), run the campaign, print its summary."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN:
        # the job's own dir, apart from its campaign dir: Hydra's record (compare finds jobs by it) and log
        job_dir = Path(HydraConfig.get().runtime.output_dir)
        _write_record(job_dir, node)
        _redact_sweep_config()
        with _job_log(job_dir / JOB_LOG):
            return _build_and_run(node, multirun=True)
    return _build_and_run(node, multirun=False)


def _build_and_run(node: Any, multirun: bool) -> Any:
    from hybrid.assemble import assemble, campaign_dir_for, to_config

    cfg = to_config(node)
    name = _campaign_name(cfg)
    campaign_dir = campaign_dir_for(cfg, name)
    _write_job_pointer(name, campaign_dir, cfg)
    campaign = assemble(cfg, name=name, campaign_dir=campaign_dir)
    if multirun:
        summary = campaign.run()
    else:
        with _new_campaign_dir(campaign_dir, node):
            summary = campaign.run()
    print(summary.text(), flush=True)
    print(f"results: {campaign_dir / 'results.tsv'}", flush=True)
    if (campaign_dir / "findings.md").is_file():
        print(f"findings: {campaign_dir / 'findings.md'} (plots in {campaign_dir / 'plots'})", flush=True)
    if campaign.status == "interrupted":
        sys.exit(130)
    if summary.best_value is None:  # reported when every job of a multirun has run
        _no_success.append(name)
    return summary.best_value


def _register() -> None:
    from omegaconf import OmegaConf

    from hybrid.assemble import register_configs

    register_configs()
    if not OmegaConf.has_resolver("hybrid_help"):  # conf/config.yaml: hydra.help.header
        OmegaConf.register_new_resolver("hybrid_help", lambda: HELP)


def compose(overrides: Sequence[str]) -> dict[str, Any]:
    """The config ``hybrid <overrides>`` would run with, resolved to plain data (no Hydra section),
    unchecked beyond Hydra's composition: what ``hybrid report`` needs. Typed and checked:
    :func:`hybrid.assemble.compose`."""
    from omegaconf import OmegaConf

    from hybrid.assemble import compose_node

    container = OmegaConf.to_container(compose_node(overrides), resolve=True, throw_on_missing=False,
                                       enum_to_str=True)
    assert isinstance(container, dict)
    return container


# Subcommands: ``hybrid <command> ...``; anything else is a campaign (Hydra overrides).
COMMANDS = {
    "report": ("hybrid report campaign.name=NAME", "re-write findings.md and the plots of a campaign"),
    "compare": ("hybrid compare SWEEP_DIR", "compare the strategies of a multirun sweep"),
}
# `hybrid --help`: Hydra's help (groups, config) under this header. No "$": Hydra's help is a string.Template
HELP = "\n".join([
    "hybrid: parallel autoresearch with Bayesian optimization.",
    "",
    "Usage:",
    f"  {'hybrid [group=option ...] [key=value ...]':<44} run a campaign (-m: one campaign per combination)",
    *(f"  {usage:<44} {what}" for usage, what in COMMANDS.values()),
    f"  {'hybrid report --help, hybrid compare --help':<44} their usage",
    "",
    "Each option is explained once, in the schemas of hybrid/config.py; conf/<group>/*.yaml hold the values.",
    "The current directory's conf/ is searched first: conf/space/mine.yaml there gives space=mine.",
    "",
])
REPORT_HELP = """usage: hybrid report [overrides ...]

Re-write findings.md and plots/ (and hypotheses.md for LLM campaigns) of a campaign, finished or
running, and upload them to its MLflow run when it was mirrored. The campaign is campaign.dir
(runs/<campaign.name>): give campaign.name=NAME, or the overrides it ran with (its default name
is <target>-<proposer>-s<seed>), e.g.

  hybrid report campaign.name=example-hybrid-s0
  hybrid report proposer=sobol campaign.seed=1"""


def _command(name: str, argv: list[str]) -> None:
    if name == "report" and any(a in ("-h", "--help") for a in argv):
        print(REPORT_HELP)
        return
    with _one_line_errors():
        if name == "report":
            # findings.md's GP slices and the MLflow upload: the reports wing imports neither
            from hybrid.reports import report_command
            from hybrid.tracking import make_tracker
            from surrogate.gp import GPSurrogate

            report_command(compose(argv), gp=GPSurrogate, make_tracker=make_tracker)
        elif name == "compare":
            from hybrid.reports.compare import compare_command

            compare_command(argv)  # its own argparse: --help prints the usage


@contextmanager
def _one_line_errors() -> Iterator[None]:
    """Our errors and Hydra's as one line with exit code 2; Ctrl-C as "interrupted", exit 130."""
    import yaml
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from hybrid.assemble import hydra_message

    try:
        yield
    except HybridError as err:
        _fail(type(err).__name__, str(err))
    except (HydraException, OmegaConfBaseException, yaml.YAMLError) as err:
        _fail("ConfigError", hydra_message(err))
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)


class _ClosedPipeSafe:
    """``sys.stdout`` that survives its reader going away (``hybrid ... | head -1``): at the first
    broken pipe, stdout is pointed at /dev/null, and the campaign runs on, quietly, to its end and
    its results; every writer (the live view, log lines, the summary) goes through here."""

    def __init__(self, stream: Any) -> None:
        self._stream = stream

    def _survive(self, op: Callable[..., Any], *args: Any) -> Any:
        try:
            return op(*args)
        except BrokenPipeError:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, self._stream.fileno())
            os.close(devnull)
            return op(*args)

    def write(self, text: str) -> int:
        return self._survive(self._stream.write, text)

    def flush(self) -> None:
        self._survive(self._stream.flush)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


def _sigterm(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt  # SIGTERM (e.g. from a scheduler) stops like Ctrl-C


def main() -> None:
    import hydra
    from hydra.errors import InstantiationException
    from omegaconf.errors import OmegaConfBaseException

    from hybrid.assemble import CONF_DIR, hydra_message

    os.environ["HYDRA_FULL_ERROR"] = "1"  # let errors reach us: we print them as one line
    if sys.stdout is not None and not isinstance(sys.stdout, _ClosedPipeSafe):
        sys.stdout = _ClosedPipeSafe(sys.stdout)
    if len(sys.argv) > 1 and sys.argv[1] in COMMANDS:
        _command(sys.argv[1], sys.argv[2:])
        return
    _register()

    @hydra.main(version_base=None, config_path=str(CONF_DIR), config_name="config")
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
            _fail("ConfigError", hydra_message(err))

    signal.signal(signal.SIGTERM, _sigterm)
    with _one_line_errors():
        _app()
    for name in _no_success:
        print(f"campaign {name}: no experiment succeeded (exit code {NO_SUCCESS_EXIT}); see the run.log of its "
              "experiments", file=sys.stderr)
    if _no_success:
        sys.exit(NO_SUCCESS_EXIT)


if __name__ == "__main__":
    main()
