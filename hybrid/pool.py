"""The candidate pool of the next decision, generated while the campaign waits for results.

With ``surrogate=gp`` every decision ranks a pool of a few hundred candidates, and asking the
proposers for it (TPE asks, grid designs, the LLM's queue) takes longer than the ranking itself.
A freed worker should not wait for that. So right after a wave is dispatched, the next pool is
generated from the history as it is then (the new wave in flight), on a background thread. At
the next decision the campaign takes it, drops what has meanwhile been tried or started, tops
it up if fewer candidates are left than free workers, and the GP ranks it with the *current*
history: the results that arrived in between steer the choice, they just did not steer which
candidates were offered. ``background=False`` generates the same pool synchronously at the same
moment (deterministic, for tests and simulations).

Only one thread ever calls the proposer at a time (a lock), and the history the background
thread reads is a snapshot: experiments are copied, so the campaign may update its own freely.

With code variants (``target.editable``) a candidate is its parameters *and* its code (None: the
unchanged code): the same parameters on two variants are two candidates, and one naming a variant
that may not run is dropped. Which code a parameter proposer's candidates run on is the proposer's
choice (``VariantChecker.explore``: the base first, then the other codes worth exploring).
"""

from __future__ import annotations

import copy
import threading
from collections.abc import Callable, Sequence
from dataclasses import replace

from hybrid.errors import InvalidCandidateError
from hybrid.proposers.base import Proposer
from hybrid.space import SearchSpace
from hybrid.types import Candidate, Experiment
from hybrid.variant_book import VariantBook


class PoolPrefetcher:
    """Prepares the proposer's next pool ahead of the decision that needs it."""

    def __init__(self, proposer: Proposer, background: bool = True) -> None:
        self.proposer = proposer
        self.background = background
        self._lock = threading.Lock()  # one proposer call at a time
        self._thread: threading.Thread | None = None
        self._ready: list[Candidate] | None = None
        self._error: BaseException | None = None
        self.last_seconds = 0.0  # how long the last prepared pool took to generate

    def propose(self, history: Sequence[Experiment], n: int) -> list[Candidate]:
        """Ask the proposer now (the synchronous path: a first decision, a top-up)."""
        with self._lock:
            return self.proposer.propose(history, n)

    def prepare(self, history: Sequence[Experiment], n: int) -> None:
        """Start generating a pool of ``n`` from (a snapshot of) ``history``."""
        self.wait()
        self._ready, self._error = None, None
        snapshot = [copy.copy(e) for e in history]
        if not self.background:
            self._generate(snapshot, n)
            return
        self._thread = threading.Thread(target=self._generate, args=(snapshot, n), name="hybrid-pool", daemon=True)
        self._thread.start()

    def _generate(self, history: list[Experiment], n: int) -> None:
        import time

        t0 = time.perf_counter()
        try:
            self._ready = self.propose(history, n)
        except BaseException as e:  # handed to the campaign's thread by take()
            self._error = e
        self.last_seconds = time.perf_counter() - t0

    def wait(self) -> None:
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def take(self) -> list[Candidate] | None:
        """The prepared pool (waiting for it if it is still being made), or None if none was
        prepared. A proposer error raised while preparing is raised here."""
        self.wait()
        ready, error = self._ready, self._error
        self._ready, self._error = None, None
        if error is not None:
            raise error
        return ready

    def close(self) -> None:
        self.wait()


class CandidatePool:
    """What the ranker chooses from at each decision: the prefetched pool when there is one (less
    what was tried or started since), topped up from the proposer when fewer than the free workers
    are left; every candidate valid in the space and new (not in the history, not taken, not twice).

    ``prefetch``: True (a background thread), "inline" (the same pool made synchronously) or False
    (asked when a worker frees). It applies only to rankers that choose from more candidates than
    there are free workers (the GP); the classical in-order path is left as it was."""

    def __init__(self, proposer: Proposer, space: SearchSpace, prefetch: bool | str, ranker_pool: int,
                 say: Callable[[str], None]) -> None:
        self.proposer, self.space, self.say = proposer, space, say
        self.variants: VariantBook | None = None  # set by a campaign with code variants
        self.prefetcher = (PoolPrefetcher(proposer, background=prefetch is True)
                           if prefetch and ranker_pool > 1 else None)

    def take(self, history: Sequence[Experiment], pool_size: int, n_free: int,
             taken: Sequence[Candidate]) -> list[Candidate]:
        ready = self.prefetcher.take() if self.prefetcher is not None else None
        if ready is None:
            return self._propose(history, pool_size, taken)
        pool = self._usable(ready, history, taken)
        if len(pool) < n_free:
            pool += self._propose(history, pool_size - len(pool), [*taken, *pool])
        return pool

    def prepare(self, history: Sequence[Experiment], n: int) -> None:
        """Start making the next decision's pool now (right after a wave is dispatched)."""
        if self.prefetcher is not None:
            self.prefetcher.prepare(history, n)

    def close(self) -> None:
        if self.prefetcher is not None:
            self.prefetcher.close()

    def _propose(self, history: Sequence[Experiment], n: int, taken: Sequence[Candidate]) -> list[Candidate]:
        ask = self.prefetcher.propose if self.prefetcher is not None else self.proposer.propose
        return self._usable(ask(history, n), history, taken)

    def _usable(self, cands: Sequence[Candidate], history: Sequence[Experiment],
                taken: Sequence[Candidate]) -> list[Candidate]:
        seen = {self.key(e.candidate) for e in history} | {self.key(c) for c in taken}
        out: list[Candidate] = []
        for cand in cands:
            try:
                params = self.space.validate(cand.params)
            except InvalidCandidateError as e:
                self.say(f"dropped an invalid {cand.source} proposal: {e}")
                continue
            variant = cand.variant
            if variant is not None and (self.variants is None or self.variants.get(variant) is None):
                self.say(f"dropped a {cand.source} proposal on variant {variant}, which may not run")
                continue
            cand = replace(cand, params=params)
            key = self.key(cand)
            if key not in seen:
                seen.add(key)
                out.append(cand)
        return out

    def key(self, cand: Candidate) -> tuple:
        """What makes two candidates the same experiment: their code and their parameters."""
        return cand.variant, self.space.key(cand.params)
