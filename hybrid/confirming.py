"""The runs a campaign repeats on its own: replicates that measure the noise, and the confirmation
of the top configurations before the budget ends (issue 16; the estimates are hybrid/noise.py's).

- **Replicates** (``campaign.replicates``, default 1): the baseline runs that many times more,
  early on, on its own hardware; and a new incumbent that beats the best other configuration by
  less than ``INCUMBENT_SIGMAS`` x the measured noise runs again (at most ``replicates`` times),
  so a lucky draw is caught while the campaign can still act on it. Source ``replicate``.
- **Confirmation** (``campaign.confirm_top_k``, default 3): the ``k`` configurations with the best
  mean on the judged hardware that could still be the best are run there until each has
  ``noise.MIN_RUNS`` successes (source ``confirm``). It starts when what is left of the budget (experiments, USD or hours, whichever
  caps it) is what the confirmations need (those due, plus one per exploring run still going: it may
  end in the top k), or when a soft stop (the cost-aware rule, an exhausted
  space) ends the exploration; from then on only confirmations are dispatched, on the judged
  hardware's workers. A configuration whose confirming runs keep failing is given up after
  ``MAX_CONFIRM_ATTEMPTS``. Everything is derived from the stored experiments, so a resume in the
  middle of the phase carries on where it was (running confirmations are counted, not repeated).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from backends.base import Worker
from hybrid import history, noise
from hybrid.space import SearchSpace
from hybrid.stopping import Budget, CampaignProgress
from hybrid.types import Candidate, Experiment, ExperimentState, Objective

__all__ = ["INCUMBENT_SIGMAS", "MAX_CONFIRM_ATTEMPTS", "GPEstimates", "Repeats"]

Estimator = Callable[[Sequence[Experiment]], "noise.Estimates | None"]

INCUMBENT_SIGMAS = noise.SIGNIFICANT_SIGMAS  # an incumbent that wins by less (within noise) is run again
MAX_CONFIRM_ATTEMPTS = noise.MIN_RUNS + 1  # confirming runs of one config before it is given up
REPEAT_SOURCES = ("baseline", "replicate", "confirm")  # runs of configurations already seen


@dataclass
class Repeats:
    """What to repeat next (module docstring). ``exps``: this campaign's own experiments."""

    objective: Objective
    target_hardware: str | None = None
    replicates: int = 1
    confirm_top_k: int = 3
    estimator: Estimator | None = None  # the GP's estimates (GPEstimates) with surrogate=gp: shown with the answer

    def estimates(self, exps: Sequence[Experiment]) -> noise.Estimates | None:
        return None if self.estimator is None else self.estimator(exps)

    # ---- replicates -------------------------------------------------------------------------------
    def replicate_picks(self, exps: Sequence[Experiment], free: Sequence[Worker]) -> list[tuple[Candidate, Worker]]:
        """The replicates due now, each on a free worker of the hardware it must run on."""
        if self.replicates <= 0 or not free:
            return []
        picks: list[tuple[Candidate, Worker]] = []
        left = list(free)
        for cand, hw in self._replicates_due(exps):
            w = next((w for w in left if w.hardware == hw), None)
            if w is not None:
                picks.append((cand, w))
                left.remove(w)
        return picks

    def _replicates_due(self, exps: Sequence[Experiment]) -> list[tuple[Candidate, str]]:
        out = []
        base = history.baseline(exps)
        if base is not None and not base.state.is_failure() and base.state is not ExperimentState.CANCELLED:
            n = self._repeats(exps, base, ("replicate",))
            out += [(_again(base, "replicate", "the baseline again: the run-to-run noise"), base.hardware)] * (
                self.replicates - n)
        inc = self._close_incumbent(exps)
        if inc is not None and self._repeats(exps, inc[0], ("replicate", "confirm")) < self.replicates:
            e, margin, sd = inc
            why = (f"{e.id} again: it beat the best other config by {history.fmt_value(margin, 3)}, "
                   f"less than {INCUMBENT_SIGMAS:g} x the noise sd {history.fmt_value(sd, 3)}")
            out.append((_again(e, "replicate", why), e.hardware))
        return out

    def _close_incumbent(self, exps: Sequence[Experiment]) -> tuple[Experiment, float, float] | None:
        """The incumbent (the best single run on the judged hardware), when it ran once and beat the
        best mean of the other configurations there by less than INCUMBENT_SIGMAS x the noise."""
        hw = history.judged_hardware(history.own(exps), self.objective, self.target_hardware)
        inc = history.best_on(history.own(exps), self.objective, hw)
        sd = noise.noise_on(noise.noise_by_hardware(exps, self.objective), hw)
        if inc is None or sd is None or inc.source == "baseline":
            return None
        configs = noise.config_runs(exps, self.objective, hw)
        mine = next(c for c in configs if noise.config_key(c.first) == noise.config_key(inc))
        others = [c.mean for c in configs if c is not mine]
        if mine.n > 1 or not others:
            return None
        margin = abs(mine.mean - (min(others) if self.objective.sign() > 0 else max(others)))
        return (inc, margin, sd) if margin < INCUMBENT_SIGMAS * sd else None

    @staticmethod
    def _repeats(exps: Sequence[Experiment], of: Experiment, sources: Sequence[str]) -> int:
        """Runs of ``of``'s configuration on its hardware created by these sources (any outcome)."""
        key = noise.config_key(of)
        return sum(1 for e in history.counted(exps) if e.source in sources and e.hardware == of.hardware
                   and noise.config_key(e) == key)

    # ---- confirmation -----------------------------------------------------------------------------
    def _todo(self, exps: Sequence[Experiment]) -> list[tuple[noise.ConfigRuns, int]]:
        """(config, runs it still lacks) of the top-k, those given up left out."""
        out = []
        for c, lacking in noise.to_confirm(exps, self.objective, self.target_hardware, self.confirm_top_k):
            tried = self._repeats(exps, c.first, ("confirm",))
            out.append((c, min(lacking, MAX_CONFIRM_ATTEMPTS - tried)))
        return [(c, n) for c, n in out if n > 0]

    def needed(self, exps: Sequence[Experiment]) -> int:
        """Confirming runs still to dispatch."""
        return sum(n for _, n in self._todo(exps))

    def hardware(self, exps: Sequence[Experiment]) -> str | None:
        """Where the confirmations run: the judged hardware."""
        return history.judged_hardware(history.own(exps), self.objective, self.target_hardware)

    def confirm_picks(self, exps: Sequence[Experiment], free: Sequence[Worker]) -> list[tuple[Candidate, Worker]]:
        """The confirming runs to dispatch now, on the judged hardware's free workers."""
        workers = [w for w in free if w.hardware == self.hardware(exps)]
        picks = []
        for c, lacking in self._todo(exps):
            for _ in range(lacking):
                if not workers:
                    return picks
                why = (f"confirm {c.first.id} ({self.objective.metric} {history.fmt_value(c.mean)} over {c.n} "
                       f"run{'s' if c.n != 1 else ''}): one of the top {self.confirm_top_k} on {c.hardware}")
                picks.append((_again(c.first, "confirm", why), workers.pop(0)))
        return picks

    def reserve_due(self, exps: Sequence[Experiment], budget: Budget, p: CampaignProgress,
                    workers: Sequence[Worker]) -> bool:
        """True when what is left of the budget is what the confirmations need (module docstring):
        those due now, plus one for every exploring run still going (it may end in the top k and
        need its own; a result that cannot be confirmed any more would be the luckiest draw again)."""
        if self.confirm_top_k <= 0:
            return False
        going = sum(1 for e in history.own(exps) if e.state in (ExperimentState.PENDING, ExperimentState.RUNNING)
                    and e.source not in REPEAT_SOURCES)
        need = self.needed(exps) + going
        if not need:
            return False
        left = budget.remaining_experiments(p.n_created)
        if left is not None and left <= need:
            return True
        hw = self.hardware(exps)
        done = [e.result for e in exps if e.result is not None and e.state is ExperimentState.DONE and e.hardware == hw]
        if not done:
            return False
        if budget.max_cost_usd is not None:
            per_run = statistics.median(r.cost_usd for r in done)
            if budget.max_cost_usd - p.spend_usd <= need * per_run:
                return True
        if budget.max_hours is not None:
            per_run_s = statistics.median(r.duration_s for r in done)
            rounds = math.ceil(need / max(1, sum(1 for w in workers if w.hardware == hw)))
            if budget.max_hours * 3600 - p.elapsed_s <= rounds * per_run_s:
                return True
        return False

    def can_confirm(self, exps: Sequence[Experiment], workers: Sequence[Worker]) -> bool:
        """Confirmations are due and the fleet has a worker where they run."""
        hw = self.hardware(exps)
        return any(w.hardware == hw for w in workers) and self.needed(exps) > 0


class GPEstimates:
    """The GP's posterior mean at every configuration run (surrogate/estimates.py), refitted only
    when a new success arrived."""

    def __init__(self, space: SearchSpace, objective: Objective, target_hardware: str | None,
                 parents: Callable[[], Mapping[str, str | None] | None], seed: int = 0) -> None:
        self.space, self.objective, self.target_hardware = space, objective, target_hardware
        self.parents, self.seed = parents, seed
        self._key: tuple[str, ...] | None = None
        self._value: noise.Estimates | None = None

    @property
    def last(self) -> noise.Estimates | None:
        """The estimates computed last (no fit): for the live view."""
        return self._value

    def __call__(self, exps: Sequence[Experiment]) -> noise.Estimates | None:
        key = tuple(e.id for e, _ in history.successes(history.own(exps), self.objective))
        if key != self._key:
            from surrogate.estimates import posterior_means  # torch: only once it is needed

            self._value = posterior_means(self.space, self.objective, exps, self.target_hardware, self.parents(),
                                          self.seed)
            self._key = key
        return self._value


def _again(e: Experiment, source: str, why: str) -> Candidate:
    return Candidate(dict(e.params), source, why, variant=e.variant)
