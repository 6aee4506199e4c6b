"""What the campaign sees of a tracker: the ``Tracker`` protocol, the campaign facts it receives
(``CampaignInfo``), the warning a failed mirror raises, and the tracker that tracks nothing."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from hybrid.types import Experiment, Objective, Result


class TrackingWarning(UserWarning):
    """MLflow mirroring failed and the campaign went on. Silence with ``tracking=none``."""


@dataclass(frozen=True)
class CampaignInfo:
    """What a tracker needs to know about the campaign it mirrors."""

    name: str  # campaign name
    dir: Path  # the campaign dir (runs/<name>)
    config: Mapping[str, Any]  # the resolved config as a nested dict (plain python types)
    objective: Objective
    parent_run_id: str | None = None  # from the store when resuming; reuse that run


@runtime_checkable
class Tracker(Protocol):
    """Mirrors a campaign somewhere. Implementations never raise out of these methods."""

    def start(self, campaign: CampaignInfo) -> str | None:
        """Open (or re-open on resume) the campaign's run; return its id for the store to persist."""

    def log(self, exp: Experiment, result: Result) -> bool:
        """Mirror one finished experiment; True once it is mirrored (False: retry on resume).
        Idempotent by ``exp.id``: a resume may re-log them all."""

    def update(self, summary: Mapping[str, Any]) -> None:
        """Progress on the campaign run; numbers become metrics with step = ``n_finished``."""

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        """Metrics of one event on the campaign run, e.g. one LLM call (``llm.input_tokens``...)."""

    def close(
        self, status: str, stop_reason: str, summary: Mapping[str, Any], artifacts: Sequence[Path] = ()
    ) -> None:
        """Final summary, artifacts (report files, plots) and end of the campaign run."""

    def local_paths(self, campaign_dir: Path) -> Sequence[Path]:
        """Files and folders of this tracker on the local disk (a snapshot of the target never copies them)."""


class NullTracker:
    """Tracks nothing (``tracking=none``)."""

    name = "none"

    def start(self, campaign: CampaignInfo) -> str | None:
        return None

    def log(self, exp: Experiment, result: Result) -> bool:
        return True

    def update(self, summary: Mapping[str, Any]) -> None:
        return None

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        return None

    def close(
        self, status: str, stop_reason: str, summary: Mapping[str, Any], artifacts: Sequence[Path] = ()
    ) -> None:
        return None

    def local_paths(self, campaign_dir: Path) -> Sequence[Path]:
        return ()
