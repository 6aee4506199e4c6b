"""What a campaign learned, for the researcher who reads it in the morning: ``findings.md`` + ``plots/``.

``write_reports(campaign_dir)`` reads the campaign's own ``state.sqlite`` (its stored config gives
the space, the objective and the target hardware) and writes, in order: the best config vs the
baseline, progress, main effects, interactions, GP response slices, hardware, proposer sources,
failures, spend and the LLM's hypotheses. ``hybrid report campaign.name=NAME`` regenerates them
(``report_command``). Output is deterministic: no timestamps, sorted iteration, a seeded
single-thread GP, PNGs without metadata; writing twice gives byte-identical files.

Statistics (numpy/scipy least squares, no modelling library):
- Main effects: an ANOVA. Successful results only; every numeric parameter as a centred linear +
  quadratic term of its ``[0, 1]`` search-space encoding (log scale where the parameter is log),
  categoricals one-hot against a reference level (treatment coding), the hardware label as a
  factor when there are several (so a hardware offset is not mistaken for a parameter effect).
  Importance = Type-II sum of squares (refit without the parameter's columns) / total SS.
- Interactions: one pair at a time added to the main-effects model (numeric x numeric: product
  of the centred encodings; numeric x categorical: one slope per level; categorical pairs: cell
  indicators); extra SS, F and p against the augmented model's residual.
- Too few results for the model: Spearman correlations (numeric) and Kruskal-Wallis (categorical).

A report never raises on the campaign's data: a section that cannot be computed says why.
"""

from __future__ import annotations

import json
import math
import os
import re
import warnings
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property, partial
from pathlib import Path
from typing import Any, Literal

import numpy as np

from hybrid.errors import ConfigError, HybridError, InvalidCandidateError
from hybrid.plots import Bar, HardwareSeries, ProgressPoint, Slice
from hybrid.proposers.llm_context import clip, failure_kind, failure_region_lines, fmt_value
from hybrid.report import baseline_experiment, best_experiment, hypothesis_outcomes
from hybrid.space import CategoricalParam, FloatParam, IntParam, Param, SearchSpace
from hybrid.store import Store
from hybrid.types import Experiment, ExperimentState, Objective

__all__ = ["CampaignData", "load_campaign", "report_command", "write_reports"]

PLOTS_DIR = "plots"
_TOP_INTERACTIONS = 5
_SLICE_PARAMS = 3
_GP_FIT_POINTS, _GP_MAX_POINTS = 200, 400  # the slices' GP: hyperparameters fitted on, predictions conditioned on
TIMES = "\u00d7"  # the multiplication sign (ruff flags it as ambiguous when written literally)


# ---- the campaign, as stored ----------------------------------------------------------------------
@dataclass
class CampaignData:
    """Everything a report reads from a campaign's store."""

    dir: Path
    name: str
    objective: Objective
    space: SearchSpace | None  # None: no parameters at all
    space_note: str  # "" or why the space was inferred from the experiments
    target_hardware: str | None
    exps: list[Experiment]  # every experiment, in creation order
    stop_reason: str | None = None
    status: str | None = None
    elapsed_s: float | None = None
    created: float | None = None  # when the campaign was first started (time.time())
    llm_usd: float = 0.0
    llm_calls: int = 0
    cost_stops: list[str] = field(default_factory=list)
    warm_start: list[dict[str, Any]] = field(default_factory=list)
    tracking: dict[str, Any] = field(default_factory=dict)
    parent_run_id: str | None = None

    @cached_property
    def valid(self) -> list[Experiment]:
        """Experiments whose params fit the space (a resumed campaign's space may have changed)."""
        return [e for e in self.exps if self.space is not None and _fits(self.space, e.params)]

    def successes(self) -> list[tuple[Experiment, float]]:
        m = self.objective.metric
        return [(e, v) for e in self.valid if (v := e.value(m)) is not None]


def _fits(space: SearchSpace, params: Mapping[str, Any]) -> bool:
    try:
        space.validate(params)
    except InvalidCandidateError:
        return False
    return True


def load_campaign(campaign_dir: Path, *, objective: Objective | None = None,
                  space: SearchSpace | None = None) -> CampaignData:
    """Read a campaign's store. ``objective``/``space`` override what its stored config says
    (a campaign built in Python may store no config)."""
    store = Store(Path(campaign_dir) / "state.sqlite")
    try:
        config = store.get_meta("config") or {}
        exps = store.experiments()
        calls = [_json_dict(d) for _, _, d in store.events("proposer_call")]
        meta = {k: store.get_meta(k) for k in ("campaign", "metric", "stop_reason", "status", "active_s", "created",
                                               "warm_start", "mlflow_parent_run_id")}
        cost_stops = [d for _, _, d in store.events("cost_stop")]
    finally:
        store.close()
    target = config.get("target") or {}
    if objective is None:
        direction: Literal["minimize", "maximize"] = "maximize" if target.get("direction") == "maximize" else "minimize"
        objective = Objective(str(target.get("metric") or meta["metric"] or "val_bpb"), direction)
    space_note = ""
    if space is None:
        try:
            space = SearchSpace.from_config((config.get("space") or {}).get("params") or {})
        except HybridError:
            space, space_note = _infer_space(exps), "the stored config has no search space; inferred from the experiments"
    camp = config.get("campaign") or {}
    return CampaignData(
        dir=Path(campaign_dir), name=str(meta["campaign"] or camp.get("name") or Path(campaign_dir).name),
        objective=objective, space=space, space_note=space_note, target_hardware=camp.get("target_hardware"),
        exps=exps, stop_reason=meta["stop_reason"], status=meta["status"],
        elapsed_s=_number(meta["active_s"]), created=_number(meta["created"]),
        llm_usd=sum(_number(c.get("cost_usd")) or 0.0 for c in calls), llm_calls=len(calls),
        cost_stops=cost_stops, warm_start=[w for w in meta["warm_start"] or [] if isinstance(w, dict)],
        tracking=dict(config.get("tracking") or {}), parent_run_id=meta["mlflow_parent_run_id"],
    )


def _json_dict(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _number(x: Any) -> float | None:
    if isinstance(x, bool) or not isinstance(x, int | float) or not math.isfinite(x):
        return None
    return float(x)


def _infer_space(exps: Sequence[Experiment]) -> SearchSpace | None:
    """A space spanning the observed values: numeric ranges, anything else categorical."""
    base = baseline_experiment(exps)
    names = sorted({k for e in exps for k in e.params})
    params: list[Param] = []
    for name in names:
        values = [e.params[name] for e in exps if name in e.params]
        default = base.params.get(name) if base else values[0]
        nums = [v for v in values if _number(v) is not None]
        if len(nums) == len(values) and min(nums) < max(nums):
            if all(isinstance(v, int) for v in nums):
                params.append(IntParam(name, int(min(nums)), int(max(nums)), default=default))
            else:
                params.append(FloatParam(name, float(min(nums)), float(max(nums)), default=default))
        else:
            choices = tuple(sorted({json.dumps(v, sort_keys=True) for v in values}))
            params.append(CategoricalParam(name, tuple(json.loads(c) for c in choices), default))
    return SearchSpace(params) if params else None


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


def _reference(counts: Counter, preferred: Any) -> Any:
    if preferred is not None and counts.get(preferred):
        return preferred
    return sorted(counts.items(), key=lambda kv: (-kv[1], str(kv[0])))[0][0]


def _factor(name: str, kind: str, values: Sequence[Any], order: Sequence[Any], preferred: Any) -> Term | None:
    counts = Counter(values)
    if len(counts) < 2:
        return None
    ref = _reference(counts, preferred)
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
    lo, hi = fmt_value(p.decode(grid[0])), fmt_value(p.decode(grid[-1]))
    best = int(np.argmin(s * curve))
    if 5 <= best <= 95:  # an optimum inside the observed range
        ends = s * (curve[[0, -1]] - curve[best])
        return (f"best near {p.name}≈{fmt_value(p.decode(grid[best]))} (the ends are worse by "
                f"{ends[0]:.3g} at {lo} and {ends[1]:.3g} at {hi} {m})"), None
    delta = float(curve[-1] - curve[0])
    higher_is_better = s * delta < 0
    word = ("lower" if delta < 0 else "higher") + f" {m} ({'better' if higher_is_better else 'worse'})"
    return f"higher {p.name} → {word}; {delta:+.3g} across {lo} to {hi}", higher_is_better


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
        effects.append(Effect(t.name, t.kind, ss / ss_total, ss, df, F, pv, words, higher))
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


# ---- GP response slices ----------------------------------------------------------------------------
def _slice_grid(p: Param, n: int = 61) -> list[Any]:
    if isinstance(p, IntParam):
        values = p.values()
        if len(values) <= n:
            return list(values)
    return sorted({p.decode(u) for u in np.linspace(0.0, 1.0, n)})


def gp_slices(data: CampaignData, names: Sequence[str], at: Experiment) -> tuple[list[Slice], str]:
    """Posterior mean ± 2 sd of the objective along each named numeric parameter, the others fixed
    at ``at``'s config, on the target (else most common) hardware. (slices, note)"""
    import torch

    from surrogate.gp import GPSurrogate

    space, obj = data.space, data.objective
    assert space is not None
    gp = GPSurrogate(space, obj, data.target_hardware, min_observations=5, max_fit=_GP_FIT_POINTS,
                     max_train=_GP_MAX_POINTS, fit_maxiter=40, seed=0, threads=1)
    with torch.random.fork_rng(devices=[]), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.manual_seed(0)
        fitted = gp.update(data.valid)
    if fitted is None:
        why = next((str(w.message) for w in caught if "GP fit failed" in str(w.message)), "")
        return [], why or f"the GP needs at least {gp.min_observations} successful results"
    obs = data.successes()
    slices = []
    for name in names:
        p = space.params[name]
        xs = _slice_grid(p)
        mean, var = fitted.marginal(gp.encoder.encode_many([{**at.params, name: x} for x in xs]))
        on_hw = [(e.params[name], v) for e, v in obs if e.hardware == fitted.target_hardware]
        off_hw = [(e.params[name], v) for e, v in obs if e.hardware != fitted.target_hardware]
        slices.append(Slice(name, np.array(xs, dtype=float), -obj.sign() * mean, np.sqrt(var),
                            bool(getattr(p, "log", False)), float(at.params[name]), fitted.target_hardware,
                            np.array([x for x, _ in on_hw], dtype=float), np.array([v for _, v in on_hw]),
                            np.array([x for x, _ in off_hw], dtype=float), np.array([v for _, v in off_hw])))
    used = min(fitted.n_observations, _GP_MAX_POINTS)
    return slices, (f"GP on {used} of the {fitted.n_observations} successful results, hyperparameters fitted on "
                    f"{min(used, _GP_FIT_POINTS)}")


# ---- per hardware, per source, failures ------------------------------------------------------------
@dataclass(frozen=True)
class HardwareRow:
    label: str
    runs: int
    done: int
    failed: int
    median_duration_s: float | None
    usd_per_h: float | None
    throughput: float | None  # median, in throughput_unit
    offset: float | None  # metric offset vs the reference label
    offset_how: str


def _throughput(metrics: Mapping[str, float]) -> tuple[float, str] | None:
    for key, unit in (("tok_per_sec", "tok/s"), ("steps_per_s", "steps/s")):
        if _number(metrics.get(key)):
            return float(metrics[key]), unit
    steps, secs = _number(metrics.get("num_steps")), _number(metrics.get("training_seconds"))
    return (steps / secs, "steps/s") if steps and secs else None


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


def hardware_rows(data: CampaignData, anova: Anova | str, ref: str | None) -> tuple[list[HardwareRow], str]:
    m = data.objective.metric
    paired = paired_offsets(data.space, data.successes(), ref) if data.space and ref else {}
    anova_offsets = anova.hardware_offsets if isinstance(anova, Anova) else {}
    by: dict[str, list[Experiment]] = {}
    for e in data.exps:
        by.setdefault(e.hardware, []).append(e)
    rows, unit = [], ""
    for label, exps in sorted(by.items(), key=lambda kv: (-len(kv[1]), kv[0])):
        timed = [r for e in exps if (r := e.result) is not None and r.duration_s > 0]
        secs, usd = sum(r.duration_s for r in timed), sum(r.cost_usd for r in timed)
        rates = [t for e in exps if e.result and e.value(m) is not None and (t := _throughput(e.result.metrics))]
        unit = unit or (rates[0][1] if rates else "")
        if label == ref:
            offset, how = 0.0, "reference"
        elif label in paired:
            offset, how = paired[label][0], f"paired: {paired[label][1]} configs run on both"
        elif label in anova_offsets:
            offset, how = anova_offsets[label], "ANOVA hardware factor"
        else:
            offset, how = None, "no estimate"
        rows.append(HardwareRow(
            label, len(exps), sum(e.value(m) is not None for e in exps), sum(e.state.is_failure() for e in exps),
            float(np.median([r.duration_s for r in timed])) if timed else None,
            usd / secs * 3600 if secs > 0 else None,
            float(np.median([r for r, _ in rates])) if rates else None, offset, how))
    return rows, unit


@dataclass(frozen=True)
class Improvement:
    exp: Experiment
    value: float
    gain: float  # how much better than the best before it (> 0)
    rank: int  # 1-based position of this result in finish order


def finish_order(exps: Sequence[Experiment]) -> list[Experiment]:
    finished = [e for e in exps if e.result is not None]
    return sorted(finished, key=lambda e: (e.extra.get("_ended") or math.inf, e.seq))


def improvements(exps: Sequence[Experiment], objective: Objective) -> list[Improvement]:
    """Each result (in finish order) that beat the best result before it; the first success is not one."""
    out, best = [], None
    for rank, e in enumerate(finish_order(exps), 1):
        v = e.value(objective.metric)
        if v is None:
            continue
        if best is not None and objective.better(v, best):
            out.append(Improvement(e, v, abs(best - v), rank))
        if best is None or objective.better(v, best):
            best = v
    return out


def failure_pattern(space: SearchSpace, finished: Sequence[Experiment], kind: str) -> str | None:
    """One-parameter conditions that hold for every failure of ``kind``, combined greedily (most
    selective first; another only when it halves the successful runs still inside), where that
    kind is at least twice as frequent as overall. None without such a condition."""
    bad = {e.id for e in finished if e.state.is_failure() and failure_kind(e) == kind}
    if len(bad) < 2:
        return None
    threshold = min(1.0, 2 * len(bad) / len(finished))
    conds: list[tuple[str, set[str]]] = []  # (condition, ids of the finished runs that meet it)
    for p in space:
        if isinstance(p, CategoricalParam):
            level = {e.id: p.validate(e.params[p.name]) for e in finished}
            failing = {level[i] for i in bad}
            if len(failing) < len(set(level.values())):
                shown = "/".join(str(c) for c in p.choices if c in failing)
                conds.append((f"{p.name}={shown}", {i for i, v in level.items() if v in failing}))
            continue
        value = {e.id: e.params[p.name] for e in finished}
        lo, hi = min(value[i] for i in bad), max(value[i] for i in bad)
        if lo > min(value.values()):
            conds.append((f"{p.name} ≥ {fmt_value(lo)}", {i for i, v in value.items() if v >= lo}))
        if hi < max(value.values()):
            conds.append((f"{p.name} ≤ {fmt_value(hi)}", {i for i, v in value.items() if v <= hi}))
    sets = [(i, text, ids) for i, (text, ids) in enumerate(conds)]
    sets = sorted((c for c in sets if len(bad) / len(c[2]) >= threshold), key=lambda c: (len(c[2]), c[0]))
    if not sets:
        return None
    chosen, inside = [sets[0][:2]], sets[0][2]
    for i, text, ids in sets[1:]:
        good_before, good_after = len(inside) - len(bad), len(inside & ids) - len(bad)
        if good_before > 0 and good_after <= good_before / 2:
            chosen.append((i, text))
            inside = inside & ids
    return (f"{'both' if len(bad) == 2 else f'all {len(bad)}'} {kind} failures had " + " and ".join(t for _, t in sorted(chosen))
            + f" ({len(bad)} of the {len(inside)} finished runs there failed this way)")


# ---- the analysis, once per report -----------------------------------------------------------------
@dataclass
class Analysis:
    rows: list[tuple[Experiment, float]]  # successful results whose params fit the space
    best: Experiment | None  # on the target hardware when it has successes, else overall
    baseline: Experiment | None
    hardware_ref: str | None  # reference label for offsets: the target, else the most common
    anova: Anova | str  # or why not
    correlations: list[Correlation] = field(default_factory=list)
    interactions: list[Interaction] = field(default_factory=list)
    n_pairs: int = 0
    slices: list[Slice] = field(default_factory=list)
    slice_note: str = ""
    notes: dict[str, str] = field(default_factory=dict)  # what failed, by part


def _guard(notes: dict[str, str], part: str, call: Callable[[], Any], default: Any) -> Any:
    """Run one part of the analysis; on any error note it and go on with ``default``."""
    try:
        return call()
    except Exception as err:
        notes[part] = f"{type(err).__name__}: {clip(str(err), 200)}"
        return default


def analyze(data: CampaignData, gp: bool = True) -> Analysis:
    obj, space = data.objective, data.space
    notes: dict[str, str] = {}
    best = best_experiment(data.exps, obj, data.target_hardware) or best_experiment(data.exps, obj)
    rows = data.successes()
    counts = Counter(e.hardware for e, _ in rows)
    ref = _reference(counts, data.target_hardware) if counts else None
    a = Analysis(rows, best, baseline_experiment(data.exps), ref, "no search space: no parameters to analyse")
    if space is None:
        return a
    anova = a.anova = _guard(notes, "main effects", partial(main_effects, space, obj, rows, ref), "the ANOVA failed")
    if isinstance(anova, Anova):
        a.interactions, a.n_pairs = _guard(notes, "interactions", partial(interactions, anova, obj), ([], 0))
        ranked = [e.name for e in anova.effects if e.kind == "numeric"]
    else:
        a.correlations = _guard(notes, "correlations", partial(correlations, space, obj, rows), [])
        ranked = [c.name for c in a.correlations if not isinstance(space.params[c.name], CategoricalParam)]
    if not gp:
        a.slice_note = "skipped (the report was written without the GP)"
    elif best is not None and ranked and _fits(space, best.params):
        a.slices, a.slice_note = _guard(notes, "GP slices", partial(gp_slices, data, ranked[:_SLICE_PARAMS], best),
                                        ([], ""))
    a.notes = notes
    return a


# ---- findings.md -----------------------------------------------------------------------------------
def _v(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.6g}"


def _p(p: float) -> str:
    return "n/a" if not math.isfinite(p) else ("<0.0001" if p < 1e-4 else f"{p:.2g}")


def _duration(s: float | None) -> str:
    if s is None:
        return "n/a"
    return f"{s:.0f} s" if s < 120 else (f"{s / 60:.1f} min" if s < 7200 else f"{s / 3600:.1f} h")


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'s' * (n != 1)}"


def _cell(x: Any) -> str:
    return str(x).replace("|", "\\|").replace("\n", " ")


def _best_line(label: str, best: Experiment, base: Experiment | None, data: CampaignData) -> list[str]:
    """The best result and how it compares with the baseline's."""
    m, obj = data.objective.metric, data.objective
    v, base_v = best.value(m), base.value(m) if base else None
    assert v is not None
    where = " (the target hardware)" if best.hardware == data.target_hardware else ""
    head = f"- **{label} {m} {v:.6g}** by {best.id} [{best.source}] on {best.hardware}{where}"
    if base is None or base_v is None:
        return [head + " (no baseline result to compare with)."]
    if best is base:
        return [head + ": the baseline itself; no experiment beat it."]
    diff = obj.sign() * (base_v - v)
    pct = f" ({abs(diff) / abs(base_v) * 100:.2f}%)" if base_v else ""
    verdict = "better" if diff > 0 else "worse" if diff < 0 else "no different"
    out = [head + f": {abs(diff):.4g}{pct} {verdict} than the baseline {base_v:.6g} ({base.id} on {base.hardware})."]
    if best.hardware != base.hardware:
        out.append(f"  They ran on different hardware: see Hardware for the offset of {best.hardware} vs "
                   f"{base.hardware}, which is part of this difference.")
    return out


def section_headline(data: CampaignData, a: Analysis) -> list[str]:
    overall = best_experiment(data.exps, data.objective)
    if overall is None or a.best is None:
        return ["No successful experiment yet: nothing to compare with the baseline."]
    base = a.baseline
    out = _best_line("Best", a.best, base, data)
    if overall is not a.best:
        out += _best_line("Best on any hardware", overall, base, data)
    if data.target_hardware and a.best.hardware != data.target_hardware:
        out.append(f"- No successful result on the target hardware {data.target_hardware} yet.")
    diff = [(k, base.params.get(k), v) for k, v in a.best.params.items() if base.params.get(k) != v] if base else []
    if diff:
        out += ["", f"What {a.best.id} changed from the baseline:", "",
                "| parameter | baseline | best |", "|---|---|---|"]
        out += [f"| {_cell(k)} | {_cell(fmt_value(b))} | {_cell(fmt_value(v))} |" for k, b, v in diff]
    return out


def section_progress(data: CampaignData, a: Analysis, elapsed_s: float | None, plots: Mapping[str, Path]) -> list[str]:
    exps = data.exps
    n_done = sum(e.value(data.objective.metric) is not None for e in exps)
    n_failed = sum(e.state.is_failure() for e in exps)
    n_cancelled = sum(e.state is ExperimentState.CANCELLED for e in exps)
    n_running = sum(e.result is None for e in exps)
    out = [f"- {_plural(len(exps), 'experiment')}: {n_done} done, {n_failed} failed, {n_cancelled} cancelled, "
           f"{n_running} not finished; campaign time {_duration(elapsed_s)}."]
    imps = improvements(exps, data.objective)
    if imps:
        last = imps[-1]
        when = ""
        if data.created is not None and last.exp.extra.get("_ended"):
            when = f", {_duration(last.exp.extra['_ended'] - data.created)} after the start"
        out.append(f"- The best so far improved {len(imps)} times (results in finish order); the last improvement "
                   f"was {last.exp.id}, result #{last.rank} in finish order{when}.")
    elif n_done:
        out.append("- No result improved on the first successful one.")
    for w in data.warm_start:
        skipped = f"; {w['skipped']} outside this space, not used" if w.get("skipped") else ""
        out.append(f"- Warm-started with {w.get('n', '?')} results of campaign {w.get('name', '?')} "
                   f"({w.get('dir', '?')}) as prior data{skipped}; they are not counted in this report.")
    if "progress.png" in plots:
        out += ["", "![progress](plots/progress.png)"]
    return out


def section_effects(data: CampaignData, a: Analysis, plots: Mapping[str, Path]) -> list[str]:
    m = data.objective.metric
    if isinstance(a.anova, Anova):
        an = a.anova
        hw = " the hardware label as a factor," if an.hardware is not None else ""
        out = [f"Method: ANOVA by least squares on the {an.n} successful experiments: each numeric parameter as a "
               "linear + quadratic term of its [0, 1] search-space encoding (log scale where the parameter is log), "
               f"categoricals one-hot against a reference level,{hw} {an.n_columns} columns with the intercept. "
               f"Importance = Type-II sum of squares (refit without the parameter) as a share of the variance of "
               f"{m}; F test against the residual. R² = {an.r2:.3f}, residual sd {an.resid_sd:.3g}.", "",
               "| parameter | share of variance | F | p | direction |", "|---|---|---|---|---|"]
        out += [f"| {_cell(e.name)} | {e.share * 100:.1f}% | {e.F:.3g} | {_p(e.p)} | {_cell(e.words)} |"
                for e in an.effects]
        if sum(e.share for e in an.effects) < 0.5 * an.r2:
            out += ["", "The shares add up to much less than R²: the parameters were varied together (e.g. a "
                    "proposer concentrating on one region), so much of the explained variance cannot be "
                    "attributed to one parameter alone."]
        if an.constant:
            out += ["", "Not varied among the successful results: " + ", ".join(an.constant) + "."]
    else:
        out = [f"{a.anova[0].upper()}{a.anova[1:]}."]
        if a.correlations:
            out += ["", "Fallback: per-parameter rank statistics (Spearman correlation with the encoded value for "
                    "numeric parameters, Kruskal-Wallis across levels for categoricals), one parameter at a time:",
                    "", "| parameter | statistic | p | direction |", "|---|---|---|---|"]
            for c in a.correlations:
                stat = (f"H = {c.stat:.3g}" if isinstance(data.space.params[c.name], CategoricalParam)  # type: ignore[union-attr]
                        else f"rho = {c.stat:+.2f}")
                out.append(f"| {_cell(c.name)} | {stat} | {_p(c.p)} | {_cell(c.words)} |")
    if "effects.png" in plots:
        out += ["", "![effects](plots/effects.png)"]
    return out


def section_interactions(data: CampaignData, a: Analysis) -> list[str]:
    if not isinstance(a.anova, Anova):
        return ["Needs the main-effects ANOVA (above), which could not be computed."]
    if not a.interactions:
        return ["No pair of varied parameters could be tested (too few results or parameters)."]
    out = [f"Method: each pair of parameters added, alone, to the main-effects model (numeric{TIMES}numeric: product "
           f"of the centred encodings; numeric{TIMES}categorical: a slope per level; categorical{TIMES}categorical: "
           f"cell "
           f"indicators); extra share of variance, F and p. {a.n_pairs} pairs tested; p-values are not corrected "
           f"for that (Bonferroni threshold {0.05 / a.n_pairs:.2g}).", "",
           "| pair | extra share | F | p | reading |", "|---|---|---|---|---|"]
    out += [f"| {_cell(i.a)} {TIMES} {_cell(i.b)} | {i.share * 100:.1f}% | {i.F:.3g} | {_p(i.p)} | {_cell(i.words)} |"
            for i in a.interactions[:_TOP_INTERACTIONS]]
    return out


def section_slices(data: CampaignData, a: Analysis) -> list[str]:
    if not a.slices:
        why = a.notes.get("GP slices") or a.slice_note or "no numeric parameter to slice"
        return [f"No GP slices: {why}."]
    obj, m = data.objective, data.objective.metric
    out = [f"GP posterior mean ± 2 sd of {m} along each of the most important numeric parameters, the others fixed "
           f"at {a.best.id}'s configuration, predicted on {a.slices[0].hardware} ({a.slice_note}).", ""]  # type: ignore[union-attr]
    for s in a.slices:
        k = int(np.argmin(obj.sign() * s.mean))
        word = "argmin" if obj.direction == "minimize" else "argmax"
        out.append(f"- {s.param}: GP {word} at {s.param}={fmt_value(_as_param(data.space, s.param, s.x[k]))} "
                   f"(predicted {m} {s.mean[k]:.6g} ± {2 * s.sd[k]:.2g}); the best config has "
                   f"{s.param}={fmt_value(_as_param(data.space, s.param, s.at))}.")
    return out


def _as_param(space: SearchSpace | None, name: str, x: float) -> Any:
    p = space.params[name] if space else None
    return round(x) if isinstance(p, IntParam) else float(x)


def section_hardware(data: CampaignData, a: Analysis, plots: Mapping[str, Path]) -> list[str]:
    rows, unit = hardware_rows(data, a.anova, a.hardware_ref)
    if not rows:
        return ["No experiments."]
    m = data.objective.metric
    out = [f"Offsets are {m}(label) - {m}({a.hardware_ref}): paired over configurations run on both labels where "
           "there are any, else the ANOVA's hardware coefficient.", ""] if a.hardware_ref and len(rows) > 1 else []
    out += [f"| hardware | runs | done | failed | median duration | $/h | {unit or 'throughput'} | offset | how |",
           "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        usd = "n/a" if r.usd_per_h is None else f"{r.usd_per_h:.2f}"
        tput = "n/a" if r.throughput is None else f"{r.throughput:.4g}"
        off = "n/a" if r.offset is None else ("0" if r.offset_how == "reference" else f"{r.offset:+.4g}")
        out.append(f"| {_cell(r.label)} | {r.runs} | {r.done} | {r.failed} | {_duration(r.median_duration_s)} | "
                   f"{usd} | {tput} | {off} | {r.offset_how} |")
    if len(rows) == 1:
        out += ["", "One hardware label: no comparison."]
    elif isinstance(a.anova, Anova) and a.anova.hardware_effect is not None:
        h = a.anova.hardware_effect
        out += ["", f"In the ANOVA the hardware label explains {h.share * 100:.1f}% of the variance of {m} "
                f"(F = {h.F:.3g}, p {_p(h.p)}), with the parameters held fixed."]
    if "hardware.png" in plots:
        out += ["", "![hardware](plots/hardware.png)"]
    return out


def section_sources(data: CampaignData, a: Analysis) -> list[str]:
    imps = improvements(data.exps, data.objective)
    overall = best_experiment(data.exps, data.objective)
    by: dict[str, list[Experiment]] = {}
    for e in data.exps:
        by.setdefault(e.source, []).append(e)
    m = data.objective.metric
    out = [f"Improvements: results that beat the best {m} before them, in finish order.", "",
           "| source | experiments | done | failed | improvements | total improvement |", "|---|---|---|---|---|---|"]
    for src, exps in sorted(by.items(), key=lambda kv: (-len(kv[1]), kv[0])):
        mine = [i for i in imps if i.exp.source == src]
        out.append(f"| {_cell(src)} | {len(exps)} | {sum(e.value(m) is not None for e in exps)} | "
                   f"{sum(e.state.is_failure() for e in exps)} | {len(mine)} | {sum(i.gain for i in mine):.4g} |")
    if overall is not None:
        out += ["", f"The best result ({overall.id}) came from {overall.source}."]
    return out


def section_failures(data: CampaignData, a: Analysis) -> list[str]:
    finished = [e for e in data.exps if e.result is not None]
    lost = [e for e in finished if e.extra.get("requeued")]
    counted = [e for e in finished if not e.extra.get("requeued")]
    kinds = Counter(failure_kind(e) for e in counted if e.state.is_failure())
    cancelled = sum(e.state is ExperimentState.CANCELLED for e in counted)
    if not kinds and not cancelled and not lost:
        return ["No failures."]
    parts = [f"{k} {v}" for k, v in sorted(kinds.items(), key=lambda kv: (-kv[1], kv[0]))]
    parts += [f"cancelled {cancelled}"] * bool(cancelled) + [f"lost by the orchestrator and re-run {len(lost)}"] * bool(lost)
    out = ["- Counts: " + ", ".join(parts) + "."]
    reasons = Counter(_reason(e) for e in counted if e.state.is_failure())
    if reasons:
        out.append("- Reasons: " + "; ".join(f"\"{r}\" {TIMES}{n}" for r, n in
                                             sorted(reasons.items(), key=lambda kv: (-kv[1], kv[0]))[:5]) + ".")
    valid = [e for e in counted if data.space is not None and _fits(data.space, e.params)
             and e.state is not ExperimentState.CANCELLED]
    if data.space is not None and valid:
        patterns = [p for kind in sorted(kinds) if (p := failure_pattern(data.space, valid, kind))]
        out += [f"- Pattern: {p}." for p in patterns]
        regions = failure_region_lines(data.space, valid)
        if regions and not patterns:
            out += ["- Where failures concentrate (a third of a numeric range or one choice, at least twice the "
                    "overall failure rate):"] + [f"  - {r}" for r in regions]
    return out


def _reason(e: Experiment) -> str:
    text = (e.result.reason if e.result else "").strip()
    return clip(text.splitlines()[0], 100) if text else e.state.name.lower()


def section_spend(data: CampaignData, a: Analysis) -> list[str]:
    gpu = sum(e.result.cost_usd for e in data.exps if e.result is not None)
    total = gpu + data.llm_usd
    n_imp = len(improvements(data.exps, data.objective))
    out = [f"- Workers: ${gpu:.2f}; LLM: ${data.llm_usd:.2f} ({_plural(data.llm_calls, 'call')}); total ${total:.2f}.",
           f"- Cost per improvement of the best: ${total / n_imp:.2f} ({n_imp} improvements)." if n_imp else
           "- No improvement of the best: no cost per improvement.",
           f"- Stopped: {data.stop_reason or 'not stopped yet (running, or killed)'}"
           + (f" (status {data.status})." if data.status else ".")]
    for text in data.cost_stops:
        saved = re.search(r"about \$([\d.,]+) of the budget left unspent", text)
        tail = f"; estimated savings ${saved.group(1)}" if saved else ""
        out.append(f"- The cost-aware stopping rule fired: {clip(text, 400)}{tail}.")
    return out


def section_hypotheses(data: CampaignData, a: Analysis) -> list[str] | None:
    done = [o for o in hypothesis_outcomes(data.exps, data.objective) if o.outcome != "running"]
    if not any(e.source == "llm" for e in data.exps):
        return None
    if not done:
        return ["No LLM-proposed experiment has finished."]
    held = sorted((o for o in done if o.improved), key=lambda o: (data.objective.sign() * (o.value or 0), o.experiment_id))
    failed = [o for o in done if not o.improved]
    full = " Full list: hypotheses.md." if (data.dir / "hypotheses.md").exists() else ""
    out = [f"{len(held)} of {len(done)} finished LLM hypotheses held (a new best, or better than the baseline); "
           f"{len(failed)} did not.{full}"]
    for title, group in (("Held", held), ("Did not hold", failed)):
        if group:
            out += ["", f"{title}:"]
            out += [f"- {o.experiment_id} ({o.outcome}{', ' + o.detail if o.detail else ''}): "
                    f"{clip(o.hypothesis, 200) or '(no hypothesis given)'}" for o in group[:5]]
    return out


def render(data: CampaignData, a: Analysis, elapsed_s: float | None, plots: Mapping[str, Path],
           plot_notes: Sequence[str]) -> str:
    obj = data.objective
    head = [f"# Findings: campaign {data.name}", "",
            f"Objective: {obj.metric} ({obj.direction})"
            + (f", judged on {data.target_hardware}" if data.target_hardware else "")
            + f". Stop reason: {data.stop_reason or 'not stopped yet'}."]
    if data.space_note:
        head.append(f"Note: {data.space_note}.")
    if data.space is not None and len(a.rows) < sum(e.value(obj.metric) is not None for e in data.exps):
        head.append("Note: some results do not fit the stored search space (changed on resume?) and are left out "
                    "of the statistics.")
    head += [f"Note: {n}." for n in plot_notes]
    sections: list[tuple[str, Callable[[], list[str] | None]]] = [
        ("Headline", lambda: section_headline(data, a)),
        ("Progress", lambda: section_progress(data, a, elapsed_s, plots)),
        ("What mattered: main effects", lambda: section_effects(data, a, plots)),
        ("Interactions", lambda: section_interactions(data, a)),
        ("Response slices (GP)", lambda: section_slices(data, a)),
        ("Hardware", lambda: section_hardware(data, a, plots)),
        ("Sources", lambda: section_sources(data, a)),
        ("Failures", lambda: section_failures(data, a)),
        ("Spend", lambda: section_spend(data, a)),
        ("LLM hypotheses", lambda: section_hypotheses(data, a)),
    ]
    out = head
    for title, build in sections:
        notes: dict[str, str] = {}
        body = _guard(notes, title, build, None)
        if body is None and not notes:
            continue  # a section that does not apply (no LLM experiments)
        out += ["", f"## {title}", ""]
        out += body if body is not None else [f"(could not compute this section: {notes[title]})"]
    for part, note in a.notes.items():
        if part != "GP slices":
            out += ["", f"Note: {part} could not be computed ({note})."]
    return "\n".join(out) + "\n"


# ---- entry points ----------------------------------------------------------------------------------
def write_plots(data: CampaignData, a: Analysis, plots_dir: Path) -> tuple[dict[str, Path], list[str]]:
    """Every plot that applies: ({file name: path}, notes on plots that failed). Never raises."""
    from hybrid import plots

    plots_dir.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}
    notes: dict[str, str] = {}
    jobs: list[tuple[str, Callable[[Path], bool]]] = [
        ("progress.png", lambda path: plots.plot_progress(path, progress_points(data), data.objective,
                                                          _baseline_value(data, a))),
        ("effects.png", lambda path: plots.plot_effects(path, effect_bars(data, a), a.slices, data.objective)),
        ("hardware.png", lambda path: plots.plot_hardware(path, hardware_series(data), data.objective,
                                                          hardware_rows(data, a.anova, a.hardware_ref)[1])),
    ]
    for name, job in jobs:
        path = plots_dir / name
        if _guard(notes, name, partial(job, path), False):
            written[name] = path
        elif path.exists():  # a plot that no longer applies must not outlive its report
            path.unlink()
    return written, [f"plot {k} failed ({v}); the report goes on without it" for k, v in notes.items()]


def _baseline_value(data: CampaignData, a: Analysis) -> float | None:
    return a.baseline.value(data.objective.metric) if a.baseline else None


def progress_points(data: CampaignData) -> list[ProgressPoint]:
    start = data.created if data.created is not None else min(
        (e.started for e in data.exps if e.started is not None), default=None)
    out = []
    for e in finish_order(data.exps):
        ended = e.extra.get("_ended")
        hours = (ended - start) / 3600 if ended is not None and start is not None else None
        out.append(ProgressPoint(e.seq, hours, e.value(data.objective.metric),
                                 e.state is not ExperimentState.DONE or e.value(data.objective.metric) is None,
                                 e.hardware, e.source))
    return out


def effect_bars(data: CampaignData, a: Analysis) -> list[Bar]:
    if isinstance(a.anova, Anova):
        return [Bar(e.name, e.share * 100, e.better_when_higher, _bar_note(e), "share of variance, % (Type-II ANOVA)")
                for e in a.anova.effects]
    space = data.space
    assert space is not None
    bars = []
    for c in a.correlations:
        if not isinstance(space.params[c.name], CategoricalParam):
            better = data.objective.sign() * c.stat < 0
            bars.append(Bar(c.name, abs(c.stat), better, "higher better" if better else "higher worse",
                            "|Spearman rho| (too few results for an ANOVA)"))
    return bars


def _bar_note(e: Effect) -> str:
    if e.better_when_higher is not None:
        return "higher better" if e.better_when_higher else "higher worse"
    return e.words.split(" (")[0] if e.kind == "categorical" else "optimum inside"


def hardware_series(data: CampaignData) -> list[HardwareSeries]:
    m = data.objective.metric
    by: dict[str, list[Experiment]] = {}
    for e in data.exps:
        by.setdefault(e.hardware, []).append(e)
    out = []
    for label, exps in sorted(by.items()):
        rates = [t[0] for e in exps if e.value(m) is not None and (t := _throughput(e.result.metrics))]  # type: ignore[union-attr]
        out.append(HardwareSeries(label, [v for e in exps if (v := e.value(m)) is not None],
                                  [e.result.duration_s for e in exps if e.result is not None and e.result.duration_s > 0],
                                  rates))
    return out


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_reports(campaign_dir: Path, *, elapsed_s: float | None = None, objective: Objective | None = None,
                  space: SearchSpace | None = None, gp: bool = True) -> list[Path]:
    """Write ``findings.md`` and ``plots/*.png`` of the campaign in ``campaign_dir``; return the files
    written (findings.md first). Opens its own store connection (the campaign may be running).

    ``elapsed_s``: the campaign's active time (default: the store's ``active_s``);
    ``objective``/``space``: override the stored config's (for campaigns built in Python);
    ``gp``: False skips the GP response slices (the only part that takes seconds).
    Never raises on the campaign's data: what cannot be computed is said in findings.md.
    """
    campaign_dir = Path(campaign_dir)
    path = campaign_dir / "findings.md"
    try:
        data = load_campaign(campaign_dir, objective=objective, space=space)
    except Exception as err:  # an unreadable store: say so where the reader looks
        _write_atomic(path, f"# Findings\n\nThe campaign store could not be read ({type(err).__name__}: {err}).\n")
        return [path]
    a = analyze(data, gp)
    plots, plot_notes = write_plots(data, a, campaign_dir / PLOTS_DIR)
    elapsed = elapsed_s if elapsed_s is not None else data.elapsed_s
    _write_atomic(path, render(data, a, elapsed, plots, plot_notes))
    return [path, *plots.values()]


def report_command(container: Mapping[str, Any]) -> list[Path]:
    """``hybrid report <overrides>``: regenerate findings.md and the plots of ``campaign.dir``, print
    their paths, and upload them to the campaign's MLflow run when it was mirrored."""
    campaign_dir = Path(str(container["campaign"]["dir"])).expanduser()
    if not (campaign_dir / "state.sqlite").is_file():
        raise ConfigError(f"campaign.name: no campaign at {campaign_dir} (no state.sqlite); give the name of a "
                          "campaign under runs/, or campaign.dir=PATH")
    paths = write_reports(campaign_dir)
    for p in paths:
        print(p, flush=True)
    _upload(campaign_dir, paths)
    return paths


def _upload(campaign_dir: Path, paths: Sequence[Path]) -> None:
    """Best effort: one warning line on failure, never a traceback."""
    import sys

    try:
        data = load_campaign(campaign_dir)
        if str(data.tracking.get("name", "")).lower() != "mlflow" or not data.parent_run_id:
            return
        from hybrid.tracking import make_tracker

        tracker = make_tracker(data.tracking)
        tracker.upload_artifacts(campaign_dir, data.parent_run_id, paths)  # type: ignore[attr-defined]
        print(f"uploaded to MLflow run {data.parent_run_id}", flush=True)
    except Exception as err:
        first = (str(err).strip().splitlines() or [""])[0][:300]
        print(f"warning: MLflow upload failed ({type(err).__name__}: {first}); the files above are written. "
              "Check tracking.uri, or ignore this with a campaign run with tracking=none.", file=sys.stderr,
              flush=True)
