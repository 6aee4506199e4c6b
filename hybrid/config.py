"""Config schemas: the one place where each option is explained. The values live in conf/*.yaml.

Hydra composes conf/ against these dataclasses (registered by :mod:`hybrid.assemble`), so a value
of the wrong type or an unknown key is one ``ConfigError`` line before anything starts. The CLI
then turns the composed config into these objects with ``OmegaConf.to_object``: the campaign's
parts receive typed values, and ``__post_init__`` checks, once, what a type alone cannot say.

Where configs are found: the current directory's ``conf/`` (your project's) first, then the
packaged ``conf/``, for every group: ``conf/space/mine.yaml`` in your project is ``space=mine``,
and a file of yours wins over a packaged one of the same name. A ``conf/config.yaml`` of your own
(another Hydra app's) is never read as hybrid's main config.

Enums are ``StrEnum``s, so ``mode == "async"`` and ``f"{mode}"`` behave as the plain strings did;
their member *names* are the YAML spellings, because OmegaConf reads an enum value by name.
Importing this module must stay cheap (no torch, mlflow, hydra...): ``hybrid --help`` is instant.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from omegaconf import MISSING

from hybrid.errors import ConfigError

# "async" is a Python keyword, hence the functional form: Mode["async"], Mode.sync
Mode = StrEnum("Mode", ["async", "sync"])


class OnInterrupt(StrEnum):
    cancel = "cancel"
    detach = "detach"


class Direction(StrEnum):
    minimize = "minimize"
    maximize = "maximize"


class ProgressMode(StrEnum):
    auto = "auto"
    rich = "rich"
    plain = "plain"
    none = "none"


class StoppingKind(StrEnum):
    budget = "budget"
    cost_aware = "cost_aware"


class PruningKind(StrEnum):
    curve = "curve"
    none = "none"


class TrackingKind(StrEnum):
    mlflow = "mlflow"
    none = "none"


# campaign.findings and campaign.prefetch_pool are a boolean or one word. OmegaConf cannot type a
# union of bool and an enum, so these fields are `bool | str` and __post_init__ admits only these
# values (a string "true"/"false" counts as the boolean): they stay True / False / the word.
FINDINGS: tuple[bool | str, ...] = (True, "no_gp", False)
PREFETCH_POOL: tuple[bool | str, ...] = (True, "inline", False)


def _one_of(key: str, value: bool | str, allowed: tuple[bool | str, ...]) -> bool | str:
    if isinstance(value, str) and value.lower() in ("true", "false"):
        value = value.lower() == "true"
    if value not in allowed:  # bool and str only (the field's type): no 1 == True surprise
        names = ", ".join(str(a).lower() for a in allowed)
        raise ConfigError(f"{key}: {value!r} is not one of {names}")
    return value


def _check_name(name: str) -> str:
    """A campaign name is one directory name under ``runs/``: with a ``/``, or as ``..``, it would
    write elsewhere (even into the project root); a leading dot would hide it."""
    if not name or "/" in name or "\0" in name or name.startswith("."):
        raise ConfigError(f"campaign.name: {name!r} must be one directory name (no '/', not empty, not "
                          "starting with '.'), e.g. campaign.name=lr-sweep; campaign.dir=PATH puts it elsewhere")
    return name


@dataclass
class TargetConfig:
    # short name, used in the default campaign name
    name: str = MISSING
    # shell command template run in the experiment's workdir snapshot. Placeholders: {python}
    # (this interpreter), {args} (the params as key=value args; appended at the end when absent),
    # {experiment_id}, {hardware}
    command: str = MISSING
    # directory snapshotted for every experiment (None: the current directory)
    workdir: str | None = None
    # the metric printed by the target as "name: value" that the campaign optimizes
    metric: str = "val_bpb"
    direction: Direction = Direction.minimize
    # an experiment running longer than this is killed with its whole process tree -> TIMEOUT (None: no limit)
    timeout_s: float | None = 900.0
    # extra environment variables for every experiment
    env: dict[str, str] = field(default_factory=dict)
    # glob patterns left out of the workdir snapshot, on top of the built-in ones (.git, caches, runs/, .env*)
    exclude: list[str] = field(default_factory=list)
    # run once here, in workdir, with the baseline's params (same placeholders as command) before
    # anything is dispatched; a non-zero exit (e.g. parameter names the target does not know) is a
    # ConfigError naming its first stderr line. None: no check
    check_command: str | None = None
    # code variants: globs relative to workdir naming the files the LLM may change (e.g. [train.py,
    # "model/*.py"]); empty: no code edits. Each variant runs in a snapshot, never in your files
    editable: list[str] = field(default_factory=list)
    # run here on each code variant (a snapshot with it applied; same placeholders as command, the
    # baseline's params) before any worker is spent on it; a non-zero exit rejects it. None: no smoke test
    smoke_command: str | None = None
    # the smoke command's limit (None: 120 s); past it the variant is rejected
    smoke_timeout_s: float | None = None


@dataclass
class SpaceConfig:
    # name -> {type: float|int|categorical, low, high, log, step, choices, default}; checked by
    # hybrid.space.SearchSpace (one place), which names the faulty field
    params: dict[str, Any] = field(default_factory=dict)


@dataclass
class BackendConfig:
    # the Backend class to build
    _target_: str = MISSING
    # short name: local | slurm | skypilot
    name: str = MISSING


@dataclass
class LocalBackendConfig(BackendConfig):
    """Experiments run as local processes, one per worker."""

    _target_: str = "backends.local.LocalBackend"
    name: str = "local"
    # N identical workers, or a list of {name, hardware, hourly_usd, gpus: [0]}. Typed Any: OmegaConf
    # unions hold primitives only (no int | list), so LocalBackend checks it, naming the entry
    workers: Any = 2
    # "auto": one worker per GPU found by nvidia-smi (CUDA_VISIBLE_DEVICES); a list of indices;
    # None: CPU workers. Any for the same reason as workers
    gpus: Any = None
    # hardware label and price per hour of the workers made from a number or from `gpus`
    hardware: str = "cpu"
    hourly_usd: float = 0.0


@dataclass
class SlurmBackendConfig(BackendConfig):
    """Experiments run as Slurm jobs, one sbatch job per experiment, submitted from a login node;
    the campaign dir must be on a file system the compute nodes share."""

    _target_: str = "backends.slurm.SlurmBackend"
    name: str = "slurm"
    # worker pools: a list of {hardware, count, hourly_usd, gres, partition, account, name}, each
    # making `count` job slots (default: the `fleet` group's workers); None: `max_jobs` slots
    fleet: list[dict[str, Any]] | None = None
    # without a fleet: how many jobs may be queued or running at once, labelled `hardware` (a GPU
    # label such as h100 requests --gres=gpu:h100:1), each costing hourly_usd per hour
    max_jobs: int = 2
    hardware: str = "cpu"
    hourly_usd: float = 0.0
    # sbatch --partition/--account of every job (None: the cluster's defaults); a fleet entry may set its own
    partition: str | None = None
    account: str | None = None
    # sbatch --gres of every job; {hardware} is the worker's label; cpu workers get none; None: never
    gres: str | None = "gpu:{hardware}:1"
    # sbatch --time (minutes or [D-]HH:MM:SS); None: target.timeout_s + time_margin_s (the job
    # script's own timer fires first)
    time_limit: int | str | None = None
    time_margin_s: float = 300.0
    # job names are <job_prefix>-<experiment id>
    job_prefix: str = "hybrid"
    # extra sbatch arguments, e.g. ["--qos=high", "--constraint=sxm"]
    sbatch_args: list[str] = field(default_factory=list)
    # shell lines the batch script runs before the command, e.g. ["module load cuda/12.4"]
    setup: list[str] = field(default_factory=list)
    # at most one squeue call per this many seconds (finished jobs are seen from their workdir at once)
    poll_interval_s: float = 2.0
    # give up on a Slurm command after this long (a busy controller can be slow)
    command_timeout_s: float = 60.0
    # stop the campaign (jobs keep running; resume later) when Slurm does not answer for this long
    unreachable_timeout_s: float = 600.0
    # check partitions and GRES with sinfo and sbatch --test-only before anything is submitted
    validate: bool = True


@dataclass
class SkyPilotBackendConfig(BackendConfig):
    """Experiments run on SkyPilot clusters (any cloud, Kubernetes, Slurm): one cluster per worker,
    named <campaign>-w01, <campaign>-w02..., launched once with `setup`, then one exec per
    experiment. Needs pip install 'hybrid-autoresearch[skypilot]', a SkyPilot API server and
    `sky check` passing, e.g. hybrid backend=skypilot backend.workers=4 backend.infra=k8s
    'backend.accelerators={H100:1,H200:1}' 'backend.hourly_usd={H100:2.5,H200:3.5}'"""

    _target_: str = "backends.skypilot.SkyPilotBackend"
    name: str = "skypilot"
    # clusters are named <campaign>-<worker>, torn down at close
    campaign: str = "${campaign.name}"
    # a number N of alike workers (w01..wNN), or a list of {name, accelerators, infra, cpus, memory,
    # resources, hardware, hourly_usd} overriding the values below. Any: OmegaConf unions hold
    # primitives only, so SkyPilotBackend checks it, naming the entry
    workers: Any = 1
    # H100:1; alternatives {H100: 1, H200: 1} (any of; the granted type is recorded) or
    # [H100:1, H200:1] (in order); None: CPU only. Any (a string, a mapping or a list): checked by the backend
    accelerators: Any = None
    # where to run: aws, gcp, k8s, slurm, slurm/<cluster>, aws/us-east-1...; None: anywhere enabled
    infra: str | None = None
    # e.g. 4 or "4+" CPUs; memory in GB, e.g. "32+"
    cpus: int | float | str | None = None
    memory: int | float | str | None = None
    # more SkyPilot resource fields, e.g. {use_spot: true, disk_size: 100, image_id: ...}
    resources: dict[str, Any] = field(default_factory=dict)
    # hardware label; None: from the granted accelerator (h100, h200, cpu)
    hardware: str | None = None
    # USD per hour of one worker, or one price per accelerator type {H100: 2.5, H200: 3.5}
    # (Any: a number or a mapping; checked by the backend)
    hourly_usd: Any = 0.0
    # shell commands run once per cluster at launch, in the code's directory, e.g.
    # pip install -e . && python -m model.prepare
    setup: str = ""
    # the interpreter on the clusters; replaces this machine's interpreter that {python} put in the command
    python: str = "python3"
    # leave the clusters up at the end of the campaign (they keep costing money)
    keep_clusters: bool = False
    # launch/exec requests in flight at once (the API server runs only a few long requests at once)
    max_parallel_requests: int = 4
    # seconds between job status checks (one batch of requests for all clusters)
    status_interval_s: float = 5.0
    # stop a cluster after this many idle minutes (None: never; not supported on plain Slurm)
    autostop_minutes: int | None = None
    # accelerator names SkyPilot's list lacks (custom Kubernetes/Slurm GPU types)
    extra_accelerators: list[str] = field(default_factory=list)
    # lines of a job's log fetched when it ends (0: all)
    log_tail_lines: int = 20000
    # a running job's log is fetched at most once per this many seconds, for its progress lines
    progress_poll_s: float = 15.0


@dataclass
class FleetConfig:
    """A named pool of workers with hardware labels and prices, read by backend=slurm."""

    # the fleet's name
    name: str = MISSING
    # worker pools: a list of {hardware, count, hourly_usd} (+ backend-specific keys); the backend
    # checks each entry (its keys differ per backend). On Slurm each slot requests
    # --gres=gpu:<hardware>:1: add gres/partition to an entry where the cluster names its GPU
    # types or partitions differently
    workers: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class StoppingConfig:
    # cost_aware: stop where the gains flatten, relative to the noise and the price (the options
    # below; it reads the GP's decisions: with surrogate=none only the caps apply); budget: only at a
    # budget.* cap (or past campaign.max_failure_rate). The caps apply to both
    name: StoppingKind = StoppingKind.cost_aware
    # cost_aware: judge only after this many finished experiments
    min_experiments: int = 20
    # cost_aware: stop when the gain per experiment's price, in units of the run-to-run noise sd
    # the GP infers, is below this: the smaller of the gain expected of the best next experiment
    # (EI x P(feasible) / cost x typical cost / noise sd) and the gain achieved (the rise of the
    # GP's estimate of the best configuration over the last `window` experiments, per experiment);
    # calibrated on the development benchmarks (docs/benchmarks.md, benchmarks/stopping.py)...
    min_gain_sd_per_experiment: float = 0.04
    # cost_aware: ... for this many consecutive dispatch decisions
    patience: int = 5
    # cost_aware: finished experiments over which the achieved gain is measured
    window: int = 30


@dataclass
class PruningConfig:
    # curve: stop a running experiment once its learning curve (the target's `progress:` lines)
    # predicts it cannot beat the best run finished on its hardware (surrogate/pruning.py);
    # none: every experiment runs its whole budget. A target that prints no progress lines is
    # never pruned (the campaign says so once)
    name: PruningKind = PruningKind.curve
    # no decision before this fraction of the budget
    grace: float = 0.3
    # prune only when this one-sided prediction bound on the final is worse than the incumbent
    confidence: float = 0.95
    # finished runs (with curves, on the run's hardware) needed before any prune
    min_finished: int = 8
    # the curve's value at a fraction must rank the finished runs' finals at least this well
    # (Spearman): early on, crossing curves do not
    min_rank_correlation: float = 0.5
    # the progress value to read (None: the objective's metric if the target reports it, else the
    # first value of its progress lines, e.g. train_loss)
    signal: str | None = None


@dataclass
class TrackingConfig:
    # mlflow: one parent run per campaign, one child run per experiment. none: no tracking (the
    # campaign's own store and results.tsv still record everything)
    name: TrackingKind = TrackingKind.mlflow
    # MLflow tracking URI, e.g. http://host:5000; None: sqlite:///<campaign dir's parent>/mlflow.db
    uri: str | None = None
    # MLflow experiment name; None: the campaign name
    experiment: str | None = None


@dataclass
class BudgetConfig:
    # stop after this many experiments have been created, baseline included (None: no cap)
    max_experiments: int | None = 20
    # stop after this many hours of wall-clock time over all resumed sessions (None: no cap)
    max_hours: float | None = None
    # stop once worker spend (plus LLM tokens) reaches this many USD (None: no cap)
    max_cost_usd: float | None = None


@dataclass
class CampaignSection:
    # campaign name; re-running with the same name resumes it
    name: str = "${target.name}-${proposer.name}-s${campaign.seed}"
    # where state.sqlite, results.tsv and experiment workdirs go
    dir: str = "runs/${campaign.name}"
    # seeds the proposers and the GP: the same seed and overrides give the same campaign
    seed: int = 0
    # async: a freed worker gets work at once. sync: strict waves of one experiment per worker
    mode: Mode = Mode["async"]
    # seconds between backend polls when nothing happens
    poll_interval_s: float = 0.1
    # stop when more than this fraction of finished experiments failed (after 5 finished)
    max_failure_rate: float = 0.5
    # Ctrl-C: cancel running jobs, or detach (leave them running; a resume re-attaches them)
    on_interrupt: OnInterrupt = OnInterrupt.cancel
    # live view: auto (rich on a terminal, plain lines otherwise) | rich | plain | none
    progress: ProgressMode = ProgressMode.auto
    # hardware label on which "best" is judged (None, or no success there yet: the label with the most
    # successes; hybrid.history.judged_hardware)
    target_hardware: str | None = None
    # screening/validation: the k best configs seen on other hardware re-run on free
    # target-hardware workers before anything new goes there (0: off; needs target_hardware)
    validate_top_k: int = 0
    # run-to-run noise: the baseline runs this many times more early on, and a new incumbent that
    # wins by less than 2 noise sd (within noise) runs again (up to this many times); 0: no replicates (hybrid/confirming.py)
    replicates: int = 1
    # the recommendation: before the budget ends (or a cost-aware stop), the k configurations with the
    # best mean on the judged hardware are re-run there until each has 2 successful runs (0: off)
    confirm_top_k: int = 3
    # with surrogate=gp: generate the next candidate pool on a background thread right after a
    # wave is dispatched, so a freed worker waits only for the ranking (true); inline: the same
    # pool, generated synchronously at the same moment; false: asked when the worker frees
    prefetch_pool: bool | str = True
    # earlier campaigns (names under runs/, or paths to their directories) whose results are prior
    # data for the GP, the proposers and the LLM's summary: same target and space, other hardware
    # allowed, e.g. [gpt-hybrid-s0]
    warm_start: list[str] = field(default_factory=list)
    # at the end, write findings.md and plots/*.png (true), the same without the GP response
    # slices (no_gp: a second less), or nothing (false); `hybrid report` writes them any time
    findings: bool | str = True
    # seconds between two reads of the running experiments' progress lines (their curves)
    follow_interval_s: float = 2.0

    def __post_init__(self) -> None:  # runs in OmegaConf.to_object, i.e. once per composed config
        _check_name(self.name)
        if not (math.isfinite(self.poll_interval_s) and self.poll_interval_s >= 0):
            raise ConfigError(f"campaign.poll_interval_s: expected a number >= 0, got {self.poll_interval_s:g} "
                              "(seconds between backend polls, e.g. 0.1)")
        if not (math.isfinite(self.follow_interval_s) and self.follow_interval_s > 0):
            raise ConfigError(f"campaign.follow_interval_s: expected a number > 0, got {self.follow_interval_s:g} "
                              "(seconds between reads of running experiments' progress, e.g. 2)")
        self.findings = _one_of("campaign.findings", self.findings, FINDINGS)
        self.prefetch_pool = _one_of("campaign.prefetch_pool", self.prefetch_pool, PREFETCH_POOL)
        for key in ("replicates", "confirm_top_k"):
            if getattr(self, key) < 0:
                raise ConfigError(f"campaign.{key}: expected an integer >= 0, got {getattr(self, key)} (0 turns it off)")
        if self.validate_top_k < 0:
            raise ConfigError(f"campaign.validate_top_k: expected an integer >= 0, got {self.validate_top_k}")
        if self.validate_top_k and self.target_hardware is None:
            raise ConfigError("campaign.validate_top_k: set campaign.target_hardware too (the hardware that validates)")


@dataclass
class Config:
    """``hybrid <overrides>`` runs this (conf/config.yaml picks one option per group)."""

    # what is run (target=example, gpt, command...) and the params a campaign may vary (space=...)
    target: TargetConfig = MISSING
    space: SpaceConfig = MISSING
    # backend/proposer/surrogate options differ per implementation: each YAML names its own schema
    # (backend: one of the *BackendConfig above; proposer/surrogate: documented in their YAML files)
    backend: Any = MISSING
    proposer: Any = MISSING
    surrogate: Any = MISSING
    # when to stop (stopping=budget | cost_aware) and where results are mirrored (tracking=mlflow | none)
    stopping: StoppingConfig = MISSING
    tracking: TrackingConfig = MISSING
    # stop hopeless runs early (pruning=curve, the default | none)
    pruning: PruningConfig = MISSING
    # a named pool of workers with hardware labels and $/h (optional: `fleet=reference`)
    fleet: FleetConfig | None = None
    # the caps and the campaign's own settings (conf/config.yaml)
    budget: BudgetConfig = field(default_factory=BudgetConfig)
    campaign: CampaignSection = field(default_factory=CampaignSection)


# (name, schema) as Hydra's ConfigStore holds them (hybrid.assemble.register_configs), outside every
# group so that no schema is offered as an option (backend=local_schema); a YAML file of a group
# selects its schema with `defaults: [/<name>]`, e.g. conf/backend/local.yaml: [/backend_local_schema]
SCHEMAS: tuple[tuple[str, type], ...] = (
    ("config_schema", Config),
    ("target_schema", TargetConfig),
    ("backend_local_schema", LocalBackendConfig),
    ("backend_slurm_schema", SlurmBackendConfig),
    ("backend_skypilot_schema", SkyPilotBackendConfig),
    ("fleet_schema", FleetConfig),
    ("stopping_schema", StoppingConfig),
    ("pruning_schema", PruningConfig),
    ("tracking_schema", TrackingConfig),
)
