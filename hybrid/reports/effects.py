"""Statistics of a campaign's results: what each parameter, pair of parameters and hardware label explains.

Used by the findings report (:mod:`hybrid.reports.findings`). The functions take the search space, the
objective and the successful results as ``(experiment, value)`` rows (``interactions`` takes the
fitted ``Anova``) and return plain dataclasses; numpy/scipy least squares, no modelling library.

- Main effects (``main_effects``): an ANOVA. Successful results only; every numeric parameter as a
  centred linear + quadratic term of its ``[0, 1]`` search-space encoding (log scale where the
  parameter is log), categoricals one-hot against a reference level (treatment coding), the
  hardware label as a factor when there are several (so a hardware offset is not mistaken for a
  parameter effect). Importance = Type-II sum of squares (refit without the parameter's columns) /
  total SS.
- Interactions (``interactions``): one pair at a time added to the main-effects model (numeric x
  numeric: product of the centred encodings; numeric x categorical: one slope per level;
  categorical pairs: cell indicators); extra SS, F and p against the augmented model's residual.
- Too few results for the model (``correlations``): Spearman correlations (numeric) and
  Kruskal-Wallis (categorical).
- Hardware offsets (``paired_offsets``): metric(label) - metric(reference), averaged over the
  configurations run on both.
"""

from __future__ import annotations

import math
import warnings
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from hybrid.history import fmt_value
from hybrid.space import CategoricalParam, Param, SearchSpace
from hybrid.types import Experiment, Objective

__all__ = [
    "Anova", "Correlation", "Effect", "Interaction", "Term", "correlations", "interactions", "main_effects",
    "paired_offsets", "reference_level",
]


# ---- least squares ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Term:
    """One factor of the ANOVA: its design columns, centred."""

    name: str  # a parameter, or "hardware"
    kind: str  # "numeric" | "categorical" | "hardware"
    cols: np.ndarray  # (n, k)
    raw: np.ndarray  # (n, k') for interactions: the centred linear column, or the 0/1 level indicators
    u: np.ndarray | None = None  # numeric: (n,) encoded values
    quad_mean: float = 0.0  # numeric: mean of (u - mean u)^2, subtracted from the quadratic column
    levels: tuple[Any, ...] = ()  # categorical/hardware: the levels of the columns, in order
    reference: Any = None  # the level without a column


@dataclass(frozen=True)
class Fit:
    rss: float
    rank: int
    coef: np.ndarray


def _fit(X: np.ndarray, y: np.ndarray) -> Fit:
    coef, _, rank, _ = np.linalg.lstsq(X, y, rcond=None)
    resid = y - X @ coef
    return Fit(float(resid @ resid), int(rank), coef)


def _f_test(rss_small: float, rank_small: int, big: Fit, n: int) -> tuple[float, int, float, float]:
    """(extra SS, df, F, p) of the columns in ``big`` beyond the smaller model."""
    from scipy.stats import f as f_dist

    ss, df, df_res = max(rss_small - big.rss, 0.0), big.rank - rank_small, n - big.rank
    if df <= 0 or df_res <= 0:
        return ss, df, float("nan"), float("nan")
    if big.rss <= 1e-24 * max(rss_small, 1e-300):  # an exact fit: the term explains everything left
        return ss, df, float("inf"), 0.0
    F = (ss / df) / (big.rss / df_res)
    return ss, df, float(F), float(f_dist.sf(F, df, df_res))


def _centre(cols: np.ndarray) -> np.ndarray:
    return cols - cols.mean(axis=0, keepdims=True)


def reference_level(counts: Counter, preferred: Any) -> Any:
    if preferred is not None and counts.get(preferred):
        return preferred
    return sorted(counts.items(), key=lambda kv: (-kv[1], str(kv[0])))[0][0]


def _factor(name: str, kind: str, values: Sequence[Any], order: Sequence[Any], preferred: Any) -> Term | None:
    counts = Counter(values)
    if len(counts) < 2:
        return None
    ref = reference_level(counts, preferred)
    levels = tuple(v for v in order if v in counts and v != ref)
    cols = np.array([[1.0 if v == lvl else 0.0 for lvl in levels] for v in values])
    return Term(name, kind, _centre(cols), cols, levels=levels, reference=ref)


def _numeric(name: str, u: np.ndarray) -> Term | None:
    if np.ptp(u) < 1e-12:
        return None
    lin = u - u.mean()
    if len(np.unique(np.round(u, 12))) < 3:  # two values: a quadratic would duplicate the linear column
        return Term(name, "numeric", lin[:, None], lin[:, None], u=u)
    quad = lin**2
    return Term(name, "numeric", np.column_stack([lin, quad - quad.mean()]), lin[:, None], u=u,
                quad_mean=float(quad.mean()))


def build_terms(space: SearchSpace, rows: Sequence[tuple[Experiment, float]],
                hardware_ref: str | None) -> tuple[list[Term], Term | None, list[str]]:
    """(parameter terms, hardware term or None, names of parameters that never varied)."""
    terms: list[Term] = []
    constant: list[str] = []
    for p in space:
        values = [e.params[p.name] for e, _ in rows]
        if isinstance(p, CategoricalParam):
            term = _factor(p.name, "categorical", [p.validate(v) for v in values], p.choices, p.default)
        else:
            term = _numeric(p.name, np.array([p.encode(v) for v in values], dtype=float))
        if term is None:
            constant.append(p.name)
        else:
            terms.append(term)
    hw = [e.hardware for e, _ in rows]
    hw_term = _factor("hardware", "hardware", hw, sorted(set(hw)), hardware_ref)
    return terms, hw_term, constant


def design(terms: Sequence[Term], n: int, leave_out: str | None = None) -> np.ndarray:
    return np.column_stack([np.ones(n), *[t.cols for t in terms if t.name != leave_out]])


# ---- main effects ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Effect:
    name: str
    kind: str
    share: float  # Type-II SS / total SS
    ss: float
    df: int
    F: float
    p: float
    words: str  # the direction, for the user's objective
    better_when_higher: bool | None = None  # numeric and monotone over the observed range
    spread: float | None = None  # how far its fitted effect moves the metric: max - min over the observed
    # range (numeric) or across its levels (categorical, hardware); what findings compares with the noise


@dataclass
class Anova:
    n: int
    n_columns: int
    r2: float
    resid_sd: float
    terms: list[Term]
    hardware: Term | None
    effects: list[Effect]  # sorted by share, largest first
    hardware_effect: Effect | None
    hardware_offsets: dict[str, float]  # label -> metric offset vs hardware.reference
    constant: list[str]
    X: np.ndarray
    y: np.ndarray
    full: Fit


def _term_coef(terms: Sequence[Term], coef: np.ndarray) -> dict[str, np.ndarray]:
    out, i = {}, 1  # column 0 is the intercept
    for t in terms:
        out[t.name] = coef[i: i + t.cols.shape[1]]
        i += t.cols.shape[1]
    return out


def _numeric_curve(t: Term, b: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """The term's fitted contribution at encoded values ``grid``."""
    assert t.u is not None
    lin = grid - t.u.mean()
    return b[0] * lin + (b[1] * (lin**2 - t.quad_mean) if len(b) > 1 else 0.0)


def _numeric_words(p: Param, t: Term, b: np.ndarray, objective: Objective) -> tuple[str, bool | None]:
    assert t.u is not None
    m, s = objective.metric, objective.sign()
    grid = np.linspace(t.u.min(), t.u.max(), 101)
    curve = _numeric_curve(t, b, grid)
    lo, hi = fmt_value(p.decode(grid[0]), 4), fmt_value(p.decode(grid[-1]), 4)
    best = int(np.argmin(s * curve))
    if 5 <= best <= 95:  # an optimum inside the observed range
        ends = s * (curve[[0, -1]] - curve[best])
        return (f"best near {p.name}≈{fmt_value(p.decode(grid[best]), 4)} (the ends are worse by "
                f"{ends[0]:.3g} at {lo} and {ends[1]:.3g} at {hi} {m})"), None
    delta = float(curve[-1] - curve[0])
    higher_is_better = s * delta < 0
    word = ("lower" if delta < 0 else "higher") + f" {m} ({'better' if higher_is_better else 'worse'})"
    return f"higher {p.name} → {word}; {delta:+.3g} across {lo} to {hi}", higher_is_better


def _spread(t: Term, b: np.ndarray) -> float:
    """Max - min of the term's fitted contribution: over the observed range, or across the levels."""
    if t.kind == "numeric":
        assert t.u is not None
        curve = _numeric_curve(t, b, np.linspace(t.u.min(), t.u.max(), 101))
        return float(curve.max() - curve.min())
    levels = [0.0, *(float(x) for x in b)]  # the reference level at 0
    return max(levels) - min(levels)


def _level_words(t: Term, b: np.ndarray, objective: Objective, metric: str) -> str:
    offsets = {t.reference: 0.0, **{lvl: float(x) for lvl, x in zip(t.levels, b, strict=True)}}
    ranked = sorted(offsets.items(), key=lambda kv: (objective.sign() * kv[1], str(kv[0])))
    parts = ", ".join(f"{lvl}: {x:+.3g}" for lvl, x in ranked if lvl != t.reference)
    return f"best {ranked[0][0]}, worst {ranked[-1][0]} ({metric} vs {t.reference}: {parts})"


def main_effects(space: SearchSpace, objective: Objective, rows: Sequence[tuple[Experiment, float]],
                 hardware_ref: str | None) -> Anova | str:
    """The ANOVA of the successful results, or why it cannot be computed."""
    n = len(rows)
    y = np.array([v for _, v in rows], dtype=float)
    if n < 3:
        return f"too few successful results for an ANOVA (n={n})"
    ss_total = float(((y - y.mean()) ** 2).sum())
    if ss_total <= 1e-24 * max(1.0, float(np.abs(y).max()) ** 2):
        return f"{objective.metric} is the same ({y[0]:.6g}) in every successful result: nothing to attribute"
    terms, hw_term, constant = build_terms(space, rows, hardware_ref)
    all_terms = [*terms, *([hw_term] if hw_term else [])]
    X = design(all_terms, n)
    if not terms:
        return "no parameter varied among the successful results"
    if n <= X.shape[1] + 2:
        return f"too few results for an ANOVA (n={n}, need > {X.shape[1] + 2})"
    full = _fit(X, y)
    coefs = _term_coef(all_terms, full.coef)
    effects: list[Effect] = []
    for t in all_terms:
        reduced = _fit(design(all_terms, n, leave_out=t.name), y)
        ss, df, F, pv = _f_test(reduced.rss, reduced.rank, full, n)
        if t.kind == "numeric":
            words, higher = _numeric_words(space.params[t.name], t, coefs[t.name], objective)
        else:
            words, higher = _level_words(t, coefs[t.name], objective, objective.metric), None
        effects.append(Effect(t.name, t.kind, ss / ss_total, ss, df, F, pv, words, higher, _spread(t, coefs[t.name])))
    hw_effect = next((e for e in effects if e.kind == "hardware"), None)
    effects = sorted((e for e in effects if e.kind != "hardware"), key=lambda e: (-e.share, e.name))
    offsets = ({lvl: float(x) for lvl, x in zip(hw_term.levels, coefs["hardware"], strict=True)}
               if hw_term else {})
    df_res = n - full.rank
    return Anova(n, X.shape[1], 1 - full.rss / ss_total, math.sqrt(full.rss / df_res) if df_res > 0 else 0.0,
                 terms, hw_term, effects, hw_effect, offsets, constant, X, y, full)


@dataclass(frozen=True)
class Correlation:
    name: str
    stat: float  # Spearman rho (numeric) or Kruskal-Wallis H (categorical)
    p: float
    words: str


def correlations(space: SearchSpace, objective: Objective, rows: Sequence[tuple[Experiment, float]]) -> list[Correlation]:
    """Per-parameter rank statistics, strongest first: the fallback when the ANOVA has too few rows."""
    from scipy.stats import kruskal, spearmanr

    y = np.array([v for _, v in rows], dtype=float)
    out: list[Correlation] = []
    if len(rows) < 3 or np.ptp(y) == 0:
        return out
    m = objective.metric
    for p in space:
        values = [e.params[p.name] for e, _ in rows]
        if isinstance(p, CategoricalParam):
            groups = {c: y[[i for i, v in enumerate(values) if p.validate(v) == c]] for c in p.choices}
            groups = {c: g for c, g in groups.items() if len(g)}
            if len(groups) < 2 or all(len(g) < 2 for g in groups.values()):
                continue
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                h, pv = kruskal(*groups.values())
            means = sorted(groups.items(), key=lambda kv: (objective.sign() * kv[1].mean(), str(kv[0])))
            words = f"best {means[0][0]} (mean {means[0][1].mean():.6g}), worst {means[-1][0]} (mean {means[-1][1].mean():.6g})"
            out.append(Correlation(p.name, float(h), float(pv), words))
        else:
            u = np.array([p.encode(v) for v in values])
            if np.ptp(u) == 0:
                continue
            rho, pv = spearmanr(u, y)
            if not math.isfinite(rho):
                continue
            better = objective.sign() * rho < 0
            words = f"higher {p.name} ↔ {'lower' if rho < 0 else 'higher'} {m} ({'better' if better else 'worse'})"
            out.append(Correlation(p.name, float(rho), float(pv), words))
    return sorted(out, key=lambda c: (c.p if math.isfinite(c.p) else 1.0, c.name))


# ---- interactions ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Interaction:
    a: str
    b: str
    share: float  # extra SS / total SS
    df: int
    F: float
    p: float
    words: str


def _pair_columns(ta: Term, tb: Term) -> tuple[np.ndarray, list[tuple[Any, Any]]]:
    """The interaction columns of two terms (centred) and the levels each column stands for
    (None for a numeric term: slope x slope, or one slope per level)."""
    la = list(ta.levels) if ta.kind != "numeric" else [None]
    lb = list(tb.levels) if tb.kind != "numeric" else [None]
    cols, labels = [], []
    for i, x in enumerate(la):
        for j, z in enumerate(lb):
            col = ta.raw[:, i] * tb.raw[:, j]
            if np.ptp(col) > 1e-12:
                cols.append(col)
                labels.append((x, z))
    if not cols:
        return np.zeros((len(ta.raw), 0)), []
    return _centre(np.column_stack(cols)), labels


def _interaction_words(ta: Term, tb: Term, labels: list[tuple[Any, Any]], g: np.ndarray,
                       objective: Objective) -> str:
    s, m = objective.sign(), objective.metric
    good, bad = ("lower", "higher") if s > 0 else ("higher", "lower")
    if ta.kind == "numeric" and tb.kind == "numeric":
        if s * g[0] < 0:
            return f"the effect of higher {ta.name} is more favourable ({good} {m}) at higher {tb.name}, and vice versa"
        return f"the effect of higher {ta.name} is less favourable ({bad} {m}) at higher {tb.name}, and vice versa"
    if ta.kind == "numeric" or tb.kind == "numeric":
        num, cat = (ta, tb) if ta.kind == "numeric" else (tb, ta)
        slopes = {cat.reference: 0.0, **{(x if x is not None else z): float(c)
                                        for (x, z), c in zip(labels, g, strict=True)}}
        ranked = sorted(slopes.items(), key=lambda kv: (s * kv[1], str(kv[0])))
        return (f"higher {num.name} is most favourable with {cat.name}={ranked[0][0]} and least with "
                f"{cat.name}={ranked[-1][0]}")
    k = int(np.argmax(np.abs(g)))
    (x, z), c = labels[k], float(g[k])
    verdict = "better" if s * c < 0 else "worse"
    return f"{ta.name}={x} with {tb.name}={z}: {c:+.3g} {m} beyond the main effects ({verdict})"


def interactions(anova: Anova, objective: Objective) -> tuple[list[Interaction], int]:
    """Every pair of varied parameters tested; (pairs sorted by p-value, number tested)."""
    ss_total = float(((anova.y - anova.y.mean()) ** 2).sum())
    out: list[Interaction] = []
    tested = 0
    for i, ta in enumerate(anova.terms):
        for tb in anova.terms[i + 1:]:
            cols, labels = _pair_columns(ta, tb)
            if not labels or anova.n - anova.full.rank - cols.shape[1] < 1:
                continue
            big = _fit(np.column_stack([anova.X, cols]), anova.y)
            ss, df, F, pv = _f_test(anova.full.rss, anova.full.rank, big, anova.n)
            if df <= 0 or not math.isfinite(pv):
                continue
            tested += 1
            g = big.coef[anova.X.shape[1]:]
            out.append(Interaction(ta.name, tb.name, ss / ss_total, df, F, pv,
                                   _interaction_words(ta, tb, labels, g, objective)))
    return sorted(out, key=lambda x: (x.p, -x.share, x.a, x.b)), tested


# ---- hardware offsets ------------------------------------------------------------------------------
def paired_offsets(space: SearchSpace, rows: Sequence[tuple[Experiment, float]], ref: str) -> dict[str, tuple[float, int]]:
    """label -> (mean of metric(label) - metric(ref) over configs run on both, number of configs)."""
    cells: dict[tuple, dict[str, list[float]]] = {}
    for e, v in rows:
        cells.setdefault(space.key(e.params), {}).setdefault(e.hardware, []).append(v)
    diffs: dict[str, list[float]] = {}
    for by_hw in cells.values():
        if ref in by_hw:
            for hw, vals in by_hw.items():
                if hw != ref:
                    diffs.setdefault(hw, []).append(float(np.mean(vals) - np.mean(by_hw[ref])))
    return {hw: (float(np.mean(d)), len(d)) for hw, d in sorted(diffs.items())}
