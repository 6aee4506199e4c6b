"""The GP's estimate of each configuration that ran: what the recommendation ranks by.

Under noise the lowest single value of many runs is biased low (the winner's curse), and even the
mean of a configuration's two or three runs carries most of that noise. The GP's posterior mean
at a configuration pools its own runs with its neighbours' (and, with hardware as a task, other
hardware's) and knows the noise it inferred: the best-posterior-mean recommendation of Bayesian
optimization. ``posterior_means`` fits its own GP on the campaign's successes (the ranker's is
fitted on a history that may lag, and is not the ranker's business to lend) and returns, for
every one of this campaign's successful experiments, the posterior mean of the objective at its
configuration (params and code variant) on the judged hardware, in metric units.

``hybrid.noise.recommend`` and ``hybrid.noise.to_confirm`` rank by these when given; the campaign
asks for them in the confirmation phase and at its end, and stores them for ``hybrid report``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from hybrid import history
from hybrid.space import SearchSpace
from hybrid.types import Experiment, Objective

__all__ = ["posterior_means"]


def posterior_means(space: SearchSpace, objective: Objective, exps: Sequence[Experiment],
                    target_hardware: str | None = None, variant_parents: Mapping[str, str | None] | None = None,
                    seed: int = 0, min_observations: int = 5) -> dict[str, float] | None:
    """{experiment id: the GP's posterior mean at its configuration on the judged hardware} for the
    campaign's own successes there; None with fewer than ``min_observations`` successes or when the
    fit fails (the recommendation then ranks by the runs' own means)."""
    from surrogate.gp import GPSurrogate  # torch: only when asked

    own = [(e, v) for e, v in history.successes(history.own(exps), objective) if space.contains(e.params)]
    if len(own) < min_observations:
        return None
    hw = history.judged_hardware([e for e, _ in own], objective, target_hardware)
    here = [e for e, _ in own if e.hardware == hw]
    if not here:
        return None
    gp = GPSurrogate(space, objective, hw, min_observations=min_observations, seed=seed,
                     variant_parents=variant_parents)
    fit = gp.update([e for e, _ in own], [e.variant for e in here])
    if fit is None or fit.target_hardware != hw:
        return None
    mean, _ = fit.marginal(fit.inputs([e.params for e in here], [e.variant for e in here]))
    return {e.id: float(-objective.sign() * m) for e, m in zip(here, mean, strict=True)}
