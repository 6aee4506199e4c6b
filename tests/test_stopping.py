"""Stopping rules: budget caps, failure rate, the cost-aware rule (gain in noise sd per experiment's price)."""

from __future__ import annotations

import pytest

from hybrid.errors import ConfigError
from hybrid.stopping import (
    Budget,
    CampaignProgress,
    CostAwareStop,
    StopRules,
    StopSignal,
    failure_reason,
    money_saved,
)
from surrogate.acquisition import RankDecision


def progress(n_created=10, n_finished=10, n_failed=0, elapsed_s=60.0, spend_usd=5.0) -> CampaignProgress:
    return CampaignProgress(n_created, n_finished, n_failed, elapsed_s, spend_usd)


def test_budget_caps_give_their_reason():
    assert Budget(max_experiments=10).reason(progress()) == "budget.max_experiments reached (10)"
    assert Budget(max_hours=0.01).reason(progress(elapsed_s=36.0)) == "budget.max_hours reached (0.01 h)"
    assert Budget(max_cost_usd=5).reason(progress()) == "budget.max_cost_usd reached ($5.00 of $5.00)"
    assert Budget(max_experiments=11, max_hours=1, max_cost_usd=6).reason(progress()) is None
    with pytest.raises(ConfigError, match=r"budget.max_hours: expected a positive number"):
        Budget.from_config({"max_hours": 0})


def test_failure_rate_waits_for_five_results():
    assert failure_reason(progress(n_finished=4, n_failed=4), 0.5) is None
    assert failure_reason(progress(n_finished=6, n_failed=4), 0.5).startswith("campaign.max_failure_rate exceeded")


def decision(gain_per_usd: float, noise_sd: float = 0.002, typical_cost_usd: float = 2.5, incumbent: float = -1.0,
             fitted: bool = True) -> RankDecision:
    """A GP ranker's decision record: ``best_gain_per_usd`` in metric units per USD."""
    return RankDecision(60, fitted, best_gain_per_usd=gain_per_usd, noise_sd=noise_sd,
                        typical_cost_usd=typical_cost_usd, incumbent_mean=incumbent)


def signal(expected_sd: float, incumbent: float = 0.0, noise_sd: float = 1.0) -> StopSignal:
    return StopSignal(expected_sd, incumbent, noise_sd, 2.5)


def test_the_statistic_is_the_expected_gain_in_noise_sd_that_a_typical_experiment_buys():
    # 0.0004 val_bpb per USD, an experiment costs $2.50, the noise sd is 0.002: 0.001 / 0.002 = 0.5 sd
    s = StopSignal.from_decision(decision(0.0004))
    assert s.expected_sd == pytest.approx(0.5) and s.noise_sd == 0.002 and s.incumbent == -1.0
    # free workers: the gain is per experiment already (the ranker divides by 1)
    assert StopSignal.from_decision(decision(0.001, typical_cost_usd=0.0)).expected_sd == pytest.approx(0.5)
    # no fitted model, or no noise estimate: nothing to judge by
    assert StopSignal.from_decision(decision(0.0004, fitted=False)) is None
    assert StopSignal.from_decision(decision(0.0004, noise_sd=0.0)) is None
    assert StopSignal.from_decision(None) is None


def test_the_replicates_upper_bound_replaces_the_gps_noise_only_when_smaller():
    # the GP says 0.002; replicates bounding the sd by 0.0005 make the same gain 4 times as many sd
    gp, tight = StopSignal.from_decision(decision(0.0004)), StopSignal.from_decision(decision(0.0004), 0.0005)
    assert (tight.noise_sd, tight.measured, tight.gp_noise_sd) == (0.0005, True, 0.002)
    assert tight.expected_sd == pytest.approx(4 * gp.expected_sd)
    # a bound above the GP's (few replicates), none, or 0 (every replicate agreed): the GP's noise
    for high in (0.01, None, 0.0):
        s = StopSignal.from_decision(decision(0.0004), high)
        assert (s.noise_sd, s.measured, s.expected_sd) == (0.002, False, pytest.approx(0.5))
    # the reason names which noise it judged by
    rules = StopRules(Budget(max_experiments=50), cost=CostAwareStop(min_experiments=5, patience=1, window=1000))
    p = progress(n_created=12, n_finished=10, spend_usd=25.0)
    reason = rules.after_ranking(decision(0.000001), p, 10.0, 0.0005)
    assert "noise sd 0.0005 (the replicates' 95% upper bound; the GP's 0.002)" in reason
    reason = StopRules(Budget(), cost=CostAwareStop(min_experiments=5, patience=1)).after_ranking(
        decision(0.000001), p, 10.0, None)
    assert "noise sd 0.002 (the GP's)" in reason


def gp_like():
    """A real in-order ranker whose every decision reads like a GP's whose misfit says the noise is 5."""
    from surrogate.acquisition import InOrderRanker

    class GPLike(InOrderRanker):
        def rank(self, pool, history, pending, workers):
            self.last_decision = decision(0.01, noise_sd=5.0)
            return super().rank(pool, history, pending, workers)

    return GPLike()


class Recording(CostAwareStop):
    """The real rule, recording the replicates' bound each decision feeds it."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.seen: list = []

    def judge(self, decision, n_finished, measured_high=None):
        self.seen.append(measured_high)
        return super().judge(decision, n_finished, measured_high)


def test_a_campaign_feeds_the_rule_the_upper_bound_its_replicates_measured(tmp_path):
    """A real local campaign on a noisy target: until the baseline's replicate is in the rule gets
    no measurement; after it, the 95 % upper bound of the replicates' sd at the best configurations
    on the judged hardware (here the baseline's: the one replicated)."""
    from hybrid import noise
    from tests.test_confirmation import MIN, campaign

    rule = Recording(min_experiments=100)  # never fires: only what it is fed is looked at
    c = campaign(tmp_path, [{"x": 1.0 + i} for i in range(6)], 8, ranker=gp_like(), cost_stop=rule,
                 confirm_top_k=0, workers=2, defaults={"amp": 0.01, "sleep": 0.3})
    c.run()
    exps = c.experiments()
    assert [e.source for e in exps].count("replicate") == 1
    measured = noise.noise_by_hardware(exps, MIN)["cpu"]
    assert measured.dof == 1 and 0 < measured.sd < 0.01 and measured.high < 5.0  # 1 dof: ~32 x the sd
    assert rule.seen[0] is None and rule.seen[-1] == pytest.approx(measured.high)
    assert noise.noise_at_best(exps, MIN, "cpu").high == pytest.approx(measured.high)  # one replicated config


def test_where_the_noise_differs_the_rule_is_fed_the_noise_at_the_best_configs(tmp_path):
    """A real local campaign whose baseline is noisy (amp 0.8) and whose good configurations are
    quiet (amp 0.002): each new incumbent wins by less than 2 x the pooled sd and is run again, and
    the rule is fed the upper bound of the sd at the 5 best replicated configs, not the baseline's."""
    from hybrid import noise
    from tests.test_confirmation import MIN, campaign

    rule = Recording(min_experiments=100)
    configs = [{"x": 1.010 - 0.002 * i, "amp": 0.002} for i in range(6)]  # each one the new best, by 0.002
    configs += [{"x": 2.0, "amp": 0.002}, {"x": 2.1, "amp": 0.002}]  # then two worse: decisions after the last replicate
    c = campaign(tmp_path, configs, 15, ranker=gp_like(), cost_stop=rule, confirm_top_k=0,
                 defaults={"amp": 0.8, "sleep": 0.0})
    c.run()
    exps = c.experiments()
    # the baseline again, then every new incumbent but the first (it beats the baseline by far more)
    assert [e.source for e in exps].count("replicate") == 6
    pooled = noise.noise_by_hardware(exps, MIN)["cpu"]
    best = noise.noise_at_best(exps, MIN, "cpu")
    assert best.n_configs == 5 and best.sd < 0.002 < 0.05 < pooled.sd  # the baseline's runs left out
    assert rule.seen[-1] == pytest.approx(best.high) and best.high < pooled.high / 5


def test_one_threshold_means_the_same_on_any_metric_scale_and_price():
    """The same campaign measured in another unit (x1000) on workers 10x dearer stops at the same decision."""
    gains = [0.004 * 0.6**i for i in range(14)]  # val_bpb per USD
    incumbents = [-1.0 + 0.004 * (1 - 0.7**i) for i in range(14)]  # the best estimate's rise slows down
    small, large = CostAwareStop(5, 0.04, 3, 4), CostAwareStop(5, 0.04, 3, 4)
    runs = list(enumerate(zip(gains, incumbents, strict=True), 3))
    stops_small = [small.judge(decision(g, 0.002, 2.5, inc), n) for n, (g, inc) in runs]
    stops_large = [large.judge(decision(g * 1000 / 10, 2.0, 25.0, inc * 1000), n) for n, (g, inc) in runs]
    fired = [r is not None for r in stops_small]
    assert fired == [r is not None for r in stops_large]
    assert any(fired) and fired.index(True) > 5  # it fired, not at the first decision it may judge
    # the old absolute rule (gain per USD below 0.001) could not be right on both: 0.0003 $/USD is
    # nothing on the second scale and 0.15 noise sd per experiment on the first


def test_the_achieved_gain_is_the_incumbent_estimates_rise_over_the_window_in_sd_per_experiment():
    rule = CostAwareStop(min_experiments=1, min_gain_sd_per_experiment=0.0, patience=1, window=10)
    assert rule.achieved_sd(signal(1.0, incumbent=5.0, noise_sd=0.5), 9) is None  # nothing 10 experiments back yet
    rule.observe(signal(1.0, incumbent=5.0, noise_sd=0.5), 4)
    rule.observe(signal(1.0, incumbent=5.2, noise_sd=0.5), 8)
    # the newest decision at least 10 experiments back is the one at 8: (6.2 - 5.2) / 0.5 sd over 12 experiments
    assert rule.achieved_sd(signal(1.0, incumbent=6.2, noise_sd=0.5), 20) == pytest.approx(2.0 / 12)
    assert rule.achieved_sd(signal(1.0, incumbent=4.0, noise_sd=0.5), 20) == 0.0  # a fall is no gain


def test_a_model_that_keeps_promising_what_it_never_delivers_is_stopped():
    """Expected gains stay high (a misfit GP on heavy-tailed data), the incumbent estimate does not move."""
    rule = CostAwareStop(min_experiments=5, min_gain_sd_per_experiment=0.04, patience=3, window=10)
    reasons = [rule.observe(signal(3.0, incumbent=1.0), n) for n in range(3, 40)]
    first = next(i for i, r in enumerate(reasons) if r is not None) + 3
    assert first == 13 + 2  # the window is covered at 13 finished, then 3 decisions of patience
    assert "expected 3, achieved 0 over the last 10 experiments" in reasons[first - 3]
    # and a rising incumbent keeps it going: 0.1 sd per experiment, above the threshold
    rising = CostAwareStop(min_experiments=5, min_gain_sd_per_experiment=0.04, patience=3, window=10)
    assert all(rising.observe(signal(3.0, incumbent=0.1 * n), n) is None for n in range(3, 60))


def test_cost_aware_fires_on_a_flat_problem_and_not_on_a_steep_one():
    flat, steep = CostAwareStop(5, 0.04, 3, 1000), CostAwareStop(5, 0.04, 3, 1000)
    fired_flat = [flat.observe(signal(0.01), 10) for _ in range(3)]
    assert fired_flat[:2] == [None, None] and "below min_gain_sd_per_experiment=0.04 for 3 decisions" in fired_flat[2]
    assert all(steep.observe(signal(g), 10) is None for g in [5, 1, 0.5, 0.2, 0.1, 0.05, 0.041] * 3)


def test_cost_aware_needs_consecutive_low_decisions_and_enough_results():
    rule = CostAwareStop(min_experiments=20, min_gain_sd_per_experiment=0.04, patience=2, window=1000)
    assert rule.observe(signal(0.0), 19) is None and rule.observe(signal(0.0), 19) is None  # too early to judge
    assert rule.observe(signal(0.0), 20) is None
    assert rule.observe(signal(1.0), 21) is None  # a promising candidate resets the streak
    assert rule.observe(signal(0.0), 22) is None
    assert rule.observe(None, 22) is None  # no fitted model: no judgement, streak reset
    assert rule.observe(signal(0.0), 23) is None
    assert rule.observe(signal(0.0), 23) is not None


def test_the_stop_reason_says_the_statistic_the_threshold_the_patience_and_the_money_left():
    rules = StopRules(Budget(max_experiments=50), cost=CostAwareStop(min_experiments=5, patience=2, window=1000))
    p = progress(n_created=12, n_finished=10, spend_usd=25.0)
    assert rules.after_ranking(decision(0.00002), p, 10.0) is None
    reason = rules.after_ranking(decision(0.00002), p, 10.0)  # 0.00005 / 0.002 = 0.025 sd per experiment
    assert reason == ("stopping.cost_aware: the gain per experiment's price, in noise sd, stayed below "
                      "min_gain_sd_per_experiment=0.04 for 2 decisions (last: expected 0.025; noise sd 0.002 (the GP's), "
                      "a typical experiment $2.50); about $95.00 of the budget left unspent; "
                      "38 of budget.max_experiments=50 not run")


def test_the_calibrated_default_is_the_one_every_config_path_gets():
    from hybrid.assemble import compose
    from hybrid.config import StoppingConfig

    assert CostAwareStop() == CostAwareStop.from_config({}) == CostAwareStop.from_config(StoppingConfig())
    assert CostAwareStop.from_config(compose(["target=example", "stopping=cost_aware"]).stopping) == CostAwareStop()
    assert (CostAwareStop().min_gain_sd_per_experiment, CostAwareStop().patience, CostAwareStop().window) == (0.04, 5, 30)


@pytest.mark.parametrize(("cfg", "message"), [
    ({"patience": 0}, r"^stopping.patience: expected a positive integer, got 0$"),
    ({"min_experiments": 0}, r"^stopping.min_experiments: expected a positive integer, got 0$"),
    ({"window": 0}, r"^stopping.window: expected a positive integer \(finished experiments\), got 0$"),
    ({"min_gain_sd_per_experiment": -1}, r"^stopping.min_gain_sd_per_experiment: expected a finite number >= 0 "
                                         r"\(the gain, in noise sd, one experiment's price must buy; e.g. 0.04\), got -1$"),
    ({"min_gain_sd_per_experiment": float("nan")}, r"^stopping.min_gain_sd_per_experiment: expected a finite number"),
    ({"min_gain_sd_per_experiment": float("inf")}, r"^stopping.min_gain_sd_per_experiment: expected a finite number"),
])
def test_cost_aware_config_errors(cfg, message):
    with pytest.raises(ConfigError, match=message):
        CostAwareStop.from_config(cfg)


def test_the_old_absolute_threshold_is_refused_with_the_new_name():
    from hybrid.assemble import compose

    with pytest.raises(ConfigError, match=r"^stopping.min_gain_per_usd: unknown key; did you mean "
                                          r"min_gain_sd_per_experiment\?"):
        compose(["target=example", "stopping=cost_aware", "stopping.min_gain_per_usd=0.001"])


def test_the_gp_reports_its_noise_in_metric_units_so_the_statistic_ignores_the_scale():
    """The real GP ranker on the same noisy data in two units: noise sd x1000, the same statistic."""
    import numpy as np

    from hybrid.types import Candidate, Worker
    from surrogate.acquisition import GPRanker
    from tests.proposers.suite import MINIMIZE, cube_space
    from tests.surrogate.test_gp import run

    space = cube_space(2)
    rng = np.random.default_rng(0)
    xs, noise = rng.random((40, 2)), 0.05 * rng.standard_normal(40)
    configs = [{"x0": float(a), "x1": float(b)} for a, b in xs]
    pool = [Candidate({"x0": float(a), "x1": float(b)}, "sobol") for a, b in rng.random((32, 2))]

    def ranked(scale: float) -> RankDecision:
        hist = [run(i + 1, c, scale * (float(((x - 0.3) ** 2).sum()) + e), duration_s=3600.0)
                for i, (c, x, e) in enumerate(zip(configs, xs, noise, strict=True))]
        ranker = GPRanker(space, MINIMIZE, seed=0)
        ranker.rank(pool, hist, [], [Worker("cpu0", "cpu", 2.5)])
        return ranker.last_decision

    unit, thousand = ranked(1.0), ranked(1000.0)
    assert 0.02 < unit.noise_sd < 0.1  # the data's noise sd is 0.05
    assert thousand.noise_sd == pytest.approx(1000 * unit.noise_sd, rel=0.05)
    assert unit.typical_cost_usd > 0 and thousand.incumbent_mean == pytest.approx(1000 * unit.incumbent_mean, rel=0.05)
    a, b = StopSignal.from_decision(unit), StopSignal.from_decision(thousand)
    assert b.expected_sd == pytest.approx(a.expected_sd, rel=0.1)


def test_money_saved_is_what_the_tightest_cap_had_left():
    p = progress(n_created=10, n_finished=10, spend_usd=5.0, elapsed_s=1800)
    assert money_saved(Budget(max_cost_usd=20), p, 10.0) == pytest.approx(15.0)
    assert money_saved(Budget(max_hours=1), p, 10.0) == pytest.approx(5.0)
    assert money_saved(Budget(max_experiments=30), p, 10.0) == pytest.approx(10.0)  # 20 more at $0.50
    assert money_saved(Budget(max_cost_usd=20, max_hours=1), p, 10.0) == pytest.approx(5.0)
    assert money_saved(Budget(), p, 10.0) is None


def test_campaign_stops_on_cost_aware_rule(tmp_path):
    """The campaign consults the rule at each decision and stops dispatching, with the reason."""
    from surrogate.acquisition import InOrderRanker
    from tests.test_campaign import FAULTY, SPACE, ListProposer, make

    class DecayingGain(InOrderRanker):
        """In-order ranking that reports a shrinking expected gain per dollar, as a GP would."""

        calls = 0

        def rank(self, pool, history, pending, workers):
            self.calls += 1  # 1 sd per experiment at the first decision, then 1/2, 1/3...
            self.last_decision = decision(0.002 / 2.5 / self.calls)
            return super().rank(pool, history, pending, workers)

    target_dir = tmp_path / "target"
    target_dir.mkdir()
    (target_dir / "faulty.py").write_text(FAULTY)
    configs = [{"x": i / 4} for i in range(1, 30)]
    rule = CostAwareStop(min_experiments=3, min_gain_sd_per_experiment=0.15, patience=2, window=1000)
    c = make(tmp_path, target_dir, ListProposer(configs, SPACE), workers=1, max_experiments=30,
             ranker=DecayingGain(), cost_stop=rule, confirm_top_k=0)
    summary = c.run()
    # decisions 1..: gains 1, .5, .33, .25, .2, .17, .14 (<.15), .125 (<.15): stops at the 8th decision
    assert summary.stop_reason.startswith("stopping.cost_aware: the gain per experiment's price, in noise sd, stayed "
                                          "below min_gain_sd_per_experiment=0.15 for 2 decisions (last: expected 0.125;")
    assert "of the budget left unspent" in summary.stop_reason  # the test workers cost $3.6/h
    assert "22 of budget.max_experiments=30 not run" in summary.stop_reason
    assert summary.n_experiments == 8  # baseline + 7 ranked waves, the 8th wave not dispatched


def test_a_real_gp_campaign_stops_by_the_rule_and_stores_why(tmp_path):
    """The example target with the real GP ranker: the rule reads the GP's decisions, the campaign
    stops dispatching before the budget, and the reason is in the store, summary.txt and summary.json."""
    import json
    import re

    from hybrid.assemble import assemble, compose
    from hybrid.store import Store

    # a threshold no gain reaches (100 noise sd per experiment): the rule fires once it may judge
    cfg = compose(["target=example", "surrogate=gp", "proposer=sobol", "tracking=none", "stopping=cost_aware",
                   "backend.hourly_usd=2.5",
                   "stopping.min_experiments=6", "stopping.patience=2", "stopping.window=4",
                   "stopping.min_gain_sd_per_experiment=100", "budget.max_experiments=30", "backend.workers=2",
                   "target.env.EXAMPLE_SECONDS=0", "campaign.poll_interval_s=0.02", "campaign.progress=none",
                   "campaign.findings=false", "campaign.confirm_top_k=0", f"campaign.dir={tmp_path / 'c'}"])
    summary = assemble(cfg).run()
    reason = summary.stop_reason
    m = re.fullmatch(r"stopping\.cost_aware: the gain per experiment's price, in noise sd, stayed below "
                     r"min_gain_sd_per_experiment=100 for 2 decisions \(last: expected (\S+), achieved (\S+) over "
                     r"the last 4 experiments; noise sd (\S+) \((?:the GP's|the replicates' 95% upper bound; the GP's \S+)\), a typical experiment \$(\S+)\); about \$\S+ of the "
                     r"budget left unspent; (\d+) of budget.max_experiments=30 not run", reason)
    assert m, reason
    expected, achieved, noise_sd, cost = (float(x) for x in m.groups()[:4])
    assert expected >= 0 and achieved >= 0 and 0 < noise_sd < 0.05 and cost > 0  # the example's noise sd: 0.0005
    assert 6 + 2 <= summary.n_experiments < 30 and int(m.group(5)) == 30 - summary.n_experiments
    store = Store(tmp_path / "c" / "state.sqlite")
    try:
        assert store.get_meta("stop_reason") == reason
        assert [d for _, _, d in store.events("cost_stop")] == [reason]
    finally:
        store.close()
    assert (tmp_path / "c" / "summary.txt").read_text().startswith(f"campaign {summary.name}: stopped: {reason}")
    assert json.loads((tmp_path / "c" / "summary.json").read_text())["stop_reason"] == reason
