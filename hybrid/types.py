"""Core value types shared by the campaign, the store, proposers, backends and trackers."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any, Literal


class ExperimentState(IntEnum):
    """Lifecycle of one experiment. Stored as its integer value; never compared as a string."""

    PENDING = 0  # created in the store; maybe submitted, job id not yet recorded
    RUNNING = 1  # submitted; the backend's job id is recorded
    DONE = 2  # finished with a finite objective metric
    CRASHED = 3  # non-zero exit, no/NaN metric, OOM, or lost by the orchestrator
    TIMEOUT = 4  # killed after target.timeout_s
    CANCELLED = 5  # cancelled by the user (Ctrl-C) or by the campaign

    def is_finished(self) -> bool:
        return self not in (ExperimentState.PENDING, ExperimentState.RUNNING)

    def is_failure(self) -> bool:
        return self in (ExperimentState.CRASHED, ExperimentState.TIMEOUT)


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
class Candidate:
    """One configuration, before it is scheduled."""

    params: Mapping[str, Any]  # validated by SearchSpace
    source: str  # "baseline" | "sobol" | "tpe" | "cmaes" | "grid" | "llm" ...
    rationale: str = ""  # the LLM's hypothesis, or how it was generated


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
    reason: str = ""  # why it is not DONE ("exit code 1", "no metric 'val_bpb' printed", "out of memory"...)

    def value(self, metric: str) -> float | None:
        """The metric if this result counts as a success, else None."""
        if self.state is not ExperimentState.DONE:
            return None
        v = self.metrics.get(metric)
        if v is None or not math.isfinite(v):
            return None
        return float(v)


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
    extra: dict[str, Any] = field(default_factory=dict)  # backend/tracker bookkeeping (JSON-able)

    @property
    def params(self) -> Mapping[str, Any]:
        return self.candidate.params

    @property
    def source(self) -> str:
        return self.candidate.source

    def value(self, metric: str) -> float | None:
        return None if self.result is None else self.result.value(metric)
