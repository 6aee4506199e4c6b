"""surrogate/gp.py: one-hot encoding, training data, graceful degradation, refits, hardware as a task."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pytest

from hybrid.errors import ConfigError
from hybrid.space import CategoricalParam
from hybrid.types import Candidate, Experiment, ExperimentState, FailureKind, Result
from surrogate.gp import GPSurrogate, OneHotEncoder, training_data

from ..proposers.suite import MAXIMIZE, METRIC, MINIMIZE, cube_space, mixed_space, random_configs


def run(seq: int, params: Mapping[str, Any], value: float | None = None, *, state: ExperimentState | None = None,
        hardware: str = "cpu", metrics: Mapping[str, float] | None = None, reason: str = "",
        duration_s: float = 60.0, variant: str | None = None, failure: FailureKind | None = None) -> Experiment:
    """A finished experiment: DONE with ``value``, or failed in ``state`` (metrics kept as given),
    run with the code ``variant`` (None: unchanged)."""
    state = state or ExperimentState.DONE
    exp = Experiment(f"e{seq:04d}", Candidate(dict(params), "test", variant=variant), f"w-{hardware}", hardware,
                     wave=seq, state=state, seq=seq)
    m = dict(metrics or {})
    if value is not None:
        m[METRIC] = value
    exp.result = Result(exp.id, state, m, hardware, duration_s=duration_s, cost_usd=0.0, reason=reason,
                        failure=failure)
    return exp


def quadratic(p: Mapping[str, Any]) -> float:
    return float(sum((p[f"x{i}"] - 0.3) ** 2 for i in range(len(p))))


def history_of(configs, f=quadratic, hardware: str = "cpu", start: int = 1) -> list[Experiment]:
    return [run(start + i, c, f(c), hardware=hardware) for i, c in enumerate(configs)]


# ---- encoding ---------------------------------------------------------------------------------
def test_categoricals_are_one_hot_and_round_trip() -> None:
    space = mixed_space()
    enc = OneHotEncoder(space)
    assert enc.dim == 4 + 3  # four numeric columns, three for window_pattern's choices
    assert enc.columns[enc.slices["window_pattern"]] == ["window_pattern=L", "window_pattern=SL",
                                                         "window_pattern=SSSL"]
    for cfg in random_configs(space, 30, seed=1):
        x = enc.encode(cfg)
        block = x[enc.slices["window_pattern"]]
        assert sorted(block.tolist()) == [0.0, 0.0, 1.0]
        assert ((x >= 0) & (x <= 1)).all()
        assert space.key(space.validate(enc.decode(x))) == space.key(cfg)


def test_categorical_choices_are_equidistant() -> None:
    """Not ordinal: every pair of distinct choices is the same distance apart."""
    space = mixed_space()
    enc = OneHotEncoder(space)
    base = space.defaults()
    pts = [enc.encode({**base, "window_pattern": c}) for c in ("L", "SL", "SSSL")]
    d = {np.linalg.norm(pts[i] - pts[j]).round(12) for i in range(3) for j in range(i + 1, 3)}
    assert len(d) == 1
    assert any(isinstance(p, CategoricalParam) for p in space)


# ---- training data ----------------------------------------------------------------------------
def test_training_data_uses_successes_only_and_maximizes() -> None:
    space = cube_space(2)
    enc = OneHotEncoder(space)
    hist = [run(1, {"x0": 0.1, "x1": 0.1}, 0.5),
            run(2, {"x0": 0.2, "x1": 0.2}, 0.01, state=ExperimentState.CRASHED, reason="exit code 1"),
            run(3, {"x0": 0.3, "x1": 0.3}, float("nan"), state=ExperimentState.DONE),
            run(4, {"x0": 0.4, "x1": 0.4}, state=ExperimentState.TIMEOUT)]
    data = training_data(hist, MINIMIZE, enc)
    assert data.y.tolist() == [-0.5]  # the crash's 0.01 never enters; NaN dropped
    assert training_data(hist, MAXIMIZE, enc).y.tolist() == [0.5]


# ---- degradation ------------------------------------------------------------------------------
@pytest.mark.parametrize("n", [0, 1, 2])
def test_too_few_observations_give_no_model(n: int) -> None:
    space = cube_space(2)
    hist = history_of(random_configs(space, n, seed=0))
    assert GPSurrogate(space, MINIMIZE).update(hist) is None


def test_all_crashed_gives_no_model() -> None:
    space = cube_space(2)
    hist = [run(i + 1, c, state=ExperimentState.CRASHED, reason="exit code 1")
            for i, c in enumerate(random_configs(space, 6, seed=0))]
    assert GPSurrogate(space, MINIMIZE, min_observations=1).update(hist) is None


@pytest.mark.parametrize("n", [1, 2])
def test_fitting_one_or_two_points_does_not_raise(n: int) -> None:
    space = cube_space(2)
    hist = history_of(random_configs(space, n, seed=0))
    fit = GPSurrogate(space, MINIMIZE, min_observations=1).update(hist)
    if fit is not None:
        mu, var = fit.marginal(np.array([[0.5, 0.5]]))
        assert np.isfinite(mu).all() and np.isfinite(var).all()


def test_duplicates_and_refit_schedule() -> None:
    space = cube_space(2)
    configs = random_configs(space, 8, seed=0)
    hist = history_of(configs + configs[:4])  # four exact repeats
    gp = GPSurrogate(space, MINIMIZE, refit_every=3)
    first = gp.update(hist)
    assert first is not None and first.refit
    hist += history_of(random_configs(space, 2, seed=1), start=len(hist) + 1)
    second = gp.update(hist)
    assert second is not None and not second.refit  # cheap update: hyperparameters kept
    hist += history_of(random_configs(space, 1, seed=2), start=len(hist) + 1)
    assert gp.update(hist).refit  # 3 new since the last fit


def test_gp_predicts_the_objective() -> None:
    space = cube_space(2)
    hist = history_of(random_configs(space, 30, seed=0))
    fit = GPSurrogate(space, MINIMIZE).update(hist)
    mu, _ = fit.marginal(np.array([[0.3, 0.3], [0.9, 0.9]]))
    assert mu[0] > mu[1]  # y = -value: the minimum at 0.3 is the maximum of y
    assert -mu[1] == pytest.approx(2 * 0.6**2, abs=0.05)


# ---- hardware as a task -----------------------------------------------------------------------
def test_multitask_recovers_hardware_offset() -> None:
    space = cube_space(2)
    offset = 0.5
    a = history_of(random_configs(space, 30, seed=0), hardware="a")
    b = history_of(random_configs(space, 8, seed=5), lambda p: quadratic(p) + offset, hardware="b", start=31)
    gp = GPSurrogate(space, MINIMIZE, target_hardware="b")
    fit = gp.update(a + b)
    assert type(fit.model).__name__ == "MultiTaskGP"
    assert fit.target_hardware == "b"
    probe = random_configs(space, 10, seed=9)  # mostly where only hardware a ran
    mu, _ = fit.marginal(gp.encoder.encode_many(probe))
    truth = np.array([quadratic(p) + offset for p in probe])
    assert np.abs(-mu - truth).max() < 0.1
    # on hardware a the same configs are predicted without the offset
    fit_a = GPSurrogate(space, MINIMIZE, target_hardware="a").update(a + b)
    mu_a, _ = fit_a.marginal(gp.encoder.encode_many(probe))
    assert np.mean(-mu - -mu_a) == pytest.approx(offset, abs=0.1)


def test_hardware_as_noise_pools_the_labels_and_misses_the_offset() -> None:
    """The ablation of benchmarks/hardware.py: one GP over every label, no offset learned."""
    space = cube_space(2)
    a = history_of(random_configs(space, 30, seed=0), hardware="a")
    b = history_of(random_configs(space, 8, seed=5), lambda p: quadratic(p) + 0.5, hardware="b", start=31)
    gp = GPSurrogate(space, MINIMIZE, target_hardware="b", hardware="noise")
    fit = gp.update(a + b)
    assert type(fit.model).__name__ == "SingleTaskGP" and fit.n_observations == 38
    probe = random_configs(space, 10, seed=9)
    mu, _ = fit.marginal(gp.encoder.encode_many(probe))
    truth = np.array([quadratic(p) + 0.5 for p in probe])
    assert np.mean(truth - -mu) > 0.3  # predicted as if on hardware a: most of the offset is lost
    with pytest.raises(ConfigError, match=r"surrogate\.hardware"):
        GPSurrogate(space, MINIMIZE, hardware="pooled")


def test_target_defaults_to_most_frequent_hardware() -> None:
    space = cube_space(2)
    hist = (history_of(random_configs(space, 6, seed=0), hardware="a")
            + history_of(random_configs(space, 3, seed=1), hardware="b", start=7))
    assert GPSurrogate(space, MINIMIZE).update(hist).target_hardware == "a"
    # a configured target without successes yet: predict on the most frequent label meanwhile
    assert GPSurrogate(space, MINIMIZE, target_hardware="h200").update(hist).target_hardware == "a"


def test_same_data_same_seed_same_multitask_posterior() -> None:
    """The task covariance's starting point is drawn from the seed, not from torch's global random
    state: two campaigns with the same seed on several hardware labels rank alike."""
    space = cube_space(2)
    hist = (history_of(random_configs(space, 20, seed=0), hardware="a")
            + history_of(random_configs(space, 6, seed=5), lambda p: quadratic(p) + 0.3, hardware="b", start=21))
    X = np.array([[0.5, 0.5], [0.1, 0.9]])
    first, second = (GPSurrogate(space, MINIMIZE, target_hardware="b").update(hist).marginal(X) for _ in range(2))
    np.testing.assert_array_equal(first[0], second[0])
    np.testing.assert_array_equal(first[1], second[1])
