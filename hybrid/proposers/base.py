"""The proposer contract: given what happened so far, suggest configurations to try next."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from hybrid.history import best
from hybrid.space import SearchSpace
from hybrid.types import Candidate, Experiment, Objective
from hybrid.variants import VariantChecker


@dataclass(frozen=True)
class ProposerEvent:
    """What a proposer tells the campaign besides candidates (drained by ``Proposer.events``).

    ``kind`` "notice": ``message`` is shown to the user once ("no ANTHROPIC_API_KEY: ...").
    ``kind`` "call": one paid call (the LLM's): ``cost_usd`` joins the campaign's spend (so
    ``budget.max_cost_usd`` and cost-aware stopping count it), the campaign stores it durably and
    mirrors ``metrics`` (tokens, latency, proposals made/accepted) to MLflow, one step per call.
    """

    source: str  # the proposer's label, e.g. "llm"
    kind: str = "notice"  # notice | call
    message: str = ""  # a line for the user ("" for none)
    cost_usd: float = 0.0
    metrics: Mapping[str, float] = field(default_factory=dict)


class Proposer(ABC):
    """Suggests candidates. Implementations must be deterministic for a fixed ``seed`` and history.

    ``history`` holds every experiment of the campaign in creation order: finished ones carry a
    ``result`` (use ``exp.value(objective.metric)``; None means it failed), PENDING/RUNNING ones
    do not and must be treated as "being evaluated" (never re-proposed as-is).
    Candidates returned must be valid in ``space`` (use ``space.validate``).
    """

    #: the ``Candidate.source`` label this proposer writes (sub-sources allowed, e.g. "tpe"/"cmaes")
    name: str = "base"

    def __init__(self, space: SearchSpace, objective: Objective, seed: int = 0) -> None:
        self.space = space
        if not isinstance(objective, Objective):  # hydra.utils.instantiate turns a dataclass kwarg into a DictConfig
            objective = Objective(str(objective.metric), objective.direction)
        self.objective = objective
        self.seed = seed

    @abstractmethod
    def propose(self, history: Sequence[Experiment], n: int) -> list[Candidate]:
        """Return up to ``n`` new candidates (fewer when the space is exhausted)."""

    def close(self) -> None:  # noqa: B027 - optional hook, most proposers hold nothing
        """Stop background work (threads, clients). Called once at the end of a campaign."""

    def use_variants(self, checker: VariantChecker) -> None:  # noqa: B027 - optional hook, most proposers never change code
        """The campaign's code variants (``target.editable``): a proposer that changes code keeps the
        checker and passes each variant it proposes through ``checker.check`` before offering it; the
        others ignore it (their candidates run on the code ``Candidate.variant`` names: None)."""

    def events(self) -> list[ProposerEvent]:
        """Notices and paid calls since the last time this was asked (each is returned once)."""
        return []

    @property
    def wave_shares(self) -> dict[str, float]:
        """Sources owed a share of every wave (e.g. ``{"llm": 0.3}``, from ``proposer.llm_share``);
        the campaign hands them to the ranker. None by default."""
        return {}

    def waiting(self) -> bool:
        """True when this proposer has nothing now but expects candidates soon (an LLM call in
        flight, a retry scheduled): the campaign then waits instead of calling the space exhausted."""
        return False


def completed(history: Sequence[Experiment], objective: Objective) -> list[tuple[Experiment, float | None]]:
    """Finished experiments with their objective value (None for failures)."""
    return [(e, e.value(objective.metric)) for e in history if e.result is not None]


def incumbent(history: Sequence[Experiment], objective: Objective) -> Experiment | None:
    """The best successful experiment so far (``hybrid.history.best``), or None."""
    return best(history, objective)


def seen_keys(space: SearchSpace, history: Sequence[Experiment]) -> set[tuple]:
    """Identity keys of every configuration tried or in flight, for duplicate filtering."""
    return {space.key(e.params) for e in history}
