"""Stop a running experiment once its learning curve says it cannot beat the incumbent.

The trap this rule is built around: with a fixed wall-clock budget, wider or bigger-batch models
take fewer steps, so they start slower and end better; their learning curves cross. A rule that
prunes "worse than the median at this fraction" (Optuna's MedianPruner, successive halving) kills
exactly those runs, which are the ones that win. So this rule never compares a run to the others at
its fraction. It asks, at the run's latest reported fraction f, what the finished runs say the
value at f predicts for the *final* objective, and prunes only when even an optimistic prediction
is worse than the best finished result:

1. **Evidence**: the runs that finished on the run's own hardware: their final objective and
   their curve of the same signal, read at f. Fewer than ``min_finished`` of them: keep.
2. **Features**: the curve's level at f and its drop since ``lookback`` * f, both from the line
   through the curve over that span (read at 5 fractions: less noisy than two points, and noise in
   a feature flattens the fitted slope, which underrates exactly the runs still falling fast).
3. **Model**: ridge regression of the final on the level; on the level and the drop (a slow
   starter is high at f but still falling fast); and, when a :class:`SearchSpace` is given and
   there are enough runs, on those plus the encoded params (a big model is slow, not bad). The one
   with the smallest leave-one-out error is used. Outliers (runs that diverged) are winsorized so
   that one of them does not set the slope.
4. **Is the relation real?** The rank correlation between each finished run's leave-one-out
   prediction and its final must reach ``min_rank_correlation`` (early in crossing curves the value
   at f does not tell winners from losers). And no extrapolation: a run falling faster than all but
   ``min_as_fast - 1`` finished runs did by f is kept, as nothing finished says how it ends.
5. **Margin**: the one-sided ``confidence`` prediction bound, from the leave-one-out residuals and
   the run's leverage (a configuration unlike the finished ones gets a wider bound), made wider by
   how much worse than their finals the model predicts the ``top_runs`` best finished runs (each
   without itself): regression to the mean underrates winners, and the run may be one. Prune only
   when that bound is strictly worse than the incumbent (the best final on that hardware).

The defaults (grace 0.3, 95%, 8 finished runs, rank correlation 0.5, lookback 0.2, as fast as 3,
top 3) were chosen on seeds 100-129 of benchmarks/pruning.py; its reported seeds are 0-9.

Never before ``grace`` of the budget, and never a protected run: the baseline, a replicate and a
validation re-run (``RunCurve.source`` in :data:`PROTECTED_SOURCES`, or ``protected=True``) are
measurements the campaign needs whole. Bad input (no points, NaN values, a signal the run or the
finished runs do not report, a degenerate fit) means "keep", never an exception: a target's output
is not the orchestrator's to crash on. Deterministic: no random draws anywhere.

Plain numpy and scipy: a decision costs ~2 ms with 50 finished runs and ~5 ms with 500 (finished
curves' readings are cached), next to the seconds between a target's progress lines.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from hybrid.curves import ProgressPoint
from hybrid.errors import ConfigError, InvalidCandidateError
from hybrid.space import CategoricalParam, SearchSpace
from hybrid.types import Objective

__all__ = ["PROTECTED_SOURCES", "Prediction", "PruningRule", "RunCurve"]

# Candidate sources whose runs are never pruned: the baseline every comparison is made against,
# replicates (they measure run-to-run noise: a cut one measures nothing) and validation re-runs
# of promising configurations on the target hardware (they confirm the recommendation; the campaign's
# validate_top_k picks have the source "validate").
PROTECTED_SOURCES = frozenset({"baseline", "replicate", "confirm", "validate", "validation"})
_WINSOR_MADS = 4.0  # values beyond median ± this many (normal-scaled) MADs are clipped to it
_RIDGE = 1e-3  # ridge penalty per run, on standardized features: only keeps the solve well posed


@dataclass(frozen=True)
class RunCurve:
    """One experiment as the pruning rule sees it: its configuration, where it runs, its curve so
    far and, once it finished, its final objective value (None while it runs, or if it failed)."""

    params: Mapping[str, Any]
    hardware: str
    points: Sequence[ProgressPoint] = ()
    final: float | None = None
    source: str = ""  # the candidate's source; those in PROTECTED_SOURCES are never pruned
    protected: bool = False  # never prune, whatever the source (the campaign's own reasons)
    _series: dict[str, tuple[np.ndarray, np.ndarray]] = field(
        default_factory=dict, init=False, repr=False, compare=False)
    _trends: dict[tuple, tuple[float, float]] = field(default_factory=dict, init=False, repr=False, compare=False)

    @property
    def is_protected(self) -> bool:
        return self.protected or self.source in PROTECTED_SOURCES

    def series(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        """(fractions, values) of ``name``: finite values at finite fractions in [0, 1], the first of
        any repeated fraction kept, sorted by fraction. Cached: a finished curve does not change."""
        cached = self._series.get(name)
        if cached is None:
            seen: dict[float, float] = {}
            for p in self.points:
                try:
                    f, v = float(p.fraction), float(p.values[name])
                except (AttributeError, KeyError, TypeError, ValueError):
                    continue
                if math.isfinite(f) and math.isfinite(v) and 0.0 <= f <= 1.0 and f not in seen:
                    seen[f] = v
            fr = np.array(sorted(seen), dtype=float)
            cached = (fr, np.array([seen[f] for f in fr], dtype=float))
            if self.final is not None:  # a running curve grows: only a finished one is cached
                self._series[name] = cached
        return cached

    def value_at(self, name: str, fraction: float, tolerance: float = 0.05) -> float | None:
        """``name`` linearly interpolated at ``fraction``; held flat up to ``tolerance`` beyond the
        curve's first or last point; None further out or without such points."""
        fr, vals = self.series(name)
        if fr.size == 0 or fraction < fr[0] - tolerance or fraction > fr[-1] + tolerance:
            return None
        return float(np.interp(fraction, fr, vals))


    def trend(self, name: str, lo: float, hi: float, n: int = 5) -> tuple[float, float]:
        """The least-squares line through ``name`` read at ``n`` fractions from ``lo`` to ``hi``: its
        values at ``hi`` and at ``lo`` (less noisy than the two points alone). Cached once finished."""
        key = (name, lo, hi, n)
        cached = self._trends.get(key)
        if cached is None:
            fr, vals = self.series(name)
            t = np.linspace(lo, hi, n) - hi
            v = np.interp(t + hi, fr, vals)
            tc = t - t.mean()
            slope = float(tc @ (v - v.mean()) / (tc @ tc)) if hi > lo else 0.0
            at_hi = float(v.mean() - slope * t.mean())
            cached = (at_hi, at_hi - slope * (hi - lo))
            if self.final is not None:
                self._trends[key] = cached
        return cached


@dataclass(frozen=True)
class Prediction:
    """What the finished runs predict for a running one's final (objective units, not oriented)."""

    fraction: float  # the run's latest reported fraction with the signal
    signal: str
    value: float  # the run's signal at that fraction
    predicted: float  # the model's prediction of its final objective
    bound: float  # the optimistic end of the one-sided prediction interval at ``confidence``
    incumbent: float  # the best final among the finished runs on that hardware
    n_finished: int  # finished runs the model was fitted on
    rank_correlation: float  # Spearman of their leave-one-out predictions against their finals
    uses_params: bool  # the model includes the encoded params, not only the curve
    since: float | None = None  # the model includes the curve's trend since this fraction (None: it does not)
    change: float | None = None  # the run's change of the signal since then (the trend line's)


@dataclass(frozen=True)
class PruningRule:
    """``decide(run, finished, objective)`` -> None (keep running) or the reason to prune it.

    ``space``: encode params into the model (recommended: it is what tells a slow starter from a
    bad run); None: the value at the fraction alone. ``signal``: the progress value to read (None:
    the objective's metric if the run reports it, else the first name of its latest point).
    """

    grace: float = 0.3  # no decision before this fraction of the budget
    confidence: float = 0.95  # one-sided prediction bound that must be worse than the incumbent
    min_finished: int = 8  # finished runs on the run's hardware needed before any prune
    min_rank_correlation: float = 0.5  # the value at the fraction must rank finished runs this well
    signal: str | None = None
    space: SearchSpace | None = None
    tolerance: float = 0.05  # a finished curve is read this far beyond its first/last point
    params_min_extra: int = 6  # the params model needs this many runs beyond its feature count
    top_runs: int = 3  # the model's overprediction of this many best finished runs widens the margin
    min_as_fast: int = 3  # finished runs that fell at least as fast by the fraction (0: no check)
    lookback: float = 0.2  # the curve's drop since lookback * the fraction is a feature (0: no drop)

    def __post_init__(self) -> None:
        if not 0.0 <= self.grace < 1.0:
            raise ConfigError(f"pruning.grace: must be in [0, 1), got {self.grace}")
        if not 0.5 < self.confidence < 1.0:
            raise ConfigError(f"pruning.confidence: must be in (0.5, 1), e.g. 0.95, got {self.confidence}")
        if self.min_finished < 4:
            raise ConfigError(f"pruning.min_finished: must be >= 4 (a fit needs runs to check itself on), "
                              f"got {self.min_finished}")
        if not -1.0 <= self.min_rank_correlation <= 1.0:
            raise ConfigError(f"pruning.min_rank_correlation: must be in [-1, 1], got {self.min_rank_correlation}")
        if not 0.0 <= self.lookback < 1.0:
            raise ConfigError(f"pruning.lookback: must be in [0, 1) (0: the value alone), got {self.lookback}")
        if not 0.0 <= self.tolerance <= 0.5:
            raise ConfigError(f"pruning.tolerance: must be in [0, 0.5], got {self.tolerance}")

    def decide(self, run: RunCurve, finished: Sequence[RunCurve], objective: Objective) -> str | None:
        """None: keep running; else the reason for the prune, with its numbers."""
        found = self.verdict(run, finished, objective)
        return None if found is None else found[0]

    def verdict(self, run: RunCurve, finished: Sequence[RunCurve],
                objective: Objective) -> tuple[str, Prediction] | None:
        """``decide`` with the prediction it acted on: None (keep) or (reason, prediction)."""
        if run.is_protected:
            return None
        p = self.predict(run, finished, objective)
        if p is None or not objective.better(p.incumbent, p.bound):
            return None
        return self._reason(p, run, objective), p

    def _reason(self, p: Prediction, run: RunCurve, objective: Objective) -> str:
        at_least = "≥" if objective.direction == "minimize" else "≤"
        given = f"{p.signal} {p.value:.4g}"
        if p.since is not None and p.change is not None:
            given += f" ({p.change:+.3g} since {p.since:.0%})"
        if p.uses_params:
            given += " with its params"
        return (f"at {p.fraction:.0%} of its budget {given} predicts {objective.metric} {at_least} "
                f"{p.bound:.4g} ({self.confidence:.0%}), worse than the best {p.incumbent:.4g} "
                f"(from {p.n_finished} finished runs on {run.hardware}, rank correlation "
                f"{p.rank_correlation:.2f} at this fraction)")

    def predict(self, run: RunCurve, finished: Sequence[RunCurve], objective: Objective) -> Prediction | None:
        """The prediction ``decide`` acts on; None where the rule has nothing to say (before the
        grace, no usable signal, too few finished runs, a relation too weak, a failed fit)."""
        try:
            return self._predict(run, finished, objective)
        except (ArithmeticError, ValueError, TypeError, np.linalg.LinAlgError):
            return None  # a degenerate fit: keep the run

    # ---- the model ----------------------------------------------------------------------------
    def _predict(self, run: RunCurve, finished: Sequence[RunCurve], objective: Objective) -> Prediction | None:
        signal = self._signal(run, objective)
        if signal is None:
            return None
        fr, vals = run.series(signal)
        if fr.size == 0 or fr[-1] < self.grace:
            return None
        f, now = float(fr[-1]), float(vals[-1])
        back = f * self.lookback  # the run's recent drop: how fast it still learns
        latest = now
        then = run.value_at(signal, back, self.tolerance) if self.lookback > 0 else None
        if then is not None:  # level and drop from the line through the recent curve: less noisy
            now, then = run.trend(signal, back, f)
        sign = objective.sign()  # fit in loss orientation: lower is better
        rows, ys, ps = [], [], []
        incumbent = math.inf
        for other in finished:
            if other is run or other.hardware != run.hardware or other.final is None:
                continue
            y = sign * float(other.final)
            if not math.isfinite(y):
                continue
            incumbent = min(incumbent, y)
            x = other.value_at(signal, f, self.tolerance)
            if x is None:
                continue
            x_then = other.value_at(signal, back, self.tolerance) if then is not None else None
            if x_then is not None:
                x, x_then = other.trend(signal, back, f)
            rows.append((x, math.nan if x_then is None else x - x_then))
            ys.append(y)
            ps.append(other.params)
        if len(rows) < self.min_finished:
            return None
        X, y = np.array(rows, dtype=float), np.array(ys)
        q = np.array([now, math.nan if then is None else now - then])
        if then is not None and self.min_as_fast:
            # a run still improving faster than all but a few finished runs did by this fraction is
            # a slow starter the finished runs say nothing about: never extrapolate to prune it
            drops = X[np.isfinite(X[:, 1]), 1]
            improving = -1.0 if drops.size and np.median(drops) < 0 else 1.0  # curves mostly fall or rise
            if (improving * drops >= improving * q[1]).sum() < self.min_as_fast:
                return None
        for j in range(2):  # a run that diverged does not set the slope
            lo, hi = _winsor_bounds(X[np.isfinite(X[:, j]), j])
            X[:, j], q[j] = np.clip(X[:, j], lo, hi), min(max(q[j], lo), hi)
        y = np.minimum(y, _winsor_bounds(y)[1])  # only the bad side: the best finals are never clipped
        enc = self._encode(ps, run.params)

        fits: list[tuple[_LooRidge, bool, bool]] = []  # (fit, uses the drop, uses the params)
        for use_drop in (False, True) if then is not None else (False,):
            cols = [0, 1] if use_drop else [0]
            ok = np.isfinite(X[:, cols]).all(1)
            if ok.sum() < self.min_finished:
                continue
            fits.append((_LooRidge(X[ok][:, cols], y[ok], q[cols]), use_drop, False))
            if enc is not None and ok.sum() >= enc[0].shape[1] + len(cols) + 1 + self.params_min_extra:
                fits.append((_LooRidge(np.column_stack([X[ok][:, cols], enc[0][ok]]), y[ok],
                                       np.concatenate([q[cols], enc[1]])), use_drop, True))
        usable = [ft for ft in fits if ft[0].ok]
        if not usable:
            return None
        fit, use_drop, use_params = min(usable, key=lambda ft: ft[0].loo_rmse)
        rho = fit.rank_correlation()
        if not math.isfinite(rho) or rho < self.min_rank_correlation:
            return None
        from scipy import stats  # here: importing the campaign stays quick

        t = float(stats.t.ppf(self.confidence, max(fit.n - fit.dof, 1)))
        optimistic = fit.predicted - t * fit.loo_rmse * math.sqrt(1.0 + fit.leverage)
        if self.top_runs:  # the model underrates winners by this much: so might it this run
            optimistic -= fit.top_bias(self.top_runs)
        return Prediction(f, signal, latest, sign * fit.predicted, sign * optimistic, sign * incumbent, fit.n, rho,
                          use_params, back if use_drop else None, now - then if use_drop and then is not None else None)

    def _signal(self, run: RunCurve, objective: Objective) -> str | None:
        if self.signal is not None:
            return self.signal
        for p in reversed(run.points):
            values = getattr(p, "values", None)
            if isinstance(values, Mapping) and values:
                return objective.metric if objective.metric in values else next(iter(values))
        return None

    def _encode(self, finished: Sequence[Mapping[str, Any]],
                params: Mapping[str, Any]) -> tuple[np.ndarray, np.ndarray] | None:
        """(n, d) encoded params of the finished runs and (d,) of the run; categoricals one-hot.
        None without a space or when any configuration does not fit it (then: the value alone)."""
        if self.space is None:
            return None
        try:
            rows = [self._row(p) for p in [*finished, params]]
        except (KeyError, ValueError, TypeError, ArithmeticError, InvalidCandidateError):
            return None
        m = np.array(rows, dtype=float)
        keep = m[:-1].std(0) > 1e-12  # params that vary among the finished runs
        if not keep.any() or not np.isfinite(m).all():
            return None
        return m[:-1, keep], m[-1, keep]

    def _row(self, params: Mapping[str, Any]) -> list[float]:
        assert self.space is not None
        row: list[float] = []
        for p in self.space:
            if isinstance(p, CategoricalParam):
                hot = [0.0] * len(p.choices)
                hot[p.index(params[p.name])] = 1.0
                row += hot
            else:
                row.append(p.encode(params[p.name]))
        return row


def _winsor_bounds(v: np.ndarray) -> tuple[float, float]:
    if v.size == 0:
        return -math.inf, math.inf
    med = float(np.median(v))
    mad = 1.4826 * float(np.median(np.abs(v - med)))
    if mad <= 0.0:
        return -math.inf, math.inf
    return med - _WINSOR_MADS * mad, med + _WINSOR_MADS * mad


class _LooRidge:
    """Ridge regression with an unpenalized intercept on standardized features, its exact
    leave-one-out residuals (hat matrix), and a prediction with its leverage at one query point.

    ``X``: (n, d) features, ``y``: (n,) targets, ``q``: (d,) query point.
    """

    def __init__(self, X: np.ndarray, y: np.ndarray, q: np.ndarray) -> None:
        n, d = X.shape
        self.n, self.dof = n, d + 1
        mu, sd = X.mean(0), X.std(0)
        self.ok = bool(n > self.dof + 1 and (sd > 1e-12).all())
        if not self.ok:
            return
        Z = np.column_stack([np.ones(n), (X - mu) / sd])
        zq = np.concatenate([[1.0], (q - mu) / sd])
        penalty = np.full(d + 1, _RIDGE * n)
        penalty[0] = 0.0
        A_inv = np.linalg.inv(Z.T @ Z + np.diag(penalty))
        beta = A_inv @ Z.T @ y
        h = np.einsum("ij,jk,ik->i", Z, A_inv, Z)
        resid = y - Z @ beta
        self.h = np.minimum(h, 1.0 - 1e-6)
        self.loo = y - resid / (1.0 - self.h)  # each run predicted without itself
        self.y = y
        self.loo_rmse = float(np.sqrt(np.mean((y - self.loo) ** 2)))
        self.predicted = float(zq @ beta)
        self.leverage = float(zq @ A_inv @ zq)
        self.loo_rmse = max(self.loo_rmse, 1e-9 * (1.0 + float(np.abs(y).max())))  # an exact fit: no zero width
        self.ok = math.isfinite(self.loo_rmse) and math.isfinite(self.predicted)

    def top_bias(self, k: int) -> float:
        """How much worse than their finals the model predicts the ``k`` best runs (each without
        itself), on average; 0 when it does not: regression to the mean underrates the winners."""
        top = np.argsort(self.y, kind="stable")[:k]
        return max(0.0, float(np.mean(self.loo[top] - self.y[top])))

    def rank_correlation(self) -> float:
        from scipy import stats

        rho = stats.spearmanr(self.loo, self.y).statistic
        return float(rho) if np.isfinite(rho) else math.nan
