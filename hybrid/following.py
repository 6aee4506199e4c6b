"""Following running experiments: their learning curves, read while they run.

A target may report progress (``progress: <fraction> <name>: <value> ...`` lines, the contract in
:mod:`hybrid.curves`). Every ``interval_s`` the campaign asks the follower to read what each running
job appended to its output (``Backend.read_output``: cheap, non-blocking, bounded), and the new
points are stored at once (``Store.record_progress``): a resume re-attaches a job with its curve,
and reading the log again from its start adds nothing twice. When a job ends, its whole log is
read once more, so every point it printed is stored whatever the timing of the reads. Lines the
reader refuses are said once per experiment; a campaign whose target prints no progress at all is
told so once, after its first finished experiment.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from backends.base import Backend, JobHandle
from hybrid.curves import ProgressReader
from hybrid.store import Store
from hybrid.types import Experiment, ProgressPoint

INTERVAL_S = 2.0


@dataclass
class _Job:
    reader: ProgressReader = field(default_factory=ProgressReader)
    offset: int = 0
    said: int = 0  # refusals already said


class Follower:
    """Reads, stores and hands over the progress points of running experiments."""

    def __init__(self, store: Store, backend: Backend, say: Callable[[str], None], interval_s: float = INTERVAL_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.store, self.backend, self.say, self.interval_s, self.clock = store, backend, say, interval_s, clock
        self._jobs: dict[str, _Job] = {}
        self._next = 0.0
        self._any_progress = False
        self._no_progress_said = False

    def read(self, running: Sequence[JobHandle], exps: dict[str, Experiment],
             force: bool = False) -> list[tuple[Experiment, list[ProgressPoint]]]:
        """The new points of each running experiment since the last read (stored first); at most
        once per ``interval_s`` unless ``force``."""
        now = self.clock()
        if not force and now < self._next:
            return []
        self._next = now + self.interval_s
        out = []
        for handle in running:
            exp = exps.get(handle.experiment_id)
            if exp is None:
                continue
            job = self._jobs.setdefault(exp.id, _Job())
            text, job.offset = self.backend.read_output(handle, job.offset)
            points = job.reader.feed(text) if text else []
            self._refusals(exp, job)
            if points:
                self._store(exp, points)
                out.append((exp, points))
        return out

    def finished(self, exp: Experiment, log: str, succeeded: bool) -> list[ProgressPoint]:
        """The job ended: every point its log holds, stored (those already stored are kept as they
        were); the curve reader for it is dropped. ``succeeded``: it reported its result (only then
        does a log without progress lines say the target prints none)."""
        job = self._jobs.pop(exp.id, None) or _Job()
        whole = ProgressReader()
        whole.feed(log)
        whole.flush()
        if whole.points:
            self._store(exp, whole.points)
        if not job.said and whole.rejected:  # never read while it ran: say its refusals now
            job.reader = whole
            self._refusals(exp, job)
        if succeeded and not self._any_progress and not self._no_progress_said and not whole.points:
            self._no_progress_said = True
            self.say(f"{exp.id} printed no progress lines ('progress: <fraction> <name>: <value>'); "
                     "pruning does not apply to this target")
        return whole.points

    def _store(self, exp: Experiment, points: Sequence[ProgressPoint]) -> None:
        self._any_progress = True
        self.store.record_progress(exp.id, points)
        known = {p.fraction for p in exp.curve}
        exp.curve.extend(p for p in points if p.fraction not in known)
        exp.curve.sort(key=lambda p: p.fraction)

    def _refusals(self, exp: Experiment, job: _Job) -> None:
        if job.reader.rejected and not job.said:
            n = len(job.reader.rejected)
            self.say(f"{exp.id}: progress line refused: {job.reader.rejected[0]}"
                     + (f" (and {n - 1} more)" if n > 1 else ""))
            job.said = n
