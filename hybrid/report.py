"""Campaign outputs for people: results.tsv and the final summary."""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hybrid.types import Experiment, ExperimentState, Objective

RESULTS_COLUMNS = ("experiment_id", "wave", "status", "metric", "memory_gb", "hardware", "cost_usd", "source",
                   "params", "description")


def best_experiment(exps: Sequence[Experiment], objective: Objective, hardware: str | None = None) -> Experiment | None:
    best: Experiment | None = None
    for e in exps:
        v = e.value(objective.metric)
        if v is None or (hardware is not None and e.hardware != hardware):
            continue
        if best is None or objective.better(v, best.value(objective.metric)):  # type: ignore[arg-type]
            best = e
    return best


def baseline_experiment(exps: Sequence[Experiment]) -> Experiment | None:
    return next((e for e in exps if e.source == "baseline"), None)


def write_results_tsv(path: Path, exps: Sequence[Experiment], objective: Objective) -> None:
    """One row per experiment, written atomically (tmp + rename) so readers never see half a file."""
    tmp = path.with_suffix(".tsv.tmp")
    with open(tmp, "w", newline="") as f:
        w = csv.writer(f, delimiter="\t", lineterminator="\n")
        w.writerow(RESULTS_COLUMNS)
        for e in exps:
            r = e.result
            value = r.metrics.get(objective.metric) if r else None
            vram = r.metrics.get("peak_vram_mb") if r else None
            desc = e.candidate.rationale
            if r is not None and r.reason:
                desc = f"{r.reason}; {desc}" if desc else r.reason
            w.writerow([
                e.id, e.wave, e.state.name.lower(),
                "" if value is None else f"{value:.6f}",
                "" if vram is None else f"{vram / 1024:.1f}",
                e.hardware,
                "" if r is None else f"{r.cost_usd:.4f}",
                e.source,
                json.dumps(dict(e.params), sort_keys=True),
                desc.replace("\t", " ").replace("\n", " "),
            ])
    os.replace(tmp, path)


@dataclass(frozen=True)
class Summary:
    name: str
    objective: Objective
    stop_reason: str
    n_experiments: int
    n_done: int
    n_failed: int
    n_cancelled: int
    spend_usd: float
    elapsed_s: float
    best_id: str | None
    best_value: float | None
    best_params: dict[str, Any]
    best_hardware: str | None
    baseline_value: float | None
    proposer_usd: float = 0.0  # the proposers' own spend (LLM tokens), included in spend_usd

    @property
    def improvement_pct(self) -> float | None:
        if self.best_value is None or self.baseline_value in (None, 0):
            return None
        return (self.baseline_value - self.best_value) / abs(self.baseline_value) * 100 * self.objective.sign()  # type: ignore[operator]

    def as_metrics(self) -> dict[str, Any]:
        m = self.objective.metric
        out: dict[str, Any] = {"n_experiments": self.n_experiments, "n_done": self.n_done, "n_failed": self.n_failed,
                               "n_finished": self.n_done + self.n_failed + self.n_cancelled,
                               "spend_usd": self.spend_usd, "elapsed_s": self.elapsed_s}
        if self.proposer_usd:
            out["proposer_usd"] = self.proposer_usd
        if self.best_value is not None:
            out[f"best_{m}"] = self.best_value
            out["best_experiment"] = self.best_id
        if self.baseline_value is not None:
            out[f"baseline_{m}"] = self.baseline_value
        if self.improvement_pct is not None:
            out["improvement_pct"] = self.improvement_pct
        return out

    def text(self) -> str:
        m = self.objective.metric
        lines = [f"campaign {self.name}: stopped: {self.stop_reason}",
                 f"  experiments: {self.n_experiments} ({self.n_done} done, {self.n_failed} failed, "
                 f"{self.n_cancelled} cancelled) in {self.elapsed_s / 60:.1f} min, spend ${self.spend_usd:.2f}"
                 + (f" (LLM ${self.proposer_usd:.2f})" if self.proposer_usd else "")]
        if self.best_value is None:
            lines.append(f"  no successful experiment: no {m} to report")
        else:
            base = "" if self.baseline_value is None else f", baseline {self.baseline_value:.6g}"
            imp = "" if self.improvement_pct is None else f" ({self.improvement_pct:+.2f}% vs baseline)"
            lines.append(f"  best {m} {self.best_value:.6g}{imp} by {self.best_id} on {self.best_hardware}{base}")
            lines.append("  best config: " + " ".join(f"{k}={v}" for k, v in self.best_params.items()))
        return "\n".join(lines)


def summarize(name: str, exps: Sequence[Experiment], objective: Objective, stop_reason: str, elapsed_s: float,
              target_hardware: str | None = None, proposer_usd: float = 0.0) -> Summary:
    best = best_experiment(exps, objective, target_hardware) or best_experiment(exps, objective)
    base = baseline_experiment(exps)
    n_failed = sum(1 for e in exps if e.state.is_failure())
    return Summary(
        name=name, objective=objective, stop_reason=stop_reason, n_experiments=len(exps),
        n_done=sum(1 for e in exps if e.state is ExperimentState.DONE), n_failed=n_failed,
        n_cancelled=sum(1 for e in exps if e.state is ExperimentState.CANCELLED),
        spend_usd=sum(e.result.cost_usd for e in exps if e.result) + proposer_usd, elapsed_s=elapsed_s,
        best_id=best.id if best else None, best_value=best.value(objective.metric) if best else None,
        best_params=dict(best.params) if best else {}, best_hardware=best.hardware if best else None,
        baseline_value=base.value(objective.metric) if base else None, proposer_usd=proposer_usd,
    )


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
    base = baseline_experiment(exps)
    base_v = base.value(objective.metric) if base else None
    out: list[HypothesisOutcome] = []
    best: float | None = None
    for e in sorted(exps, key=lambda x: x.seq):
        v = e.value(objective.metric)
        if e.source == source:
            if e.result is None:
                out.append(HypothesisOutcome(e.id, e.candidate.rationale, None, "running", False))
            elif v is None:
                reason = e.result.reason or e.state.name.lower()
                out.append(HypothesisOutcome(e.id, e.candidate.rationale, None, f"failed: {reason}", False))
            elif best is None or objective.better(v, best):
                detail = "" if best is None else f"{v - best:+.4g} vs best before {best:.6g}"
                out.append(HypothesisOutcome(e.id, e.candidate.rationale, v, "new best", True, detail))
            else:
                detail = f"{v - best:+.4g} vs best before {best:.6g}"
                if base_v is not None and objective.better(v, base_v):
                    out.append(HypothesisOutcome(e.id, e.candidate.rationale, v, "beat the baseline", True, detail))
                else:
                    out.append(HypothesisOutcome(e.id, e.candidate.rationale, v, "no better than the baseline",
                                                 False, detail))
        if v is not None and (best is None or objective.better(v, best)):
            best = v
    return out


def write_hypotheses_md(path: Path, exps: Sequence[Experiment], objective: Objective) -> bool:
    """``hypotheses.md``: every LLM hypothesis with what its experiment showed. False (nothing
    written) when the campaign had no LLM-proposed experiment."""
    rows = [o for o in hypothesis_outcomes(exps, objective) if o.outcome != "running"]
    if not rows:
        return False
    held = sum(o.improved for o in rows)
    lines = [f"# LLM hypotheses and what the experiments showed ({objective.metric}, {objective.direction})", "",
             f"{held} of {len(rows)} finished LLM experiments improved on the best result before them or on "
             "the baseline.", "",
             f"| experiment | {objective.metric} | outcome | hypothesis |", "|---|---|---|---|"]
    for o in rows:
        value = "" if o.value is None else f"{o.value:.6f}"
        outcome = f"{o.outcome} ({o.detail})" if o.detail else o.outcome
        text = o.hypothesis.replace("|", "\\|").replace("\n", " ")
        lines.append(f"| {o.experiment_id} | {value} | {outcome.replace('|', '/')} | {text} |")
    tmp = path.with_suffix(".md.tmp")
    tmp.write_text("\n".join(lines) + "\n")
    os.replace(tmp, path)
    return True
