"""PoolPrefetcher and the campaign's use of it: the next pool is made while results are awaited."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path

import pytest

from hybrid.pool import PoolPrefetcher
from hybrid.proposers.base import Proposer
from hybrid.types import Candidate, Experiment, ExperimentState
from surrogate.acquisition import Ranker

from .test_campaign import SPACE, ListProposer, make
from .test_campaign import target_dir as target_dir  # the fixture: a target dir holding faulty.py


class Recording(ListProposer):
    """ListProposer that records, per call, the thread and the history it was given."""

    def __init__(self, configs) -> None:
        super().__init__(configs)
        self.calls: list[tuple[str, int, list[tuple[str, ExperimentState]]]] = []

    def propose(self, history: Sequence[Experiment], n: int) -> list[Candidate]:
        self.calls.append((threading.current_thread().name, n, [(e.id, e.state) for e in history]))
        return super().propose(history, n)


class PoolRanker(Ranker):
    """Asks for a pool of 3 and takes the last candidates first (so the pool visibly matters)."""

    def __init__(self) -> None:
        self.pools: list[list[float]] = []

    def pool_size(self, n_free: int) -> int:
        return max(3, n_free)

    def rank(self, pool, history, pending, workers):
        self.pools.append([c.params["x"] for c in pool])
        return list(zip(reversed(list(pool)), workers, strict=False))


def test_snapshot_is_isolated_and_errors_reach_the_caller() -> None:
    class Boom(Proposer):
        def propose(self, history, n):
            raise RuntimeError("proposer bug")

    exp = Experiment("e0001", Candidate(SPACE.defaults(), "x"), "w0", "cpu", 1, ExperimentState.RUNNING)
    rec = Recording([{"x": 1.0}, {"x": 2.0}])
    pre = PoolPrefetcher(rec, background=True)
    pre.prepare([exp], 2)
    exp.state = ExperimentState.DONE  # the campaign moves on while the pool is being made
    assert [c.params["x"] for c in pre.take()] == [1.0, 2.0]
    assert rec.calls[0][0] == "hybrid-pool" and rec.calls[0][2] == [("e0001", ExperimentState.RUNNING)]
    assert pre.take() is None  # taken once
    bad = PoolPrefetcher(Boom(SPACE, rec.objective), background=True)
    bad.prepare([], 2)
    with pytest.raises(RuntimeError, match="proposer bug"):
        bad.take()


@pytest.mark.parametrize("prefetch", [True, "inline"])
def test_the_next_pool_is_made_after_the_dispatch_not_when_a_worker_frees(tmp_path: Path, target_dir, prefetch):
    configs = [{"x": float(i)} for i in (1, 2, 3, 4, 6, 7, 8, 9)]  # the baseline is x=5
    rec, ranker = Recording(configs), PoolRanker()
    c = make(tmp_path, target_dir, rec, workers=1, max_experiments=5, ranker=ranker, prefetch_pool=prefetch)
    c.run()
    # decision 1: the baseline (no pool); every later pool was prepared right after the previous
    # dispatch, so the proposer saw that experiment still RUNNING, never finished
    assert len(rec.calls) == 5  # after each of the 5 dispatches (the last one is never used)
    for k, (thread, n, seen) in enumerate(rec.calls, start=1):
        assert thread == ("hybrid-pool" if prefetch is True else "MainThread")
        assert n == 3 and len(seen) == k and seen[-1][1] is ExperimentState.RUNNING
    # the ranker chose from those pools (the last candidate first), and a config started in
    # between never reappears in a later pool
    assert ranker.pools == [[1.0, 2.0, 3.0], [1.0, 2.0, 4.0], [1.0, 2.0, 6.0], [1.0, 2.0, 7.0]]
    assert [e.params["x"] for e in c.experiments()] == [5.0, 3.0, 4.0, 6.0, 7.0]


def test_without_prefetch_the_proposer_is_asked_when_the_worker_frees(tmp_path: Path, target_dir):
    rec = Recording([{"x": float(i)} for i in (1, 2, 3, 4, 6, 7, 8, 9)])
    c = make(tmp_path, target_dir, rec, workers=1, max_experiments=4, ranker=PoolRanker(), prefetch_pool=False)
    c.run()
    assert len(rec.calls) == 3 and all(thread == "MainThread" for thread, _, _ in rec.calls)
    # asked at decision time: the previous experiment has finished by then
    assert all(seen[-1][1] is ExperimentState.DONE for _, _, seen in rec.calls)
