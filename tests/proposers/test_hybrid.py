"""HybridProposer: the shared suite, plus quotas, shortfalls, duplicates and plugged-in sources."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

import pytest

from hybrid.errors import ConfigError
from hybrid.proposers.base import Proposer, seen_keys
from hybrid.proposers.hybrid import HybridProposer, largest_remainder
from hybrid.space import SearchSpace
from hybrid.types import Candidate, Experiment, Objective

from .suite import MINIMIZE, ProposerSuite, baseline, cube_space, extend, mixed_space


class TestHybrid(ProposerSuite):
    labels = ("tpe", "sobol", "grid")

    def make_proposer(self, space: SearchSpace, objective: Objective, seed: int) -> HybridProposer:
        return HybridProposer(space, objective, seed=seed)


class TestHybridCMAESRandom(ProposerSuite):
    labels = ("cmaes", "random", "sobol")

    @pytest.fixture(autouse=True)
    def _needs_cmaes(self) -> None:
        pytest.importorskip("cmaes")

    def make_proposer(self, space: SearchSpace, objective: Objective, seed: int) -> HybridProposer:
        return HybridProposer(space, objective, seed=seed, sources={"cmaes": 0.4, "random": 0.3, "sobol": 0.3})


class Fixed(Proposer):
    """Proposes the given configurations in order, skipping any in the history; counts its calls."""

    def __init__(self, space: SearchSpace, configs: Sequence[Mapping[str, Any]], label: str) -> None:
        super().__init__(space, MINIMIZE)
        self.configs, self.name, self.calls, self.closed = list(configs), label, 0, False

    def propose(self, history: Sequence[Experiment], n: int) -> list[Candidate]:
        self.calls += 1
        seen = seen_keys(self.space, history)
        fresh = [c for c in self.configs if self.space.key(c) not in seen]
        return [Candidate(c, self.name, "fixed") for c in fresh[:n]]

    def close(self) -> None:
        self.closed = True


def points(*xs: float) -> list[dict[str, float]]:
    return [{"x0": x, "x1": x} for x in xs]


def test_largest_remainder_quotas() -> None:
    shares = {"tpe": 0.5, "sobol": 0.25, "grid": 0.25}
    assert largest_remainder(8, shares) == {"tpe": 4, "sobol": 2, "grid": 2}
    assert largest_remainder(3, shares) == {"tpe": 1, "sobol": 1, "grid": 1}
    assert largest_remainder(1, shares) == {"tpe": 1, "sobol": 0, "grid": 0}
    assert largest_remainder(5, {"a": 1, "b": 1, "off": 0}) == {"a": 3, "b": 2, "off": 0}
    assert sum(largest_remainder(7, {"a": 0.2, "b": 0.3, "c": 0.5}).values()) == 7


def test_quotas_respected_and_every_candidate_labelled() -> None:
    space = mixed_space()
    cands = HybridProposer(space, MINIMIZE, seed=0).propose([baseline(space)], 8)
    assert Counter(c.source for c in cands) == {"tpe": 4, "sobol": 2, "grid": 2}
    assert all(c.rationale for c in cands)


def test_a_short_source_is_filled_from_the_others() -> None:
    space = cube_space(2)
    p = HybridProposer(space, MINIMIZE, sources={"sobol": 0.5, "random": 0.5})
    short = Fixed(space, points(0.1), "llm")
    p.add_source("llm", short, 2.0)  # asked for 4 of 6, has 1
    cands = p.propose([baseline(space)], 6)
    assert len(cands) == 6 and len({space.key(c.params) for c in cands}) == 6
    counts = Counter(c.source for c in cands)
    assert counts["llm"] == 1 and counts["sobol"] + counts["random"] == 5


def test_pool_factor_fills_from_the_reserve_without_asking_again() -> None:
    space = cube_space(2)
    p = HybridProposer(space, MINIMIZE, sources={"sobol": 0.5}, pool_factor=2)
    short, other = Fixed(space, points(0.1), "llm"), Fixed(space, points(*[i / 20 for i in range(2, 20)]), "gp")
    p.add_source("llm", short, 0.5)
    p.add_source("gp", other, 0.5)  # n=4: sobol 2 (asked for 4), llm 1 (has none), gp 1 (asked for 2)
    short.configs = []
    cands = p.propose([baseline(space)], 4)
    assert Counter(c.source for c in cands) == {"sobol": 3, "gp": 1}  # the reserve, in source order
    assert (short.calls, other.calls) == (1, 1)


def test_same_config_from_two_sources_is_kept_once() -> None:
    space = cube_space(2)
    p = HybridProposer(space, MINIMIZE, sources={"sobol": 0.5})
    p.add_source("a", Fixed(space, points(0.1, 0.2, 0.3), "llm"), 0.25)
    p.add_source("b", Fixed(space, points(0.1, 0.2, 0.3), "gp"), 0.25)
    cands = p.propose([baseline(space)], 4)
    assert len({space.key(c.params) for c in cands}) == 4
    assert [(c.source, c.params["x0"]) for c in cands if c.source in ("llm", "gp")] == [("llm", 0.1), ("gp", 0.2)]


def test_zero_share_sources_are_never_asked() -> None:
    space = cube_space(2)
    p = HybridProposer(space, MINIMIZE, sources={"sobol": 1.0, "grid": 0})
    off = Fixed(space, points(0.1), "llm")
    p.add_source("llm", off, 0)
    assert {c.source for c in p.propose([], 5)} == {"sobol"} and off.calls == 0


def test_options_reach_the_sources() -> None:
    space = cube_space(3)
    p = HybridProposer(space, MINIMIZE, sources={"grid": 1}, options={"grid": {"params": ["x2"], "levels": 3}})
    cands = p.propose([baseline(space)], 5)
    assert len(cands) == 2 and all(" over x2 " in c.rationale for c in cands)


def test_close_reaches_every_source() -> None:
    space = cube_space(2)
    p = HybridProposer(space, MINIMIZE)
    plugged = Fixed(space, [], "llm")
    p.add_source("llm", plugged, 0.1)
    p.close()
    assert plugged.closed


@pytest.mark.parametrize(
    ("kwargs", "where"),
    [
        ({"sources": {"llm": 1.0}}, r"proposer\.sources: 'llm' is not one of tpe, cmaes, random, sobol, grid"),
        ({"sources": {"tpe": -1}}, r"proposer\.sources\.tpe"),
        ({"sources": {"tpe": 0}}, r"proposer\.sources: give at least one"),
        ({"pool_factor": 0.5}, r"proposer\.pool_factor"),
        ({"options": {"grid": {"spam": 1}}}, r"proposer\.options\.grid"),
        ({"options": {"tpee": {}}}, r"proposer\.options\.tpee: not one of the sources"),
        ({"options": {"tpe": {"sampler": "random"}}}, r"proposer\.options\.tpe\.sampler"),
    ],
)
def test_config_errors_name_the_field(kwargs: dict, where: str) -> None:
    with pytest.raises(ConfigError, match=where):
        HybridProposer(cube_space(2), MINIMIZE, **kwargs)


def test_one_at_a_time_proposals_follow_the_shares_over_the_campaign() -> None:
    # An async campaign asks for one candidate per freed worker: the shares must still hold.
    space = cube_space(3)
    p = HybridProposer(space, MINIMIZE, seed=0, sources={"tpe": 0.5, "sobol": 0.25, "grid": 0.25})
    history = [baseline(space)]
    for _ in range(12):
        cands = p.propose(history, 1)
        assert len(cands) == 1
        history = extend(history, cands, f=lambda params: sum(params.values()))
    assert Counter(e.source for e in history[1:]) == {"tpe": 6, "sobol": 3, "grid": 3}


def test_max_per_call_caps_a_source_and_the_others_fill_in() -> None:
    space = mixed_space()
    p = HybridProposer(space, MINIMIZE, seed=0, sources={"tpe": 0.5, "sobol": 0.5}, max_per_call={"tpe": 3})
    cands = p.propose([baseline(space)], 20)
    by = {s: sum(c.source == s for c in cands) for s in ("tpe", "sobol")}
    assert by == {"tpe": 3, "sobol": 17}


def test_max_per_call_must_be_a_positive_integer() -> None:
    with pytest.raises(ConfigError, match=r"proposer.max_per_call.tpe: expected an integer >= 1"):
        HybridProposer(mixed_space(), MINIMIZE, max_per_call={"tpe": 0})
