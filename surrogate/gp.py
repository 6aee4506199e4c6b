"""The GP surrogate: fit on encoded configurations, predict the objective on the target hardware.

- Inputs: :class:`OneHotEncoder`, the SearchSpace's unit-cube coordinate for every float/int
  parameter and one 0/1 column per choice of a categorical (never an ordinal code: "SL" is not
  between "L" and "SSSL"). An ARD kernel gives every column its own lengthscale.
- Outputs: ``y = -sign * value`` (always maximized) of successful results only; a crash's metric
  never enters. Standardized, noise inferred (duplicates are just repeated noisy observations).
- Hardware as a task: with successes on more than one hardware label, a ``MultiTaskGP`` (task
  column = hardware index, per-task constant mean so hardware offsets are learned, per-task
  noise, a positive task correlation) predicting on the target hardware only.
- Speed: hyperparameters are fitted on a capped subsample (``max_fit`` points) every
  ``refit_every`` new results, warm-started from the previous fit; in between, the model is
  rebuilt on all data with those hyperparameters fixed, which costs one Cholesky. Above
  ``max_train`` points the model conditions on a subsample: every task's best quarter of the cap,
  then a uniform draw from the rest (the region that matters for improvement stays dense). Everything runs in float64 with exact Cholesky (GPyTorch otherwise switches to
  iterative solvers above 800 points).
- Code variants as a dimension whose levels appear during the campaign: once any result, or any
  configuration the caller asks about (``update(history, variants=...)``), carries a variant, the
  inputs get one more column, the variant's level (None, the unchanged code, is level 0), and the
  parameter kernel is multiplied by :class:`LineageKernel` (variants as a tree: a variant adds an
  unknown change of its own to its parent's response). A variant without results is predicted
  like its parent, with more variance. Without variants nothing changes: the same model, the same
  numbers.
"""

from __future__ import annotations

import contextlib
import time
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import gpytorch
import numpy as np
import torch
from botorch.fit import fit_gpytorch_mll
from botorch.models import MultiTaskGP, SingleTaskGP
from botorch.models.model import Model
from botorch.models.utils.gpytorch_modules import get_covar_module_with_dim_scaled_prior
from botorch.posteriors.gpytorch import GPyTorchPosterior
from gpytorch.constraints import Positive
from gpytorch.distributions import MultivariateNormal
from gpytorch.kernels import Kernel
from gpytorch.mlls import ExactMarginalLogLikelihood
from gpytorch.priors import GammaPrior
from torch import Tensor

from hybrid.errors import ConfigError
from hybrid.history import judged_label, observed
from hybrid.space import CategoricalParam, SearchSpace
from hybrid.types import Experiment, Objective
from surrogate.lineage import Lineage

DTYPE = torch.float64


@contextlib.contextmanager
def exact_gp() -> Iterator[None]:
    """Exact Cholesky solves whatever n (GPyTorch's default switches to CG above 800 points)."""
    with gpytorch.settings.max_cholesky_size(100_000), gpytorch.settings.fast_pred_var(False):
        yield


@contextlib.contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """Run with ``n`` intra-op threads, then restore. The GP's matrices are small: with other busy
    threads in the process (or other processes on the cores) a 2-thread BLAS call waits for a
    descheduled partner, which made fits 5-20x slower than one thread on the 2-core test box."""
    old = torch.get_num_threads()
    if n:
        torch.set_num_threads(int(n))
    try:
        yield
    finally:
        torch.set_num_threads(old)


class OneHotEncoder:
    """Configurations <-> points of ``[0, 1]^D``: numeric params keep the SearchSpace coordinate,
    a categorical with k choices becomes k one-hot columns."""

    def __init__(self, space: SearchSpace) -> None:
        self.space = space
        self.columns: list[str] = []
        self.slices: dict[str, slice] = {}
        for p in space:
            start = len(self.columns)
            if isinstance(p, CategoricalParam):
                self.columns += [f"{p.name}={c}" for c in p.choices]
            else:
                self.columns.append(p.name)
            self.slices[p.name] = slice(start, len(self.columns))

    @property
    def dim(self) -> int:
        return len(self.columns)

    def encode(self, params: Mapping[str, Any]) -> np.ndarray:
        """A (D,) array."""
        x = np.zeros(self.dim)
        for p in self.space:
            sl = self.slices[p.name]
            if isinstance(p, CategoricalParam):
                x[sl.start + p.index(params[p.name])] = 1.0
            else:
                x[sl.start] = p.encode(params[p.name])
        return x

    def encode_many(self, configs: Sequence[Mapping[str, Any]]) -> np.ndarray:
        """An (n, D) array."""
        if not configs:
            return np.zeros((0, self.dim))
        return np.stack([self.encode(c) for c in configs])

    def decode(self, x: Sequence[float] | np.ndarray) -> dict[str, Any]:
        """The configuration of a (D,) point; a categorical takes its largest column."""
        x = np.asarray(x, dtype=float).reshape(-1)
        out: dict[str, Any] = {}
        for p in self.space:
            sl = self.slices[p.name]
            if isinstance(p, CategoricalParam):
                out[p.name] = p.choices[int(np.argmax(x[sl]))]
            else:
                out[p.name] = p.decode(x[sl.start])
        return out


@dataclass(frozen=True)
class TrainingData:
    """Successful results: X (n, D) encoded configs (D + 1 columns, the last the variant's level,
    once the model has a variant dimension), y (n,) = -sign * value, hardware (n,), variant (n,)."""

    X: np.ndarray
    y: np.ndarray
    hardware: list[str]
    variant: list[str | None]


def training_data(history: Sequence[Experiment], objective: Objective, encoder: OneHotEncoder) -> TrainingData:
    # successes, and pruned runs at the rule's optimistic bound on their final (partial information):
    # never a crash's metric
    rows = [(e, observed(e, objective)) for e in history]
    rows = [(e, v) for e, v in rows if v is not None]
    return TrainingData(
        X=encoder.encode_many([e.params for e, _ in rows]),
        y=np.array([-objective.sign() * v for _, v in rows], dtype=float),
        hardware=[e.result.hardware if e.result is not None else e.hardware for e, _ in rows],
        variant=[e.variant for e, _ in rows],
    )


def _subsample(y: np.ndarray, tasks: np.ndarray, cap: int, rng: np.random.Generator) -> np.ndarray:
    """At most ``cap`` row indices: every task's best rows first, then a uniform sample."""
    n = len(y)
    if n <= cap:
        return np.arange(n)
    labels = np.unique(tasks)
    per_task = max(cap // (4 * len(labels)), 1)
    keep: list[int] = []
    for t in labels:
        rows = np.flatnonzero(tasks == t)
        keep += rows[np.argsort(-y[rows])[:per_task]].tolist()
    rest = np.setdiff1d(np.arange(n), keep)
    keep += rng.choice(rest, cap - len(keep), replace=False).tolist()
    return np.sort(np.array(keep))


class FittedSurrogate:
    """A GP ready to predict on the target hardware. ``model.posterior`` takes (b) x q x D inputs
    (no task column; D + 1 with the variant's level when ``levels`` is set) and returns the
    objective in y units (maximized).

    ``levels``: the variant dimension's levels (None first: the unchanged code), or None when the
    model has no variant dimension. :meth:`inputs` encodes (params, variant) pairs for it.
    """

    def __init__(self, model: Model, data: TrainingData, target_hardware: str, refit: bool, fit_seconds: float,
                 encoder: OneHotEncoder | None = None, levels: list[str | None] | None = None):
        self.model = model
        self.data = data
        self.target_hardware = target_hardware
        self.refit = refit
        self.fit_seconds = fit_seconds
        self.encoder = encoder
        self.levels = levels

    @property
    def n_observations(self) -> int:
        return len(self.data.y)

    def inputs(self, params: Sequence[Mapping[str, Any]],
               variants: Sequence[str | None] | None = None) -> np.ndarray:
        """The model's (m, D) or (m, D + 1) inputs for configurations run with ``variants``
        (default: the unchanged code). A variant must be one of ``levels``: the caller names the
        variants it will ask about to ``GPSurrogate.update``."""
        assert self.encoder is not None, "FittedSurrogate.inputs needs the encoder"
        X = self.encoder.encode_many(params)
        if self.levels is None:
            if variants is not None and any(v is not None for v in variants):
                raise ValueError("this GP has no variant dimension: pass the variants to GPSurrogate.update")
            return X
        index = {v: i for i, v in enumerate(self.levels)}
        col = np.array([index[v] for v in (variants or [None] * len(X))], dtype=float)
        return np.hstack([X, col.reshape(-1, 1)])

    def _full(self, X: np.ndarray) -> np.ndarray:
        """Parameter-only points of a model with a variant dimension are the unchanged code's."""
        X = np.asarray(X, dtype=float)
        if self.levels is not None and X.shape[-1] == self.data.X.shape[1] - 1:
            return np.hstack([X, np.zeros((len(X), 1))])
        return X

    def marginal(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Posterior mean and variance, each (m,), at the (m, D) points (no joint covariance)."""
        Xt = torch.as_tensor(self._full(X), dtype=DTYPE)  # one m-point posterior; a batch of m x 1 is far slower
        with torch.no_grad(), exact_gp():
            post = self.model.posterior(Xt)
            mean, var = post.mean.reshape(-1), post.variance.reshape(-1)
        return mean.numpy(), var.clamp_min(0).numpy()

    def joint(self, X: np.ndarray) -> tuple[Tensor, Tensor]:
        """Joint posterior of the latent objective at the (m, D) points: mean (m,), covariance (m, m)."""
        Xt = torch.as_tensor(self._full(X), dtype=DTYPE)
        with torch.no_grad(), exact_gp():
            post = self.model.posterior(Xt)
            mean = post.mean.reshape(-1)
            covar = post.distribution.covariance_matrix.reshape(len(X), len(X))
        return mean, covar

    def noise_sd(self) -> float:
        """The run-to-run noise the GP inferred on the target hardware: the standard deviation of one
        observation around the latent objective, in metric units (the likelihood's noise, per task
        for a MultiTaskGP, scaled back from the standardized outputs)."""
        Xt = torch.as_tensor(self.data.X[:1], dtype=DTYPE)
        with torch.no_grad(), exact_gp():
            latent = self.model.posterior(Xt).variance.reshape(-1)
            observed = self.model.posterior(Xt, observation_noise=True).variance.reshape(-1)
        return float((observed - latent).clamp_min(0).sqrt()[0])

    def screen(self, max_rows: int = 256) -> np.ndarray:
        """Distinct configs among the ``max_rows`` best observed rows: (k, D). The posterior is
        smooth, so the best posterior means sit among the best observations."""
        order = np.argsort(-self.data.y, kind="stable")[:max_rows]
        return np.unique(self.data.X[order], axis=0)


def plausible_best(mean: np.ndarray, var: np.ndarray, max_n: int = 48, z: float = 3.0) -> np.ndarray:
    """Indices of the points that could plausibly be the maximum, best first (at most max_n).

    A point whose upper bound mean + z*sd is below another's lower bound is (almost) never the
    maximum, so it can leave qLogNEI's baseline without changing its value.
    """
    sd = np.sqrt(np.maximum(var, 0.0))
    plausible = np.flatnonzero(mean + z * sd >= np.max(mean - z * sd))
    return plausible[np.argsort(-(mean[plausible] + sd[plausible]), kind="stable")][:max_n]


class GPSurrogate:
    """Keeps a GP in step with the history: full refits every ``refit_every`` new successes,
    cheap fixed-hyperparameter updates in between. ``update`` returns None below
    ``min_observations`` successes, or when fitting fails (the caller then falls back).

    ``variant_parents``: code variant id -> the id it is stacked on (None: on the unchanged code),
    so that stacked variants share their parent's part of the model; ids it does not name are
    taken as built on the unchanged code. ``lineage`` may be replaced between updates.
    """

    def __init__(self, space: SearchSpace, objective: Objective, target_hardware: str | None = None,
                 refit_every: int = 10, min_observations: int = 3, max_fit: int = 300,
                 max_train: int = 1500, fit_maxiter: int = 60, seed: int = 0, threads: int | None = 1,
                 hardware: str = "task", variant_parents: Mapping[str, str | None] | None = None) -> None:
        if hardware not in ("task", "noise"):
            raise ConfigError(f"surrogate.hardware: {hardware!r} is not task or noise")
        self.hardware = hardware  # task: a MultiTaskGP over labels; noise: one GP, labels ignored
        self.encoder = OneHotEncoder(space)
        self.objective = objective
        self.target_hardware = target_hardware
        self.refit_every = max(int(refit_every), 1)
        self.min_observations = max(int(min_observations), 1)
        self.max_fit = max_fit  # hyperparameters are fitted on at most this many points
        self.max_train = max_train  # the predictive model conditions on at most this many
        self.fit_maxiter = fit_maxiter  # L-BFGS iterations per refit (warm-started)
        self.seed = seed
        self.threads = threads  # torch threads while fitting (see torch_threads)
        self.lineage = Lineage(variant_parents)
        self._state: dict[str, Tensor] | None = None  # fitted hyperparameters
        self._signature: tuple | None = None  # (task labels[, variants]): a new label or kernel forces a refit
        self._n_at_fit = 0

    def effective_target(self, hardware: Sequence[str]) -> str:
        """Where "best" is judged (``hybrid.history.judged_label``) from the successes' labels."""
        label = judged_label(hardware, self.target_hardware)
        assert label is not None, "effective_target needs at least one success"
        return label

    def update(self, history: Sequence[Experiment], variants: Sequence[str | None] = ()) -> FittedSurrogate | None:
        """Fit on ``history``'s successes. ``variants``: those the caller will ask about beyond the
        history's (a pool's, running experiments'): each gets a level of the variant dimension."""
        with torch_threads(self.threads):
            return self._update(history, variants)

    def _update(self, history: Sequence[Experiment], variants: Sequence[str | None] = ()) -> FittedSurrogate | None:
        t0 = time.perf_counter()
        data = training_data(history, self.objective, self.encoder)
        n = len(data.y)
        if n < self.min_observations or n == 0:
            return None
        target = self.effective_target(data.hardware)
        # hardware as noise (the ablation of benchmarks/hardware.py): one task, every result
        # taken as if run on the target
        labels = sorted(set(data.hardware)) if self.hardware == "task" else [target]
        tasks = np.array([labels.index(h) for h in data.hardware] if self.hardware == "task" else [0] * n)
        signature: tuple = tuple(labels)
        levels, shared, groups = None, None, tasks
        if any(v is not None for v in [*data.variant, *variants]):
            levels = self.lineage.levels([*data.variant, *variants])
            shared = self.lineage.shared(levels)
            level = np.array([levels.index(v) for v in data.variant])
            data = replace(data, X=np.hstack([data.X, level.reshape(-1, 1).astype(float)]))
            groups = tasks * len(levels) + level  # subsamples keep every (hardware, variant)'s best
            signature = (tuple(labels), "variants")
        refit = (self._state is None or signature != self._signature
                 or n - self._n_at_fit >= self.refit_every)
        rng = np.random.default_rng(self.seed + n)
        try:
            if refit:
                rows = _subsample(data.y, groups, self.max_fit, rng)
                fit_model = self._build(data.X[rows], data.y[rows], tasks[rows], labels, target, shared)
                if self._state is not None and signature == self._signature:
                    _load_hyperparameters(fit_model, self._state)
                self._fit(fit_model)
                self._state = _hyperparameters(fit_model)
                self._signature, self._n_at_fit = signature, n
            rows = _subsample(data.y, groups, self.max_train, rng)
            model = self._build(data.X[rows], data.y[rows], tasks[rows], labels, target, shared)
            _load_hyperparameters(model, self._state or {})
            model.eval()
        except Exception as err:  # numerical trouble must not stop a campaign
            warnings.warn(f"GP fit failed ({type(err).__name__}: {err}); ranking falls back to the "
                          "proposers' order for this decision", RuntimeWarning, stacklevel=2)
            self._state = None
            return None
        return FittedSurrogate(model, data, target, refit, time.perf_counter() - t0, self.encoder, levels)

    def _build(self, X: np.ndarray, y: np.ndarray, tasks: np.ndarray, labels: list[str], target: str,
               shared: np.ndarray | None = None) -> Model:
        """``shared``: the variant levels' (V, V) shared-edit counts when X's last column is the
        variant's level; the kernel is then the parameters' (BoTorch's default, on the other
        columns) times :class:`LineageKernel`."""
        Xt = torch.as_tensor(X, dtype=DTYPE)
        Yt = torch.as_tensor(y, dtype=DTYPE).unsqueeze(-1)
        covar = None
        if shared is not None:
            d = X.shape[1] - 1
            covar = (get_covar_module_with_dim_scaled_prior(ard_num_dims=d, active_dims=list(range(d)))
                     * LineageKernel(torch.as_tensor(shared, dtype=DTYPE), active_dims=[d]))
        if len(labels) == 1:
            return SingleTaskGP(Xt, Yt, covar_module=covar)
        task_col = torch.as_tensor(tasks, dtype=DTYPE).unsqueeze(-1)
        # the task covariance starts from a random draw: the seed's, not torch's global state
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            return MultiTaskGP(torch.cat([Xt, task_col], dim=-1), Yt, task_feature=-1, covar_module=covar,
                               output_tasks=[labels.index(target)], all_tasks=list(range(len(labels))))

    def _fit(self, model: Model) -> None:
        mll = ExactMarginalLogLikelihood(model.likelihood, model)
        with exact_gp(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # iteration-limit and jitter notices are expected here
            # One attempt: a warm start is a better initial point than prior samples, and a
            # failed fit keeps the previous hyperparameters (see update).
            fit_gpytorch_mll(mll, optimizer_kwargs={"options": {"maxiter": self.fit_maxiter}},
                             max_attempts=1, warning_handler=lambda w: True)


class LineageKernel(Kernel):
    """The variant factor of the GP's kernel: ``k(v, v') = 1 + edit_variance * shared(v, v')``.

    Brownian motion on the tree of variants (``surrogate.lineage``): the objective of params x with
    variant v is ``g(x) + sum of d_u(x) over v's chain``, g the unchanged code's response and each
    d_u the change variant u makes on top of its parent, independent GPs with the parameter kernel
    scaled by ``edit_variance``. Multiplied by the parameter kernel this is exactly that model's
    covariance, so a variant's results inform its stacked children (they share its d_u) more than
    unrelated variants (which share only g), and a variant without results is predicted like its
    parent with ``edit_variance`` more variance: uncertain, not the average of the others. One
    hyperparameter whatever the number of variants, so new levels never change the fitted state's
    shape; its Gamma(3, 4) prior (mode 0.5 of the standardized objective's variance) speaks while
    no variant has results: a code change is taken to matter about half as much as everything
    the parameters did so far.

    Inputs: ``... x n x 1`` level indices (as floats) into ``shared``, the ``V x V`` counts of
    edits two levels share (``Lineage.shared``).
    """

    has_lengthscale = False

    def __init__(self, shared: Tensor, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        # the levels belong to this decision's data, not to the fitted state: not in state_dict
        self.register_buffer("shared", shared, persistent=False)
        self.register_parameter("raw_edit_variance", torch.nn.Parameter(torch.zeros(1, dtype=shared.dtype)))
        self.register_constraint("raw_edit_variance", Positive())
        self.register_prior("edit_variance_prior", GammaPrior(3.0, 4.0), lambda m: m.edit_variance,
                            lambda m, v: m._set_edit_variance(v))
        self._set_edit_variance(0.5)

    @property
    def edit_variance(self) -> Tensor:
        return self.raw_edit_variance_constraint.transform(self.raw_edit_variance)

    def _set_edit_variance(self, value: Tensor | float) -> None:
        value = torch.as_tensor(value, dtype=self.raw_edit_variance.dtype).reshape(1)
        self.initialize(raw_edit_variance=self.raw_edit_variance_constraint.inverse_transform(value))

    def forward(self, x1: Tensor, x2: Tensor, diag: bool = False, last_dim_is_batch: bool = False,
                **params: Any) -> Tensor:
        i, j = x1[..., 0].round().long(), x2[..., 0].round().long()
        shared = self.shared[i, j] if diag else self.shared[i.unsqueeze(-1), j.unsqueeze(-2)]
        return 1.0 + self.edit_variance * shared


def _hyperparameters(model: Model) -> dict[str, Tensor]:
    """The model's state without the outcome transform (its buffers belong to the data it saw)."""
    return {k: v.detach().clone() for k, v in model.state_dict().items() if not k.startswith("outcome_transform")}


def _load_hyperparameters(model: Model, state: Mapping[str, Tensor]) -> None:
    own = model.state_dict()
    compatible = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    model.load_state_dict(compatible, strict=False)


class JointGaussianModel(Model):
    """A fixed joint Gaussian over N points, as a BoTorch model.

    Inputs are indices: ``X`` is a ``(b) x q x 1`` tensor whose entries are point numbers
    0..N-1 (as floats). The posterior at ``X`` is the sub-Gaussian of those points. Computing the
    GP's joint posterior once over baseline + pending + pool, and running the acquisition on
    this lookup, avoids re-solving against the n training points at every greedy step; it is
    also the "fixed means/variances" model the ranking tests use.

    mean: ``N``-dim; covar: ``N x N`` (positive semi-definite; a small jitter is added).
    """

    def __init__(self, mean: Tensor, covar: Tensor, jitter: float = 1e-8) -> None:
        super().__init__()
        self.register_buffer("mean", mean.to(DTYPE))
        covar = covar.to(DTYPE)
        covar = (covar + covar.T) / 2
        scale = float(covar.diagonal().mean().clamp_min(1e-12))
        self.register_buffer("covar", covar + jitter * scale * torch.eye(len(mean), dtype=DTYPE))

    @property
    def num_outputs(self) -> int:
        return 1

    @property
    def batch_shape(self) -> torch.Size:
        return torch.Size()

    def posterior(self, X: Tensor, output_indices: list[int] | None = None, observation_noise: bool = False,
                  posterior_transform: Any = None, **kwargs: Any) -> GPyTorchPosterior:
        idx = X[..., 0].round().long()  # (b) x q
        mean = self.mean[idx]
        covar = self.covar[idx.unsqueeze(-1), idx.unsqueeze(-2)]  # (b) x q x q
        post = GPyTorchPosterior(MultivariateNormal(mean, covar))
        return posterior_transform(post) if posterior_transform is not None else post
