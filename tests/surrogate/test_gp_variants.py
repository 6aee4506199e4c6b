"""Code variants in the GP: a dimension whose levels appear during the campaign (a new variant is
uncertain, not average), stacked variants that start from their parent, hardware as a task too.

The synthetic objective (minimized): the unchanged code's best learning rate is x0 = 0.3;
variant A moves it to 0.7 and is a little better there; variant B changes nothing."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pytest

from surrogate.gp import GPSurrogate
from surrogate.lineage import Lineage

from ..proposers.suite import MINIMIZE, cube_space, random_configs
from .test_gp import run

SPACE = cube_space(2)
A_OPT = {"x0": 0.7, "x1": 0.5}
BASE_OPT = {"x0": 0.3, "x1": 0.5}


def f(p: Mapping[str, Any], variant: str | None = None) -> float:
    best = 0.7 if variant == "A" else 0.3
    return (p["x0"] - best) ** 2 + 0.1 * (p["x1"] - 0.5) ** 2 - (0.03 if variant == "A" else 0.0)


def campaign(n_base: int = 15, n_a: int = 5, n_b: int = 5) -> list:
    """The unchanged code's results, then a few of A's and B's at random params."""
    out = [run(1 + i, c, f(c)) for i, c in enumerate(random_configs(SPACE, n_base, seed=0))]
    out += [run(100 + i, c, f(c, "A"), variant="A") for i, c in enumerate(random_configs(SPACE, n_a, seed=1))]
    out += [run(200 + i, c, f(c, "B"), variant="B") for i, c in enumerate(random_configs(SPACE, n_b, seed=2))]
    return out


def predict(fit, params: Mapping[str, Any], variant: str | None) -> tuple[float, float]:
    """(predicted metric, posterior sd) of params run with variant."""
    mu, var = fit.marginal(fit.inputs([params], [variant]))
    return float(-mu[0]), float(np.sqrt(var[0]))


# ---- the tree of variants ----------------------------------------------------------------------
def test_lineage_chains_levels_and_shared_edits() -> None:
    tree = Lineage({"C": "A", "A": None, "B": None, "X": "Y", "Y": "X"})
    assert tree.chain(None) == () and tree.chain("C") == ("C", "A") and tree.chain("new") == ("new",)
    assert tree.chain("X") == ("X", "Y")  # a corrupt cycle ends instead of looping
    levels = tree.levels(["C", None, "B"])
    assert levels == [None, "A", "B", "C"]  # C's parent is a level before it has results
    shared = tree.shared(levels)
    assert shared[levels.index("C"), levels.index("A")] == 1  # C carries A's edit
    assert shared[levels.index("C"), levels.index("B")] == 0  # unrelated: only the unchanged code
    assert np.diag(shared).tolist() == [0, 1, 1, 2]


# ---- the GP's variant dimension ----------------------------------------------------------------
def test_the_gp_learns_that_a_variant_moves_the_optimum() -> None:
    fit = GPSurrogate(SPACE, MINIMIZE).update(campaign())
    assert fit.levels == [None, "A", "B"]
    a_there, _ = predict(fit, A_OPT, "A")
    base_there, _ = predict(fit, A_OPT, None)
    assert a_there < base_there - 0.1  # truth: -0.03 against 0.16
    assert a_there == pytest.approx(f(A_OPT, "A"), abs=0.05)
    # B is neutral: predicted like the unchanged code at both optima
    for p in (A_OPT, BASE_OPT):
        assert predict(fit, p, "B")[0] == pytest.approx(predict(fit, p, None)[0], abs=0.03)


def test_a_new_variant_is_uncertain_not_average() -> None:
    fit = GPSurrogate(SPACE, MINIMIZE).update(campaign(), variants=["N"])  # N: proposed, not run yet
    assert fit.levels == [None, "A", "B", "N"]
    for p in (A_OPT, BASE_OPT):
        new_mu, new_sd = predict(fit, p, "N")
        for tried in (None, "A", "B"):
            assert new_sd > 3 * predict(fit, p, tried)[1]
        # predicted like the code it is built on, not like the average of the variants
        assert new_mu == pytest.approx(predict(fit, p, None)[0], abs=1e-6)


def test_a_stacked_variant_starts_from_its_parent() -> None:
    gp = GPSurrogate(SPACE, MINIMIZE, variant_parents={"A2": "A"})
    fit = gp.update(campaign(), variants=["A2", "N"])
    child_mu, child_sd = predict(fit, A_OPT, "A2")
    assert child_mu == pytest.approx(predict(fit, A_OPT, "A")[0], abs=1e-6)  # A's optimum, not the base's
    assert child_sd > 3 * predict(fit, A_OPT, "A")[1]  # its own edit is still unknown
    # two children of A move together; a child of A and an unrelated new variant do not
    X = fit.inputs([A_OPT] * 3, ["A2", "A2", "N"])
    _, cov = fit.joint(X)
    corr = cov / np.sqrt(np.outer(np.diag(cov), np.diag(cov)))
    assert float(corr[0, 2]) < 0.5 < float(corr[0, 1])


def test_variants_with_hardware_as_a_task() -> None:
    hist = campaign() + [run(300 + i, c, f(c, v) + 0.2, hardware="b", variant=v)
                         for i, (c, v) in enumerate(zip(random_configs(SPACE, 8, seed=3), [None, "A"] * 4, strict=True))]
    fit = GPSurrogate(SPACE, MINIMIZE, target_hardware="b").update(hist, variants=["N"])
    assert type(fit.model).__name__ == "MultiTaskGP" and fit.target_hardware == "b"
    assert predict(fit, A_OPT, "A")[0] == pytest.approx(f(A_OPT, "A") + 0.2, abs=0.08)
    assert predict(fit, A_OPT, "A")[0] < predict(fit, A_OPT, None)[0] - 0.1
    assert predict(fit, A_OPT, "N")[1] > 3 * predict(fit, A_OPT, "A")[1]


def test_parameter_only_points_are_the_unchanged_code() -> None:
    """Callers that know nothing of variants (the report's slices) keep working."""
    gp = GPSurrogate(SPACE, MINIMIZE)
    fit = gp.update(campaign())
    X = gp.encoder.encode_many([A_OPT, BASE_OPT])
    np.testing.assert_array_equal(fit.marginal(X)[0], fit.marginal(fit.inputs([A_OPT, BASE_OPT]))[0])
    plain = GPSurrogate(SPACE, MINIMIZE).update(campaign(n_a=0, n_b=0), variants=[None, None])
    assert plain.levels is None and type(plain.model.covar_module).__name__ == "RBFKernel"
    np.testing.assert_array_equal(plain.inputs([A_OPT]), gp.encoder.encode_many([A_OPT]))
    with pytest.raises(ValueError, match="no variant dimension"):
        plain.inputs([A_OPT], ["A"])
