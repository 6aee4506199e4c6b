"""Code variants in the ranker (a pool that mixes variants and params, running experiments'
variants, the LLM's share of the wave, validations) and in the feasibility model (crashes and
memory per variant). The objective is test_gp_variants'."""

from __future__ import annotations

import numpy as np
import pytest

from backends.base import Worker
from hybrid.types import Candidate, ExperimentState, FailureKind
from surrogate.acquisition import GPRanker
from surrogate.feasibility import SuccessClassifier, VariantSuccessModel
from surrogate.gp import GPSurrogate

from ..proposers.suite import MINIMIZE, random_configs
from .test_gp import run
from .test_gp_variants import A_OPT, BASE_OPT, SPACE, campaign, f


def free(n: int = 1) -> list[Worker]:
    return [Worker(f"cpu{i}", "cpu", 0.0) for i in range(n)]


# ---- the ranker over variants x params ---------------------------------------------------------
def test_the_ranker_puts_the_promising_variant_first() -> None:
    hist = campaign()
    pool = [Candidate(A_OPT, "tpe"), Candidate(A_OPT, "tpe", variant="B"), Candidate(A_OPT, "llm", variant="A"),
            Candidate(BASE_OPT, "tpe", variant="B")]
    [(cand, _)] = GPRanker(SPACE, MINIMIZE).rank(pool, hist, [], free(1))
    assert cand.variant == "A" and cand.params == A_OPT
    # without A's results the same pool is ranked on the unchanged code's optimum
    [(cand, _)] = GPRanker(SPACE, MINIMIZE).rank(pool, campaign(n_a=0), [], free(1))
    assert cand.params == BASE_OPT


def test_running_experiments_keep_their_variant() -> None:
    """A running (A, x) makes a second (A, x) worthless, not (unchanged code, x): its fantasy runs A."""
    hist = campaign()
    near = {"x0": 0.68, "x1": 0.5}
    pool = [Candidate(A_OPT, "tpe", variant="A"), Candidate(near, "tpe", variant="A"), Candidate(A_OPT, "tpe")]

    def running(variant: str | None):
        e = run(900, A_OPT, variant=variant)
        e.result, e.state = None, ExperimentState.RUNNING
        return [e]

    [(first, _)] = GPRanker(SPACE, MINIMIZE).rank(pool, hist, running(None), free(1))
    assert first.variant == "A" and first.params == A_OPT  # the base code running there changes nothing
    [(first, _)] = GPRanker(SPACE, MINIMIZE).rank(pool, hist, running("A"), free(1))
    assert (first.variant, first.params) != ("A", A_OPT)


def test_the_llm_share_holds_in_a_pool_of_variants() -> None:
    hist = campaign()
    # the GP's favourites are the parameter proposer's; the LLM's variant B is neutral far from the optimum
    pool = ([Candidate({"x0": 0.7 + d, "x1": 0.5}, "tpe", variant="A") for d in (0.0, 0.01, -0.01, 0.02)]
            + [Candidate({"x0": 0.95, "x1": 0.9}, "llm", variant="B")])
    ranker = GPRanker(SPACE, MINIMIZE)
    assert "llm" not in [c.source for c, _ in ranker.rank(pool, hist, [], free(3))]
    ranker.set_wave_shares({"llm": 0.3})  # owed round(0.3 x (25 + 3)) - 0 = 8, capped by its 1 candidate
    got = ranker.rank(pool, hist, [], free(3))
    assert [c.source for c, _ in got].count("llm") == 1 and len(got) == 3
    assert next(c for c, _ in got if c.source == "llm").variant == "B"


def test_a_crashing_variant_is_not_run_again_where_the_unchanged_code_is() -> None:
    at = {"x0": 0.5, "x1": 0.5}
    hist = campaign(n_a=0, n_b=0) + [run(400 + i, at, state=ExperimentState.CRASHED, reason="exit code 1",
                                         variant="X", failure=FailureKind.CRASH) for i in range(2)]
    pool = [Candidate(at, "llm", variant="X"), Candidate(at, "tpe"), Candidate(A_OPT, "tpe", variant="X")]
    wave = GPRanker(SPACE, MINIMIZE).rank(pool, hist, [], free(3))
    assert [(c.variant, c.params) for c, _ in wave] == [(None, at)]  # X stays out, the idle workers wait
    assert "P(ok)=1.00" in wave[0][0].rationale


def test_a_validation_reruns_the_variant_it_validates() -> None:
    screened = [run(1 + i, c, f(c, v), hardware="a", variant=v)
                for i, (c, v) in enumerate(zip(random_configs(SPACE, 12, seed=0), [None, "A"] * 6, strict=True))]
    screened.append(run(50, A_OPT, f(A_OPT, "A"), hardware="a", variant="A"))  # the best
    screened.append(run(51, A_OPT, f(A_OPT), hardware="b"))  # same params, other code: not its validation
    on_b = [run(60 + i, c, f(c), hardware="b") for i, c in enumerate(random_configs(SPACE, 3, seed=1))]
    ranker = GPRanker(SPACE, MINIMIZE, target_hardware="b", validate_top_k=1)
    wave = ranker.rank([Candidate(BASE_OPT, "tpe")], screened + on_b, [], [Worker("big", "b", 8.0)])
    [(cand, _)] = wave
    assert cand.source == "validate" and cand.params == A_OPT and cand.variant == "A"


def test_a_variant_that_needs_more_memory() -> None:
    """A variant that ran out of memory where the unchanged code fits: memory is modelled per variant."""
    at = {"x0": 0.3, "x1": 0.5}
    hist = [run(1 + i, c, f(c), metrics={"peak_vram_mb": 20000 + 5000 * c["x1"]})
            for i, c in enumerate(random_configs(SPACE, 15, seed=0))]
    hist += [run(50 + i, c, state=ExperimentState.CRASHED, reason="CUDA out of memory", variant="W",
                 failure=FailureKind.OOM) for i, c in enumerate(random_configs(SPACE, 2, seed=4))]
    pool = [Candidate(at, "llm", variant="W"), Candidate(at, "tpe")]
    wave = GPRanker(SPACE, MINIMIZE, worker_memory_mb={"cpu": 40000}).rank(pool, hist, [], free(2))
    assert [(c.variant, c.params) for c, _ in wave] == [(None, at)]


# ---- feasibility per variant -------------------------------------------------------------------
def feasibility(hist):
    X = SPACE_ENC.encode_many([e.params for e in hist])
    ok = np.array([e.result.state is ExperimentState.DONE for e in hist])
    evidence = np.array([e.result.failure is not FailureKind.LOST for e in hist])
    return X, ok, [e.variant for e in hist], evidence


SPACE_ENC = GPSurrogate(SPACE, MINIMIZE).encoder


def test_a_variant_that_crashed_on_its_first_run() -> None:
    at, far = SPACE_ENC.encode_many([{"x0": 0.5, "x1": 0.5}, {"x0": 0.9, "x1": 0.1}])
    base = [run(1 + i, c, f(c)) for i, c in enumerate(random_configs(SPACE, 15, seed=0))]
    base.append(run(30, {"x0": 0.95, "x1": 0.95}, state=ExperimentState.CRASHED, failure=FailureKind.CRASH))

    def crash(seq: int, variant: str, kind: FailureKind = FailureKind.CRASH):
        return run(seq, {"x0": 0.5, "x1": 0.5}, state=ExperimentState.CRASHED, variant=variant, failure=kind)

    def p(hist, X, variants):
        return VariantSuccessModel(seed=0).fit(*feasibility(hist)).p_success(np.array(X), variants)

    alone = SuccessClassifier(seed=0).fit(*feasibility(base)[:2]).p_success(np.array([at, far]))
    once = [*base, crash(40, "X")]
    p_x, p_base = p(once, [at, far], ["X", "X"]), p(once, [at, far], [None, None])
    assert p_x.max() < 0.2  # broken, whatever the params
    np.testing.assert_array_equal(p_base, alone)  # the unchanged code's P(ok) is not dragged down
    assert p([*once, crash(41, "X")], [at], ["X"])[0] < 0.02  # twice: below the ranker's min_feasibility
    # an untried variant: the parameters' P(ok) times the prior that its code works
    assert p(once, [at], ["N"])[0] == pytest.approx(0.6 * alone[0])  # (1 + 1 dead) / (4 + 1 tried) broken
    # a lost job says nothing about the code (only what failures always said about the params)
    assert p([*base, crash(40, "X", FailureKind.LOST)], [at], ["X"])[0] > 3 * p_x[0]
    # and a success shows the code runs
    ran = [*once, run(42, {"x0": 0.3, "x1": 0.5}, 0.1, variant="X")]
    assert p(ran, [far], ["X"])[0] > 0.8


def test_no_variants_is_the_classifier() -> None:
    hist = [run(1 + i, c, f(c)) if c["x0"] < 0.8 else run(1 + i, c, state=ExperimentState.CRASHED)
            for i, c in enumerate(random_configs(SPACE, 40, seed=0))]
    X, ok, variants, evidence = feasibility(hist)
    Xc = SPACE_ENC.encode_many(random_configs(SPACE, 20, seed=1))
    np.testing.assert_array_equal(VariantSuccessModel(seed=3).fit(X, ok, variants, evidence).p_success(Xc, [None] * 20),
                                  SuccessClassifier(seed=3).fit(X, ok).p_success(Xc))
