"""The backend contract: where experiments run.

Modelled on submitit: the public methods (``submit``, ``poll``, ``cancel``...) are written once
here and do the bookkeeping; a backend fills in small private hooks ("start this", "what state
is it in", "stop it"). The campaign only ever talks to this interface, so ``backend=local``,
``backend=slurm`` and ``backend=skypilot`` are interchangeable.

A backend never parses metrics: it reports how a job ended (exit code, timeout, cancel) and
the job's log text; the campaign turns that into a Result.
"""

from __future__ import annotations

import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from hybrid.errors import BackendError
from hybrid.types import Experiment, JobState, Worker

__all__ = ["Backend", "Finished", "JobHandle", "JobState", "RunSpec", "Worker", "read_appended", "read_log"]


@dataclass(frozen=True)
class RunSpec:
    """How to run one experiment: a shell command in a prepared workdir."""

    command: str  # a shell command line (run with /bin/sh -c)
    workdir: Path  # the experiment's own snapshot (already created, holds params.json)
    env: Mapping[str, str] = field(default_factory=dict)  # added to the inherited environment
    timeout_s: float | None = None  # kill the whole process tree after this long
    log_name: str = "run.log"  # stdout+stderr go to workdir/log_name


@dataclass
class JobHandle:
    """A submitted job. ``job_id`` is what the store records and ``attach`` takes on resume."""

    job_id: str
    experiment_id: str
    worker: Worker
    started: float  # time.time() at submit
    workdir: Path
    log_name: str = "run.log"


@dataclass(frozen=True)
class Finished:
    """A job that ended, as reported once by ``poll``."""

    job_id: str
    experiment_id: str
    state: JobState  # EXITED, TIMEOUT, CANCELLED or LOST
    exit_code: int | None  # None when unknown (killed, lost)
    log: str  # the job's stdout+stderr (possibly only its tail for very large logs)
    started: float
    ended: float
    worker: Worker
    reason: str = ""  # human-readable detail for anything but a clean exit

    @property
    def duration_s(self) -> float:
        return max(0.0, self.ended - self.started)


class Backend(ABC):
    """A pool of workers that run experiments.

    Thread-safety: the campaign calls a backend from one thread; the lock here only guards the
    bookkeeping against backends that complete jobs from helper threads.
    """

    output_chunk_bytes: int = 1 << 20  # the most ``read_output`` returns per call

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._active: dict[str, JobHandle] = {}  # job_id -> handle, jobs not yet reported by poll()

    # ---- the public contract ---------------------------------------------------------------
    @abstractmethod
    def workers(self) -> list[Worker]:
        """Every worker slot of the pool (name, hardware, hourly_usd)."""

    def free_workers(self) -> list[Worker]:
        """Worker slots with nothing running on them right now."""
        with self._lock:
            busy = {h.worker.name for h in self._active.values()}
        return [w for w in self.workers() if w.name not in busy]

    def worker(self, name: str) -> Worker:
        for w in self.workers():
            if w.name == name:
                return w
        raise BackendError(f"no worker named {name!r}; workers: {', '.join(w.name for w in self.workers())}")

    def submit(self, exp: Experiment, spec: RunSpec) -> JobHandle:
        """Start ``spec`` for ``exp`` on the worker ``exp.worker``. Returns at once.

        The log, ``spec.workdir / spec.log_name``, holds this job's output only: a file already
        there is moved to ``<log_name>.before-submit``."""
        worker = self.worker(exp.worker)
        with self._lock:
            if any(h.worker.name == worker.name for h in self._active.values()):
                raise BackendError(f"worker {worker.name} is busy; submit only to free_workers()")
        if not spec.workdir.is_dir():
            raise BackendError(f"workdir {spec.workdir} does not exist; snapshot it before submit")
        stale = spec.workdir / spec.log_name
        if stale.is_file():
            # Not this job's output: copied from the target's directory with the code, or left by
            # an earlier attempt. Appended to, its metrics and progress would pass for the job's.
            try:
                stale.replace(stale.with_name(stale.name + ".before-submit"))
            except OSError as e:
                raise BackendError(f"cannot move {stale} (not this job's output) out of the way: {e}") from e
        if "PYTHONUNBUFFERED" not in spec.env:
            # A Python target's print() to a log file is block-buffered: its progress lines would
            # reach the log (and read_output) only every few KiB, or at its end.
            spec = replace(spec, env={**spec.env, "PYTHONUNBUFFERED": "1"})
        handle = self._start(exp, spec, worker)
        with self._lock:
            self._active[handle.job_id] = handle
        return handle

    def poll(self) -> list[Finished]:
        """Jobs that ended since the last call. Non-blocking; each job is reported exactly once."""
        with self._lock:
            handles = list(self._active.values())
        if not handles:
            return []
        finished = self._poll(handles)
        with self._lock:
            for f in finished:
                self._active.pop(f.job_id, None)
        return finished

    def running(self) -> list[JobHandle]:
        with self._lock:
            return list(self._active.values())

    def attach(self, job_id: str, exp: Experiment) -> JobHandle | None:
        """Re-attach a job started by an earlier orchestrator process (resume).

        Returns the handle (then ``poll`` reports its end as usual), or None when the job cannot
        be found at all; a job that ended while nobody watched is still found and reported.
        """
        # A worker removed from the config since the job started is still watched to its end.
        worker = next((w for w in self.workers() if w.name == exp.worker), None)
        if worker is None:
            worker = Worker(exp.worker, exp.hardware)
        handle = self._attach(job_id, exp, worker)
        if handle is not None:
            with self._lock:
                self._active[handle.job_id] = handle
        return handle

    def recover(self, exp: Experiment) -> JobHandle | None:
        """Find a job for ``exp`` whose id never reached the store (killed between submit and
        mark_running). Default: such jobs cannot exist because ``_start`` is atomic."""
        return None

    def cancel(self, job_id: str) -> None:
        """Stop a job; ``poll`` then reports it CANCELLED. Unknown ids are ignored."""
        with self._lock:
            handle = self._active.get(job_id)
        if handle is not None:
            self._cancel(handle)

    def cancel_all(self) -> None:
        for h in self.running():
            self._cancel(h)

    def detach(self) -> None:
        """Forget running jobs without stopping them (they are re-attached on resume)."""
        with self._lock:
            self._active.clear()

    def wait(self, timeout_s: float, interval_s: float = 0.05) -> list[Finished]:
        """Poll until every active job has finished or ``timeout_s`` passed (tests, shutdown)."""
        out: list[Finished] = []
        deadline = time.monotonic() + timeout_s
        while True:
            out.extend(self.poll())
            if not self.running() or time.monotonic() >= deadline:
                return out
            time.sleep(interval_s)

    def read_output(self, handle: JobHandle, offset: int = 0) -> tuple[str, int]:
        """The job's output appended since byte ``offset`` of its log: ``(text, new offset)``.

        For following a running job (its progress lines): call it again with the offset it
        returned; the texts of successive calls concatenate to the whole log, and once ``poll``
        has reported the job's end, reading on until ``""`` gives the rest. Non-blocking and cheap
        (called for every running job every couple of seconds): at most ``output_chunk_bytes``
        per call, no network round trip in the caller's thread. Never raises: a log that does
        not exist yet, or cannot be read for a while, gives ``("", offset)``.

        Default: ``handle.workdir / handle.log_name`` read from ``offset``, for backends whose
        jobs write their output there as they run. A UTF-8 sequence cut at the end of what was
        read (the job is in the middle of writing it) is left for the next call: the new offset
        stops before it. Backends whose logs live elsewhere override this.
        """
        return read_appended(handle.workdir / handle.log_name, offset, self.output_chunk_bytes)

    def close(self) -> None:  # noqa: B027 - optional hook: most backends start nothing shared
        """Release what this campaign started (clusters, daemons). Running jobs are left alone:
        the campaign cancels or detaches them first."""

    # ---- hooks a backend implements -------------------------------------------------------
    @abstractmethod
    def _start(self, exp: Experiment, spec: RunSpec, worker: Worker) -> JobHandle:
        """Start the job; return its handle. Must not block on the job itself."""

    @abstractmethod
    def _poll(self, handles: Sequence[JobHandle]) -> list[Finished]:
        """Return the subset of ``handles`` that have ended, with their logs."""

    @abstractmethod
    def _cancel(self, handle: JobHandle) -> None:
        """Stop the job and everything it started."""

    @abstractmethod
    def _attach(self, job_id: str, exp: Experiment, worker: Worker) -> JobHandle | None:
        """Rebuild a handle for ``job_id`` (see ``attach``)."""


def read_log(path: Path, max_bytes: int = 4 * 1024 * 1024) -> str:
    """A job log as text: all of it, or its last ``max_bytes`` when larger. Never raises: a log
    that is not there or cannot be read just now (a directory in its place, permissions, a stale
    NFS handle) gives ``""``, so ``poll`` still reports the job's end; ``read_output`` brings its
    lines once the log can be read again."""
    try:
        with open(path, "rb") as f:
            f.seek(0, 2)
            size = f.tell()
            f.seek(max(0, size - max_bytes))
            data = f.read()
    except OSError:
        return ""
    return data.decode("utf-8", errors="replace")


def read_appended(path: Path, offset: int, max_bytes: int = 1 << 20) -> tuple[str, int]:
    """``Backend.read_output`` of a file: its text from byte ``offset`` (at most ``max_bytes``,
    never fewer than one whole character) and the offset after it. A missing or unreadable file
    gives ``("", offset)``; an unfinished UTF-8 sequence at the end is left for the next call."""
    offset = max(0, int(offset))
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            data = f.read(max(4, max_bytes))
    except OSError:  # not there yet, a directory, permissions, a stale NFS handle...
        return "", offset
    keep = len(data) - _unfinished_utf8(data)
    return data[:keep].decode("utf-8", errors="replace"), offset + keep


def _unfinished_utf8(data: bytes) -> int:
    """How many bytes at the end of ``data`` begin a UTF-8 sequence that is not complete yet (0-3).
    Bytes that can never become valid UTF-8 are not held back: they are decoded as U+FFFD."""
    for back in range(1, min(4, len(data)) + 1):
        byte = data[-back]
        if byte & 0xC0 != 0x80:  # not a continuation byte: the sequence starts here
            need = 2 if byte & 0xE0 == 0xC0 else 3 if byte & 0xF0 == 0xE0 else 4 if byte & 0xF8 == 0xF0 else 1
            return back if need > back else 0
    return 0  # only continuation bytes: invalid, not unfinished
