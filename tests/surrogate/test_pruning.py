"""The learning-curve pruning rule (surrogate/pruning.py): it stops runs that cannot beat the
incumbent, and not the slow starters of crossing curves that end up winning."""

from __future__ import annotations

import math
import random
import re

import numpy as np
import pytest

from hybrid.curves import ProgressPoint
from hybrid.errors import ConfigError
from hybrid.space import CategoricalParam, FloatParam, SearchSpace
from hybrid.types import Objective
from surrogate.pruning import PROTECTED_SOURCES, PruningRule, RunCurve

OBJ = Objective("val_bpb")
FRACTIONS = [k / 16 for k in range(1, 17)]
SPACE = SearchSpace([CategoricalParam("size", ("small", "big")), FloatParam("lr", 0.01, 0.1, log=True)])


def curve(final: float, remaining: float, rng: np.random.Generator | None = None, upto: float = 1.0,
          diverge_at: float | None = None, noise: float = 0.005) -> list[ProgressPoint]:
    """train_loss points of a fixed-budget run: ``3 * (final + remaining * (t^-0.7 - 1))`` + noise;
    a bigger ``remaining`` is a slower starter. ``diverge_at``: from there the loss climbs."""
    out = []
    for t in FRACTIONS:
        if t > upto + 1e-9:
            break
        v = 3 * (final + remaining * (t**-0.7 - 1))
        if diverge_at is not None and t > diverge_at:
            v += 6 * (1 - math.exp(-(t - diverge_at) / 0.05))
        out.append(ProgressPoint(t, {"train_loss": v + (noise * float(rng.standard_normal()) if rng else 0.0)}))
    return out


def crossing_family(seed: int = 0, hardware: str = "h100") -> list[RunCurve]:
    """Finished runs whose curves cross: small models start fast and end at 0.99-1.03, big ones
    start slow (behind until ~55% of the budget) and end at 0.965-0.985 (the incumbent is big)."""
    rng = np.random.default_rng(seed)
    runs = []
    for i in range(14):
        big = i % 3 == 0  # 5 big, 9 small: big models are the rarer, slower, better ones
        final = float(rng.uniform(0.965, 0.985) if big else rng.uniform(0.99, 1.03))
        remaining = float(rng.uniform(0.08, 0.10) if big else rng.uniform(0.025, 0.035))
        params = {"size": "big" if big else "small", "lr": float(rng.uniform(0.02, 0.05))}
        runs.append(RunCurve(params, hardware, curve(final, remaining, rng), final + 0.001 * float(rng.standard_normal())))
    return runs


def decisions(rule: PruningRule, run_points: list[ProgressPoint], finished: list[RunCurve], params=None,
              hardware: str = "h100", source: str = "", objective: Objective = OBJ) -> list[tuple[float, str | None]]:
    """The rule's decision after each reported point, as the campaign would ask it."""
    params = params or {"size": "small", "lr": 0.03}
    return [(run_points[k - 1].fraction,
             rule.decide(RunCurve(params, hardware, run_points[:k], source=source), finished, objective))
            for k in range(1, len(run_points) + 1)]


def first_prune(ds: list[tuple[float, str | None]]) -> tuple[float, str] | None:
    return next(((f, r) for f, r in ds if r is not None), None)


@pytest.mark.parametrize("space", [None, SPACE])
def test_a_slow_starter_that_would_win_is_never_pruned_though_behind_the_median(space) -> None:
    finished = crossing_family()
    rule = PruningRule(space=space)
    winner = curve(0.958, 0.09, np.random.default_rng(7))  # big, slow, ends best of all
    f = 5 / 16
    at_f = sorted(r.value_at("train_loss", f) for r in finished)
    assert winner[4].values["train_loss"] > at_f[len(at_f) // 2]  # a median rule at 31% would kill it
    naive = PruningRule(lookback=0, min_rank_correlation=-1, confidence=0.6)  # the value at f alone, believed
    assert first_prune(decisions(naive, winner, finished, {"size": "big", "lr": 0.03}))[0] == f
    assert first_prune(decisions(rule, winner, finished, {"size": "big", "lr": 0.03})) is None


@pytest.mark.parametrize("seed", range(5))
def test_slow_starters_that_win_are_kept_at_early_fractions_and_clear_winners_to_the_end(seed) -> None:
    finished = crossing_family(seed)
    best = min(r.final for r in finished)
    rng = np.random.default_rng(100 + seed)
    for space in (None, SPACE):
        rule = PruningRule(space=space)
        clear = curve(best - 0.006, float(rng.uniform(0.08, 0.10)), rng)  # big runs that beat the incumbent
        assert first_prune(decisions(rule, clear, finished, {"size": "big", "lr": 0.03})) is None
        # one that wins by less than the curves' noise: a late prune is a 95% bound's odds, an early one is not
        narrow = curve(best - 0.002, float(rng.uniform(0.08, 0.10)), rng)
        pruned = first_prune(decisions(rule, narrow, finished, {"size": "big", "lr": 0.03}))
        assert pruned is None or pruned[0] > 0.6


def test_a_clearly_worse_run_is_pruned_after_the_grace_with_its_numbers_in_the_reason() -> None:
    finished = crossing_family()
    rule = PruningRule()
    hopeless = curve(1.08, 0.03, np.random.default_rng(3))  # a fast starter that ends far behind
    ds = decisions(rule, hopeless, finished)
    assert all(r is None for f, r in ds if f < 0.3)  # never before the grace
    f, reason = first_prune(ds)
    assert 0.3 <= f <= 0.5
    run = RunCurve({"size": "small", "lr": 0.03}, "h100", hopeless[: FRACTIONS.index(f) + 1])
    p = rule.predict(run, finished, OBJ)
    best = min(r.final for r in finished)
    assert p is not None and p.bound > best and p.incumbent == pytest.approx(best)
    m = re.fullmatch(r"at (\d+)% of its budget train_loss ([\d.]+) (\([-+][\d.]+ since \d+%\) )?predicts val_bpb ≥ "
                     r"([\d.]+) \(95%\), worse than the best ([\d.]+) \(from (\d+) finished runs on h100, "
                     r"rank correlation ([\d.]+) at this fraction\)", reason)
    assert m, reason
    assert int(m[1]) == round(100 * f) and float(m[2]) == pytest.approx(p.value, rel=1e-3)
    assert float(m[4]) == pytest.approx(p.bound, rel=1e-3) and float(m[5]) == pytest.approx(best, rel=1e-3)
    assert int(m[6]) == len(finished) and float(m[7]) >= 0.5


def test_a_diverging_run_is_pruned_at_the_first_point_past_the_grace() -> None:
    finished = crossing_family()
    diverging = curve(1.0, 0.03, np.random.default_rng(4), diverge_at=0.15)
    for space in (None, SPACE):
        ds = decisions(PruningRule(space=space), diverging, finished)
        f, reason = first_prune(ds)
        assert f == 5 / 16 and "predicts val_bpb ≥" in reason  # 31%: the first point at or past 0.3
    assert first_prune(decisions(PruningRule(grace=0.6), diverging, finished))[0] == 10 / 16


@pytest.mark.parametrize("source", sorted(PROTECTED_SOURCES))
def test_the_baseline_replicates_and_validation_reruns_are_never_pruned(source) -> None:
    finished = crossing_family()
    diverging = curve(1.0, 0.03, np.random.default_rng(4), diverge_at=0.15)
    rule = PruningRule()
    assert first_prune(decisions(rule, diverging, finished, source=source)) is None
    run = RunCurve({"size": "small", "lr": 0.03}, "h100", diverging, protected=True)
    assert rule.decide(run, finished, OBJ) is None
    assert first_prune(decisions(rule, diverging, finished, source="llm")) is not None  # the same run, unprotected


def test_only_finished_runs_on_the_runs_own_hardware_count() -> None:
    diverging = curve(1.0, 0.03, np.random.default_rng(4), diverge_at=0.15)
    on_h100 = crossing_family(hardware="h100")
    rule = PruningRule()
    assert first_prune(decisions(rule, diverging, on_h100, hardware="h200")) is None
    mixed = on_h100 + crossing_family(seed=1, hardware="h200")
    _, reason = first_prune(decisions(rule, diverging, mixed, hardware="h200"))
    best_h200 = min(r.final for r in mixed if r.hardware == "h200")
    assert "on h200" in reason and f"worse than the best {best_h200:.4g}" in reason
    assert "from 14 finished runs" in reason


def test_no_prune_without_enough_finished_runs_or_with_a_weak_relation() -> None:
    finished = crossing_family()
    diverging = curve(1.0, 0.03, np.random.default_rng(4), diverge_at=0.15)
    rule = PruningRule(min_finished=8)
    assert first_prune(decisions(rule, diverging, finished[:7])) is None
    assert first_prune(decisions(rule, diverging, finished[:8])) is not None
    # finals unrelated to the curves: the value at a fraction ranks nothing, so nothing is pruned
    rng = np.random.default_rng(5)
    unrelated = [RunCurve(r.params, r.hardware, r.points, float(rng.uniform(0.96, 1.04))) for r in finished]
    hopeless = curve(1.08, 0.03, np.random.default_rng(3))
    assert first_prune(decisions(PruningRule(), hopeless, unrelated)) is None


def test_bad_input_means_keep_never_an_exception() -> None:
    finished = crossing_family()
    rule = PruningRule(space=SPACE)
    params = {"size": "small", "lr": 0.03}
    nan_points = [ProgressPoint(f, {"train_loss": math.nan}) for f in FRACTIONS[:8]]
    odd_points = [ProgressPoint(f, {"other": 3.0}) for f in FRACTIONS[:8]]
    for points in ([], nan_points, odd_points, [ProgressPoint(math.nan, {"train_loss": 9.0})],
                   [ProgressPoint(2.0, {"train_loss": 9.0})]):
        assert rule.decide(RunCurve(params, "h100", points), finished, OBJ) is None
    diverging = curve(1.0, 0.03, np.random.default_rng(4), diverge_at=0.15)[:8]
    broken = [RunCurve(r.params, r.hardware, [ProgressPoint(p.fraction, {"loss": 1.0}) for p in r.points], r.final)
              for r in finished]  # finished runs that never reported the signal
    no_final = [RunCurve(r.params, r.hardware, r.points, None) for r in finished]
    nan_final = [RunCurve(r.params, r.hardware, r.points, math.nan) for r in finished]
    empty = [RunCurve(r.params, r.hardware, (), r.final) for r in finished]
    for bad in ([], broken, no_final, nan_final, empty):
        assert rule.decide(RunCurve(params, "h100", diverging), bad, OBJ) is None
    # NaN points inside an otherwise good curve are skipped, not fatal
    spiky = [ProgressPoint(p.fraction, {"train_loss": math.nan if i % 2 else p.values["train_loss"]})
             for i, p in enumerate(diverging)]
    assert rule.decide(RunCurve(params, "h100", spiky), finished, OBJ) is not None
    # params the space does not know: the curve alone still decides
    assert rule.decide(RunCurve({"size": "huge"}, "h100", diverging), finished, OBJ) is not None
    assert PruningRule(signal="missing").decide(RunCurve(params, "h100", diverging), finished, OBJ) is None


def test_decisions_are_deterministic_and_do_not_depend_on_the_order_of_finished_runs() -> None:
    finished = crossing_family()
    hopeless = curve(1.08, 0.03, np.random.default_rng(3))
    rule = PruningRule(space=SPACE)
    first = decisions(rule, hopeless, finished)
    assert decisions(rule, hopeless, finished) == first
    shuffled = list(finished)
    random.Random(0).shuffle(shuffled)
    assert decisions(rule, hopeless, shuffled) == first
    assert first_prune(first) is not None


def test_a_maximized_objective_prunes_the_run_predicted_too_low() -> None:
    acc = Objective("val_acc", "maximize")
    rng = np.random.default_rng(0)
    finished = []
    for _ in range(12):
        final = float(rng.uniform(0.6, 0.8))
        pts = [ProgressPoint(t, {"val_acc": final - 0.3 * (1 - t) + 0.003 * float(rng.standard_normal())})
               for t in FRACTIONS]
        finished.append(RunCurve({}, "cpu", pts, final))
    bad = [ProgressPoint(t, {"val_acc": 0.4 - 0.3 * (1 - t)}) for t in FRACTIONS[:6]]
    reason = PruningRule().decide(RunCurve({}, "cpu", bad), finished, acc)
    assert reason is not None and "predicts val_acc ≤" in reason
    good = [ProgressPoint(t, {"val_acc": 0.85 - 0.3 * (1 - t)}) for t in FRACTIONS[:6]]
    assert PruningRule().decide(RunCurve({}, "cpu", good), finished, acc) is None


def test_settings_out_of_range_are_config_errors_naming_the_field() -> None:
    for kwargs, field in (({"grace": 1.0}, "pruning.grace"), ({"confidence": 0.4}, "pruning.confidence"),
                          ({"min_finished": 2}, "pruning.min_finished"),
                          ({"min_rank_correlation": 2.0}, "pruning.min_rank_correlation"),
                          ({"lookback": 1.0}, "pruning.lookback"), ({"tolerance": -0.1}, "pruning.tolerance")):
        with pytest.raises(ConfigError, match=f"^{re.escape(field)}: "):
            PruningRule(**kwargs)
