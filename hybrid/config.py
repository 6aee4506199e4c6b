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
    budget: BudgetConfig = field(default_factory=BudgetConfig)
    campaign: CampaignSection = field(default_factory=CampaignSection)


def register_configs() -> None:
    """Register the schemas so Hydra type-checks the YAML values against them."""
    from hydra.core.config_store import ConfigStore

    cs = ConfigStore.instance()
    cs.store(name="config_schema", node=Config)
    cs.store(group="target", name="schema", node=TargetConfig)
    cs.store(group="backend", name="local_schema", node=LocalBackendConfig)
    cs.store(group="stopping", name="schema", node=StoppingConfig)
    cs.store(group="tracking", name="schema", node=TrackingConfig)
