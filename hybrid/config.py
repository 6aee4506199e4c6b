"""Config schemas (dataclasses registered in Hydra's ConfigStore); the values live in conf/*.yaml.

Only the schema is here. Objects are built from their config node with ``_target_`` by the CLI.
Importing this module must stay cheap (no torch, mlflow...): ``hybrid --help`` is instant.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from omegaconf import MISSING


@dataclass
class TargetConfig:
    # short name, used in the default campaign name
    name: str = MISSING
    # shell command template run in the experiment's workdir snapshot. Placeholders: {python}
    # (this interpreter), {args} (the params as key=value args; appended at the end when absent),
    # {experiment_id}, {hardware}
    command: str = MISSING
    # directory snapshotted for every experiment (None: the current directory)
    workdir: Any = None
    # the metric printed by the target as "name: value" that the campaign optimizes
    metric: str = "val_bpb"
    # minimize | maximize
    direction: str = "minimize"
    # an experiment running longer than this is killed with its whole process tree -> TIMEOUT
    timeout_s: float = 900.0
    # extra environment variables for every experiment
    env: dict[str, str] = field(default_factory=dict)
    # glob patterns left out of the workdir snapshot, on top of the built-in ones (.git, caches, runs/, .env*)
    exclude: list[str] = field(default_factory=list)
    # run once here, in workdir, with the baseline's params (same placeholders as command) before
    # anything is dispatched; a non-zero exit (e.g. parameter names the target does not know) is a
    # ConfigError naming its first stderr line. None: no check
    check_command: str | None = None


@dataclass
class SpaceConfig:
    # name -> {type: float|int|categorical, low, high, log, step, choices, default}
    params: dict[str, Any] = field(default_factory=dict)


@dataclass
class BackendConfig:
    # the Backend class to build
    _target_: str = MISSING
    # short name: local | slurm | skypilot
    name: str = MISSING


@dataclass
class LocalBackendConfig(BackendConfig):
    _target_: str = "backends.local.LocalBackend"
    name: str = "local"
    # a number of identical workers, or a list of {name, hardware, hourly_usd, gpus: [0]}
    workers: Any = 2
    # "auto": one worker per GPU found by nvidia-smi; a list of indices; None: CPU workers
    gpus: Any = None
    # hardware label and price of the workers made from a number or from `gpus`
    hardware: str = "cpu"
    hourly_usd: float = 0.0


@dataclass
class SlurmBackendConfig(BackendConfig):
    _target_: str = "backends.slurm.SlurmBackend"
    name: str = "slurm"
    # worker pools: a list of {hardware, count, hourly_usd, gres, partition, account, name}, each
    # making `count` job slots (default: the `fleet` group's workers); None: `max_jobs` slots
    fleet: Any = None
    # without a fleet: how many jobs may be queued or running at once, labelled `hardware`
    max_jobs: int = 2
    hardware: str = "cpu"
    hourly_usd: float = 0.0
    # sbatch --partition/--account of every job (None: the cluster's defaults); a fleet entry may set its own
    partition: Any = None
    account: Any = None
    # sbatch --gres of every job; {hardware} is the worker's label; cpu workers get none; None: never
    gres: Any = "gpu:{hardware}:1"
    # sbatch --time (minutes or [D-]HH:MM:SS); None: target.timeout_s + time_margin_s
    time_limit: Any = None
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
    _target_: str = "backends.skypilot.SkyPilotBackend"
    name: str = "skypilot"
    # clusters are named <campaign>-<worker>: one cluster per worker, torn down at close
    campaign: str = "${campaign.name}"
    # a number N of alike workers (w01..wNN), or a list of {name, accelerators, infra, cpus, memory,
    # resources, hardware, hourly_usd} overriding the values below
    workers: Any = 1
    # H100:1; alternatives {H100: 1, H200: 1} (any of) or [H100:1, H200:1] (in order); None: CPU only
    accelerators: Any = None
    # where to run: aws, gcp, k8s, slurm, slurm/<cluster>, aws/us-east-1...; None: anywhere enabled
    infra: Any = None
    cpus: Any = None
    memory: Any = None
    # more SkyPilot resource fields, e.g. {use_spot: true, disk_size: 100, image_id: ...}
    resources: dict[str, Any] = field(default_factory=dict)
    # hardware label; None: from the granted accelerator (h100, h200, cpu)
    hardware: Any = None
    # USD per hour of one worker, or one price per accelerator type {H100: 2.5, H200: 3.5}
    hourly_usd: Any = 0.0
    # shell commands run once per cluster at launch, in the code's directory (install, prepare data)
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
    autostop_minutes: Any = None
    # accelerator names SkyPilot's list lacks (custom Kubernetes/Slurm GPU types)
    extra_accelerators: list[str] = field(default_factory=list)
    # lines of a job's log fetched when it ends (0: all)
    log_tail_lines: int = 20000


@dataclass
class FleetConfig:
    # the fleet's name
    name: str = MISSING
    # worker pools: a list of {hardware, count, hourly_usd} (+ backend-specific keys such as gres, partition)
    workers: list[Any] = field(default_factory=list)


@dataclass
class ProposerConfig:
    # the Proposer class to build; it receives space, objective and seed too
    _target_: str = MISSING
    # short name, recorded in the campaign and used in its default name
    name: str = MISSING


@dataclass
class SurrogateConfig:
    # the Ranker class that orders the candidate pool into a wave
    _target_: str = MISSING
    name: str = MISSING


@dataclass
class StoppingConfig:
    # budget | cost_aware (the latter needs surrogate=gp); budget.* caps apply in both
    name: str = "budget"
    # cost_aware: judge only after this many finished experiments
    min_experiments: int = 20
    # cost_aware: stop when the best candidate's expected improvement of the metric per USD is below this
    min_gain_per_usd: float = 0.001
    # cost_aware: ... for this many consecutive dispatch decisions
    patience: int = 3


@dataclass
class TrackingConfig:
    # mlflow | none
    name: str = "mlflow"
    # MLflow tracking URI; None: an SQLite store next to the campaign dirs (runs/mlflow.db)
    uri: Any = None
    # MLflow experiment name; None: the campaign name
    experiment: Any = None


@dataclass
class BudgetConfig:
    # stop after this many experiments have been created (None: no cap)
    max_experiments: Any = 20
    # stop after this many hours of wall-clock time (None: no cap)
    max_hours: Any = None
    # stop once worker spend (plus LLM tokens, later) reaches this many USD (None: no cap)
    max_cost_usd: Any = None


@dataclass
class CampaignSection:
    # campaign name; re-running with the same name resumes it
    name: str = "${target.name}-${proposer.name}-s${campaign.seed}"
    # where state.sqlite, results.tsv and experiment workdirs go
    dir: str = "runs/${campaign.name}"
    seed: int = 0
    # async: a freed worker gets work at once. sync: strict waves of one experiment per worker
    mode: str = "async"
    # seconds between backend polls when nothing happens
    poll_interval_s: float = 0.1
    # stop when more than this fraction of finished experiments failed (after 5 finished)
    max_failure_rate: float = 0.5
    # Ctrl-C: cancel running jobs, or detach (leave them running; a resume re-attaches them)
    on_interrupt: str = "cancel"
    # live view: auto (rich on a terminal, plain lines otherwise) | rich | plain | none
    progress: str = "auto"
    # hardware label on which "best" is judged (None: every label counts)
    target_hardware: Any = None
    # screening/validation: the k best configs seen on other hardware re-run on free
    # target-hardware workers before anything new goes there (0: off; needs target_hardware)
    validate_top_k: int = 0
    # with surrogate=gp: generate the next candidate pool on a background thread right after a
    # wave is dispatched, so a freed worker waits only for the ranking (inline: same pool,
    # generated synchronously at the same moment; false: asked when the worker frees)
    prefetch_pool: Any = True
    # earlier campaigns (names, or paths to their directories) whose results are prior data for
    # the GP, the proposers and the LLM's summary: same target and space, other hardware allowed
    warm_start: Any = field(default_factory=list)
    # at the end, write findings.md and plots/*.png (true), the same without the GP response
    # slices (no_gp: a second less), or nothing (false); `hybrid report` writes them any time
    findings: Any = True


@dataclass
class Config:
    target: TargetConfig = MISSING
    space: SpaceConfig = MISSING
    # backend/proposer/surrogate options differ per implementation: each YAML names its own schema
    backend: Any = MISSING
    proposer: Any = MISSING
    surrogate: Any = MISSING
    stopping: StoppingConfig = MISSING
    tracking: TrackingConfig = MISSING
    # a named pool of workers with hardware labels and $/h (optional: `fleet=reference`)
    fleet: Any = None
    budget: BudgetConfig = field(default_factory=BudgetConfig)
    campaign: CampaignSection = field(default_factory=CampaignSection)


def register_configs() -> None:
    """Register the schemas so Hydra type-checks the YAML values against them."""
    from hydra.core.config_store import ConfigStore

    cs = ConfigStore.instance()
    cs.store(name="config_schema", node=Config)
    cs.store(group="target", name="schema", node=TargetConfig)
    cs.store(group="backend", name="local_schema", node=LocalBackendConfig)
    cs.store(group="backend", name="slurm_schema", node=SlurmBackendConfig)
    cs.store(group="backend", name="skypilot_schema", node=SkyPilotBackendConfig)
    cs.store(group="fleet", name="schema", node=FleetConfig)
    cs.store(group="stopping", name="schema", node=StoppingConfig)
    cs.store(group="tracking", name="schema", node=TrackingConfig)
