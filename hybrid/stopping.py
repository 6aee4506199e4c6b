"""When a campaign stops dispatching: budget caps and a failure-rate guard.

Every rule returns a reason (printed, stored, logged) or None. Stopping means "dispatch nothing
new"; experiments already running are allowed to finish (their results are paid for).
The cost-aware expected-gain-per-dollar rule comes with the GP surrogate.
"""

from __future__ import annotations

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


def _cap(cfg: Any, key: str, kind: type) -> Any:
    value = cfg.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        raise ConfigError(f"budget.{key}: expected a positive number or null, got {value!r}")
    if kind is int and not float(value).is_integer():
        raise ConfigError(f"budget.{key}: expected a whole number, got {value!r}")
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
