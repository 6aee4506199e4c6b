"""Stopping rules: budget caps, failure rate, cost-aware expected gain per dollar."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from hybrid.errors import ConfigError
from hybrid.stopping import Budget, CampaignProgress, CostAwareStop, failure_reason, money_saved


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


def test_cost_aware_fires_on_a_flat_problem_and_not_on_a_steep_one():
    flat, steep = CostAwareStop(min_experiments=5, min_gain_per_usd=0.01, patience=3), CostAwareStop(5, 0.01, 3)
    fired_flat = [flat.observe(0.001, 10) for _ in range(3)]
    assert fired_flat[:2] == [None, None] and "stayed below 0.01 for 3 decisions" in fired_flat[2]
    assert all(steep.observe(g, 10) is None for g in [0.5, 0.2, 0.1, 0.05, 0.02, 0.011] * 3)


def test_cost_aware_needs_consecutive_low_decisions_and_enough_results():
    rule = CostAwareStop(min_experiments=20, min_gain_per_usd=0.01, patience=2)
    assert rule.observe(0.0, 19) is None and rule.observe(0.0, 19) is None  # too early to judge
    assert rule.observe(0.0, 20) is None
    assert rule.observe(1.0, 21) is None  # a promising candidate resets the streak
    assert rule.observe(0.0, 22) is None
    assert rule.observe(None, 22) is None  # no fitted model: no judgement, streak reset
    assert rule.observe(0.0, 23) is None
    assert rule.observe(0.0, 23) is not None


def test_cost_aware_config_errors():
    assert CostAwareStop.from_config({"min_experiments": 5, "min_gain_per_usd": 0.5, "patience": 2}) == \
        CostAwareStop(5, 0.5, 2)
    with pytest.raises(ConfigError, match=r"stopping.patience: expected a positive integer"):
        CostAwareStop.from_config({"patience": 0})
    with pytest.raises(ConfigError, match=r"stopping.min_gain_per_usd: expected a number >= 0"):
        CostAwareStop.from_config({"min_gain_per_usd": -1})


def test_money_saved_is_what_the_tightest_cap_had_left():
    p = progress(n_created=10, n_finished=10, spend_usd=5.0, elapsed_s=1800)
    assert money_saved(Budget(max_cost_usd=20), p, 10.0) == pytest.approx(15.0)
    assert money_saved(Budget(max_hours=1), p, 10.0) == pytest.approx(5.0)
    assert money_saved(Budget(max_experiments=30), p, 10.0) == pytest.approx(10.0)  # 20 more at $0.50
    assert money_saved(Budget(max_cost_usd=20, max_hours=1), p, 10.0) == pytest.approx(5.0)
    assert money_saved(Budget(), p, 10.0) is None


@dataclass(frozen=True)
class Decision:
    fitted: bool
    best_gain_per_usd: float


def test_campaign_stops_on_cost_aware_rule(tmp_path):
    """The campaign consults the rule at each decision and stops dispatching, with the reason."""
    from surrogate.acquisition import InOrderRanker
    from tests.test_campaign import SPACE, ListProposer, make

    class DecayingGain(InOrderRanker):
        """In-order ranking that reports a shrinking expected gain per dollar, as a GP would."""

        calls = 0

        def rank(self, pool, history, pending, workers):
            self.calls += 1
            self.last_decision = Decision(True, 1.0 / self.calls)
            return super().rank(pool, history, pending, workers)

    target_dir = tmp_path / "target"
    target_dir.mkdir()
    from tests.test_campaign import FAULTY

    (target_dir / "faulty.py").write_text(FAULTY)
    configs = [{"x": i / 4} for i in range(1, 30)]
    c = make(tmp_path, target_dir, ListProposer(configs, SPACE), workers=1, max_experiments=30,
             ranker=DecayingGain(), cost_stop=CostAwareStop(min_experiments=3, min_gain_per_usd=0.15, patience=2))
    summary = c.run()
    # decisions 1..: gains 1, .5, .33, .25, .2, .17, .14 (<.15), .125 (<.15): stops at the 8th decision
    assert summary.stop_reason.startswith("stopping.cost_aware: expected gain 0.125 per USD stayed below 0.15")
    assert "of the budget left unspent" in summary.stop_reason  # the test workers cost $3.6/h
    assert "22 of budget.max_experiments=30 not run" in summary.stop_reason
    assert summary.n_experiments == 8  # baseline + 7 ranked waves, the 8th wave not dispatched
