"""Core value types shared by the campaign, the store, proposers, backends and trackers."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import IntEnum, StrEnum
from typing import Any, Literal


class ExperimentState(IntEnum):
    """Lifecycle of one experiment. Stored as its integer value; never compared as a string."""

    PENDING = 0  # created in the store; maybe submitted, job id not yet recorded
    RUNNING = 1  # submitted; the backend's job id is recorded
    DONE = 2  # finished with a finite objective metric
    CRASHED = 3  # non-zero exit, no/NaN metric, OOM, or lost by the orchestrator
    TIMEOUT = 4  # killed after target.timeout_s
    CANCELLED = 5  # cancelled by the user (Ctrl-C) or by the campaign
    PRUNED = 6  # stopped by the pruning rule: its partial curve is kept, it is neither a success nor a failure

    def is_finished(self) -> bool:
        return self not in (ExperimentState.PENDING, ExperimentState.RUNNING)

    def is_failure(self) -> bool:
        return self in (ExperimentState.CRASHED, ExperimentState.TIMEOUT)


class FailureKind(StrEnum):
    """Why a finished experiment has no usable result. Set once, where a finished job is classified
    (``hybrid.history.classify``), stored with the result, and read by every report, model and prompt:
    nobody matches reason strings."""

    OOM = "oom"  # out of memory (the log says so, or the process was SIGKILLed: the OOM killer's signal)
    TIMEOUT = "timeout"  # killed after target.timeout_s (or the scheduler's time limit)
    CRASH = "crash"  # non-zero exit code, or the submit itself failed
    NO_METRIC = "no_metric"  # exited 0 but printed no finite objective metric (missing, NaN, inf)
    LOST = "lost"  # the orchestrator or the backend lost the job (node failure, preemption, kill -9)
    CANCELLED = "cancelled"  # cancelled by the user (Ctrl-C) or the campaign, or never submitted


class JobState(IntEnum):
    """What a backend knows about one job (``backends.base`` re-exports it)."""

    QUEUED = 0
    RUNNING = 1
    EXITED = 2  # ended by itself; see exit_code
    TIMEOUT = 3  # killed after RunSpec.timeout_s
    CANCELLED = 4  # killed by cancel()
    LOST = 5  # the backend can no longer find the job (node failure, orchestrator restart...)

    def is_finished(self) -> bool:
        return self >= JobState.EXITED


@dataclass(frozen=True)
class Worker:
    """One slot of compute. A backend lists one Worker per slot that can run one experiment."""

    name: str  # unique within the campaign, e.g. "gpu0", "w03", "slurm-h100-2"
    hardware: str  # label results are grouped by, e.g. "h100", "cpu"
    hourly_usd: float = 0.0
    gpus: tuple[int, ...] = ()  # local GPU indices (CUDA_VISIBLE_DEVICES) when relevant


@dataclass(frozen=True)
class Objective:
    """What a campaign optimizes: one metric printed by the target, and its direction."""

    metric: str = "val_bpb"
    direction: Literal["minimize", "maximize"] = "minimize"

    def better(self, a: float, b: float) -> bool:
        """True when value ``a`` is strictly better than ``b``."""
        return a < b if self.direction == "minimize" else a > b

    def sign(self) -> float:
        """+1 when minimizing, -1 when maximizing: ``sign * value`` is always a loss."""
        return 1.0 if self.direction == "minimize" else -1.0


@dataclass(frozen=True)
class Edit:
    """One search/replace edit of a file of the target (a path relative to ``target.workdir``)."""

    file: str
    search: str  # occurs exactly once in the file it edits
    replace: str


@dataclass(frozen=True)
class Variant:
    """A change to the target's code, proposed by the LLM (``hybrid.variants`` validates and applies it).

    ``id`` is a content hash of the parent's id and the normalized edits, so the same change proposed
    twice is one variant. A variant may stack on another (``parent``): its edits apply after the parent's.
    """

    id: str
    parent: str | None
    edits: tuple[Edit, ...]
    hypothesis: str = ""


@dataclass(frozen=True)
class Candidate:
    """One configuration, before it is scheduled: parameter values, and the code they run with."""

    params: Mapping[str, Any]  # validated by SearchSpace
    source: str  # "baseline" | "sobol" | "tpe" | "cmaes" | "grid" | "llm" ...
    rationale: str = ""  # the LLM's hypothesis, or how it was generated
    variant: str | None = None  # a Variant's id; None: the target's code unchanged


@dataclass(frozen=True)
class Result:
    """The outcome of one experiment, as recorded in the store."""

    experiment_id: str
    state: ExperimentState
    metrics: Mapping[str, float]  # val_bpb, peak_vram_mb, num_steps, training_seconds...
    hardware: str
    duration_s: float
    cost_usd: float
    log_tail: str = ""
    reason: str = ""  # why it is not DONE, for people ("exit code 1", "no metric 'val_bpb' printed"...)
    failure: FailureKind | None = None  # why it is not DONE, for programs (None when DONE)

    def value(self, metric: str) -> float | None:
        """The metric if this result counts as a success, else None."""
        if self.state is not ExperimentState.DONE:
            return None
        v = self.metrics.get(metric)
        if v is None or not math.isfinite(v):
            return None
        return float(v)


# The metric a PRUNED result carries next to whatever its log printed: the pruning rule's optimistic
# bound on the objective the run would have ended with (worse than the incumbent, or it would not
# have been pruned). Models may use it as partial information; nothing counts it as a result.
PRUNED_BOUND = "pruned_bound"


@dataclass(frozen=True)
class ProgressPoint:
    """One point of a run's learning curve (the progress contract, ``hybrid.curves``)."""

    fraction: float  # of the target's budget, in [0, 1]
    values: dict[str, float]  # name -> finite value, e.g. {"train_loss": 3.21}


@dataclass(frozen=True)
class Prior:
    """Where a warm-start experiment comes from (``campaign.warm_start``)."""

    campaign: str  # the earlier campaign's label
    id: str  # its id there, e.g. e0003
    source: str  # the proposer label it had there


@dataclass
class Experiment:
    """A candidate bound to a worker. ``result`` is set once it has finished."""

    id: str
    candidate: Candidate
    worker: str
    hardware: str
    wave: int
    state: ExperimentState = ExperimentState.PENDING
    job_id: str | None = None
    started: float | None = None  # wall-clock (time.time()) when submitted
    seq: int = 0  # 1-based order of creation in the campaign; 1 is the baseline
    workdir: str = ""  # the experiment's own snapshot of the target's code
    result: Result | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # backend bookkeeping (JSON-able)
    ended: float | None = None  # wall-clock when it finished (set with the result)
    mirrored: bool = False  # the tracker (MLflow) has it
    requeued: bool = False  # lost by the orchestrator (or never submitted): its config is run again
    idle_before_s: float | None = None  # how long its worker sat idle before it was submitted
    prior: Prior | None = None  # set on an earlier campaign's experiment loaded by a warm start
    curve: list[ProgressPoint] = field(default_factory=list)  # its progress points (filled where needed)

    @property
    def params(self) -> Mapping[str, Any]:
        return self.candidate.params

    @property
    def source(self) -> str:
        return self.candidate.source

    @property
    def variant(self) -> str | None:
        return self.candidate.variant

    def value(self, metric: str) -> float | None:
        return None if self.result is None else self.result.value(metric)
