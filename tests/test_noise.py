"""hybrid.noise: run-to-run sd per hardware, the recommendation (confirmed by >= 2 runs on the
judged hardware), what the confirmation phase still has to run."""

from __future__ import annotations

import math

import pytest

from hybrid import noise
from hybrid.types import Candidate, Experiment, ExperimentState, FailureKind, Objective, Prior, Result

MIN = Objective("val_bpb", "minimize")
MAX = Objective("acc", "maximize")


def run(seq: int, lr: float, value: float | None, hardware: str = "h100", source: str = "sobol",
        state: ExperimentState | None = None, variant: str | None = None, prior: Prior | None = None) -> Experiment:
    e = Experiment(f"e{seq:04d}", Candidate({"lr": lr, "depth": 4}, source, variant=variant), "w0", hardware, 1,
                   seq=seq, prior=prior)
    if state in (ExperimentState.RUNNING, ExperimentState.PENDING):
        e.state = state
        return e
    if value is None:
        e.state = state or ExperimentState.CRASHED
        e.result = Result(e.id, e.state, {}, hardware, 1.0, 0.0, "", "exit code 1", FailureKind.CRASH)
    else:
        e.state = ExperimentState.DONE
        e.result = Result(e.id, e.state, {"val_bpb": value, "acc": value}, hardware, 1.0, 0.0)
    return e


def test_the_noise_is_the_pooled_sd_of_replicated_configs_per_hardware_with_an_interval() -> None:
    exps = [run(1, 0.01, 1.00), run(2, 0.01, 1.02, source="replicate"), run(3, 0.02, 0.90),
            run(4, 0.02, 0.93, source="confirm"), run(5, 0.02, 0.92, source="confirm"),
            run(6, 0.03, 0.50, hardware="h200")]
    by_hw = noise.noise_by_hardware(exps, MIN)
    h100 = by_hw["h100"]
    # pooled: ((1-1.01)^2 + (1.02-1.01)^2 + (0.9-0.9167)^2 + (0.93-0.9167)^2 + (0.92-0.9167)^2) / (1 + 2)
    ss = 0.0002 + (0.9 - 0.275 / 0.3) ** 2 + (0.93 - 2.75 / 3) ** 2 + (0.92 - 2.75 / 3) ** 2
    assert h100.sd == pytest.approx(math.sqrt(ss / 3))
    assert (h100.dof, h100.n_configs) == (3, 2)
    assert h100.low < h100.sd < h100.high  # a 95 % interval on 3 dof is wide
    assert h100.high / h100.sd == pytest.approx(math.sqrt(3 / 0.2158), rel=1e-3)  # chi2.ppf(0.025, 3)
    assert by_hw["h200"].sd is None and "not measured" in by_hw["h200"].text()
    assert noise.noise_on(by_hw, "h200") == pytest.approx(h100.sd)  # the other labels' pooled sd


def test_the_noise_at_the_best_configs_leaves_out_a_noisy_region_far_behind() -> None:
    """FCNet-like: the baseline diverges half the time (its replicates differ by 0.4), the good
    configurations agree to 0.002. The pooled sd is the baseline's; the noise at the best is theirs."""
    exps = [run(1, 0.5, 1.0, source="baseline"), run(2, 0.5, 1.4, source="replicate")]
    for i, (a, b) in enumerate([(0.300, 0.302), (0.310, 0.308), (0.320, 0.322)]):
        exps += [run(10 + 2 * i, 0.01 * (i + 1), a), run(11 + 2 * i, 0.01 * (i + 1), b, source="replicate")]
    exps.append(run(30, 0.2, 0.25))  # the best single run: not replicated, it measures nothing
    pooled = noise.noise_by_hardware(exps, MIN)["h100"]
    best = noise.noise_at_best(exps, MIN, "h100", k=3)
    assert pooled.sd > 0.1 and (pooled.dof, pooled.n_configs) == (4, 4)
    assert best.sd == pytest.approx(math.sqrt(3 * 2 * 0.001**2 / 3)) and (best.dof, best.n_configs) == (3, 3)
    assert best.high < 0.01 < pooled.low  # judged in its own noise, 0.02 is ~10 sd, not 0.1 sd
    # the baseline among the 4 best: 200 x its peers' median sd, another noise regime, left out
    assert noise.noise_at_best(exps, MIN, "h100", k=4).sd == pytest.approx(best.sd)
    # among two, no median tells which one is the odd one: both are pooled
    two = [*exps[:2], *exps[6:8]]
    assert noise.noise_at_best(two, MIN, "h100").n_configs == 2 and noise.noise_at_best(two, MIN, "h100").sd > 0.1
    # maximizing, the best are the highest
    assert noise.noise_at_best(exps, MAX, "h100", k=1).n_configs == 1 and noise.noise_at_best(exps, MAX, "h100", 1).sd > 0.1
    assert noise.noise_at_best(exps, MIN, "h200").sd is None  # nothing ran there


def test_the_noise_at_the_best_configs_pools_a_noise_that_differs_by_less_than_tenfold() -> None:
    """Best configurations whose noise differs 5-fold are one regime: all pooled; one 17 x its
    peers' median is left out (it would be the pooled variance alone)."""
    exps = []
    for i, (mean, d) in enumerate([(0.30, 0.001), (0.31, 0.005), (0.32, 0.002), (0.33, 0.06)]):
        exps += [run(10 + 2 * i, 0.01 * (i + 1), mean - d), run(11 + 2 * i, 0.01 * (i + 1), mean + d, source="replicate")]
    three = noise.noise_at_best(exps[:6], MIN, "h100")
    assert three.n_configs == 3 and three.sd == pytest.approx(math.sqrt(2 * (0.001**2 + 0.005**2 + 0.002**2) / 3))
    four = noise.noise_at_best(exps, MIN, "h100")  # sds 0.0014, 0.0071, 0.0028, 0.085: median 0.005
    assert four.n_configs == 3 and four.sd == pytest.approx(three.sd)
    assert noise.noise_by_hardware(exps, MIN)["h100"].sd > 2 * four.sd  # pooled everywhere, the odd one dominates


@pytest.mark.parametrize("replicate", [None, 1.05], ids=["replicate crashed", "no replicate"])
def test_zero_or_one_successful_run_of_every_config_measures_no_noise(replicate: float | None) -> None:
    exps = [run(1, 0.01, 1.0), run(2, 0.01, None, source="replicate")] if replicate is None else [run(1, 0.01, 1.0)]
    [(hw, n)] = noise.noise_by_hardware(exps, MIN).items()
    assert (hw, n.sd, n.dof) == ("h100", None, 0)
    assert noise.noise_on({hw: n}, hw) is None
    assert noise.significant(0.5, None) is None


def test_all_runs_identical_is_a_noise_of_zero_not_unknown() -> None:
    exps = [run(1, 0.01, 1.0), run(2, 0.01, 1.0, source="replicate"), run(3, 0.02, 0.9), run(4, 0.02, 0.9)]
    n = noise.noise_by_hardware(exps, MIN)["h100"]
    assert (n.sd, n.low, n.high, n.dof) == (0.0, 0.0, 0.0, 2)
    assert n.text().startswith("0 (every replicate gave the same value")
    assert noise.significant(1e-9, 0.0) is True  # nothing is within a noise of zero


def test_held_is_the_same_two_sd_rule_as_everywhere_else() -> None:
    # a change's best against its base's best: beyond 2 sd it held (or not), within it is noise
    assert noise.held(0.994, 1.0, 0.002, MIN) == "yes"  # 0.006 > 0.004
    assert noise.held(0.997, 1.0, 0.002, MIN) == "within noise"  # 0.003 < 0.004
    assert noise.held(1.005, 1.0, 0.002, MIN) == "no"
    assert noise.held(0.997, 1.0, None, MIN) == "yes"  # no sd known: compared as they are
    assert noise.held(None, 1.0, 0.002, MIN) == noise.held(0.99, None, 0.002, MIN) == ""
    assert noise.held(1.01, 1.0, 0.002, Objective("acc", "maximize")) == "yes"


def test_the_gp_noise_is_used_where_nothing_was_measured() -> None:
    exps = [run(1, 0.01, 1.0), run(2, 0.02, 0.9)]
    by_hw = noise.noise_by_hardware(exps, MIN, gp_sd={"h100": 0.03})
    assert by_hw["h100"].sd is None and by_hw["h100"].gp_sd == 0.03
    assert noise.noise_on(by_hw, "h100") == 0.03


def test_the_recommendation_is_the_best_mean_among_configs_confirmed_twice_not_the_luckiest_run() -> None:
    exps = [run(1, 0.01, 1.00), run(2, 0.01, 1.01, source="replicate"),
            run(3, 0.02, 0.80),                                    # the luckiest single run...
            run(4, 0.02, 0.96, source="confirm"),                 # ...whose re-run was ordinary: mean 0.88
            run(5, 0.03, 0.86), run(6, 0.03, 0.87, source="confirm"),  # mean 0.865: the answer
            run(7, 0.04, 0.70)]                                   # a single run, not confirmed
    rec = noise.recommend(exps, MIN)
    assert rec is not None and rec.confirmed
    assert (rec.runs.ids, rec.n, rec.hardware) == (("e0005", "e0006"), 2, "h100")
    assert rec.mean == pytest.approx(0.865) and rec.sd == pytest.approx(math.sqrt(0.00005))
    assert rec.estimate() == "0.865 ± 0.00707 (2 runs)"
    assert "e0007" in rec.note and "not confirmed" in rec.note
    d = rec.as_dict(MIN)
    assert d["params"] == {"lr": 0.03, "depth": 4} and d["experiment_ids"] == ["e0005", "e0006"] and d["confirmed"]


def test_maximize_recommends_the_highest_mean() -> None:
    exps = [run(1, 0.01, 0.5), run(2, 0.01, 0.6), run(3, 0.02, 0.7), run(4, 0.02, 0.5), run(5, 0.03, 0.9)]
    rec = noise.recommend(exps, MAX)
    assert rec is not None and rec.runs.ids == ("e0003", "e0004") and rec.mean == pytest.approx(0.6)


def test_a_code_variant_is_its_own_configuration() -> None:
    exps = [run(1, 0.01, 1.0), run(2, 0.01, 0.8, variant="v1"), run(3, 0.01, 0.82, variant="v1")]
    rec = noise.recommend(exps, MIN)
    assert rec is not None and rec.runs.variant == "v1" and rec.n == 2 and rec.confirmed


def test_without_a_confirmed_config_the_best_estimate_is_recommended_unconfirmed_and_says_why() -> None:
    rec = noise.recommend([run(1, 0.01, 1.0), run(2, 0.02, 0.9), run(3, 0.03, None, source="confirm")], MIN)
    assert rec is not None and not rec.confirmed and rec.runs.ids == ("e0002",)
    assert rec.estimate() == "0.9 (1 run, unconfirmed)"
    assert "no configuration ran 2 times on h100" in rec.note
    assert noise.recommend([run(1, 0.01, None)], MIN) is None


def test_runs_on_other_hardware_do_not_confirm_on_the_target() -> None:
    exps = [run(1, 0.02, 0.90, "h100"), run(2, 0.02, 0.91, "h100"), run(3, 0.02, 0.85, "h200")]
    rec = noise.recommend(exps, MIN, target_hardware="h200")
    assert rec is not None and rec.hardware == "h200" and not rec.confirmed and rec.n == 1
    rec = noise.recommend(exps, MIN, target_hardware="a100")  # no success there: judged on h100, said
    assert rec is not None and rec.hardware == "h100" and rec.confirmed


def test_warm_start_priors_neither_measure_noise_nor_get_recommended() -> None:
    prior = Prior("old", "old/e0001", 1)
    exps = [run(1, 0.01, 0.5, prior=prior), run(2, 0.01, 0.52, prior=prior), run(3, 0.02, 0.9)]
    assert noise.noise_by_hardware(exps, MIN)["h100"].sd is None
    rec = noise.recommend(exps, MIN)
    assert rec is not None and rec.runs.ids == ("e0003",)


def test_to_confirm_lists_the_top_configs_lacking_runs_counting_the_running_ones() -> None:
    exps = [run(1, 0.01, 1.0), run(2, 0.02, 0.8), run(3, 0.03, 0.85), run(4, 0.04, 0.9),
            run(5, 0.03, 0.0, state=ExperimentState.RUNNING),  # a confirmation of 0.03 on its way
            run(6, 0.05, 0.95), run(7, 0.05, 1.05)]  # noise sd 0.07: all of the top 3 could be the best
    todo = noise.to_confirm(exps, MIN, None, top_k=3)
    assert [(c.first.id, lacking) for c, lacking in todo] == [("e0002", 1), ("e0004", 1)]
    assert noise.to_confirm(exps, MIN, None, top_k=0) == []
    # a confirming run that crashed does not count: the config still lacks its run
    exps.append(run(8, 0.02, None, source="confirm"))
    assert [c.first.id for c, _ in noise.to_confirm(exps, MIN, None, top_k=1)] == ["e0002"]


def test_a_config_clearly_behind_the_best_is_not_worth_confirming() -> None:
    # noise sd 0.01 (the baseline's pair); x=0.03 is 0.2 behind the best: 20 sd, no chance
    exps = [run(1, 0.01, 1.00), run(2, 0.01, 1.01, source="replicate"), run(3, 0.02, 0.80), run(4, 0.03, 1.00),
            run(5, 0.04, 0.81)]
    todo = noise.to_confirm(exps, MIN, None, top_k=3)
    assert [c.first.id for c, _ in todo] == ["e0003", "e0005"]  # the baseline is confirmed already
    assert [c.first.id for c, _ in noise.to_confirm(exps[2:], MIN, None, top_k=3)] == ["e0003", "e0005", "e0004"]  # no sd: all


def test_a_single_run_far_beyond_the_noise_is_recommended_unconfirmed_not_ignored() -> None:
    # noise sd 0.01; e0005 ran once, 0.2 better than the best confirmed config: 20 sd, no lucky draw
    exps = [run(1, 0.01, 1.00), run(2, 0.01, 1.01, source="replicate"), run(3, 0.02, 0.90),
            run(4, 0.02, 0.91, source="confirm"), run(5, 0.03, 0.70)]
    rec = noise.recommend(exps, MIN)
    assert rec is not None and rec.runs.ids == ("e0005",) and not rec.confirmed
    assert rec.note.startswith("e0005 beats the best confirmed config (e0003, e0004: 0.905) by 0.205")
    assert rec.note.endswith("run it again to confirm it")
    # within noise of it: the confirmed config stands
    exps[-1] = run(5, 0.03, 0.895)
    rec = noise.recommend(exps, MIN)
    assert rec is not None and rec.runs.ids == ("e0003", "e0004") and rec.confirmed
    assert "within noise of the recommendation" in rec.note
