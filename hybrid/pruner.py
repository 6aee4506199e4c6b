"""Pruning in the loop: stop a running experiment once its curve says it cannot matter.

The follower (:mod:`hybrid.following`) hands over each running experiment's new progress points;
for each, the rule (``surrogate.pruning.PruningRule``) is asked whether the run can still beat the
best run that finished on its hardware. On a prune, in this order:

1. the decision is stored (event ``prune``: id, fraction, bound, reason) - durable first, so a
   resume after ``kill -9`` knows the run was pruned, whatever became of its job;
2. the job is cancelled (``Backend.cancel``);
3. when the backend reports the job ended, :meth:`Pruner.outcome` turns its CANCELLED result into
   PRUNED (reason, partial curve, real duration and cost, and :data:`PRUNED_BOUND`), and the
   campaign records it and fills the freed worker in the same loop turn.

Exactly one outcome: a run that ended by itself before the kill took effect (it printed its result,
or crashed) keeps its own result, recorded once (``Store.record`` records a result once). A run
killed while it printed its final lines is PRUNED: what it printed is kept in the metrics, but
nothing counts a pruned run as a result.

Protected runs (the baseline, replicates, validation re-runs: ``PROTECTED_SOURCES``) are never
asked about. Decisions only use finished runs of this campaign with curves (warm-start priors carry
no curves); a finished run's curve is turned into the rule's input once and kept.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace

from backends.base import Backend, JobHandle
from hybrid.store import Store
from hybrid.types import (
    PRUNED_BOUND,
    Experiment,
    ExperimentState,
    FailureKind,
    Objective,
    ProgressPoint,
    Result,
)
from surrogate.pruning import PruningRule, RunCurve

EVENT = "prune"  # the store event of a decision (JSON: id, fraction, bound, reason, at)


@dataclass(frozen=True)
class Decision:
    """A prune the campaign decided on: stored before the job is cancelled."""

    exp_id: str
    fraction: float  # the run's latest reported fraction when it was decided
    bound: float  # the rule's optimistic bound on its final objective
    reason: str  # the rule's reason, with its numbers
    at: float  # wall-clock time of the decision

    def to_json(self) -> str:
        return json.dumps({"id": self.exp_id, "fraction": self.fraction, "bound": self.bound,
                           "reason": self.reason, "at": self.at})

    @classmethod
    def from_json(cls, text: str) -> Decision | None:
        try:
            d = json.loads(text)
            return cls(str(d["id"]), float(d["fraction"]), float(d["bound"]), str(d["reason"]), float(d["at"]))
        except (ValueError, TypeError, KeyError):
            return None


def pruned_result(base: Result, decision: Decision) -> Result:
    """The PRUNED result of a job the rule stopped: its own run's duration, cost, log and any metrics
    it printed, plus the rule's bound; neither a success nor a failure."""
    return replace(base, state=ExperimentState.PRUNED, metrics={**base.metrics, PRUNED_BOUND: decision.bound},
                   reason=f"pruned {decision.reason}", failure=None)


class Pruner:
    """Asks the rule about running experiments with new points; cancels and records the pruned."""

    def __init__(self, rule: PruningRule | None, store: Store, backend: Backend, objective: Objective,
                 say: Callable[[str], None], clock: Callable[[], float] = time.time) -> None:
        self.rule, self.store, self.backend, self.objective, self.say, self.clock = (
            rule, store, backend, objective, say, clock)
        self.pending: dict[str, Decision] = {}  # decided, job cancelled, end not recorded yet
        self._finished: dict[str, RunCurve] = {}  # finished runs' rule inputs (their curves no longer change)
        self.n_decisions = 0

    def restore(self, exps: Mapping[str, Experiment]) -> None:
        """Decisions stored by an earlier session whose experiment has no result yet (killed between
        the decision and the record): they stand."""
        for _, _, detail in self.store.events(EVENT):
            d = Decision.from_json(detail)
            if d is not None and d.exp_id in exps and exps[d.exp_id].result is None:
                self.pending[d.exp_id] = d

    def resume(self, running: Sequence[JobHandle]) -> None:
        """Cancel again the re-attached jobs of stored decisions (the kill may never have been sent)."""
        for h in running:
            if h.experiment_id in self.pending:
                self.backend.cancel(h.job_id)

    def lost(self, exp: Experiment, hourly_usd: float) -> Result | None:
        """The result of a pruned experiment whose job a resume cannot find any more (it was killed
        as decided while nobody watched): PRUNED, with the time it ran until the decision."""
        d = self.pending.pop(exp.id, None)
        if d is None:
            return None
        duration = max(0.0, d.at - exp.started) if exp.started else 0.0
        base = Result(exp.id, ExperimentState.CANCELLED, {}, exp.hardware, duration,
                      duration / 3600.0 * hourly_usd, "", "", FailureKind.CANCELLED)
        return pruned_result(base, d)

    def consider(self, updates: Sequence[tuple[Experiment, list[ProgressPoint]]], exps: Mapping[str, Experiment],
                 running: Sequence[JobHandle]) -> list[Decision]:
        """Ask the rule about each experiment that reported new points; prune where it says so."""
        if self.rule is None or not updates:
            return []
        handles = {h.experiment_id: h for h in running}
        out = []
        for exp, _ in updates:
            handle = handles.get(exp.id)
            if handle is None or exp.id in self.pending or exp.state is not ExperimentState.RUNNING:
                continue
            run = RunCurve(exp.params, exp.hardware, tuple(exp.curve), source=exp.source)
            if run.is_protected:
                continue
            self.n_decisions += 1
            found = self.rule.verdict(run, self._finished_runs(exps), self.objective)
            if found is None:
                continue
            reason, p = found
            d = Decision(exp.id, p.fraction, p.bound, reason, self.clock())
            self.store.event(EVENT, d.to_json())  # durable before the job is touched
            self.pending[exp.id] = d
            self.backend.cancel(handle.job_id)
            self.say(f"{exp.id} pruned {reason}")
            out.append(d)
        return out

    def outcome(self, exp: Experiment, result: Result) -> Result:
        """What to record for a job that ended: PRUNED when the rule stopped it, else its own result
        (a run that finished or crashed by itself before the kill landed keeps what it did)."""
        d = self.pending.pop(exp.id, None)
        if d is None:
            return result
        if result.state is ExperimentState.CANCELLED or result.failure is FailureKind.LOST:
            return pruned_result(result, d)
        self.say(f"{exp.id} ended by itself ({result.state.name.lower()}) before the prune took effect; "
                 "its own result stands")
        return result

    def _finished_runs(self, exps: Mapping[str, Experiment]) -> list[RunCurve]:
        for e in exps.values():
            if e.id in self._finished or e.state is not ExperimentState.DONE or not e.curve:
                continue
            v = e.value(self.objective.metric)
            if v is not None:
                self._finished[e.id] = RunCurve(e.params, e.hardware, tuple(e.curve), final=v, source=e.source)
        return list(self._finished.values())
