"""surrogate/acquisition.py + feasibility.py: greedy waves on hand-made posteriors, feasibility,
cost, hardware assignment, fallbacks, and the decision record the stopping rule reads."""

from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pytest
import torch
from scipy.stats import norm

from backends.base import Worker
from hybrid.types import Candidate, ExperimentState
from surrogate.acquisition import GPRanker, InOrderRanker, RankDecision, select_wave
from surrogate.feasibility import DurationModel, MemoryModel, SuccessClassifier

from ..proposers.suite import MINIMIZE, cube_space, random_configs
from .test_gp import history_of, quadratic, run


def analytic_ei(mu: float, sd: float, best: float) -> float:
    z = (mu - best) / sd
    return sd * (z * norm.cdf(z) + norm.pdf(z))


# A fixed joint Gaussian: point 0 is the (observed, certain) incumbent at 0; then A, B, C.
#   A: mean 0.1, sd 0.1  -> EI = 0.1 (Phi(1) + phi(1)) = 0.10833   (the best)
#   B: mean 0.0, sd 0.2  -> EI = 0.2 phi(0)            = 0.07979
#   C: mean -0.1, sd 0.1 -> EI = 0.1 (phi(1) - (1 - Phi(1))) = 0.00833
MEAN = [0.0, 0.1, 0.0, -0.1]
SD = [1e-5, 0.1, 0.2, 0.1]
A, B, C = 0, 1, 2  # positions among the choices (points 1, 2, 3)


def posterior(extra: list[tuple[float, float, dict[int, float]]] = ()) -> tuple[torch.Tensor, torch.Tensor]:
    """MEAN/SD as independent points, plus extra points (mean, sd, {point: correlation})."""
    mean = list(MEAN) + [m for m, _, _ in extra]
    sd = list(SD) + [s for _, s, _ in extra]
    corr = np.eye(len(mean))
    for k, (_, _, rho) in enumerate(extra):
        for j, r in rho.items():
            corr[len(MEAN) + k, j] = corr[j, len(MEAN) + k] = r
    sd_ = np.array(sd)
    return torch.tensor(mean, dtype=torch.float64), torch.tensor(corr * np.outer(sd_, sd_), dtype=torch.float64)


def wave(mean, covar, workers: int = 1, pending=(), log_feasible=None, log_cost=None, **kw):
    m = 3
    lf = np.zeros((m, workers)) if log_feasible is None else np.asarray(log_feasible, float)
    lc = np.zeros((m, workers)) if log_cost is None else np.asarray(log_cost, float)
    return select_wave(mean, covar, [0], list(pending), [1, 2, 3], lf, lc, n_samples=1024, **kw)


# ---- the greedy wave on a hand-made posterior -------------------------------------------------
def test_a_wave_depends_on_its_arguments_only_not_on_torchs_global_generator() -> None:
    """BoTorch prunes qLogNEI's baseline with samples it draws from torch's global generator; what
    ran before in the process must not decide a near-tie (two campaigns of one seed parted that
    way), and the caller's generator is left as it was."""
    mean, covar = posterior([(0.0, 0.1, {}), (0.1, 0.1, {})])  # points 4, 5: a noisy baseline next to 0
    lf, lc = np.zeros((3, 2)), np.zeros((3, 2))
    choices = []
    for global_seed in (1, 2):
        torch.manual_seed(global_seed)
        before = torch.get_rng_state()
        choices.append(select_wave(mean, covar, [0, 4, 5], [], [1, 2, 3], lf, lc, n_samples=64, seed=7))
        assert torch.equal(torch.get_rng_state(), before)  # nothing drawn from the caller's generator
    assert choices[0].picks == choices[1].picks and choices[0].log_ei == choices[1].log_ei


def test_picks_the_hand_computed_best() -> None:
    choice = wave(*posterior())
    assert choice.picks == [(A, 0)]
    ei = np.exp(choice.analytic_log_ei)
    assert ei[A] == pytest.approx(analytic_ei(0.1, 0.1, 0.0), rel=1e-3)
    assert ei[B] == pytest.approx(analytic_ei(0.0, 0.2, 0.0), rel=1e-3)
    assert math.exp(choice.log_ei[0]) == pytest.approx(0.10833, rel=0.05)  # qLogNEI, Monte Carlo


def test_pending_points_change_the_second_pick() -> None:
    assert [c for c, _ in wave(*posterior(), workers=2).picks] == [A, B]
    # an experiment already running at (almost) B's configuration: B would add nothing
    mean, covar = posterior([(0.0, 0.2, {2: 0.99999})])
    assert [c for c, _ in wave(mean, covar, workers=2, pending=[4]).picks] == [A, C]


def test_a_reserved_share_is_filled_with_its_best_candidate_first() -> None:
    """e.g. the LLM owed one slot of the wave: its best candidate (C over nothing) comes first,
    then the pool's best as usual; an unrunnable reservation lapses."""
    assert [c for c, _ in wave(*posterior(), workers=2, reserved=[([C], 1)]).picks] == [C, A]
    assert [c for c, _ in wave(*posterior(), workers=2, reserved=[([B, C], 1)]).picks] == [B, A]
    assert [c for c, _ in wave(*posterior(), workers=2, reserved=[([B, C], 2)]).picks] == [B, C]
    lf = np.log([[1.0, 1.0], [1.0, 1.0], [1e-6, 1e-6]])
    cut = wave(*posterior(), workers=2, log_feasible=lf, min_log_feasible=math.log(0.02), reserved=[([C], 1)])
    assert [c for c, _ in cut.picks] == [A, B]


def test_the_ranker_gives_a_source_its_wave_share() -> None:
    hist = history_of(random_configs(SPACE, 8, seed=0))  # none from "far"'s source yet
    ranker = GPRanker(SPACE, MINIMIZE)
    base = [c.source for c, _ in ranker.rank(POOL, hist, [], free(2))]
    assert "sobol" not in base  # the far candidate is never the GP's choice on its own
    ranker.wave_shares = {"sobol": 0.3}  # owed round(0.3 x (8 + 2)) - 0 = 3, capped by 2 workers, 1 candidate
    got = [c.source for c, _ in ranker.rank(POOL, hist, [], free(2))]
    assert got[0] == "sobol" and len(got) == 2


def test_infeasible_candidate_is_not_chosen() -> None:
    lf = np.log([[1e-6, 1e-6], [1.0, 1.0], [1.0, 1.0]])  # A would crash / not fit in memory
    assert [c for c, _ in wave(*posterior(), workers=2, log_feasible=lf).picks] == [B, C]
    cut = wave(*posterior(), workers=3, log_feasible=lf, min_log_feasible=math.log(0.02))
    assert [c for c, _ in cut.picks] == [B, C]  # the third worker stays idle rather than run A


def test_cost_division_prefers_the_cheap_worker_when_gains_tie() -> None:
    mean, covar = posterior([(0.1, 0.1, {})])  # A' (point 4) is A's twin: equal gains
    lc = np.log([[4.0, 1.0], [4.0, 1.0]])  # worker 0 costs 4x worker 1
    choice = select_wave(mean, covar, [0], [], [1, 4], np.zeros((2, 2)), lc, n_samples=1024)
    assert choice.picks[0][1] == 1
    # and between candidates, the cheaper one to run wins a tie
    lc = np.log([[2.0], [1.0]])
    assert select_wave(mean, covar, [0], [], [1, 4], np.zeros((2, 1)), lc).picks == [(1, 0)]


def test_target_hardware_gets_the_most_promising() -> None:
    lc = np.log([[1.0, 8.0]] * 3)  # worker 0 cheap (screening), worker 1 the expensive target
    choice = wave(*posterior(), workers=2, log_cost=lc, gain_first=[False, True])
    assert choice.picks[0] == (A, 1)
    assert choice.picks[1] == (B, 0)


# ---- feasibility models -----------------------------------------------------------------------
def test_success_classifier_learns_where_runs_fail() -> None:
    rng = np.random.default_rng(0)
    X = rng.random((80, 2))
    success = X[:, 0] < 0.7  # a learning rate too high diverges
    p = SuccessClassifier().fit(X, success).p_success(np.array([[0.2, 0.5], [0.95, 0.5]]))
    assert p[0] > 0.85 and p[1] < 0.3
    assert SuccessClassifier().fit(X, np.ones(80, bool)).p_success(X[:3]).tolist() == [1.0, 1.0, 1.0]


def test_memory_model_and_duration_model() -> None:
    rng = np.random.default_rng(0)
    X = rng.random((20, 2))
    peak = 10000 * np.exp(2 * X[:, 0])
    mem = MemoryModel({"small": 30000, "big": 200000}).fit(X, peak, [None] * 20)
    big_cfg = np.array([[0.95, 0.5]])  # needs ~67 GB
    assert mem.predict_mb(big_cfg)[0] == pytest.approx(10000 * math.exp(1.9), rel=0.05)
    assert mem.p_fits(big_cfg, "small")[0] < 0.01 and mem.p_fits(big_cfg, "big")[0] > 0.99
    assert mem.p_fits(big_cfg, "unknown")[0] == 1.0
    dur = DurationModel().fit(X, np.where(np.arange(20) % 2, 600.0, 300.0), ["h200" if i % 2 == 0 else "h100"
                                                                              for i in range(20)])
    assert dur.predict_s(X[:1], "h100")[0] == pytest.approx(600, rel=0.01)
    assert dur.predict_s(X[:1], "h200")[0] == pytest.approx(300, rel=0.01)


# ---- the ranker on real histories -------------------------------------------------------------
SPACE = cube_space(2)
POOL = [Candidate({"x0": 0.9, "x1": 0.9}, "sobol", "far"), Candidate({"x0": 0.3, "x1": 0.32}, "tpe", "near"),
        Candidate({"x0": 0.0, "x1": 0.8}, "grid")]


def free(n: int = 2, hardware: str = "cpu", usd: float = 0.0) -> list[Worker]:
    return [Worker(f"{hardware}{i}", hardware, usd) for i in range(n)]


@pytest.mark.parametrize("n_ok", [0, 1, 2])
def test_few_observations_fall_back_to_pool_order(n_ok: int) -> None:
    ranker = GPRanker(SPACE, MINIMIZE)
    hist = history_of(random_configs(SPACE, n_ok, seed=0))
    assert ranker.rank(POOL, hist, [], free(2)) == list(zip(POOL, free(2), strict=False))
    assert ranker.last_decision == RankDecision(n_ok, False, rank_seconds=ranker.last_decision.rank_seconds)


def test_all_crashed_falls_back_to_pool_order() -> None:
    ranker = GPRanker(SPACE, MINIMIZE, min_observations=1)
    hist = [run(i + 1, c, state=ExperimentState.CRASHED, reason="exit code 1")
            for i, c in enumerate(random_configs(SPACE, 5, seed=0))]
    assert ranker.rank(POOL, hist, [], free(3)) == list(zip(POOL, free(3), strict=True))
    assert not ranker.last_decision.fitted


def test_ranker_picks_the_promising_candidate_and_records_the_decision() -> None:
    hist = history_of(random_configs(SPACE, 15, seed=0))
    ranker = GPRanker(SPACE, MINIMIZE)
    wave_ = ranker.rank(POOL, hist, [], free(1, usd=3.6))
    [(cand, _)] = wave_
    assert cand.params == POOL[1].params and cand.source == "tpe"
    assert cand.rationale.startswith("near [gp: EI=") and "EI/$=" in cand.rationale
    d = ranker.last_decision
    assert d.fitted and d.n_observations == 15
    assert d.best_acq >= 0 and d.best_cost_usd == pytest.approx(3.6 * 60 / 3600)  # $3.6/h x 60 s runs
    assert d.best_gain_per_usd == pytest.approx(d.best_acq / d.best_cost_usd, rel=1e-6)
    assert d.fit_seconds > 0 and d.rank_seconds > 0
    # never more pairs than workers, never more than the pool
    assert len(ranker.rank(POOL, hist, [], free(5))) == len(POOL)


def test_ranker_avoids_a_predicted_oom() -> None:
    """Bigger x0 is better but needs more memory; 50 GB workers OOM above x0 ~ 0.5."""
    def f(p):
        return 1.0 - p["x0"]
    ok = [run(i + 1, c, f(c), metrics={"peak_vram_mb": 10000 + 80000 * c["x0"]})
          for i, c in enumerate(random_configs(SPACE, 30, seed=0)) if c["x0"] < 0.5]
    ooms = [run(100 + i, {"x0": x, "x1": 0.5}, state=ExperimentState.CRASHED, reason="CUDA out of memory")
            for i, x in enumerate([0.7, 0.8, 0.9])]
    pool = [Candidate({"x0": 0.95, "x1": 0.5}, "tpe"), Candidate({"x0": 0.45, "x1": 0.5}, "tpe")]
    ranker = GPRanker(SPACE, MINIMIZE, worker_memory_mb={"cpu": 50000})
    [(cand, _)] = ranker.rank(pool, ok + ooms, [], free(1))
    assert cand.params == pool[1].params
    # with 2 workers the doomed candidate is still not run (P(feasible) below min_feasibility)
    assert [c.params for c, _ in ranker.rank(pool, ok + ooms, [], free(2))] == [pool[1].params]


def test_ranker_sends_ties_to_the_cheap_worker() -> None:
    hist = history_of(random_configs(SPACE, 12, seed=0))
    workers = [Worker("pricey", "cpu", 4.0), Worker("cheap", "cpu", 1.0)]
    [(_, worker)] = GPRanker(SPACE, MINIMIZE).rank(POOL[1:2], hist, [], workers)
    assert worker.name == "cheap"


def test_validate_top_k_reruns_the_best_screened_config_on_the_target() -> None:
    screened = history_of(random_configs(SPACE, 12, seed=0), hardware="a")
    target_runs = history_of(random_configs(SPACE, 3, seed=1), hardware="b", start=13)
    best = min(screened, key=lambda e: e.value("val_bpb"))
    ranker = GPRanker(SPACE, MINIMIZE, target_hardware="b", validate_top_k=2)
    wave_ = ranker.rank(POOL, screened + target_runs, [], [Worker("cheap", "a", 1.0), Worker("big", "b", 8.0)])
    by_worker = {w.name: c for c, w in wave_}
    assert by_worker["big"].source == "validate" and by_worker["big"].params == best.params
    assert by_worker["cheap"].source in ("sobol", "tpe", "grid")
    assert ranker.last_decision.fitted


def test_validation_without_a_surrogate() -> None:
    """surrogate=none keeps the screening/validation workflow: validations first, then the pool."""
    screened = history_of(random_configs(SPACE, 6, seed=0), hardware="a")
    best = min(screened, key=lambda e: e.value("val_bpb"))
    ranker = InOrderRanker(SPACE, MINIMIZE, target_hardware="b", validate_top_k=1)
    workers = [Worker("cheap", "a", 1.0), Worker("big", "b", 8.0)]
    wave_ = ranker.rank(POOL, screened, [], workers)
    assert [(c.source, w.name) for c, w in wave_] == [("validate", "big"), ("sobol", "cheap")]
    assert wave_[0][0].params == best.params and "on b" in wave_[0][0].rationale
    # once it ran (or runs) on the target, it is not validated again
    again = ranker.rank(POOL, screened, [history_of([best.params], hardware="b", start=7)[0]], workers)
    assert [c.source for c, _ in again] == ["sobol", "tpe"]


def test_multi_hardware_history_ranks_on_the_target() -> None:
    a = history_of(random_configs(SPACE, 20, seed=0), hardware="a")
    b = history_of(random_configs(SPACE, 5, seed=1), lambda p: quadratic(p) + 0.3, hardware="b", start=21)
    ranker = GPRanker(SPACE, MINIMIZE, target_hardware="b")
    [(cand, _)] = ranker.rank(POOL, a + b, [], free(1, "b"))
    assert cand.params == POOL[1].params
    assert ranker.last_decision.fitted and ranker.last_decision.n_observations == 25


def test_importing_the_rankers_stays_light() -> None:
    code = "import sys, hybrid.campaign, surrogate.acquisition; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0
