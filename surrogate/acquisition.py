"""Ranking a finite candidate pool into a wave of (candidate, worker) assignments.

``surrogate=none`` uses :class:`InOrderRanker`: the proposer's own order decides, which is the
classical behaviour (Optuna, Sobol...) and the baseline the GP ranker is measured against.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence

from backends.base import Worker
from hybrid.space import SearchSpace
from hybrid.types import Candidate, Experiment, Objective


class Ranker(ABC):
    """Chooses which candidates run next, and where."""

    @abstractmethod
    def pool_size(self, n_free: int) -> int:
        """How many candidates to ask the proposers for when ``n_free`` workers are free."""

    @abstractmethod
    def rank(
        self,
        pool: Sequence[Candidate],
        history: Sequence[Experiment],
        pending: Sequence[Experiment],
        workers: Sequence[Worker],
    ) -> list[tuple[Candidate, Worker]]:
        """Pick at most ``len(workers)`` candidates from ``pool`` and assign each a worker.

        ``history``: every experiment so far (finished ones carry results); ``pending``: those
        still running, whose outcomes are unknown but must not be chosen again.
        """


class InOrderRanker(Ranker):
    """No model: the first candidates go to the free workers in order."""

    def __init__(self, space: SearchSpace | None = None, objective: Objective | None = None, seed: int = 0,
                 target_hardware: str | None = None, name: str = "none") -> None:
        self.name = name

    def pool_size(self, n_free: int) -> int:
        return n_free

    def rank(self, pool, history, pending, workers):
        return list(zip(pool, workers, strict=False))
