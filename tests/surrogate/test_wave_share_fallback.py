"""GPRanker before it has a model (fewer successes than min_observations): the proposers' order,
but a source's wave share (the LLM's) still holds, as it does once the GP ranks."""

from __future__ import annotations

from hybrid.types import Candidate, Worker
from surrogate.acquisition import GPRanker

from ..proposers.suite import MINIMIZE, cube_space, random_configs

SPACE = cube_space(2)


def test_before_the_gp_has_a_model_the_llm_still_gets_its_share_of_the_wave() -> None:
    pool = [Candidate(c, "sobol") for c in random_configs(SPACE, 200, seed=0)]
    pool.append(Candidate(SPACE.defaults(), "llm", variant="v0123456789"))  # the LLM's offer comes last
    workers = [Worker(f"w{i}", "cpu") for i in range(2)]
    ranker = GPRanker(SPACE, MINIMIZE)
    assert [c.source for c, _ in ranker.rank(pool, [], [], workers)] == ["sobol", "sobol"]  # no share: the order
    ranker.set_wave_shares({"llm": 0.5})  # owed round(0.5 x (0 + 2)) - 0 = 1
    wave = [c for c, _ in ranker.rank(pool, [], [], workers)]
    assert [c.source for c in wave] == ["llm", "sobol"] and wave[1] is pool[0]
    assert not ranker.last_decision.fitted
