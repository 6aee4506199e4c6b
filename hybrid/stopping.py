"""When a campaign stops dispatching, decided in one place (:class:`StopRules`):

1. before each decision: a budget cap (experiments, hours, USD) or the failure-rate guard;
2. after the ranker scored a wave: the cost-aware rule (the GP's expected gain per USD, and its
   achieved gain, in noise sd per typical experiment's price: :class:`CostAwareStop`);
3. when the proposers have nothing new and nothing is running or expected: the space is exhausted.

Every rule returns a reason (printed, stored, logged) or None. Stopping means "dispatch nothing
new"; experiments already running are allowed to finish (their results are paid for).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

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


class StopSignal(NamedTuple):
    """What the cost-aware rule reads from one ranking decision (:meth:`from_decision`).

    ``expected_sd``: the expected gain, in units of the run-to-run noise sd, that the price of one
    typical experiment buys: the best (candidate, worker) pair's expected improvement x
    P(feasible) per USD (``RankDecision.best_gain_per_usd``), times the median predicted cost of
    an experiment (``typical_cost_usd``; on a free fleet the gain is per experiment already), over
    the noise sd on the target hardware (``noise_sd``, metric units): the GP's inferred one, or the
    95 % upper bound of the sd the campaign's own replicates measured there, at its best replicated
    configurations (``hybrid.noise.noise_at_best``), when that is smaller (``measured=True``). A GP whose fit is poor absorbs the misfit into its noise (FCNet naval:
    hundreds of times the seed spread); replicates then know better, and only their upper bound is
    believed, so a lucky small sd from one or two replicates cannot silence the rule.
    ``incumbent``: the GP's estimate of the best configuration so far (maximized, metric units).
    Both are dimensionless once divided by ``noise_sd``, so one threshold means the same on a
    metric that moves by 0.001 and on one that moves by 10, on cheap workers and on dear ones.
    """

    expected_sd: float
    incumbent: float
    noise_sd: float
    typical_cost_usd: float = 0.0  # 0: a free fleet
    measured: bool = False  # noise_sd is the replicates' upper bound, below the GP's
    gp_noise_sd: float = 0.0  # the GP's inferred noise sd (what noise_sd would be otherwise)

    @classmethod
    def from_decision(cls, decision: Any, measured_high: float | None = None) -> StopSignal | None:
        """None when the decision had no fitted model (or no noise estimate) to judge by.
        ``measured_high``: the 95 % upper bound of the replicates' sd at the best configurations on
        the target hardware (None, or 0 when every replicate agreed: not used)."""
        if decision is None or not decision.fitted or not decision.noise_sd > 0:
            return None
        cost = decision.typical_cost_usd if decision.typical_cost_usd > 0 else 1.0
        gp = float(decision.noise_sd)
        use = measured_high is not None and 0 < measured_high < gp
        sd = float(measured_high) if use else gp
        return cls(decision.best_gain_per_usd * cost / sd, decision.incumbent_mean, sd, decision.typical_cost_usd,
                   use, gp)


@dataclass
class CostAwareStop:
    """Stop when more experiments are no longer worth their price, relative to the noise.

    After ``min_experiments`` finished experiments, every dispatch decision of the GP ranker is
    judged by two figures in the same unit, noise sd per experiment's price:

    - *expected*: what the model expects the best next experiment to gain (``StopSignal.expected_sd``);
    - *achieved*: how much the GP's estimate of the best configuration actually rose over the last
      ``window`` finished experiments, per experiment (a model that keeps promising gains it never
      delivers, as on heavy-tailed tabular problems, is not believed for ever).

    When the smaller of the two stays below ``min_gain_sd_per_experiment`` for ``patience``
    consecutive decisions the campaign stops dispatching (what is running finishes; the confirmation
    phase runs after it). It needs no idle fleet: the GP counts running experiments as pending.
    """

    min_experiments: int = 20
    min_gain_sd_per_experiment: float = 0.04  # calibrated: docs/benchmarks.md (benchmarks/stopping.py)
    patience: int = 5
    window: int = 30
    _streak: int = 0
    _trail: list[tuple[int, float]] = field(default_factory=list)  # (finished, incumbent) per decision
    last_gain_sd: float | None = None

    @classmethod
    def from_config(cls, cfg: Any) -> CostAwareStop:
        min_exp = _get(cfg, "min_experiments", cls.min_experiments)
        gain = _get(cfg, "min_gain_sd_per_experiment", cls.min_gain_sd_per_experiment)
        patience = _get(cfg, "patience", cls.patience)
        window = _get(cfg, "window", cls.window)
        # types are checked with the config (hybrid.config.StoppingConfig); the ranges here
        if min_exp < 1:
            raise ConfigError(f"stopping.min_experiments: expected a positive integer, got {min_exp!r}")
        if not 0 <= gain < math.inf:  # (NaN fails too)
            raise ConfigError(f"stopping.min_gain_sd_per_experiment: expected a finite number >= 0 (the gain, "
                              f"in noise sd, one experiment's price must buy; e.g. 0.04), got {gain!r}")
        if patience < 1:
            raise ConfigError(f"stopping.patience: expected a positive integer, got {patience!r}")
        if window < 1:
            raise ConfigError(f"stopping.window: expected a positive integer (finished experiments), got {window!r}")
        return cls(min_exp, float(gain), patience, window)

    def judge(self, decision: Any, n_finished: int, measured_high: float | None = None) -> str | None:
        """One dispatch decision (a ``RankDecision`` or None) and the replicates' upper bound on
        the noise sd (:meth:`StopSignal.from_decision`): the stop reason, or None to go on."""
        return self.observe(StopSignal.from_decision(decision, measured_high), n_finished)

    def achieved_sd(self, signal: StopSignal, n_finished: int) -> float | None:
        """The rise of the incumbent estimate over the last ``window`` finished experiments, in noise
        sd per experiment (never below 0); None until a decision that far back exists."""
        then = [(n, inc) for n, inc in self._trail if n <= n_finished - self.window]
        if not then:
            return None
        n0, inc0 = then[-1]
        return max(0.0, signal.incumbent - inc0) / signal.noise_sd / (n_finished - n0)

    def observe(self, signal: StopSignal | None, n_finished: int) -> str | None:
        """One decision's signal: returns the stop reason, or None to go on."""
        if signal is None:
            self.last_gain_sd, self._streak = None, 0  # no fitted model: no judgement
            return None
        achieved = self.achieved_sd(signal, n_finished)
        self._remember(n_finished, signal.incumbent)
        gain = signal.expected_sd if achieved is None else min(signal.expected_sd, achieved)
        self.last_gain_sd = gain
        if n_finished < self.min_experiments:
            self._streak = 0  # too early to judge
            return None
        self._streak = self._streak + 1 if gain < self.min_gain_sd_per_experiment else 0
        if self._streak < self.patience:
            return None
        got = "" if achieved is None else f", achieved {achieved:.3g} over the last {self.window} experiments"
        usd = signal.typical_cost_usd
        src = (f" (the replicates' 95% upper bound; the GP's {signal.gp_noise_sd:.3g})" if signal.measured
               else " (the GP's)")
        cost = (f"a typical experiment ${usd:.2f}" if usd >= 1 else f"a typical experiment ${usd:.2g}" if usd > 0
                else "free workers: per experiment")
        return (f"stopping.cost_aware: the gain per experiment's price, in noise sd, stayed below "
                f"min_gain_sd_per_experiment={self.min_gain_sd_per_experiment:g} for {self.patience} decisions "
                f"(last: expected {signal.expected_sd:.3g}{got}; noise sd {signal.noise_sd:.3g}{src}, {cost})")

    def _remember(self, n_finished: int, incumbent: float) -> None:
        self._trail.append((n_finished, incumbent))
        # what a later window can still start from: the newest point at least `window` old, and all newer
        old = [i for i, (n, _) in enumerate(self._trail) if n <= n_finished - self.window]
        if len(old) > 1:
            del self._trail[: old[-1]]


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

    def after_ranking(self, decision: Any, p: CampaignProgress, fleet_hourly_usd: float,
                      measured_high: float | None = None) -> str | None:
        """The cost-aware rule, fed the ranker's ``last_decision`` (a ``RankDecision`` or None) and
        the 95 % upper bound of the noise sd the replicates measured at the best configurations on the
        target hardware (``hybrid.noise.noise_at_best``)."""
        if self.cost is None:
            return None
        reason = self.cost.judge(decision, p.n_finished, measured_high)
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
