"""Local perturbations around the best configurations so far: the trust region of the pool.

Global proposers (TPE, Sobol) rarely land close enough to a good incumbent to refine it, and in
ten or more dimensions a GP ranking a space-filling pool has little to choose from near the
optimum. This source fills that gap the way TuRBO-style methods and BoTorch's own candidate
generators do: it perturbs the incumbents in the space's encoded unit cube.

Each candidate:

- takes a centre: the best successful experiment with probability ``p_best``, otherwise one of
  the ``n_centers`` best, uniformly (noise can make the single best a lucky draw);
- moves a random subset of the parameters: how many is drawn uniformly from 1 to d, which
  ones uniformly, so a pool holds single-parameter sweeps (the moves a researcher makes, and
  what keeps local search working in many dimensions) as well as moves of everything at once;
- numeric parameters move by a Gaussian step whose scale is drawn log-uniformly from
  ``[min_scale, max_scale]`` of the unit range and reflected at the bounds, so one pool holds
  both fine and coarse steps and the surrogate (or the campaign) chooses between them;
- categorical parameters that move take another choice, uniformly.

Stateless and deterministic: the random stream is seeded from ``seed`` and the history's
length, so a rebuilt proposer given the same history proposes the same candidates. With no
successful result yet, the centre is the space's defaults (the baseline).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from hybrid.errors import ConfigError
from hybrid.history import ranked
from hybrid.proposers.base import Proposer, seen_keys
from hybrid.space import CategoricalParam, SearchSpace
from hybrid.types import Candidate, Experiment, Objective

# Draw at most this many perturbations per candidate asked for: near a corner of a small
# discrete space most perturbations decode to configurations already tried.
_DRAWS_PER_CANDIDATE = 32


def _check(name: str, value: float, low: float, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
        raise ConfigError(f"proposer.options.local.{name}: expected a number in [{low:g}, {high:g}], got {value!r}")
    return float(value)


class LocalProposer(Proposer):
    """Gaussian perturbations of the best configurations, a few parameters at a time.

    Args:
        n_centers: how many of the best successful experiments serve as centres.
        p_best: probability that a candidate's centre is the single best.
        min_scale, max_scale: range (fractions of each parameter's encoded unit range) of the
            step scale, drawn log-uniformly per candidate.
        max_move: at most this many parameters move per candidate (None: all d may).
        name: the config node's short name; accepted and ignored.
    """

    name = "local"

    def __init__(
        self,
        space: SearchSpace,
        objective: Objective,
        seed: int = 0,
        n_centers: int = 3,
        p_best: float = 0.6,
        min_scale: float = 0.01,
        max_scale: float = 0.25,
        max_move: int | None = None,
        name: str | None = None,
    ) -> None:
        super().__init__(space, objective, seed)
        if isinstance(n_centers, bool) or not isinstance(n_centers, int) or n_centers < 1:
            raise ConfigError(f"proposer.options.local.n_centers: expected an integer >= 1, got {n_centers!r}")
        self.n_centers = n_centers
        self.p_best = _check("p_best", p_best, 0.0, 1.0)
        self.min_scale = _check("min_scale", min_scale, 1e-6, 1.0)
        self.max_scale = _check("max_scale", max_scale, self.min_scale, 1.0)
        if max_move is not None and (isinstance(max_move, bool) or not isinstance(max_move, int) or max_move < 1):
            raise ConfigError(f"proposer.options.local.max_move: expected an integer >= 1 or null, got {max_move!r}")
        self.max_move = max_move

    def centers(self, history: Sequence[Experiment]) -> list[tuple[Experiment | None, dict]]:
        """The best successful experiments, best first (ties: earliest); the defaults if none."""
        best: list[tuple[Experiment | None, dict]] = []
        keys: set[tuple] = set()
        for e in ranked(history, self.objective):  # one centre per configuration (a re-run of the best is not a new centre)
            key = self.space.key(e.params)
            if key not in keys:
                keys.add(key)
                best.append((e, dict(e.params)))
            if len(best) == self.n_centers:
                break
        return best or [(None, self.space.defaults())]

    def propose(self, history: Sequence[Experiment], n: int) -> list[Candidate]:
        if n <= 0:
            return []
        params = list(self.space)
        d = len(params)
        categorical = np.array([isinstance(p, CategoricalParam) for p in params])
        centers = self.centers(history)
        encoded = [self.space.encode(c) for _, c in centers]
        rng = np.random.default_rng([self.seed, len(history), 0x10CA1])
        most = d if self.max_move is None else min(self.max_move, d)
        lo, hi = math.log(self.min_scale), math.log(self.max_scale)
        seen = seen_keys(self.space, history)
        out: list[Candidate] = []
        for _ in range(_DRAWS_PER_CANDIDATE * n):
            if len(out) == n:
                break
            i = 0 if len(centers) == 1 or rng.random() < self.p_best else int(rng.integers(len(centers)))
            u = encoded[i].copy()
            move = np.zeros(d, bool)
            move[rng.choice(d, size=int(rng.integers(1, most + 1)), replace=False)] = True
            scale = math.exp(rng.uniform(lo, hi))
            step = rng.normal(0.0, scale, d)
            x = u + step
            x = np.abs(x)  # reflect at 0 ...
            x = 1.0 - np.abs(1.0 - x)  # ... and at 1
            u = np.where(move & ~categorical, np.clip(x, 0.0, 1.0), u)
            for j in np.flatnonzero(move & categorical):
                k = len(params[j].choices)
                if k > 1:
                    cur = min(int(u[j] * k), k - 1)
                    other = int(rng.integers(k - 1))
                    u[j] = ((other + (other >= cur)) + 0.5) / k
            cand = self.space.validate(self.space.decode(u))
            key = self.space.key(cand)
            if key in seen:
                continue
            seen.add(key)
            exp = centers[i][0]
            moved = [params[j].name for j in np.flatnonzero(move)]
            where = f"around {exp.id}" if exp is not None else "around the defaults"
            rank = "best" if i == 0 else f"#{i + 1}"
            rationale = (f"local step {where} ({rank}): moved {', '.join(moved)} "
                         f"with scale {scale:.3f} of the range")
            out.append(Candidate(params=cand, source=self.name, rationale=rationale))
        return out
