"""Scrambled Sobol' points: space-filling exploration that needs no results at all."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

from hybrid.proposers.base import Proposer, seen_keys
from hybrid.space import SearchSpace
from hybrid.types import Candidate, Experiment, Objective

# Draw at most this many points per candidate asked for before giving up: a small discrete space
# (ints, categoricals) can be exhausted, and then every further point is a duplicate.
_DRAWS_PER_CANDIDATE = 64


class SobolProposer(Proposer):
    """Points of one scrambled Sobol' sequence over the unit cube, decoded by the space.

    Stateless: the sequence resumes after as many points as the history has ``sobol``
    experiments, so a campaign rebuilt from its store continues the same sequence. Points that
    decode to a configuration already tried or in flight (ints and categoricals collide) are
    skipped by drawing further. Candidates the campaign did not schedule are offered again on the
    next call, since only scheduled experiments move the sequence on.

    Args:
        scramble: Owen-scramble the sequence with ``seed`` (different seeds, different points).
            Unscrambled, the first point is the all-low corner.
        name: the config node's short name; accepted and ignored.
    """

    name = "sobol"

    def __init__(
        self,
        space: SearchSpace,
        objective: Objective,
        seed: int = 0,
        scramble: bool = True,
        name: str | None = None,
    ) -> None:
        super().__init__(space, objective, seed)
        self.scramble = bool(scramble)

    def _engine(self) -> Any:
        from scipy.stats import qmc

        try:
            return qmc.Sobol(len(self.space), scramble=self.scramble, rng=self.seed)
        except TypeError:  # scipy < 1.15 names the argument `seed`
            return qmc.Sobol(len(self.space), scramble=self.scramble, seed=self.seed)

    def propose(self, history: Sequence[Experiment], n: int) -> list[Candidate]:
        if n <= 0:
            return []
        index = sum(1 for e in history if e.source == self.name)
        engine = self._engine()
        if index:  # scipy's fast_forward(0) overflows
            engine.fast_forward(index)
        seen = seen_keys(self.space, history)
        out: list[Candidate] = []
        budget = _DRAWS_PER_CANDIDATE * n
        while len(out) < n and budget > 0:
            size = min(max(n - len(out), 8), budget)
            with warnings.catch_warnings():
                # we draw arbitrary counts on purpose: the sequence continues across calls
                warnings.filterwarnings("ignore", message="The balance properties of Sobol", category=UserWarning)
                points = engine.random(size)
            budget -= size
            for u in points:
                params = self.space.validate(self.space.decode(u))
                key = self.space.key(params)
                if key not in seen:
                    seen.add(key)
                    rationale = f"Sobol point #{index} (seed {self.seed})"
                    out.append(Candidate(params=params, source=self.name, rationale=rationale))
                    if len(out) == n:
                        break
                index += 1
        return out
