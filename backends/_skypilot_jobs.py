"""What the SkyPilot backend (backends/skypilot.py) keeps about its clusters and jobs: a cluster's
launch state, a job's requests, status and log mirror, what a status round found, and the record
in each experiment's workdir (``.hybrid/skypilot.json``: cluster + SkyPilot job id) a resumed
campaign re-attaches by."""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from backends._runner import STATE_DIR, read_json, write_json_atomic
from backends._skypilot_client import SkyJob
from backends._skypilot_output import OutputMirror
from backends.base import JobHandle, JobState

__all__ = ["RECORD_FILE", "ClusterState", "Ended", "Job", "Round", "Watch", "find_job", "record_of", "write_record"]

RECORD_FILE = "skypilot.json"  # in <workdir>/.hybrid/: cluster + SkyPilot job id, for resume


@dataclass
class ClusterState:
    ready: bool = False  # launched with setup by this backend (or found running on attach)
    granted: dict[str, float] | None = None  # accelerators the launch got ({}: CPU only)
    lock: threading.Lock = None  # type: ignore[assignment]

    def __post_init__(self) -> None:
        self.lock = threading.Lock()


@dataclass(frozen=True)
class Ended:
    state: JobState
    exit_code: int | None
    reason: str
    log: str
    started: float | None = None  # when the job started running on the cluster
    ended: float | None = None
    cluster_broken: bool = False  # setup failed or the cluster is gone: launch again next time
    log_whole: bool = True  # ``log`` starts where the job's log starts (not only its tail)


@dataclass(frozen=True)
class Round:
    """What one status round found."""

    ended: list[tuple[str, Ended]]
    running: set[str]  # job ids SkyPilot reports RUNNING


@dataclass
class Job:
    handle: JobHandle
    cluster: str
    sky_job_id: int | None = None
    start: Future[None] | None = None  # the launch/exec request
    start_seen: bool = False
    request_id: str | None = None
    cancel_requested: bool = False
    cancel_sent: bool = False
    ended: Ended | None = None
    seen_running: bool = False  # a status round saw it RUNNING: its log can be fetched
    output_fetch: Future[None] | None = None
    output_fetched_at: float = float("-inf")  # time.monotonic() of the last fetch
    mirror: OutputMirror = field(init=False)  # its log, in its workdir (read_output reads it)

    def __post_init__(self) -> None:
        self.mirror = OutputMirror(self.handle.workdir / self.handle.log_name)


@dataclass(frozen=True)
class Watch:
    job_id: str
    cluster: str
    sky_job_id: int


def find_job(jobs: Sequence[SkyJob], name: str, job_id: Any, since: float | None) -> SkyJob | None:
    """The job by its SkyPilot id, else the newest job of that name submitted since ``since``."""
    if isinstance(job_id, int):
        match = next((j for j in jobs if j.job_id == job_id and j.name == name), None)
        if match is not None:
            return match
    named = [j for j in jobs if j.name == name
             and (since is None or j.submitted_at is None or j.submitted_at >= since - 600)]
    return max(named, key=lambda j: j.job_id, default=None)


def write_record(workdir: Path, record: Mapping[str, Any]) -> None:
    state_dir = workdir / STATE_DIR
    state_dir.mkdir(exist_ok=True)
    write_json_atomic(state_dir / RECORD_FILE, dict(record))


def record_of(workdir: Path) -> dict[str, Any]:
    """The job's record in its workdir ({} when none was written yet, or it cannot be read)."""
    return read_json(workdir / STATE_DIR / RECORD_FILE) or {}
