"""GP response slices for findings.md: the predicted objective along one parameter, the others fixed.

The GP itself is the surrogate's (``surrogate.gp.GPSurrogate``); reports and the surrogate are
siblings that never import each other, so the caller (the campaign, or the ``hybrid report``
command) hands its class in as ``make_gp``. :class:`ResponseGP` says what is used of it.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

import numpy as np

from hybrid import history
from hybrid.reports.plots import Slice
from hybrid.space import IntParam, Param, SearchSpace
from hybrid.types import Experiment, Objective

__all__ = ["FittedGP", "GPFactory", "ResponseGP", "gp_slices"]

# the slices' GP: hyperparameters fitted on this many results, predictions conditioned on at most that many
_GP_FIT_POINTS, _GP_MAX_POINTS = 200, 400


class FittedGP(Protocol):
    """A GP fitted on a campaign's results (``surrogate.gp.FittedSurrogate``)."""

    target_hardware: str  # where it predicts

    @property
    def n_observations(self) -> int: ...

    def marginal(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """X: (m, d) encoded configurations -> ((m,) mean, (m,) variance) of the loss (sign * metric)."""
        ...


class Encoder(Protocol):
    def encode_many(self, params: Sequence[Mapping[str, Any]]) -> np.ndarray: ...


class ResponseGP(Protocol):
    """What the slices use of ``surrogate.gp.GPSurrogate``."""

    min_observations: int
    encoder: Encoder

    def update(self, history: Sequence[Experiment]) -> FittedGP | None: ...


# ``GPSurrogate(space, objective, target_hardware, **settings)``
GPFactory = Callable[..., ResponseGP]


def _slice_grid(p: Param, n: int = 61) -> list[Any]:
    if isinstance(p, IntParam):
        values = p.values()
        if len(values) <= n:
            return list(values)
    return sorted({p.decode(u) for u in np.linspace(0.0, 1.0, n)})


def gp_slices(make_gp: GPFactory, space: SearchSpace, objective: Objective, target_hardware: str | None,
              exps: Sequence[Experiment], names: Sequence[str], at: Experiment) -> tuple[list[Slice], str]:
    """Posterior mean ± 2 sd of the objective along each named numeric parameter, the others fixed
    at ``at``'s config, on the hardware the GP judges on. ``exps``: the experiments that fit the
    space. Returns (slices, note)."""
    import torch  # the GP's own dependency: its random state is forked so a report changes nothing outside

    gp = make_gp(space, objective, target_hardware, min_observations=5, max_fit=_GP_FIT_POINTS,
                 max_train=_GP_MAX_POINTS, fit_maxiter=40, seed=0, threads=1)
    with torch.random.fork_rng(devices=[]), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.manual_seed(0)
        fitted = gp.update(exps)
    if fitted is None:
        why = next((str(w.message) for w in caught if "GP fit failed" in str(w.message)), "")
        return [], why or f"the GP needs at least {gp.min_observations} successful results"
    obs = history.successes(exps, objective)
    slices = []
    for name in names:
        p = space.params[name]
        xs = _slice_grid(p)
        mean, var = fitted.marginal(gp.encoder.encode_many([{**at.params, name: x} for x in xs]))
        on_hw = [(e.params[name], v) for e, v in obs if e.hardware == fitted.target_hardware]
        off_hw = [(e.params[name], v) for e, v in obs if e.hardware != fitted.target_hardware]
        slices.append(Slice(name, np.array(xs, dtype=float), -objective.sign() * mean, np.sqrt(var),
                            bool(getattr(p, "log", False)), float(at.params[name]), fitted.target_hardware,
                            np.array([x for x, _ in on_hw], dtype=float), np.array([v for _, v in on_hw]),
                            np.array([x for x, _ in off_hw], dtype=float), np.array([v for _, v in off_hw])))
    used = min(fitted.n_observations, _GP_MAX_POINTS)
    return slices, (f"GP on {used} of the {fitted.n_observations} successful results, hyperparameters fitted on "
                    f"{min(used, _GP_FIT_POINTS)}")
