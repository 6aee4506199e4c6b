"""GridProposer: the shared suite, plus the designs themselves (levels, fractions, rotation)."""

from __future__ import annotations

import itertools
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from hybrid.assemble import assemble, compose
from hybrid.errors import ConfigError
from hybrid.proposers.grid import GridProposer, design_runs
from hybrid.space import SearchSpace
from hybrid.store import Store
from hybrid.types import ExperimentState, Objective

from .suite import (
    MAXIMIZE,
    MINIMIZE,
    ProposerSuite,
    baseline,
    cube_space,
    experiment,
    extend,
    mixed_space,
    random_configs,
)

INCUMBENT = {"matrix_lr": 0.003, "depth": 8, "heads": 8, "window_pattern": "SL", "warmup_ratio": 0.12}


class TestGrid(ProposerSuite):
    labels = ("grid",)
    seed_sensitive = False

    def make_proposer(self, space: SearchSpace, objective: Objective, seed: int) -> GridProposer:
        return GridProposer(space, objective, seed=seed)


def history_with_incumbent(space: SearchSpace) -> list:
    """e0001 baseline, e0002-e0006 worse, e0007 = INCUMBENT (best), e0008 crashed."""
    h = extend([baseline(space, 1.0)], random_configs(space, 5, seed=2), lambda _: 1.1)
    h.append(experiment(7, INCUMBENT, value=0.9))
    return extend(h, random_configs(space, 1, seed=3), lambda _: None)


def encoded(space: SearchSpace, cands, name: str) -> list[float]:
    i = space.names.index(name)
    return [float(space.encode(c.params)[i]) for c in cands]


def test_two_level_full_factorial_around_the_incumbent() -> None:
    space = mixed_space()
    names = ["matrix_lr", "warmup_ratio", "depth"]
    cands = GridProposer(space, MINIMIZE, params=names).propose(history_with_incumbent(space), 20)
    assert len(cands) == 8
    assert len({space.key(c.params) for c in cands}) == 8
    u = space.encode(INCUMBENT)
    for name in ("matrix_lr", "warmup_ratio"):
        ui = u[space.names.index(name)]
        assert np.allclose(sorted(set(np.round(encoded(space, cands, name), 12))), [ui - 0.125, ui + 0.125])
    assert {c.params["depth"] for c in cands} == {6, 10}
    combos = {(c.params["matrix_lr"], c.params["warmup_ratio"], c.params["depth"]) for c in cands}
    assert len(combos) == 8  # every combination of the levels
    for c in cands:  # the other parameters stay at the incumbent's values
        assert (c.params["heads"], c.params["window_pattern"]) == (8, "SL")
    assert cands[0].rationale == "2^3 factorial around e0007 over matrix_lr, warmup_ratio, depth (run 1/8)"


def test_half_fraction_is_balanced_and_keeps_the_defining_relation() -> None:
    space = mixed_space()
    names = ["matrix_lr", "warmup_ratio", "depth"]
    cands = GridProposer(space, MINIMIZE, params=names, design="fractional").propose(history_with_incumbent(space), 20)
    assert len(cands) == 4
    signs = np.array([[1 if v > u else -1 for v, u in zip(space.encode(c.params), space.encode(INCUMBENT), strict=True)]
                      for c in cands])[:, [space.names.index(n) for n in names]]
    assert (signs.sum(axis=0) == 0).all()  # each factor: two runs low, two high
    for a, b in itertools.combinations(range(3), 2):  # main effects are orthogonal
        assert signs[:, a] @ signs[:, b] == 0
    assert (signs.prod(axis=1) == 1).all()  # I = +ABC
    assert cands[0].rationale.startswith("2^(3-1) fractional factorial around e0007")


def test_three_by_four_mixed_design() -> None:
    space = mixed_space()
    p = GridProposer(space, MINIMIZE, params=["matrix_lr", "warmup_ratio"], levels={"matrix_lr": 3, "warmup_ratio": 4})
    cands = p.propose(history_with_incumbent(space), 20)
    assert len(cands) == 12
    u = space.encode(INCUMBENT)
    lr_u, wu_u = u[space.names.index("matrix_lr")], u[space.names.index("warmup_ratio")]
    assert np.allclose(sorted(set(np.round(encoded(space, cands, "matrix_lr"), 12))), [lr_u - 0.25, lr_u, lr_u + 0.25])
    assert np.allclose(sorted(set(np.round(encoded(space, cands, "warmup_ratio"), 12))), np.linspace(wu_u - 0.25, wu_u + 0.25, 4))
    assert INCUMBENT["matrix_lr"] in {c.params["matrix_lr"] for c in cands}  # the centre level is exact
    assert cands[0].rationale == "3x4 factorial around e0007 over matrix_lr, warmup_ratio (run 1/12)"


def test_three_level_fraction_is_a_latin_design() -> None:
    space = cube_space(3)
    h = [baseline(space, 1.0)]
    cands = GridProposer(space, MINIMIZE, levels=3, design="fractional").propose(h, 30)
    assert len(cands) == 9
    x = np.array([[c.params[n] for n in space.names] for c in cands])
    for a, b in itertools.combinations(range(3), 2):  # every pair of factors: all 9 level pairs once
        assert len({(round(r[a], 9), round(r[b], 9)) for r in x}) == 9
    assert cands[0].rationale.startswith("3^(3-1) fractional factorial around e0001")


def test_mixed_level_fraction_keeps_every_factor_balanced() -> None:
    runs, label = design_runs([2, 3, 4], fractional=True)
    assert len(runs) == 12 and label == "2x3x4 fractional factorial (12 of 24 runs)"
    for f, levels in enumerate((2, 3, 4)):
        assert set(Counter(r[f] for r in runs).values()) == {12 // levels}
    runs, label = design_runs([3, 4], fractional=True)  # two factors: a fraction would alias them
    assert len(runs) == 12 and "full design" in label


def test_bounds_shift_the_window_instead_of_losing_levels() -> None:
    space = mixed_space()
    at_top = {**INCUMBENT, "warmup_ratio": 0.3}
    h = [experiment(1, at_top, source="baseline", value=1.0)]
    cands = GridProposer(space, MINIMIZE, params=["warmup_ratio"], levels=3).propose(h, 5)
    assert sorted(round(c.params["warmup_ratio"], 9) for c in cands) == [0.15, 0.225]  # 0.3 itself is seen


def test_ints_snap_and_widen_when_levels_collide() -> None:
    space = SearchSpace.from_config({"k": {"type": "int", "low": 1, "high": 3, "default": 2}})
    p = GridProposer(space, MINIMIZE)
    assert p.level_values("k", 2) == [1, 3]
    assert GridProposer(space, MINIMIZE, levels=5).level_values("k", 2) == [1, 2, 3]  # only 3 values exist


def test_categorical_levels_are_the_incumbent_then_the_next_choices() -> None:
    space = mixed_space()
    p = GridProposer(space, MINIMIZE, params=["window_pattern"], levels=3)
    assert p.level_values("window_pattern", "SL") == ["SL", "SSSL", "L"]
    cands = p.propose(history_with_incumbent(space), 5)
    assert [c.params["window_pattern"] for c in cands] == ["SSSL", "L"]


def test_groups_rotate_after_a_design_worth_of_grid_experiments() -> None:
    space = cube_space(4)
    p = GridProposer(space, MINIMIZE, max_params=2)
    h = [baseline(space, 1.0)]
    first = p.propose(h, 4)
    assert all(c.rationale.startswith("2^2 factorial around e0001 over x0, x1") for c in first)
    h = extend(h, first, lambda params: 0.5 if params == first[2].params else 2.0)  # e0004 is the new best
    second = p.propose(h, 4)
    assert all(c.rationale.startswith("2^2 factorial around e0004 over x2, x3") for c in second)
    h = extend(h, second, lambda _: 2.0)
    third = p.propose(h, 4)
    assert all(c.rationale.startswith("2^2 factorial around e0004 over x0, x1") for c in third)


def test_a_used_up_design_goes_on_with_the_next_group() -> None:
    space = cube_space(4)
    cands = GridProposer(space, MINIMIZE, max_params=2).propose([baseline(space, 1.0)], 6)
    assert [c.rationale.split(" over ")[1][:6] for c in cands] == ["x0, x1"] * 4 + ["x2, x3"] * 2


def test_explicit_params_stop_when_their_design_is_used_up() -> None:
    space = cube_space(3)
    p = GridProposer(space, MINIMIZE, params=["x0"])
    h = extend([baseline(space, 1.0)], p.propose([baseline(space, 1.0)], 5), state=ExperimentState.RUNNING)
    assert len(h) == 3 and p.propose(h, 5) == []


CHOICES = list("abcdefgh")


def run_one_by_one(p: GridProposer, space: SearchSpace, f, limit: int = 50) -> tuple[list, list[str]]:
    """Propose one at a time, each run to its end, until the grid has nothing new; the history
    and the rationale of each proposal."""
    h, why = [baseline(space, f(space.defaults()))], []
    while len(h) < limit and (cands := p.propose(h, 1)):
        h, why = extend(h, cands, f), [*why, cands[0].rationale]
    return h, why


def test_every_choice_of_a_categorical_runs_before_the_grid_is_used_up() -> None:
    """Was: a 2-level design over 8 choices ran a and b, then "search space exhausted"."""
    space = SearchSpace.from_config({"c": {"type": "categorical", "choices": CHOICES, "default": "a"}})
    worse_in_turn = dict(zip(CHOICES, [1.0, 0.8, 0.9, 1.1, 1.2, 1.3, 1.4, 1.5], strict=True))
    h, why = run_one_by_one(GridProposer(space, MINIMIZE), space, lambda params: worse_in_turn[params["c"]])
    assert sorted(e.params["c"] for e in h) == CHOICES
    # e0004 (d): the design around the new best b (b, c) is used up, so it widens by one level
    assert why[:3] == ["2-level sweep around e0001 over c (run 2/2)", "2-level sweep around e0002 over c (run 2/2)",
                       "3-level sweep around e0002 over c (run 3/3)"]


def test_a_widened_design_fills_every_free_worker_and_ints_widen_too() -> None:
    space = SearchSpace.from_config(
        {
            "c": {"type": "categorical", "choices": CHOICES[:4], "default": "a"},
            "k": {"type": "int", "low": 1, "high": 4, "default": 1},
            "x": {"type": "float", "low": 0.0, "high": 1.0, "default": 0.5},
        }
    )
    p = GridProposer(space, MINIMIZE)
    h = extend([baseline(space, 1.0)], p.propose([baseline(space, 1.0)], 8), state=ExperimentState.RUNNING)
    assert len(h) == 9  # the baseline and the 2^3 design (x at 0.375 and 0.625, not 0.5)
    more = p.propose(h, 8)
    assert len(more) == 8 and all(c.rationale.startswith("3x3x2 factorial") for c in more)
    h, _ = run_one_by_one(p, space, lambda _: 1.0, limit=200)
    assert {(e.params["c"], e.params["k"]) for e in h} == set(itertools.product(CHOICES[:4], [1, 2, 3, 4]))
    assert sorted({e.params["x"] for e in h}) == [0.375, 0.5, 0.625]  # floats keep their two levels: it ends


@pytest.mark.parametrize("workers", [1, 4])
def test_a_grid_campaign_runs_all_eight_choices_within_its_budget(tmp_path: Path, workers: int) -> None:
    (tmp_path / "objective.py").write_text(
        "import json\n"
        "c = json.load(open('params.json'))['c']\n"
        "print('val_bpb:', 1 + 'abcdefgh'.index(c) / 10)\n"
    )
    space = "{type:categorical,choices:[a,b,c,d,e,f,g,h],default:a}"
    cfg = compose(["target=command", 'target.command="{python} objective.py"', f"target.workdir={tmp_path}",
                   "space=none", f"+space.params.c={space}", "proposer=grid", "surrogate=none", "tracking=none",
                   "budget.max_experiments=8", "campaign.replicates=0", "campaign.confirm_top_k=0", f"backend.workers={workers}", "campaign.poll_interval_s=0.05",
                   "campaign.progress=none", f"campaign.dir={tmp_path / 'campaign'}"])
    summary = assemble(cfg).run()
    store = Store(tmp_path / "campaign" / "state.sqlite")
    try:
        ran = [(e.params["c"], e.state) for e in store.experiments()]
    finally:
        store.close()
    assert sorted(ran) == [(c, ExperimentState.DONE) for c in CHOICES]
    assert summary.stop_reason.startswith("budget.max_experiments reached"), summary.stop_reason


def test_maximize_centres_on_the_highest_value() -> None:
    space = cube_space(2)
    h = extend([baseline(space, 0.5)], [{"x0": 0.2, "x1": 0.2}, {"x0": 0.8, "x1": 0.8}], lambda p: p["x0"])
    assert "around e0003" in GridProposer(space, MAXIMIZE).propose(h, 1)[0].rationale
    assert "around e0002" in GridProposer(space, MINIMIZE).propose(h, 1)[0].rationale


def test_empty_history_centres_on_the_defaults() -> None:
    cands = GridProposer(cube_space(2), MINIMIZE).propose([], 4)
    assert len(cands) == 4 and "around the defaults" in cands[0].rationale


@pytest.mark.parametrize(
    ("kwargs", "where"),
    [
        ({"params": ["matrix_lr", "nope"]}, r"proposer\.params: 'nope' is not a parameter"),
        ({"params": []}, r"proposer\.params"),
        ({"levels": {"nope": 3}}, r"proposer\.levels\.nope"),
        ({"levels": 1}, r"proposer\.levels"),
        ({"design": "latin"}, r"proposer\.design"),
        ({"span": 0.8}, r"proposer\.span"),
        ({"max_params": 0}, r"proposer\.max_params"),
    ],
)
def test_config_errors_name_the_field(kwargs: dict, where: str) -> None:
    with pytest.raises(ConfigError, match=where):
        GridProposer(mixed_space(), MINIMIZE, **kwargs)
