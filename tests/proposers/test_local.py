"""LocalProposer: the shared suite, plus where its candidates land."""

from __future__ import annotations

import numpy as np
import pytest

from hybrid.errors import ConfigError
from hybrid.proposers.local import LocalProposer
from hybrid.space import SearchSpace
from hybrid.types import Objective

from .suite import MAXIMIZE, MINIMIZE, ProposerSuite, baseline, cube_space, experiment, mixed_space


class TestLocal(ProposerSuite):
    labels = ("local",)

    def make_proposer(self, space: SearchSpace, objective: Objective, seed: int) -> LocalProposer:
        return LocalProposer(space, objective, seed=seed)


def _history(space: SearchSpace, best: dict, objective: Objective = MINIMIZE) -> list:
    """Baseline 1.0, a far-off config 2.0 and ``best`` (0.5 when minimizing, 3.0 when maximizing)."""
    good = 0.5 if objective.direction == "minimize" else 3.0
    return [
        baseline(space, 1.0),
        experiment(2, {"x0": 0.9, "x1": 0.9, "x2": 0.9}, value=2.0 if good < 1 else 0.1),
        experiment(3, best, value=good),
    ]


@pytest.mark.parametrize("objective", [MINIMIZE, MAXIMIZE])
def test_candidates_stay_near_the_best(objective: Objective) -> None:
    space = cube_space(3)
    best = {"x0": 0.2, "x1": 0.3, "x2": 0.4}
    h = _history(space, best, objective)
    cands = LocalProposer(space, objective, seed=0, n_centers=1).propose(h, 64)
    u = space.encode_many([c.params for c in cands])
    dist = np.abs(u - space.encode(best)).max(axis=1)
    assert len(cands) == 64
    assert np.median(dist) < 0.2  # steps are at most max_scale=0.25 standard deviations
    assert all("around e0003 (best)" in c.rationale for c in cands)


def test_candidates_move_from_one_to_all_params() -> None:
    space = cube_space(20)
    h = [baseline(space), experiment(2, {f"x{i}": 0.5 for i in range(20)}, value=0.0)]
    cands = LocalProposer(space, MINIMIZE, seed=1).propose(h, 200)
    moved = [sum(abs(c.params[f"x{i}"] - 0.5) > 1e-12 for i in range(20)) for c in cands]
    assert min(moved) == 1 and max(moved) == 20 and 8 < np.mean(moved) < 13  # uniform on 1..20
    capped = LocalProposer(space, MINIMIZE, seed=1, max_move=2).propose(h, 50)
    assert {sum(abs(c.params[f"x{i}"] - 0.5) > 1e-12 for i in range(20)) for c in capped} == {1, 2}


def test_categoricals_move_to_another_choice() -> None:
    space = mixed_space()
    center = {**space.defaults(), "window_pattern": "SL"}
    h = [baseline(space), experiment(2, center, value=0.1)]
    cands = LocalProposer(space, MINIMIZE, seed=2, n_centers=1).propose(h, 40)
    moved = [c for c in cands if "window_pattern" in c.rationale.split("moved ")[1]]
    assert moved and all(c.params["window_pattern"] != "SL" for c in moved)
    assert {c.params["window_pattern"] for c in moved} == {"L", "SSSL"}


def test_without_results_it_perturbs_the_defaults() -> None:
    space = cube_space(3)
    cands = LocalProposer(space, MINIMIZE, seed=0).propose([], 8)
    assert len(cands) == 8 and all("around the defaults" in c.rationale for c in cands)


def test_bad_options_are_config_errors() -> None:
    with pytest.raises(ConfigError, match=r"proposer.options.local.max_scale"):
        LocalProposer(cube_space(2), MINIMIZE, min_scale=0.3, max_scale=0.2)
    with pytest.raises(ConfigError, match=r"proposer.options.local.n_centers"):
        LocalProposer(cube_space(2), MINIMIZE, n_centers=0)
