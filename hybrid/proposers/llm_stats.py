"""The statistics the LLM proposer's prompt shows beside the results (hybrid.proposers.llm_context):
per-parameter effect estimates, a ridge regression of the metric on the encoded parameters and the
hardware label over the successful results (the most recent ``MAX_FIT_ROWS``), and per-hardware
counts, medians, offsets against the reference hardware and throughput."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from hybrid.history import fmt_value, throughput
from hybrid.space import CategoricalParam, SearchSpace
from hybrid.types import Experiment, Objective

__all__ = ["MAX_FIT_ROWS", "effect_lines", "hardware_lines"]

MAX_FIT_ROWS = 5000  # the effect regression uses the most recent successful results, at most this many


def _v(v: Any) -> str:
    return fmt_value(v, 4)


def _features(space: SearchSpace, params: Mapping[str, Any]) -> list[float]:
    row: list[float] = []
    for p in space:
        if isinstance(p, CategoricalParam):
            v = params.get(p.name)
            row.extend(1.0 if (c == v) else 0.0 for c in p.choices if c != p.default)
        else:
            row.append(p.encode(params[p.name]))
    return row


def effect_lines(space: SearchSpace, objective: Objective, done: Sequence[tuple[Experiment, float]],
                 hardware_ref: str | None) -> tuple[list[str], dict[str, float]]:
    """Per-parameter effect estimates and per-hardware metric offsets (vs ``hardware_ref``)."""
    m = objective.metric
    rows = list(done)[-MAX_FIT_ROWS:]
    hws = sorted({e.hardware for e, _ in rows if e.hardware != hardware_ref})
    n_feat = sum(len(p.choices) - 1 if isinstance(p, CategoricalParam) else 1 for p in space) + len(hws)
    if len(rows) < n_feat + 3:
        return [f"(too few successful results ({len(rows)}) for effect estimates; they start at {n_feat + 3})"], {}
    X = np.array([_features(space, e.params) + [1.0 if e.hardware == h else 0.0 for h in hws] for e, _ in rows])
    y = np.array([v for _, v in rows])
    Xc = X - X.mean(axis=0)
    lam = 1e-3 * len(rows)
    try:
        coef = np.linalg.solve(Xc.T @ Xc + lam * np.eye(Xc.shape[1]), Xc.T @ (y - y.mean()))
    except np.linalg.LinAlgError:
        return ["(effect regression failed: degenerate results)"], {}
    resid = y - y.mean() - Xc @ coef
    noise = float(np.sqrt(np.mean(resid**2))) if len(rows) > 1 else 0.0
    order = np.argsort(objective.sign() * y)
    top = [rows[i][0] for i in order[: max(3, len(rows) // 10)]]
    lines = [f"(ridge regression of {m} on the parameters over {len(rows)} successful results; "
             f"residual sd {noise:.3g}. Linear: an optimum inside a range shows in the top-10% range, not the slope)"]
    i = 0
    for p in space:
        if isinstance(p, CategoricalParam):
            k = len(p.choices) - 1
            effs = {c: coef[i + j] for j, c in enumerate(c for c in p.choices if c != p.default)}
            i += k
            common = Counter(e.params[p.name] for e in top).most_common(1)[0][0]
            parts = ", ".join(f"{c}: {v:+.3g}" for c, v in effs.items())
            lines.append(f"{p.name}: vs {p.default!r}: {parts}; most common in top 10%: {common!r}")
        else:
            vals = [e.params[p.name] for e in top]
            lines.append(f"{p.name}: low->high end of range: {coef[i]:+.3g} {m}; top-10% range "
                         f"[{_v(min(vals))}, {_v(max(vals))}]")
            i += 1
    offsets = {h: float(coef[i + j]) for j, h in enumerate(hws)}
    return lines, offsets


def hardware_lines(objective: Objective, finished: Sequence[Experiment], offsets: Mapping[str, float],
                   hardware_ref: str | None) -> list[str]:
    by: dict[str, list[Experiment]] = {}
    for e in finished:
        by.setdefault(e.hardware, []).append(e)
    lines = []
    for hw, exps in sorted(by.items(), key=lambda kv: -len(kv[1])):
        ok = [e.value(objective.metric) for e in exps if e.value(objective.metric) is not None]
        rates = [t[0] for e in exps if e.result and (t := throughput(e.result.metrics)) and t[1] == "steps/s"]
        parts = [f"{len(ok)} done, {len(exps) - len(ok)} failed"]
        if ok:
            parts.append(f"median {objective.metric} {float(np.median(ok)):.6g}")
        if hw == hardware_ref:
            parts.append("reference for offsets")
        elif hw in offsets:
            parts.append(f"offset vs {hardware_ref} {offsets[hw]:+.3g} (same config)")
        if rates:
            parts.append(f"median {float(np.median(rates)):.3g} steps/s")
        lines.append(f"{hw}: " + ", ".join(parts))
    return lines
