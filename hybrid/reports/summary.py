"""The campaign's final summary: ``summary.txt``, the terminal's last lines and the summary metrics.

"Best" and the baseline are :mod:`hybrid.history`'s (best on the judged hardware); values are
shown with :func:`hybrid.history.fmt_value` (``lr=0.01``, not ``lr=0.010000000000000004``). When
the best experiment ran a code variant, its best line names the variant and the file of its diff
(``variants/<id>.diff``, which ``git apply`` takes in the target's tree).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from hybrid import history
from hybrid.types import Experiment, ExperimentState, Objective

__all__ = ["Summary", "summarize", "variant_diff_path"]


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

    @property
    def n_finished(self) -> int:
        return self.n_done + self.n_failed + self.n_cancelled + self.n_pruned

    @property
    def improvement_pct(self) -> float | None:
        return history.improvement_pct(self.best_value, self.baseline_value, self.objective)

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
        return out

    def text(self) -> str:
        m = self.objective.metric
        lines = [f"campaign {self.name}: stopped: {self.stop_reason}",
                 f"  experiments: {self.n_experiments} ({self.n_done} done, {self.n_failed} failed, "
                 + (f"{self.n_pruned} pruned, " if self.n_pruned else "")
                 + f"{self.n_cancelled} cancelled) in {self.elapsed_s / 60:.1f} min, spend ${self.spend_usd:.2f}"
                 + (f" (LLM ${self.proposer_usd:.2f})" if self.proposer_usd else "")]
        if self.best_value is None:
            lines.append(f"  no successful experiment: no {m} to report")
        else:
            base = "" if self.baseline_value is None else f", baseline {history.fmt_value(self.baseline_value)}"
            imp = "" if self.improvement_pct is None else f" ({self.improvement_pct:+.2f}% vs baseline)"
            code = "" if self.best_variant is None else (f" with code variant {self.best_variant} "
                                                         f"({variant_diff_path(self.best_variant)})")
            lines.append(f"  best {m} {history.fmt_value(self.best_value)}{imp} by {self.best_id}{code} on "
                         f"{self.best_hardware}{base}")
            lines.append("  best config: " + history.fmt_params(self.best_params))
        return "\n".join(lines)


def summarize(name: str, exps: Sequence[Experiment], objective: Objective, stop_reason: str, elapsed_s: float,
              target_hardware: str | None = None, proposer_usd: float = 0.0) -> Summary:
    best = history.best(exps, objective, target_hardware)
    base = history.baseline(exps)
    return Summary(
        name=name, objective=objective, stop_reason=stop_reason, n_experiments=len(exps),
        n_done=sum(1 for e in exps if e.state is ExperimentState.DONE),
        n_failed=sum(1 for e in exps if e.state.is_failure()),
        n_cancelled=sum(1 for e in exps if e.state is ExperimentState.CANCELLED),
        spend_usd=sum(e.result.cost_usd for e in exps if e.result) + proposer_usd, elapsed_s=elapsed_s,
        best_id=best.id if best else None, best_value=best.value(objective.metric) if best else None,
        best_params=dict(best.params) if best else {}, best_hardware=best.hardware if best else None,
        baseline_value=base.value(objective.metric) if base else None, proposer_usd=proposer_usd,
        best_variant=best.variant if best else None,
        n_pruned=sum(1 for e in exps if e.state is ExperimentState.PRUNED),
    )


def variant_diff_path(variant_id: str) -> str:
    """Where a variant's diff is, relative to the campaign dir (the campaign and ``hybrid report`` write it)."""
    return f"variants/{variant_id}.diff"
