"""SobolProposer: the shared suite, plus sequence continuity across restarts."""

from __future__ import annotations

from hybrid.proposers.sobol import SobolProposer
from hybrid.space import SearchSpace
from hybrid.types import ExperimentState, Objective

from .suite import MINIMIZE, ProposerSuite, baseline, extend, keys, mixed_space


class TestSobol(ProposerSuite):
    labels = ("sobol",)
    uses_values = False

    def make_proposer(self, space: SearchSpace, objective: Objective, seed: int) -> SobolProposer:
        return SobolProposer(space, objective, seed=seed)


def test_resume_continues_the_sequence() -> None:
    """A fresh proposer given the history proposes what one long run of the sequence has next."""
    space = mixed_space()
    h0 = [baseline(space)]
    whole = SobolProposer(space, MINIMIZE, seed=3).propose(h0, 8)
    first = SobolProposer(space, MINIMIZE, seed=3).propose(h0, 4)
    assert first == whole[:4]
    h1 = extend(h0, first, state=ExperimentState.RUNNING)
    assert SobolProposer(space, MINIMIZE, seed=3).propose(h1, 4) == whole[4:]
    assert [c.rationale for c in whole] == [f"Sobol point #{i} (seed 3)" for i in range(8)]


def test_only_sobol_experiments_move_the_sequence() -> None:
    space = mixed_space()
    h0 = [baseline(space)]
    first = SobolProposer(space, MINIMIZE, seed=0).propose(h0, 2)
    others = [{**space.defaults(), "warmup_ratio": w} for w in (0.01, 0.02, 0.03)]
    h1 = extend(h0, others, state=ExperimentState.RUNNING)
    assert SobolProposer(space, MINIMIZE, seed=0).propose(h1, 2) == first


def test_collisions_are_skipped_by_drawing_further() -> None:
    space = SearchSpace.from_config({"c": {"type": "categorical", "choices": ["a", "b", "c"]}})
    cands = SobolProposer(space, MINIMIZE, seed=0).propose([], 5)
    assert sorted(c.params["c"] for c in cands) == ["a", "b", "c"]
    assert len(set(keys(space, cands))) == 3


def test_unscrambled_starts_at_the_low_corner() -> None:
    space = mixed_space()
    first = SobolProposer(space, MINIMIZE, scramble=False).propose([], 1)[0]
    assert first.params == space.decode([0.0] * len(space))
