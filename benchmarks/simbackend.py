"""An in-process backend for simulated objectives: the product's own campaign loop on a virtual clock.

``SimBackend`` is a real :class:`backends.base.Backend`. ``submit`` evaluates the problem at the
experiment's parameters on the worker's hardware (``Problem.observe``), draws the job's duration
and schedules its end at virtual time ``now + duration``; ``poll`` reports the job(s) whose
virtual end comes first. The clock only advances when every worker is busy, or when the
campaign was given a chance to fill a free worker and did not (its budget is spent, its pool is
empty): so the order in which the campaign's asynchronous dispatch sees results and fills
workers is exactly that of a fleet of N workers with those durations, while a campaign of
simulated hours runs in seconds of wall time.

What the campaign receives is what a real job leaves: a log with ``val_bpb: <value>`` lines
(the product parses and classifies it, ``hybrid.targets.to_result``), an exit code, and
virtual ``started``/``ended`` times (``epoch + seconds``, so they read as timestamps). A
configuration in the problem's out-of-memory region (``Problem.oom``) exits 1 after a short
while with the traceback PyTorch prints, so the product sees an OOM crash as it would for real.

Deterministic for a seed: durations and observation noise come from their own random streams,
drawn in submission order, so the k-th submitted experiment gets the k-th draw whatever the
method; every method of a benchmark sees the same fleet. A configuration the campaign runs again
(a replicate, a confirmation) runs with a recorded seed it has not run yet while the table has
one (``Problem.evaluate``'s ``used``), as a re-run with a new seed would.

Limits: the campaign's own wall-clock quantities (``budget.max_hours``, the accrued cost of
*running* jobs in the live view and ``budget.max_cost_usd``) are not on this clock; finished
results carry their virtual duration and cost. Jobs live in this process only: a resumed
campaign finds none of them (``attach`` returns None, so they are requeued).
"""

from __future__ import annotations

import json
import math
import time
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from backends.base import Backend, Finished, JobHandle, JobState, RunSpec, Worker
from benchmarks.problems import Problem
from hybrid.types import Experiment

__all__ = ["Duration", "SimBackend", "lognormal_duration", "sim_workers"]

# (params, worker, rng) -> seconds the experiment runs
Duration = Callable[[Mapping[str, Any], Worker, np.random.Generator], float]
OOM_FRACTION = 0.05  # an out-of-memory crash happens early: this fraction of the run's duration
_OOM_LOG = (
    "Traceback (most recent call last):\n"
    '  File "train.py", line 212, in <module>\n'
    "    loss.backward()\n"
    "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity "
    "of 79.19 GiB of which 1.31 GiB is free. Including non-PyTorch memory, this process has 77.86 GiB "
    "memory in use.\n"
)
_REASONS = {JobState.CANCELLED: "cancelled by the campaign", JobState.TIMEOUT: "killed at target.timeout_s"}


def lognormal_duration(median_s: float = 3600.0, sigma: float = 0.5) -> Duration:
    """Durations ``median_s * exp(sigma * z)``, z standard normal (a long-tailed fleet)."""

    def draw(params: Mapping[str, Any], worker: Worker, rng: np.random.Generator) -> float:
        return median_s * math.exp(sigma * float(rng.standard_normal()))

    return draw


def sim_workers(n: int, hardware: str = "sim", hourly_usd: float = 0.0, prefix: str = "w") -> list[Worker]:
    """``n`` alike workers ``w0``, ``w1``..."""
    return [Worker(f"{prefix}{i}", hardware, hourly_usd) for i in range(n)]


@dataclass
class _Job:
    """What a simulated job will have done by its (virtual) end."""

    seq: int  # submission order: breaks ties between equal ends
    start: float  # virtual seconds since the epoch
    end: float
    log: str
    exit_code: int
    state: JobState = JobState.EXITED


class SimBackend(Backend):
    """Workers that run ``problem`` in-process on a virtual clock (module docstring).

    ``workers``: a number of alike workers (labelled ``hardware``, priced ``hourly_usd``) or a
    list of :class:`Worker`. ``duration``: draws each run's length (default: lognormal, median
    1 h, sigma 0.5). ``slowdown``: worker name or hardware label -> factor on its durations
    (a worker three times slower: ``{"w0": 3.0}``). ``metric``: the name the log reports the
    observation under (the target's ``target.metric``). ``epoch``: wall time of virtual second 0
    (default: now).
    """

    def __init__(
        self,
        problem: Problem,
        workers: int | Sequence[Worker] = 8,
        *,
        seed: int = 0,
        duration: Duration | None = None,
        slowdown: Mapping[str, float] | None = None,
        metric: str = "val_bpb",
        hardware: str = "sim",
        hourly_usd: float = 0.0,
        epoch: float | None = None,
    ) -> None:
        super().__init__()
        self.problem = problem
        self._workers = sim_workers(workers, hardware, hourly_usd) if isinstance(workers, int) else list(workers)
        if not self._workers or len({w.name for w in self._workers}) != len(self._workers):
            raise ValueError("SimBackend: workers must be at least one, with unique names")
        self.duration = duration or lognormal_duration()
        self.slowdown = dict(slowdown or {})
        self.metric = metric
        self.epoch = time.time() if epoch is None else float(epoch)
        self.clock = 0.0  # virtual seconds since the epoch
        # own streams: the k-th submission gets the k-th duration and noise draw, whatever the method
        durations, noise = np.random.SeedSequence([seed, zlib.crc32(problem.name.encode())]).spawn(2)
        self._duration_rng, self._noise_rng = np.random.default_rng(durations), np.random.default_rng(noise)
        self._seeds: dict[str, list[int]] = {}  # the recorded seeds each configuration has run (Problem.evaluate)
        self._jobs: dict[str, _Job] = {}
        self._n_submitted = 0
        self._offered = False  # poll() gave the campaign a chance to fill a free worker since the last submit
        # decision latency as the campaign lives it: end of a poll -> the last submit before the next poll
        self.decision_s: list[float] = []
        self._poll_done: float | None = None
        self._last_submit: float | None = None

    def workers(self) -> list[Worker]:
        return list(self._workers)

    def now(self) -> float:
        """The virtual time as a timestamp (what JobHandle.started and Finished.ended carry)."""
        return self.epoch + self.clock

    @property
    def elapsed_s(self) -> float:
        """Virtual seconds since the backend started."""
        return self.clock

    def poll(self) -> list[Finished]:
        if self._poll_done is not None and self._last_submit is not None:
            self.decision_s.append(self._last_submit - self._poll_done)
        finished = super().poll()
        self._poll_done, self._last_submit = time.perf_counter(), None
        return finished

    # ---- hooks ------------------------------------------------------------------------------
    def _start(self, exp: Experiment, spec: RunSpec, worker: Worker) -> JobHandle:
        params = dict(exp.params)
        factor = self.slowdown.get(worker.name, self.slowdown.get(worker.hardware, 1.0))
        seconds = max(1e-6, float(self.duration(params, worker, self._duration_rng)) * factor)
        used = self._seeds.setdefault(json.dumps(params, sort_keys=True, default=str), [])
        value = float(self.problem.observe(params, worker.hardware, self._noise_rng, used))
        header = f"simulated {self.problem.name} on {worker.hardware} ({worker.name})\n"
        state = JobState.EXITED
        if self.problem.oom(params, worker.hardware):
            seconds *= OOM_FRACTION
            log, code = header + _OOM_LOG, 1
        elif spec.timeout_s and seconds > spec.timeout_s:  # killed at target.timeout_s, as a real backend does
            seconds, log, code, state = float(spec.timeout_s), header, 0, JobState.TIMEOUT
        else:
            log, code = header + f"{self.metric}: {value!r}\ntraining_seconds: {seconds:.1f}\n", 0
        self._n_submitted += 1
        job_id = f"sim-{self._n_submitted}"
        self._jobs[job_id] = _Job(self._n_submitted, self.clock, self.clock + seconds, log, code, state)
        (spec.workdir / spec.log_name).write_text(log)  # where a user (and the reports) look for it
        self._offered = False
        self._last_submit = time.perf_counter()
        return JobHandle(job_id, exp.id, worker, self.now(), spec.workdir, spec.log_name)

    def _poll(self, handles: Sequence[JobHandle]) -> list[Finished]:
        jobs = {h.job_id: self._jobs[h.job_id] for h in handles}
        first = min(j.end for j in jobs.values())
        if first > self.clock:
            if len(handles) < len(self._workers) and not self._offered:
                self._offered = True  # a free worker: let the campaign fill it at this instant first
                return []
            self.clock = first  # every worker busy, or the campaign chose to wait: time passes
        self._offered = False
        due = sorted((h for h in handles if jobs[h.job_id].end <= self.clock),
                     key=lambda h: (jobs[h.job_id].end, jobs[h.job_id].seq))
        out = []
        for h in due:
            job = self._jobs.pop(h.job_id)
            exited = job.state is JobState.EXITED
            out.append(Finished(h.job_id, h.experiment_id, job.state, job.exit_code if exited else None, job.log,
                                self.epoch + job.start, self.epoch + job.end, h.worker, _REASONS.get(job.state, "")))
        return out

    def _cancel(self, handle: JobHandle) -> None:
        job = self._jobs.get(handle.job_id)
        if job is not None and job.end > self.clock:  # stopped now: it ends here, without its result
            job.end, job.state, job.log = self.clock, JobState.CANCELLED, job.log.split("\n", 1)[0] + "\n"

    def _attach(self, job_id: str, exp: Experiment, worker: Worker) -> JobHandle | None:
        return None  # simulated jobs do not outlive this process

