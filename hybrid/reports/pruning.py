"""Learning-curve pruning as findings.md reports it: what was stopped early, why, and what it saved.

A pruned experiment (``ExperimentState.PRUNED``) is neither a success nor a failure: its result
carries the rule's reason ("pruned at 45% of its budget: ..."), the real duration and cost of its
partial run, whatever final-looking metrics its log printed and :data:`~hybrid.types.PRUNED_BOUND`
(the rule's optimistic bound on the final it would have reached); ``Experiment.curve`` is its
partial learning curve (filled by :func:`hybrid.reports.reader.read_campaign`).

``pruning_report`` gathers what the Pruning section says (:func:`hybrid.reports.render_run.section_pruning`
writes it): how many runs were pruned, per hardware; the time they used; the time they saved, an
estimate (per pruned run: the median duration of the DONE runs on its hardware minus its own,
floored at 0: what a full run there usually takes, less what it took); and any pruned configuration
that later ran in full (same params, same code variant), with what that run got. ``curve_series``
gives the learning-curve plot (``plots/curves.png``) its data.

The signal shown is ``train_loss`` when any run reports it, else the first value name the runs
report (in creation order). Never raises on odd curves: values that are not finite numbers are
left out.
"""

from __future__ import annotations

import math
import re
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from hybrid.history import counted, own, same_value
from hybrid.reports.plots import CurveSeries
from hybrid.reports.reader import finite_number
from hybrid.types import PRUNED_BOUND, Experiment, ExperimentState, Objective

__all__ = ["PrunedRun", "PruningReport", "curve_series", "curve_signal", "pruning_report"]

SIGNAL = "train_loss"  # the signal shown when the target reports it (the GPT and example targets do)
_PREFIX = re.compile(r"^\s*pruned at (?P<pct>\d+(?:\.\d+)?)% of its budget:\s*")


def _values(point: Any) -> Mapping[str, Any]:
    values = getattr(point, "values", None)
    return values if isinstance(values, Mapping) else {}


def curve_signal(exps: Sequence[Experiment]) -> str | None:
    """``train_loss`` when a run's curve reports it, else the first value name reported; None: no curve."""
    first = None
    for e in exps:
        for p in e.curve:
            for name in _values(p):
                if name == SIGNAL:
                    return SIGNAL
                first = first or str(name)
    return first


def signal_points(e: Experiment, signal: str) -> list[tuple[float, float]]:
    """The run's (fraction, value) points of ``signal`` that are finite numbers, in stored order."""
    out = []
    for p in e.curve:
        f, v = finite_number(getattr(p, "fraction", None)), finite_number(_values(p).get(signal))
        if f is not None and v is not None:
            out.append((f, v))
    return out


@dataclass(frozen=True)
class PrunedRun:
    exp: Experiment
    fraction: float | None  # where it was stopped: its curve's last point (else the reason's %)
    last_value: float | None  # its last value of the signal
    reason: str  # the rule's reason, without the "pruned at N% of its budget:" prefix
    saved_s: float | None  # the estimate; None: no DONE run on its hardware to compare with
    full_run: Experiment | None  # a later DONE run of the same params and code variant

    @property
    def bound(self) -> float | None:
        """The rule's optimistic bound on the final it would have reached."""
        return finite_number((self.exp.result.metrics if self.exp.result else {}).get(PRUNED_BOUND))


@dataclass(frozen=True)
class PruningReport:
    signal: str | None  # None: no run reported a learning curve
    finished: list[Experiment]  # this campaign's finished runs (a lost one re-run counts once)
    with_curves: int  # of them, those with a curve
    pruned: list[PrunedRun]  # in creation order

    @property
    def used_s(self) -> float:
        return sum(p.exp.result.duration_s for p in self.pruned if p.exp.result is not None)

    @property
    def used_usd(self) -> float:
        return sum(p.exp.result.cost_usd for p in self.pruned if p.exp.result is not None)

    @property
    def saved_s(self) -> float:
        return sum(p.saved_s for p in self.pruned if p.saved_s is not None)

    @property
    def saved_usd(self) -> float:
        """The saved time at each pruned run's own rate ($ of its partial run per second of it)."""
        out = 0.0
        for p in self.pruned:
            r = p.exp.result
            if p.saved_s is not None and r is not None and r.duration_s > 0:
                out += p.saved_s * r.cost_usd / r.duration_s
        return out

    def by_hardware(self) -> dict[str, tuple[int, int]]:
        """hardware -> (pruned, finished), sorted by label."""
        out: dict[str, tuple[int, int]] = {}
        for e in sorted(self.finished, key=lambda e: e.hardware):
            n, m = out.get(e.hardware, (0, 0))
            out[e.hardware] = (n + (e.state is ExperimentState.PRUNED), m + 1)
        return out


def _fraction(e: Experiment, reason: str) -> float | None:
    fractions = [f for p in e.curve if (f := finite_number(getattr(p, "fraction", None))) is not None]
    if fractions:
        return max(fractions)
    m = _PREFIX.match(reason)
    return float(m["pct"]) / 100 if m else None


def _same_config(a: Experiment, b: Experiment) -> bool:
    return (a.variant == b.variant and set(a.params) == set(b.params)
            and all(same_value(v, b.params[k]) for k, v in a.params.items()))


def _median_done_s(finished: Sequence[Experiment]) -> dict[str, float]:
    """hardware -> the median duration of its DONE runs."""
    by: dict[str, list[float]] = {}
    for e in finished:
        if e.state is ExperimentState.DONE and e.result is not None and math.isfinite(e.result.duration_s) \
                and e.result.duration_s > 0:
            by.setdefault(e.hardware, []).append(e.result.duration_s)
    return {hw: float(statistics.median(d)) for hw, d in by.items()}


def pruning_report(exps: Sequence[Experiment]) -> PruningReport:
    """What the Pruning section says about these experiments (the campaign's, in creation order)."""
    finished = [e for e in counted(own(exps)) if e.result is not None]
    signal = curve_signal(finished)
    typical = _median_done_s(finished)
    pruned = []
    for e in finished:
        if e.state is not ExperimentState.PRUNED or e.result is None:
            continue
        reason = e.result.reason or ""
        points = signal_points(e, signal) if signal else []
        median = typical.get(e.hardware)
        full = next((o for o in finished if o.seq > e.seq and o.state is ExperimentState.DONE
                     and _same_config(e, o)), None)
        pruned.append(PrunedRun(e, _fraction(e, reason), points[-1][1] if points else None,
                                _PREFIX.sub("", reason).strip() or "(no reason recorded)",
                                None if median is None else max(0.0, median - e.result.duration_s), full))
    return PruningReport(signal, finished, sum(bool(e.curve) for e in finished), pruned)


def curve_series(exps: Sequence[Experiment], best: Experiment | None) -> tuple[str | None, list[CurveSeries]]:
    """The learning-curve plot's data: (the signal, a series per DONE or PRUNED run with a curve;
    ``best``'s marked). The signal is None when no run reported a curve."""
    mine = own(exps)
    signal = curve_signal(mine)
    if signal is None:
        return None, []
    out = []
    for e in mine:
        if e.state is ExperimentState.PRUNED:
            kind = "pruned"
        elif e.state is ExperimentState.DONE:
            kind = "best" if best is not None and e.id == best.id else "finished"
        else:
            continue
        points = signal_points(e, signal)
        if points:
            out.append(CurveSeries(e.id, points, kind))
    return signal, out


def full_run_words(p: PrunedRun, best: Experiment | None, objective: Objective) -> str:
    """What became of a pruned configuration that ran in full: it won, or what it got."""
    full, m = p.full_run, objective.metric
    assert full is not None
    value = full.value(m)
    got = "no value" if value is None else f"{value:.6g}"
    where = f" on {full.hardware}" if full.hardware != p.exp.hardware else ""
    head = f"{p.exp.id}'s configuration ran in full as {full.id}{where}"
    if best is not None and full.id == best.id:
        return (f"{head}: it won, the campaign's best {m} {got}; the prune had stopped the winning "
                "configuration (the full run found it anyway).")
    bound = ""
    if p.bound is not None:
        at_least = "≥" if objective.direction == "minimize" else "≤"
        held = value is None or not objective.better(value, p.bound)
        bound = (f"; the rule's bound for it was {m} {at_least} {p.bound:.4g}, which "
                 + ("held" if held else "did not hold (it ended better)"))
    beat = f"; the best is {best.value(m):.6g} by {best.id}" if best is not None and best.value(m) is not None else ""
    return f"{head}: it got {m} {got}, not the best{bound}{beat}."
