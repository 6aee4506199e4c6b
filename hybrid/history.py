"""What a campaign's history means, decided once and imported by everyone.

- ``classify``: how a finished job becomes a state, a :class:`FailureKind` and a reason. It is
  called once, where a finished job is recorded; every reader then uses ``Result.failure``.
- ``best``: the best experiment, judged on ``judged_hardware``: ``campaign.target_hardware`` when
  it has a success, otherwise the hardware label with the most successes (earliest first on a tie;
  on a single-hardware fleet, simply that hardware). The GP, the summary, the live view, findings,
  the strategy comparison and the proposers all judge "best" through these two functions.
- ``baseline``: the campaign's own first experiment from the target's defaults.
- ``is_prior`` / ``own`` / ``counted``: warm-start priors, this campaign's experiments, and those
  that count against the budget (a lost experiment that is re-run counts once).
- ``hypothesis_outcomes``: what became of each LLM hypothesis.
- ``throughput``: steps (or tokens) per second of a run, per hardware.
- ``fmt_value`` / ``fmt_params`` / ``changed_params`` / ``clip``: how values are shown to people and
  to the LLM (``0.01``, never ``0.010000000000000004``).
"""

from __future__ import annotations

import math
import re
import statistics
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from hybrid.space import CategoricalParam, SearchSpace
from hybrid.types import PRUNED_BOUND, Experiment, ExperimentState, FailureKind, JobState, Objective

__all__ = [
    "HypothesisOutcome", "baseline", "best", "best_on", "changed_params", "classify", "clip", "counted",
    "failure_of", "failure_regions", "fmt_params", "fmt_value", "hypothesis_outcomes", "improvement_pct", "is_oom",
    "is_prior", "judged_hardware", "judged_label", "own", "ranked", "running_best", "successes", "throughput", "throughput_by_hardware",
]

# ---- failures ---------------------------------------------------------------------------------
_OOM_IN_LOG = re.compile(
    r"out of memory|OutOfMemoryError|CUBLAS_STATUS_ALLOC_FAILED|std::bad_alloc|MemoryError|oom-kill",
    re.IGNORECASE,
)
_SIGKILL = (137, -9)  # what the kernel's OOM killer leaves behind


def classify(job: JobState, exit_code: int | None, log: str, metrics: Mapping[str, float], objective: Objective,
             *, timeout_s: float | None = None, backend_reason: str = "") -> tuple[ExperimentState, FailureKind | None, str]:
    """A finished job -> (state, failure kind, reason for people). DONE only with exit code 0 and a
    finite objective metric; the log is searched for out-of-memory messages once, here."""
    oom = bool(_OOM_IN_LOG.search(log))
    value = metrics.get(objective.metric)
    if job is JobState.CANCELLED:
        return ExperimentState.CANCELLED, FailureKind.CANCELLED, backend_reason or "cancelled"
    if job is JobState.TIMEOUT:
        limit = f" after {timeout_s:g}s" if timeout_s else ""
        return ExperimentState.TIMEOUT, FailureKind.TIMEOUT, f"timed out{limit}"
    if job is JobState.LOST:
        return ExperimentState.CRASHED, FailureKind.LOST, backend_reason or "orchestrator lost the job"
    if exit_code != 0:
        reason = f"exit code {exit_code}"
        if oom:
            return ExperimentState.CRASHED, FailureKind.OOM, reason + " (out of memory)"
        if exit_code in _SIGKILL:
            return ExperimentState.CRASHED, FailureKind.OOM, reason + " (killed: SIGKILL, possibly out of memory)"
        return ExperimentState.CRASHED, FailureKind.CRASH, reason
    if value is None:
        reason = f"no metric '{objective.metric}' printed"
        if oom:
            return ExperimentState.CRASHED, FailureKind.OOM, reason + " (out of memory)"
        return ExperimentState.CRASHED, FailureKind.NO_METRIC, reason
    if not math.isfinite(value):
        return ExperimentState.CRASHED, FailureKind.NO_METRIC, f"{objective.metric} is {value}"
    return ExperimentState.DONE, None, ""


def failure_of(e: Experiment) -> FailureKind | None:
    """The experiment's failure kind; None while running or when it succeeded."""
    return None if e.result is None else e.result.failure


def is_oom(e: Experiment) -> bool:
    return failure_of(e) is FailureKind.OOM


def failure_regions(space: SearchSpace, finished: Sequence[Experiment]) -> list[str]:
    """Parameter ranges where failures concentrate: a bin (a third of a numeric range, or one
    choice) whose failure rate is at least twice the overall rate, with 3 failures or more."""
    failed = [e.state.is_failure() for e in finished]
    n_failed = sum(failed)
    if not n_failed:
        return []
    threshold = min(1.0, 2 * n_failed / len(finished))
    kinds = [str(failure_of(e) or FailureKind.CRASH) if bad else "" for e, bad in zip(finished, failed, strict=True)]
    lines = []
    for p in space:
        if isinstance(p, CategoricalParam):
            labels = [f"{p.name}={c!r}" for c in p.choices]
            bins = [p.index(e.params[p.name]) for e in finished]
        else:
            edges = [p.decode(x) for x in (0.0, 1 / 3, 2 / 3, 1.0)]
            labels = [f"{p.name} in [{fmt_value(edges[j], 4)}, {fmt_value(edges[j + 1], 4)}]" for j in range(3)]
            bins = [min(int(p.encode(e.params[p.name]) * 3), 2) for e in finished]
        for j, label in enumerate(labels):
            inside = [i for i, b in enumerate(bins) if b == j]
            bad = [kinds[i] for i in inside if failed[i]]
            if len(bad) >= 3 and len(bad) / len(inside) >= threshold:
                counts = Counter(bad).most_common()
                lines.append(f"{label}: {len(bad)}/{len(inside)} failed (" + ", ".join(f"{k} {v}" for k, v in counts) + ")")
    return lines


# ---- which experiments ------------------------------------------------------------------------
def is_prior(e: Experiment) -> bool:
    """True for an earlier campaign's experiment loaded by a warm start."""
    return e.prior is not None


def own(exps: Sequence[Experiment]) -> list[Experiment]:
    """This campaign's own experiments (no warm-start priors)."""
    return [e for e in exps if e.prior is None]


def counted(exps: Sequence[Experiment]) -> list[Experiment]:
    """The experiments that count against the budget: a lost one that is re-run counts once."""
    return [e for e in exps if not e.requeued]


def successes(exps: Sequence[Experiment], objective: Objective) -> list[tuple[Experiment, float]]:
    """Successful experiments with their objective value, in the given order."""
    return [(e, v) for e in exps if (v := e.value(objective.metric)) is not None]


def pruned_bound(e: Experiment) -> float | None:
    """A pruned run's partial information: the pruning rule's optimistic bound on the final it would
    have reached (worse than the incumbent when it was pruned); None for any other experiment."""
    if e.result is None or e.result.state is not ExperimentState.PRUNED:
        return None
    v = e.result.metrics.get(PRUNED_BOUND)
    return float(v) if v is not None and math.isfinite(v) else None


def observed(e: Experiment, objective: Objective) -> float | None:
    """What a model may learn from an experiment: its value when it succeeded, the rule's bound when
    it was pruned (partial information: never a success, never a failure), else None."""
    v = e.value(objective.metric)
    return v if v is not None else pruned_bound(e)


# ---- best and baseline ------------------------------------------------------------------------
def judged_hardware(exps: Sequence[Experiment], objective: Objective, target_hardware: str | None = None,
                    ) -> str | None:
    """The hardware label "best" is judged on: ``target_hardware`` when it has a success, else the
    label with the most successes (the earliest such label on a tie). None: no success yet."""
    return judged_label([e.hardware for e, _ in successes(exps, objective)], target_hardware)


def judged_label(success_labels: Sequence[str], target_hardware: str | None = None) -> str | None:
    """``judged_hardware`` from the hardware labels of the successes, in order (what the GP has)."""
    counts = Counter(success_labels)
    if not counts:
        return None
    if target_hardware is not None and counts.get(target_hardware):
        return target_hardware
    return counts.most_common(1)[0][0]


def best_on(exps: Sequence[Experiment], objective: Objective, hardware: str | None) -> Experiment | None:
    """The best success on one hardware label (None: on every label); the earliest wins a tie."""
    top: tuple[Experiment, float] | None = None
    for e, v in successes(exps, objective):
        if hardware is not None and e.hardware != hardware:
            continue
        if top is None or objective.better(v, top[1]):
            top = (e, v)
    return None if top is None else top[0]


def best(exps: Sequence[Experiment], objective: Objective, target_hardware: str | None = None) -> Experiment | None:
    """THE best experiment: the best success on ``judged_hardware`` (see the module docstring)."""
    return best_on(exps, objective, judged_hardware(exps, objective, target_hardware))


def ranked(exps: Sequence[Experiment], objective: Objective, hardware: str | None = None) -> list[Experiment]:
    """Successes from best to worst (on one label, or every label when None); stable on ties."""
    rows = [(e, v) for e, v in successes(exps, objective) if hardware is None or e.hardware == hardware]
    rows.sort(key=lambda ev: objective.sign() * ev[1])
    return [e for e, _ in rows]


def running_best(values: Sequence[float | None], objective: Objective) -> list[float | None]:
    """The best value so far after each entry (None: a failure, or a run that does not count, which
    keeps the previous best): the best-so-far curves of findings, plots and the strategy comparison."""
    out: list[float | None] = []
    top: float | None = None
    for v in values:
        if v is not None and (top is None or objective.better(v, top)):
            top = v
        out.append(top)
    return out


def baseline(exps: Sequence[Experiment]) -> Experiment | None:
    """The campaign's baseline: its own first experiment from the target's defaults (a lost or
    interrupted one is not: its re-run is)."""
    return next((e for e in exps if e.source == "baseline" and e.prior is None and not e.requeued), None)


def improvement_pct(value: float | None, base: float | None, objective: Objective) -> float | None:
    """How much better ``value`` is than ``base``, in percent (positive: better)."""
    if value is None or base is None or base == 0:
        return None
    return (base - value) / abs(base) * 100 * objective.sign()


# ---- hypotheses -------------------------------------------------------------------------------
@dataclass(frozen=True)
class HypothesisOutcome:
    """What became of one LLM-proposed experiment's hypothesis."""

    experiment_id: str
    hypothesis: str  # the candidate's rationale: hypothesis and expected effect
    value: float | None  # the objective metric (None: failed or still running)
    outcome: str  # "new best" | "beat the baseline" | "no better than the baseline" | "failed: <reason>" | "running"
    improved: bool  # a new best, or better than the baseline
    detail: str = ""  # the comparison, e.g. "-0.0031 vs best before 0.9843"


def hypothesis_outcomes(exps: Sequence[Experiment], objective: Objective, source: str = "llm") -> list[HypothesisOutcome]:
    """For each experiment from ``source`` (in creation order), how its result compares with the
    best result among the experiments created before it, and with the baseline. O(n)."""
    base = baseline(exps)
    base_v = base.value(objective.metric) if base else None
    out: list[HypothesisOutcome] = []
    top: float | None = None
    for e in sorted(exps, key=lambda x: x.seq):
        v = e.value(objective.metric)
        if e.source == source:
            text = e.candidate.rationale
            if e.result is None:
                out.append(HypothesisOutcome(e.id, text, None, "running", False))
            elif v is None:
                reason = e.result.reason or e.state.name.lower()
                out.append(HypothesisOutcome(e.id, text, None, f"failed: {reason}", False))
            elif top is None or objective.better(v, top):
                detail = "" if top is None else f"{v - top:+.4g} vs best before {top:.6g}"
                out.append(HypothesisOutcome(e.id, text, v, "new best", True, detail))
            else:
                detail = f"{v - top:+.4g} vs best before {top:.6g}"
                if base_v is not None and objective.better(v, base_v):
                    out.append(HypothesisOutcome(e.id, text, v, "beat the baseline", True, detail))
                else:
                    out.append(HypothesisOutcome(e.id, text, v, "no better than the baseline", False, detail))
        if v is not None and (top is None or objective.better(v, top)):
            top = v
    return out


# ---- throughput -------------------------------------------------------------------------------
def _positive(x: Any) -> float | None:
    return float(x) if isinstance(x, int | float) and math.isfinite(x) and x > 0 else None


def throughput(metrics: Mapping[str, float]) -> tuple[float, str] | None:
    """A run's speed from what it printed: tok_per_sec, steps_per_s, else num_steps / training_seconds."""
    for key, unit in (("tok_per_sec", "tok/s"), ("steps_per_s", "steps/s")):
        if _positive(metrics.get(key)):
            return float(metrics[key]), unit
    steps, secs = _positive(metrics.get("num_steps")), _positive(metrics.get("training_seconds"))
    return (steps / secs, "steps/s") if steps and secs else None


def throughput_by_hardware(exps: Sequence[Experiment], objective: Objective) -> dict[str, tuple[float, str]]:
    """Median throughput of the successful runs of each hardware label (labels without one left out)."""
    rates: dict[str, list[tuple[float, str]]] = {}
    for e, _ in successes(exps, objective):
        t = throughput(e.result.metrics) if e.result else None
        if t is not None:
            rates.setdefault(e.hardware, []).append(t)
    return {hw: (float(statistics.median(v for v, _ in ts)), ts[0][1]) for hw, ts in rates.items()}


# ---- how values are shown ---------------------------------------------------------------------
def fmt_value(v: Any, digits: int = 6) -> str:
    """A parameter or metric value for people: floats with ``digits`` significant digits (0.01, not
    0.010000000000000004), booleans as true/false, the rest as str."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return f"{v:.{digits}g}"
    return str(v)


def same_value(a: Any, b: Any) -> bool:
    """Equal as a user would see them: floats within a relative 1e-9 (0.01 vs 0.010000000000000004)."""
    if isinstance(a, float | int) and isinstance(b, float | int) and not isinstance(a, bool) and not isinstance(b, bool):
        return math.isclose(float(a), float(b), rel_tol=1e-9, abs_tol=1e-12)
    return a == b


def changed_params(params: Mapping[str, Any], ref: Mapping[str, Any] | None) -> dict[str, Any]:
    """The parameters whose value differs from ``ref`` (all of them when ref is None)."""
    if ref is None:
        return dict(params)
    return {k: v for k, v in params.items() if k not in ref or not same_value(v, ref[k])}


def fmt_params(params: Mapping[str, Any], ref: Mapping[str, Any] | None = None, ref_name: str = "baseline",
               digits: int = 6) -> str:
    """``k=v`` for the parameters that differ from ``ref`` (all of them when ref is None)."""
    parts = [f"{k}={fmt_value(v, digits)}" for k, v in changed_params(params, ref).items()]
    return " ".join(parts) if parts else f"(same as the {ref_name})"


_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")


def clip(text: str, limit: int) -> str:
    """One line of at most ``limit`` characters: control characters and runs of whitespace become one space."""
    text = re.sub(r"\s+", " ", _CONTROL.sub(" ", text)).strip()
    return text if len(text) <= limit else text[: limit - 3] + "..."
