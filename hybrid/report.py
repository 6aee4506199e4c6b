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
                 f"{self.n_cancelled} cancelled) in {self.elapsed_s / 60:.1f} min, spend ${self.spend_usd:.2f}"]
        if self.best_value is None:
            lines.append(f"  no successful experiment: no {m} to report")
        else:
            base = "" if self.baseline_value is None else f", baseline {self.baseline_value:.6g}"
            imp = "" if self.improvement_pct is None else f" ({self.improvement_pct:+.2f}% vs baseline)"
            lines.append(f"  best {m} {self.best_value:.6g}{imp} by {self.best_id} on {self.best_hardware}{base}")
            lines.append("  best config: " + " ".join(f"{k}={v}" for k, v in self.best_params.items()))
        return "\n".join(lines)


def summarize(name: str, exps: Sequence[Experiment], objective: Objective, stop_reason: str, elapsed_s: float,
              target_hardware: str | None = None) -> Summary:
    best = best_experiment(exps, objective, target_hardware) or best_experiment(exps, objective)
    base = baseline_experiment(exps)
    n_failed = sum(1 for e in exps if e.state.is_failure())
    return Summary(
        name=name, objective=objective, stop_reason=stop_reason, n_experiments=len(exps),
        n_done=sum(1 for e in exps if e.state is ExperimentState.DONE), n_failed=n_failed,
        n_cancelled=sum(1 for e in exps if e.state is ExperimentState.CANCELLED),
        spend_usd=sum(e.result.cost_usd for e in exps if e.result), elapsed_s=elapsed_s,
        best_id=best.id if best else None, best_value=best.value(objective.metric) if best else None,
        best_params=dict(best.params) if best else {}, best_hardware=best.hardware if best else None,
        baseline_value=base.value(objective.metric) if base else None,
    )
