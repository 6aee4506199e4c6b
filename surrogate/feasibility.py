"""Where experiments fail, how much memory they need, and how long they run.

Three cheap models over encoded configurations (rows of the one-hot encoding of
:class:`surrogate.gp.OneHotEncoder`, i.e. points of ``[0, 1]^D``), all plain numpy so that they
cost milliseconds next to the GP:

- :class:`SuccessClassifier`: P(success | x) by kernel smoothing of success/failure labels with a
  Beta prior (a Nadaraya-Watson estimate of a Bernoulli rate). A GP classifier would need
  variational inference at every decision; this estimate is closed-form, calibrated towards the
  campaign's overall success rate where there is no nearby evidence, and its single lengthscale
  is chosen by leave-one-out likelihood. Failures are rare and local (a learning rate too high,
  a model too large), which is exactly what a kernel smoother sees.
- :class:`MemoryModel`: ridge regression of log(peak_vram_mb) on the encoded config, with a
  Gaussian residual: P(peak <= worker memory). Memory grows multiplicatively with width, depth
  and batch size, so log-linear in the (log-scaled) encoded parameters is the right first model.
  An OOM on hardware whose memory is known enters as a pseudo-observation just above that limit.
- :class:`DurationModel`: kernel-smoothed log duration, plus a per-hardware offset, for the
  cost of an experiment (worker $/h x predicted duration).
- :class:`VariantSuccessModel`: P(success | x, code variant): the classifier per line of code,
  times the chance that the variant's code runs at all (a variant that crashed on its first run
  is probably broken; the unchanged code at the same params is not). Without variants it is
  :class:`SuccessClassifier`, number for number.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
from scipy.special import ndtr

from hybrid.history import failure_of, is_oom
from hybrid.types import ExperimentState, FailureKind
from surrogate.lineage import Lineage

_LENGTHSCALES = (0.05, 0.1, 0.2, 0.4, 0.8)  # candidate lengthscales (unit cube units, per sqrt(D))


def _sqdist(A: np.ndarray, B: np.ndarray) -> np.ndarray:
    """(n, m) squared Euclidean distances between rows of A (n, D) and B (m, D)."""
    d = (A * A).sum(1)[:, None] + (B * B).sum(1)[None, :] - 2.0 * A @ B.T
    return np.maximum(d, 0.0)


class SuccessClassifier:
    """P(success | x): a kernel-weighted Beta posterior around the global success rate.

    p(x) = (a + sum_i k(x, x_i) s_i) / (a + b + sum_i k(x, x_i)), with k an RBF kernel,
    s_i = 1 for a success, and a + b = ``prior_strength`` pseudo-observations at the overall rate.
    """

    def __init__(self, prior_strength: float = 2.0, max_points: int = 600, seed: int = 0) -> None:
        self.prior_strength = prior_strength
        self.max_points = max_points  # lengthscale selection runs on at most this many points
        self.seed = seed
        self.X = np.zeros((0, 0))
        self.s = np.zeros(0)
        self.lengthscale = 0.2
        self.rate = 1.0

    def fit(self, X: np.ndarray, success: np.ndarray) -> SuccessClassifier:
        """X: (n, D) encoded configs; success: (n,) bools."""
        self.X, self.s = np.asarray(X, float), np.asarray(success, float)
        n = len(self.s)
        self.rate = (self.s.sum() + 1.0) / (n + 2.0)
        if n == 0 or self.s.min() == 1.0:
            return self  # nothing failed: p = 1 everywhere (see p_success)
        idx = np.arange(n)
        if n > self.max_points:
            idx = np.random.default_rng(self.seed).choice(n, self.max_points, replace=False)
        d2 = _sqdist(self.X[idx], self.X[idx])
        np.fill_diagonal(d2, np.inf)  # leave one out
        s = self.s[idx]
        scale = math.sqrt(max(self.X.shape[1], 1))
        best = -np.inf
        for ls in _LENGTHSCALES:
            p = self._smooth(np.exp(-d2 / (2 * (ls * scale) ** 2)), s)
            ll = float(np.sum(s * np.log(p) + (1 - s) * np.log1p(-p)))
            if ll > best:
                best, self.lengthscale = ll, ls * scale
        return self

    def _smooth(self, K: np.ndarray, s: np.ndarray) -> np.ndarray:
        a, b = self.prior_strength * self.rate, self.prior_strength * (1 - self.rate)
        return np.clip((a + K @ s) / (a + b + K.sum(1)), 1e-6, 1 - 1e-6)

    def p_success(self, Xc: np.ndarray) -> np.ndarray:
        """(m,) probabilities for the (m, D) encoded candidates."""
        Xc = np.asarray(Xc, float)
        if len(self.s) == 0 or self.s.min() == 1.0:
            return np.ones(len(Xc))
        K = np.exp(-_sqdist(Xc, self.X) / (2 * self.lengthscale**2))
        return self._smooth(K, self.s)


class MemoryModel:
    """log(peak_vram_mb) ~ ridge regression on the encoded config, Gaussian residual."""

    def __init__(self, memory_mb: Mapping[str, float] | None = None, ridge: float = 1e-2,
                 oom_margin: float = 1.15, min_points: int = 3) -> None:
        self.memory_mb = dict(memory_mb or {})  # hardware label -> usable memory (MB)
        self.ridge = ridge
        self.oom_margin = oom_margin  # an OOM on known memory L counts as peak = L x margin
        self.min_points = min_points
        self.coef: np.ndarray | None = None
        self.sigma = 1.0

    def fit(self, X: np.ndarray, peak_mb: np.ndarray, oom_hardware: Sequence[str | None]) -> MemoryModel:
        """X: (n, D) encoded configs; peak_mb: (n,) peak memory or NaN when not reported;
        oom_hardware: per row, the hardware label of an OOM failure, else None."""
        X, peak = np.asarray(X, float), np.asarray(peak_mb, float).copy()
        for i, hw in enumerate(oom_hardware):
            if hw is not None and hw in self.memory_mb:
                peak[i] = self.memory_mb[hw] * self.oom_margin
        ok = np.isfinite(peak) & (peak > 0)
        self.coef = None
        if ok.sum() < self.min_points:
            return self
        F = np.hstack([np.ones((int(ok.sum()), 1)), X[ok]])
        y = np.log(peak[ok])
        A = F.T @ F + self.ridge * np.eye(F.shape[1])
        A[0, 0] -= self.ridge  # do not shrink the intercept
        self.coef = np.linalg.solve(A, F.T @ y)
        resid = y - F @ self.coef
        dof = max(len(y) - min(F.shape[1], len(y) - 1), 1)
        self.sigma = max(math.sqrt(float(resid @ resid) / dof), 0.05)
        return self

    def predict_mb(self, Xc: np.ndarray) -> np.ndarray | None:
        """(m,) predicted peak memory in MB, or None before enough data."""
        if self.coef is None:
            return None
        Xc = np.asarray(Xc, float)
        return np.exp(self.coef[0] + Xc @ self.coef[1:])

    def p_fits(self, Xc: np.ndarray, hardware: str) -> np.ndarray:
        """(m,) P(peak memory <= the memory of ``hardware``); 1 where unknown."""
        Xc = np.asarray(Xc, float)
        limit = self.memory_mb.get(hardware)
        if self.coef is None or limit is None:
            return np.ones(len(Xc))
        mu = self.coef[0] + Xc @ self.coef[1:]
        return ndtr((math.log(limit) - mu) / self.sigma)


class DurationModel:
    """Predicted wall-clock seconds of a config on a hardware label.

    log d = global mean + hardware offset + kernel-smoothed residual (shrunk to 0 far from data).
    """

    def __init__(self, lengthscale: float = 0.3, prior_weight: float = 1.0, default_s: float = 3600.0) -> None:
        self.lengthscale = lengthscale
        self.prior_weight = prior_weight
        self.default_s = default_s
        self.X = np.zeros((0, 0))
        self.resid = np.zeros(0)
        self.mean = math.log(default_s)
        self.offset: dict[str, float] = {}

    def fit(self, X: np.ndarray, duration_s: np.ndarray, hardware: Sequence[str]) -> DurationModel:
        X, logd = np.asarray(X, float), np.log(np.maximum(np.asarray(duration_s, float), 1.0))
        self.X, self.offset = X, {}
        if len(logd) == 0:
            self.resid = np.zeros(0)
            return self
        self.mean = float(logd.mean())
        hw = np.asarray(list(hardware), dtype=object)
        for label in set(hardware):
            self.offset[label] = float(logd[hw == label].mean()) - self.mean
        self.resid = logd - self.mean - np.array([self.offset[h] for h in hardware])
        return self

    def predict_s(self, Xc: np.ndarray, hardware: str) -> np.ndarray:
        """(m,) predicted seconds."""
        Xc = np.asarray(Xc, float)
        base = self.mean + self.offset.get(hardware, 0.0)
        if len(self.resid) == 0:
            return np.full(len(Xc), math.exp(base))
        scale = self.lengthscale * math.sqrt(max(Xc.shape[1], 1))
        K = np.exp(-_sqdist(Xc, self.X) / (2 * scale**2))
        smooth = (K @ self.resid) / (self.prior_weight + K.sum(1))
        return np.exp(base + smooth)


class VariantSuccessModel:
    """P(success | x, variant) = P(the params x run | the variant's line of code) x P(its code works).

    - Params: a :class:`SuccessClassifier` per chain (``surrogate.lineage``), fitted on the results
      of the variant's own code and its ancestors' (the unchanged code's included). A failure of
      variant A never lowers the unchanged code's or an unrelated variant's P(success), while the
      unchanged code's failure regions (a learning rate that diverges) hold for every variant.
    - Code: a variant is either broken (every run fails: a bug, a shape mismatch) or works (its runs
      fail as the params predict). P(broken) is 0 once one of its runs succeeded, else
      ``prior / (prior + (1 - prior) * prod_i q_i)`` over its failures i, with q_i = P(run i fails
      | works) = max(1 - p_parent(x_i), ``flaky``): a crash where the parent's code runs fine is
      strong evidence, one where the parent crashes too is little. The prior is the campaign's
      own rate of dead variants (tried, never succeeded), (1 + dead) / (4 + tried): 1/4 at first.
      With the defaults, a variant that crashed once where the parent's code runs has P(success)
      ~0.13, after a second crash ~0.007 (below the ranker's ``min_feasibility``).

    A failure whose ``evidence`` is False (a job the backend lost) says nothing about the code.
    """

    def __init__(self, lineage: Lineage | None = None, prior_strength: float = 2.0, flaky: float = 0.05,
                 seed: int = 0) -> None:
        self.lineage = lineage or Lineage()
        self.prior_strength = prior_strength
        self.flaky = flaky  # P(a working variant's run fails) at least, wherever it runs
        self.seed = seed
        self.X = np.zeros((0, 0))
        self.s = np.zeros(0, bool)
        self.variants: list[str | None] = []
        self.evidence = np.zeros(0, bool)
        self.prior_broken = 0.25
        self._classifiers: dict[tuple[str, ...], SuccessClassifier] = {}
        self._broken: dict[str, float] = {}

    def fit(self, X: np.ndarray, success: np.ndarray, variants: Sequence[str | None],
            evidence: np.ndarray | None = None) -> VariantSuccessModel:
        """X: (n, D) encoded configs; success: (n,) bools; variants: (n,) the code each ran;
        evidence: (n,) bools, False for failures that say nothing about the code (default: all)."""
        self.X, self.s = np.asarray(X, float), np.asarray(success, bool)
        self.variants = list(variants)
        self.evidence = np.ones(len(self.s), bool) if evidence is None else np.asarray(evidence, bool)
        self._classifiers, self._broken = {}, {}
        tried = {v for v, e in zip(self.variants, self.evidence, strict=True) if v is not None and e}
        alive = {v for v, ok in zip(self.variants, self.s, strict=True) if v is not None and ok}
        self.prior_broken = (1.0 + len(tried - alive)) / (4.0 + len(tried | alive))
        return self

    def _classifier(self, chain: tuple[str, ...]) -> SuccessClassifier:
        """The params' classifier of the code ``chain``: fitted on the runs of its ids and of the
        unchanged code."""
        if chain not in self._classifiers:
            rows = np.array([v is None or v in chain for v in self.variants], bool)
            self._classifiers[chain] = SuccessClassifier(self.prior_strength, seed=self.seed).fit(self.X[rows],
                                                                                               self.s[rows])
        return self._classifiers[chain]

    def p_broken(self, variant: str | None) -> float:
        """P(the variant's code fails whatever the params); 0 for the unchanged code."""
        if variant is None:
            return 0.0
        if variant not in self._broken:
            mine = np.array([v == variant for v in self.variants], bool)
            if (mine & self.s).any():
                self._broken[variant] = 0.0
            else:
                failed = mine & ~self.s & self.evidence
                p_parent = self._classifier(self.lineage.chain(variant)[1:]).p_success(self.X[failed])
                works = float(np.prod(np.maximum(1.0 - p_parent, self.flaky)))
                self._broken[variant] = self.prior_broken / (self.prior_broken + (1.0 - self.prior_broken) * works)
        return self._broken[variant]

    def p_success(self, Xc: np.ndarray, variants: Sequence[str | None]) -> np.ndarray:
        """(m,) probabilities for the (m, D) encoded candidates run with ``variants`` (m,)."""
        Xc = np.asarray(Xc, float)
        out = np.ones(len(Xc))
        for v in dict.fromkeys(variants):
            idx = np.array([u == v for u in variants], bool)
            out[idx] = self._classifier(self.lineage.chain(v)).p_success(Xc[idx]) * (1.0 - self.p_broken(v))
        return out


def lineage_columns(variants: Sequence[str | None], levels: Sequence[str | None], lineage: Lineage) -> np.ndarray:
    """(n, V - 1) 0/1 columns: row i has a 1 for each variant in the chain of ``variants[i]``
    (``levels[0]`` is the unchanged code and has no column). Appended to the encoded configs,
    they give a linear model (memory) an offset per edit, shared by the variants stacked on it."""
    col = {v: j for j, v in enumerate(levels[1:])}
    Z = np.zeros((len(variants), len(levels) - 1))
    for i, v in enumerate(variants):
        for u in lineage.chain(v):
            Z[i, col[u]] = 1.0
    return Z


def feasibility_data(history: Sequence, encode) -> dict[str, np.ndarray | list]:
    """Arrays the three models fit on, from finished experiments (CANCELLED ones carry no signal).

    ``encode``: configs -> (n, D) array. Returns X (n, D), success (n,) bool, peak_mb (n,) with NaN
    where not reported, oom_hardware (the label of an OOM failure, else None), duration_s, hardware,
    variant (the code each ran; None: unchanged), evidence (False for a job the backend lost).
    """
    rows = [e for e in history if e.result is not None
            and e.result.state in (ExperimentState.DONE, ExperimentState.CRASHED, ExperimentState.TIMEOUT)]
    X = encode([e.params for e in rows])
    success = np.array([e.result.state is ExperimentState.DONE for e in rows], bool)
    peak = np.array([float(e.result.metrics.get("peak_vram_mb", np.nan)) for e in rows], float)
    oom = [e.result.hardware if is_oom(e) else None for e in rows]
    return {"X": X, "success": success, "peak_mb": peak, "oom_hardware": oom,
            "duration_s": np.array([e.result.duration_s for e in rows], float),
            "hardware": [e.result.hardware for e in rows], "variant": [e.variant for e in rows],
            "evidence": np.array([failure_of(e) is not FailureKind.LOST for e in rows], bool)}
