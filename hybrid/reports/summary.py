"""The campaign's final summary: ``summary.txt``, ``summary.json``, the terminal's last lines and
the summary metrics (the MLflow parent run's).

The answer is the *recommendation* (:func:`hybrid.noise.recommend`): the configuration with the
best mean on the judged hardware among those confirmed by >= 2 runs there, shown as mean ± sd
(n runs), or the best estimate marked unconfirmed with why. The best single observation (the
luckiest run, biased low under noise) is shown separately, and the run-to-run noise per hardware
with its interval. Values are shown with :func:`hybrid.history.fmt_value`. When the recommended
configuration runs a code variant, its line names the variant and its diff (``variants/<id>.diff``,
which ``git apply`` takes in the target's tree).

``summary.json`` (:func:`write_summary`, written by every campaign and by ``hybrid report``) holds the
same, machine-readable, so that a pipeline can pick up the result: ``recommended`` {experiment_ids,
params, variant, hardware, metric, mean, sd, n, confirmed, note}, ``best_observed``, ``baseline``,
``noise`` per hardware {sd, interval_95, dof, n_configs, gp_sd}, ``spend_usd``, ``stop_reason``,
``pruning`` {pruned, used_s, saved_s, saved_usd} (the saved time is findings.md's estimate:
hybrid/reports/pruning.py).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hybrid import history, noise
from hybrid.noise import ConfigRuns, Noise, Recommendation
from hybrid.reports.pruning import pruning_report
from hybrid.types import Experiment, ExperimentState, Objective

__all__ = ["SUMMARY_JSON", "SUMMARY_TXT", "Summary", "summarize", "variant_diff_path", "write_summary"]

SUMMARY_TXT, SUMMARY_JSON = "summary.txt", "summary.json"


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
    best_variant: str | None = None  # the code variant the best experiment ran (None: the unchanged code)
    n_pruned: int = 0  # stopped early by the pruning rule: neither done nor failed
    recommendation: Recommendation | None = None  # the answer (None: no success)
    baseline_runs: ConfigRuns | None = None  # the baseline config's successful runs on its hardware
    noise: Mapping[str, Noise] = field(default_factory=dict)  # run-to-run noise per hardware label
    # the pruned runs' worker time: used, and saved (an estimate: a full run's median duration on
    # its hardware minus its own, floored at 0), the saved time in USD at each run's own rate
    pruned_used_s: float = 0.0
    pruned_saved_s: float = 0.0
    pruned_saved_usd: float = 0.0

    @property
    def n_finished(self) -> int:
        return self.n_done + self.n_failed + self.n_cancelled + self.n_pruned

    @property
    def improvement_pct(self) -> float | None:
        """The recommendation's mean against the baseline's (the best single run's without one)."""
        value = self.recommendation.mean if self.recommendation is not None else self.best_value
        return history.improvement_pct(value, self.baseline_value, self.objective)

    def as_metrics(self) -> dict[str, Any]:
        m = self.objective.metric
        out: dict[str, Any] = {"n_experiments": self.n_experiments, "n_done": self.n_done, "n_failed": self.n_failed,
                               "n_pruned": self.n_pruned, "n_finished": self.n_finished,
                               "spend_usd": self.spend_usd, "elapsed_s": self.elapsed_s}
        if self.proposer_usd:
            out["proposer_usd"] = self.proposer_usd
        if self.best_value is not None:
            out[f"best_{m}"] = self.best_value
            out["best_experiment"] = self.best_id
        if self.best_variant is not None:
            out["best_variant"] = self.best_variant
        if self.baseline_value is not None:
            out[f"baseline_{m}"] = self.baseline_value
        if self.improvement_pct is not None:
            out["improvement_pct"] = self.improvement_pct
        rec = self.recommendation
        if rec is not None:
            out[f"recommended_{m}"] = rec.mean
            out["recommended_n"] = rec.n
            out["recommended_confirmed"] = int(rec.confirmed)
            out["recommended_experiments"] = ",".join(rec.runs.ids)
            if rec.sd is not None:
                out[f"recommended_{m}_sd"] = rec.sd
        for hw, n in self.noise.items():
            if n.sd is not None:
                out[f"noise_sd_{hw}"] = n.sd
        if self.n_pruned:
            out["pruned_saved_s"], out["pruned_saved_usd"] = self.pruned_saved_s, self.pruned_saved_usd
        return out

    def as_json(self) -> dict[str, Any]:
        """summary.json (module docstring)."""
        obj = self.objective
        best = None if self.best_value is None else {
            "experiment_id": self.best_id, "value": self.best_value, "params": self.best_params,
            "variant": self.best_variant, "hardware": self.best_hardware}
        base = None
        if self.baseline_runs is not None:
            b = self.baseline_runs
            base = {"experiment_ids": list(b.ids), "params": b.params, "hardware": b.hardware, "mean": b.mean,
                    "sd": b.sd, "n": b.n}
        return {
            "campaign": self.name, "objective": {"metric": obj.metric, "direction": obj.direction},
            "stop_reason": self.stop_reason,
            "recommended": None if self.recommendation is None else self.recommendation.as_dict(obj),
            "best_observed": best, "baseline": base,
            "improvement_pct": self.improvement_pct,
            "noise": {hw: n.as_dict() for hw, n in self.noise.items()},
            "experiments": {"n": self.n_experiments, "done": self.n_done, "failed": self.n_failed,
                            "pruned": self.n_pruned, "cancelled": self.n_cancelled},
            "pruning": {"pruned": self.n_pruned, "used_s": self.pruned_used_s, "saved_s": self.pruned_saved_s,
                        "saved_usd": self.pruned_saved_usd},
            "spend_usd": self.spend_usd, "proposer_usd": self.proposer_usd, "elapsed_s": self.elapsed_s,
        }

    def text(self) -> str:
        m, fmt = self.objective.metric, history.fmt_value
        lines = [f"campaign {self.name}: stopped: {self.stop_reason}",
                 f"  experiments: {self.n_experiments} ({self.n_done} done, {self.n_failed} failed, "
                 + (f"{self.n_pruned} pruned, " if self.n_pruned else "")
                 + f"{self.n_cancelled} cancelled) in {self.elapsed_s / 60:.1f} min, spend ${self.spend_usd:.2f}"
                 + (f" (LLM ${self.proposer_usd:.2f})" if self.proposer_usd else "")]
        if self.n_pruned:
            lines.append(f"  pruning: {self.n_pruned} runs stopped early used {self.pruned_used_s / 3600:.2f} worker-h; "
                         f"saved about {self.pruned_saved_s / 3600:.2f} worker-h (${self.pruned_saved_usd:.2f}), "
                         f"an estimate: findings.md's Pruning section")
        rec = self.recommendation
        if rec is None or self.best_value is None:
            lines.append(f"  no successful experiment: no {m} to report")
            return "\n".join(lines)
        base = "" if self.baseline_value is None else f" vs baseline {fmt(self.baseline_value)}"
        imp = "" if self.improvement_pct is None else f", {self.improvement_pct:+.2f}%{base}"
        code = "" if rec.runs.variant is None else (f" with code variant {rec.runs.variant} "
                                                    f"({variant_diff_path(rec.runs.variant)})")
        gp = "" if rec.model_mean is None else f"; the GP's estimate {fmt(rec.model_mean)}"
        lines.append(f"  recommended: {m} {rec.estimate()} by {', '.join(rec.runs.ids)}{code} on {rec.hardware}{imp}{gp}")
        lines.append("  recommended config: " + history.fmt_params(rec.runs.params))
        if rec.note:
            lines.append(f"  {'unconfirmed: ' if not rec.confirmed else 'note: '}{rec.note}")
        same = self.best_id in rec.runs.ids
        code = "" if self.best_variant is None or same else (f" with code variant {self.best_variant} "
                                                             f"({variant_diff_path(self.best_variant)})")
        lines.append(f"  best single run: {m} {fmt(self.best_value)} by {self.best_id}{code} on {self.best_hardware}"
                     + (" (one of the recommended's runs)" if same else " (differs from the recommended in "
                        + history.fmt_params(self.best_params, rec.runs.params, "recommended") + ")"))
        measured = [f"{hw} {n.text()}" for hw, n in self.noise.items() if n.sd is not None]
        gp = [f"{hw} {fmt(n.gp_sd, 3)} (the GP's estimate)" for hw, n in self.noise.items()
              if n.sd is None and n.gp_sd is not None]
        lines.append("  noise sd: " + ("; ".join(measured + gp) if measured or gp
                                       else "not measured (no configuration succeeded twice)"))
        return "\n".join(lines)


def summarize(name: str, exps: Sequence[Experiment], objective: Objective, stop_reason: str, elapsed_s: float,
              target_hardware: str | None = None, proposer_usd: float = 0.0,
              gp_noise: Mapping[str, float] | None = None, estimates: Mapping[str, float] | None = None) -> Summary:
    """``gp_noise``: the GP's inferred noise sd per hardware label, when the campaign had one;
    ``estimates``: its posterior means per experiment (what the recommendation ranks by)."""
    best = history.best(exps, objective, target_hardware)
    base = history.baseline(exps)
    pruning = pruning_report(exps) if any(e.state is ExperimentState.PRUNED for e in exps) else None
    base_runs = None
    if base is not None and base.value(objective.metric) is not None:
        base_runs = next(c for c in noise.config_runs(exps, objective, base.hardware)
                         if noise.config_key(c.first) == noise.config_key(base))
    return Summary(
        name=name, objective=objective, stop_reason=stop_reason, n_experiments=len(exps),
        n_done=sum(1 for e in exps if e.state is ExperimentState.DONE),
        n_failed=sum(1 for e in exps if e.state.is_failure()),
        n_cancelled=sum(1 for e in exps if e.state is ExperimentState.CANCELLED),
        spend_usd=sum(e.result.cost_usd for e in exps if e.result) + proposer_usd, elapsed_s=elapsed_s,
        best_id=best.id if best else None, best_value=best.value(objective.metric) if best else None,
        best_params=dict(best.params) if best else {}, best_hardware=best.hardware if best else None,
        baseline_value=base_runs.mean if base_runs else None, proposer_usd=proposer_usd,
        best_variant=best.variant if best else None,
        n_pruned=sum(1 for e in exps if e.state is ExperimentState.PRUNED),
        recommendation=noise.recommend(exps, objective, target_hardware, estimates=estimates), baseline_runs=base_runs,
        noise=noise.noise_by_hardware(exps, objective, gp_noise),
        pruned_used_s=pruning.used_s if pruning else 0.0, pruned_saved_s=pruning.saved_s if pruning else 0.0,
        pruned_saved_usd=pruning.saved_usd if pruning else 0.0,
    )


def write_summary(campaign_dir: Path, summary: Summary) -> list[Path]:
    """Write summary.txt and summary.json into ``campaign_dir`` (each atomically); return both."""
    out = []
    for name, text in ((SUMMARY_TXT, summary.text() + "\n"),
                       (SUMMARY_JSON, json.dumps(summary.as_json(), indent=2, allow_nan=False) + "\n")):
        path = Path(campaign_dir) / name
        tmp = path.with_name(f".{name}.tmp")
        tmp.write_text(text)
        os.replace(tmp, path)
        out.append(path)
    return out


def variant_diff_path(variant_id: str) -> str:
    """Where a variant's diff is, relative to the campaign dir (the campaign and ``hybrid report`` write it)."""
    return f"variants/{variant_id}.diff"
