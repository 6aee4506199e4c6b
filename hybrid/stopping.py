"""When a campaign stops dispatching, decided in one place (:class:`StopRules`):

1. before each decision: a budget cap (experiments, hours, USD) or the failure-rate guard;
2. after the ranker scored a wave: the cost-aware rule (the GP's expected gain per USD);
3. when the proposers have nothing new and nothing is running or expected: the space is exhausted.

Every rule returns a reason (printed, stored, logged) or None. Stopping means "dispatch nothing
new"; experiments already running are allowed to finish (their results are paid for).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from hybrid.errors import ConfigError


@dataclass(frozen=True)
class CampaignProgress:
    """What the stopping rules look at."""

    n_created: int  # experiments dispatched (or being dispatched), baseline included
    n_finished: int
    n_failed: int  # CRASHED + TIMEOUT
    elapsed_s: float  # wall-clock time of this campaign, over all its resumed sessions
    spend_usd: float  # worker cost so far, running experiments' accrued cost included


def _get(cfg: Any, key: str, default: Any = None) -> Any:
    """A config value from a mapping or from a typed config object (hybrid.config)."""
    return cfg.get(key, default) if isinstance(cfg, Mapping) else getattr(cfg, key, default)


def _cap(cfg: Any, key: str, kind: type) -> Any:
    """A budget cap: its type is checked with the config (hybrid.config.BudgetConfig), its range here."""
    value = _get(cfg, key)
    if value is None:
        return None
    if value <= 0:
        raise ConfigError(f"budget.{key}: expected a positive number or null, got {value!r}")
    return kind(value)


@dataclass(frozen=True)
class Budget:
    max_experiments: int | None = None
    max_hours: float | None = None
    max_cost_usd: float | None = None

    @classmethod
    def from_config(cls, cfg: Any) -> Budget:
        return cls(_cap(cfg, "max_experiments", int), _cap(cfg, "max_hours", float), _cap(cfg, "max_cost_usd", float))

    def remaining_experiments(self, n_created: int) -> int | None:
        return None if self.max_experiments is None else max(0, self.max_experiments - n_created)

    def reason(self, p: CampaignProgress) -> str | None:
        if self.max_experiments is not None and p.n_created >= self.max_experiments:
            return f"budget.max_experiments reached ({self.max_experiments})"
        if self.max_hours is not None and p.elapsed_s >= self.max_hours * 3600:
            return f"budget.max_hours reached ({self.max_hours:g} h)"
        if self.max_cost_usd is not None and p.spend_usd >= self.max_cost_usd:
            return f"budget.max_cost_usd reached (${p.spend_usd:.2f} of ${self.max_cost_usd:.2f})"
        return None


def failure_reason(p: CampaignProgress, max_failure_rate: float, min_finished: int = 5) -> str | None:
    """Stop a campaign whose experiments mostly fail: something is wrong with the target."""
    if p.n_finished >= min_finished and p.n_failed / p.n_finished > max_failure_rate:
        return (f"campaign.max_failure_rate exceeded: {p.n_failed} of {p.n_finished} experiments failed "
                f"(> {max_failure_rate:.0%}); look at the run.log of a failed experiment")
    return None


@dataclass
class CostAwareStop:
    """Stop when more experiments are no longer worth their price.

    After ``min_experiments`` finished experiments, every dispatch decision reports the best
    candidate's expected improvement of the objective per dollar (from the GP ranker). When it
    stays below ``min_gain_per_usd`` for ``patience`` consecutive decisions the campaign stops
    dispatching. Unlike an improvement-based rule this does not need the fleet to be idle: the
    GP accounts for running experiments as pending points.
    """

    min_experiments: int = 20
    min_gain_per_usd: float = 0.001
    patience: int = 3
    _streak: int = 0
    last_gain_per_usd: float | None = None

    @classmethod
    def from_config(cls, cfg: Any) -> CostAwareStop:
        min_exp = _get(cfg, "min_experiments", 20)
        gain = _get(cfg, "min_gain_per_usd", 0.001)
        patience = _get(cfg, "patience", 3)
        # types are checked with the config (hybrid.config.StoppingConfig); the ranges here
        if min_exp < 1:
            raise ConfigError(f"stopping.min_experiments: expected a positive integer, got {min_exp!r}")
        if gain < 0:
            raise ConfigError(f"stopping.min_gain_per_usd: expected a number >= 0, got {gain!r}")
        if patience < 1:
            raise ConfigError(f"stopping.patience: expected a positive integer, got {patience!r}")
        return cls(min_exp, float(gain), patience)

    def observe(self, gain_per_usd: float | None, n_finished: int) -> str | None:
        """One dispatch decision: returns the stop reason, or None to go on."""
        self.last_gain_per_usd = gain_per_usd
        if gain_per_usd is None or n_finished < self.min_experiments:
            self._streak = 0  # no fitted model yet, or too early to judge
            return None
        self._streak = self._streak + 1 if gain_per_usd < self.min_gain_per_usd else 0
        if self._streak >= self.patience:
            return (f"stopping.cost_aware: expected gain {gain_per_usd:.3g} per USD stayed below "
                    f"{self.min_gain_per_usd:g} for {self.patience} decisions")
        return None


def money_saved(budget: Budget, p: CampaignProgress, fleet_hourly_usd: float) -> float | None:
    """What a cap would still have let the campaign spend, had it not stopped early (USD)."""
    left = []
    if budget.max_cost_usd is not None:
        left.append(max(0.0, budget.max_cost_usd - p.spend_usd))
    if budget.max_hours is not None:
        left.append(max(0.0, budget.max_hours * 3600 - p.elapsed_s) / 3600 * fleet_hourly_usd)
    if budget.max_experiments is not None and p.n_finished:
        left.append(max(0, budget.max_experiments - p.n_created) * p.spend_usd / p.n_finished)
    return min(left) if left else None


EXHAUSTED = "search space exhausted: the proposers have no new configuration"


@dataclass
class StopRules:
    """Every reason a campaign stops dispatching, checked where the loop asks (module docstring)."""

    budget: Budget
    max_failure_rate: float = 0.5
    cost: CostAwareStop | None = None

    def __post_init__(self) -> None:
        if not 0 <= self.max_failure_rate <= 1:
            raise ConfigError(f"campaign.max_failure_rate: {self.max_failure_rate} must be within [0, 1]")

    def before_dispatch(self, p: CampaignProgress) -> str | None:
        """A budget cap reached, or too many failures."""
        return self.budget.reason(p) or failure_reason(p, self.max_failure_rate)

    def after_ranking(self, decision: Any, p: CampaignProgress, fleet_hourly_usd: float) -> str | None:
        """The cost-aware rule, fed the ranker's ``last_decision`` (a ``RankDecision`` or None)."""
        if self.cost is None:
            return None
        gain = decision.best_gain_per_usd if decision is not None and decision.fitted else None
        reason = self.cost.observe(gain, p.n_finished)
        if reason is None:
            return None
        saved = money_saved(self.budget, p, fleet_hourly_usd)
        if saved is not None and fleet_hourly_usd > 0:
            reason += f"; about ${saved:.2f} of the budget left unspent"
        left = self.budget.remaining_experiments(p.n_created)
        if left:
            reason += f"; {left} of budget.max_experiments={self.budget.max_experiments} not run"
        return reason

    @staticmethod
    def exhausted(dispatched: bool, running: bool, proposer_waiting: bool) -> str | None:
        """Nothing new to run, nothing running, nothing expected (an LLM still thinking may bring some)."""
        return EXHAUSTED if not dispatched and not running and not proposer_waiting else None
