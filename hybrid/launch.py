"""Starting one experiment, in the order that makes ``kill -9`` harmless: its store row first,
then a fresh snapshot of the target (with its code variant applied), params.json, the command and
environment, the backend's submit, and the job id recorded as RUNNING. A start that fails
(backend, file system, a variant that no longer applies) is recorded as a CRASHED result saying
why; the campaign goes on with the next one.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable, Iterator, MutableMapping
from contextlib import contextmanager
from pathlib import Path

from backends.base import Backend, RunSpec, Worker
from backends.workdir import snapshot
from hybrid import targets
from hybrid.errors import BackendError
from hybrid.mirror import ResultMsg, TrackerMirror
from hybrid.progress import Progress
from hybrid.secrets import scrub
from hybrid.store import Store
from hybrid.targets import TargetSpec
from hybrid.types import Candidate, Experiment, ExperimentState, FailureKind, Result
from hybrid.variant_book import VariantBook
from hybrid.variants import VariantRejected


@contextmanager
def deferred_interrupts() -> Iterator[None]:
    """Hold Ctrl-C/SIGTERM until the block ends, so that a job is never started without its id
    reaching the store and the backend's bookkeeping (it could not be cancelled otherwise)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []
    previous = {sig: signal.signal(sig, lambda signum, frame: caught.append(signum))
                for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if caught:
            raise KeyboardInterrupt


class Launcher:
    """Creates and starts experiments of one campaign (module docstring). ``book``: the code
    variants, when ``target.editable`` names files; ``never_copied``: what no snapshot holds."""

    def __init__(self, store: Store, backend: Backend, target: TargetSpec, mirror: TrackerMirror,
                 progress: Progress, experiments_dir: Path, never_copied: tuple[Path, ...],
                 book: VariantBook | None = None) -> None:
        self.store, self.backend, self.target, self.mirror = store, backend, target, mirror
        self.progress, self.experiments_dir, self.never_copied, self.book = progress, experiments_dir, never_copied, book

    def start(self, cand: Candidate, worker: Worker, wave: int, exps: MutableMapping[str, Experiment],
              free_since: Callable[[str], float]) -> Experiment:
        """Create ``cand``'s experiment (added to ``exps`` at once) and start it on ``worker``;
        ``free_since(worker name)``: when the worker fell idle (its idle time is recorded)."""
        exp = self.store.create(cand, worker.name, worker.hardware, wave, self.experiments_dir)
        exps[exp.id] = exp
        workdir = Path(exp.workdir)
        try:
            snapshot(self.target.workdir, workdir, self.target.exclude, skip=self.never_copied)
            notes = self._apply_variant(cand, workdir)
            targets.write_params(workdir, cand.params)
            spec = RunSpec(
                command=targets.build_command(self.target.command, cand.params, exp.id, worker.hardware),
                workdir=workdir,
                env=targets.build_env(self.target.env, exp.id, worker.hardware, cand.params),
                timeout_s=self.target.timeout_s,
            )
            handle = self.backend.submit(exp, spec)
        except (BackendError, OSError, VariantRejected) as err:
            result = Result(exp.id, ExperimentState.CRASHED, {}, worker.hardware, 0.0, 0.0, "",
                            scrub(f"submit failed: {err}", self.target.secret_values), FailureKind.CRASH)
            self.store.record(result)
            exp.state, exp.result = result.state, result
            self.mirror.send(ResultMsg(exp, result))
            self.progress.message(f"{exp.id}: submit to {worker.name} failed: {result.reason.removeprefix('submit failed: ')}")
            return exp
        idle = max(0.0, handle.started - free_since(worker.name))
        self.store.mark_running(exp.id, handle.job_id, handle.started, {"variant_notes": notes} if notes else None,
                                idle_before_s=idle)
        exp.state, exp.job_id, exp.started = ExperimentState.RUNNING, handle.job_id, handle.started
        exp.idle_before_s = idle
        self.progress.submitted(exp)
        return exp

    def _apply_variant(self, cand: Candidate, workdir: Path) -> list[str]:
        """Put the candidate's code variant into its fresh snapshot (the user's files never change)."""
        if cand.variant is None:
            return []
        if self.book is None:
            raise VariantRejected(f"variant {cand.variant}: this campaign has no target.editable files")
        notes = self.book.apply(workdir, cand.variant)
        for note in notes:
            self.progress.message(f"variant {cand.variant}: {note}")
        return notes
