"""The conformance suite every proposer passes, and helpers that build histories by hand.

A proposer's tests subclass ``ProposerSuite`` and fill in ``make_proposer``::

    class TestSobol(ProposerSuite):
        labels = ("sobol",)
        def make_proposer(self, space, objective, seed):
            return SobolProposer(space, objective, seed=seed)
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import pytest

from hybrid.proposers.base import Proposer
from hybrid.space import CategoricalParam, SearchSpace
from hybrid.types import Candidate, Experiment, ExperimentState, Objective, Result

METRIC = "val_bpb"
MINIMIZE = Objective(METRIC, "minimize")
MAXIMIZE = Objective(METRIC, "maximize")


def mixed_space() -> SearchSpace:
    """A log float, a stepped int, a log int with step > 1, a categorical and a plain float."""
    return SearchSpace.from_config(
        {
            "matrix_lr": {"type": "float", "low": 1e-4, "high": 1e-1, "log": True, "default": 0.01},
            "depth": {"type": "int", "low": 4, "high": 12, "step": 2, "default": 8},
            "heads": {"type": "int", "low": 2, "high": 32, "step": 2, "log": True, "default": 8},
            "window_pattern": {"type": "categorical", "choices": ["L", "SL", "SSSL"], "default": "SSSL"},
            "warmup_ratio": {"type": "float", "low": 0.0, "high": 0.3, "default": 0.1},
        }
    )


def cube_space(d: int = 3) -> SearchSpace:
    """d plain floats on [0, 1] named x0, x1, ...: the encoding is the identity."""
    return SearchSpace.from_config({f"x{i}": {"type": "float", "low": 0.0, "high": 1.0} for i in range(d)})


def experiment(
    seq: int,
    params: Mapping[str, Any],
    *,
    source: str = "test",
    value: float | None = None,
    state: ExperimentState | None = None,
    rationale: str = "",
) -> Experiment:
    """An experiment numbered ``seq`` (id e0007). With ``value`` it is DONE; with a finished
    ``state`` and no value it failed; with neither it is PENDING (in flight)."""
    if state is None:
        state = ExperimentState.DONE if value is not None else ExperimentState.PENDING
    exp = Experiment(
        id=f"e{seq:04d}",
        candidate=Candidate(params=dict(params), source=source, rationale=rationale),
        worker="w0",
        hardware="cpu",
        wave=seq,
        state=state,
        seq=seq,
    )
    if state.is_finished():
        metrics = {METRIC: value} if value is not None else {}
        exp.result = Result(exp.id, state, metrics, "cpu", duration_s=1.0, cost_usd=0.0)
    return exp


def baseline(space: SearchSpace, value: float = 1.0) -> Experiment:
    """Experiment 1, the defaults, as the campaign creates it."""
    return experiment(1, space.defaults(), source="baseline", value=value)


def extend(
    history: Sequence[Experiment],
    cands: Iterable[Candidate | Mapping[str, Any]],
    f: Callable[[Mapping[str, Any]], float | None] | None = None,
    state: ExperimentState | None = None,
) -> list[Experiment]:
    """History plus one experiment per candidate: DONE with f(params) when f is given (None from
    f: CRASHED), else in ``state`` (PENDING by default)."""
    out = list(history)
    for c in cands:
        params = c.params if isinstance(c, Candidate) else c
        source = c.source if isinstance(c, Candidate) else "test"
        value = f(params) if f is not None else None
        st = state if f is None else (ExperimentState.DONE if value is not None else ExperimentState.CRASHED)
        out.append(experiment(len(out) + 1, params, source=source, value=value, state=st))
    return out


def random_configs(space: SearchSpace, n: int, seed: int) -> list[dict[str, Any]]:
    rng = np.random.default_rng(seed)
    return [space.validate(space.decode(rng.random(len(space)))) for _ in range(n)]


def numeric_distance(space: SearchSpace, params: Mapping[str, Any], target: Sequence[float]) -> float:
    """Euclidean distance in the unit cube over the non-categorical parameters."""
    u = space.encode(params)
    idx = [i for i, p in enumerate(space) if not isinstance(p, CategoricalParam)]
    return float(np.linalg.norm(u[idx] - np.asarray(target)[: len(idx)]))


def keys(space: SearchSpace, items: Iterable[Candidate | Experiment]) -> list[tuple]:
    return [space.key(c.params) for c in items]


def sequential_best(proposer: Proposer, space: SearchSpace, f: Callable, steps: int) -> float:
    """Run ``steps`` one-at-a-time evaluations of f from a baseline; return the best value."""
    history = [baseline(space, f(space.defaults()))]
    for _ in range(steps):
        history = extend(history, proposer.propose(history, 1), f)
    return min(e.value(METRIC) for e in history if e.value(METRIC) is not None)


class ProposerSuite(abc.ABC):
    """Behaviour every proposer shares. Subclasses set the class attributes and the hook."""

    #: the Candidate.source labels this proposer may write
    labels: tuple[str, ...] = ()
    #: a different seed gives different candidates
    seed_sensitive: bool = True
    #: candidates depend on the results (so the objective's direction must matter)
    uses_values: bool = True

    @abc.abstractmethod
    def make_proposer(self, space: SearchSpace, objective: Objective, seed: int) -> Proposer:
        ...

    @pytest.fixture
    def space(self) -> SearchSpace:
        return mixed_space()

    @pytest.fixture
    def history(self, space: SearchSpace) -> list[Experiment]:
        """A baseline, 10 results, 2 failures (a crash, a timeout) and 2 experiments in flight."""
        configs = random_configs(space, 14, seed=99)
        h = [baseline(space)]
        for i, c in enumerate(configs[:10]):
            h.append(experiment(len(h) + 1, c, value=1.0 + 0.01 * ((i * 7) % 10)))
        h.append(experiment(len(h) + 1, configs[10], state=ExperimentState.CRASHED))
        h.append(experiment(len(h) + 1, configs[11], state=ExperimentState.TIMEOUT))
        h.append(experiment(len(h) + 1, configs[12], state=ExperimentState.PENDING))
        h.append(experiment(len(h) + 1, configs[13], state=ExperimentState.RUNNING))
        return h

    def check(self, space: SearchSpace, history: Sequence[Experiment], cands: Sequence[Candidate]) -> None:
        """Valid, labelled, and new: not in history (in flight included), not twice in the batch."""
        for c in cands:
            assert space.validate(c.params) == dict(c.params)
            assert c.source in self.labels, c.source
            assert isinstance(c.rationale, str) and c.rationale
        got = keys(space, cands)
        assert len(set(got)) == len(got), "duplicate within the batch"
        assert not set(got) & set(keys(space, history)), "re-proposed a config from the history"

    def test_empty_history_gives_n(self, space: SearchSpace) -> None:
        p = self.make_proposer(space, MINIMIZE, 0)
        for n in (1, 4):
            cands = p.propose([], n)
            assert len(cands) == n
            self.check(space, [], cands)
        assert p.propose([], 0) == []

    def test_mixed_history_gives_n_valid_new_candidates(self, space, history) -> None:
        cands = self.make_proposer(space, MINIMIZE, 0).propose(history, 5)
        assert len(cands) == 5
        self.check(space, history, cands)

    def test_only_failures_and_in_flight(self, space: SearchSpace) -> None:
        configs = random_configs(space, 4, seed=5)
        h = [experiment(1, space.defaults(), source="baseline", state=ExperimentState.CRASHED)]
        h = extend(h, configs[:2], lambda _: None)
        h = extend(h, configs[2:], state=ExperimentState.RUNNING)
        cands = self.make_proposer(space, MINIMIZE, 0).propose(h, 3)
        assert len(cands) == 3
        self.check(space, h, cands)

    def test_never_reproposes_its_own_pending_candidates(self, space, history) -> None:
        p = self.make_proposer(space, MINIMIZE, 0)
        first = p.propose(history, 4)
        h2 = extend(history, first, state=ExperimentState.PENDING)
        second = p.propose(h2, 4)
        assert len(second) == 4
        self.check(space, h2, second)

    def test_deterministic_for_seed_and_history(self, space, history) -> None:
        a = self.make_proposer(space, MINIMIZE, 7).propose(history, 4)
        b = self.make_proposer(space, MINIMIZE, 7).propose(history, 4)
        assert a == b

    def test_rebuilt_proposer_continues_like_the_old_one(self, space, history) -> None:
        """No hidden state: a proposer rebuilt from history (a resumed campaign) proposes the same."""
        old = self.make_proposer(space, MINIMIZE, 3)
        h2 = extend(history, old.propose(history, 3), state=ExperimentState.RUNNING)
        assert old.propose(h2, 3) == self.make_proposer(space, MINIMIZE, 3).propose(h2, 3)

    def test_seed_changes_candidates(self, space, history) -> None:
        if not self.seed_sensitive:
            pytest.skip("deterministic by design: the seed is unused")
        a = self.make_proposer(space, MINIMIZE, 0).propose(history, 4)
        b = self.make_proposer(space, MINIMIZE, 1).propose(history, 4)
        assert keys(space, a) != keys(space, b)

    def test_small_space_runs_out_gracefully(self) -> None:
        tiny = SearchSpace.from_config(
            {"k": {"type": "int", "low": 1, "high": 2}, "c": {"type": "categorical", "choices": ["a", "b"]}}
        )
        every = [{"k": k, "c": c} for k in (1, 2) for c in ("a", "b")]
        h = extend([], every[:3], lambda params: 1.0 + params["k"])
        cands = self.make_proposer(tiny, MINIMIZE, 0).propose(h, 5)
        assert len(cands) <= 1
        self.check(tiny, h, cands)

    def test_maximize_direction_respected(self, space: SearchSpace) -> None:
        """Under maximize, high values are good: the same landscape with its sign flipped must
        draw candidates towards its good region, not away from it."""
        if not self.uses_values:
            pytest.skip("candidates do not depend on results")
        target = [0.8, 0.2, 0.7, 0.3]

        def dist(params: Mapping[str, Any]) -> float:
            return numeric_distance(space, params, target)

        configs = random_configs(space, 30, seed=11)
        good_high = extend([baseline(space, -dist(space.defaults()))], configs, lambda c: -dist(c))
        good_low = extend([baseline(space, dist(space.defaults()))], configs, dist)
        toward = self.make_proposer(space, MAXIMIZE, 0).propose(good_high, 8)
        away = self.make_proposer(space, MAXIMIZE, 0).propose(good_low, 8)
        assert np.mean([dist(c.params) for c in toward]) < np.mean([dist(c.params) for c in away])
