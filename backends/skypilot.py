"""Run experiments on SkyPilot clusters (any cloud, Kubernetes or Slurm): one cluster per worker.

Each worker is one SkyPilot cluster named ``<campaign>-<worker>`` (``gpt-hybrid-s0-w01``...).
The first experiment on a worker *launches* the cluster with the target's ``setup`` (install,
prepare data); every later one is one ``exec``. Accelerator alternatives (``{H100: 1, H200: 1}``)
let SkyPilot pick whatever is available; the type it grants is read back from the launch handle
and becomes the worker's hardware label and price.

The campaign loop never waits on SkyPilot: launch/exec requests run on a bounded pool of
threads (the API server runs only a few long requests at once), job status is polled in the
background for all clusters at once, and ``poll`` only reports what those threads found.
``read_output`` follows a running job's log (its progress lines) through a mirror in the
experiment's workdir, refreshed off the loop's thread at most once per ``progress_poll_s``
(``backends._skypilot_output``).

A job id is ``<cluster>/<experiment id>``: known at submit time, before SkyPilot has numbered
the job. SkyPilot's own job id is written to ``<workdir>/.hybrid/skypilot.json`` once known; a
resumed campaign re-attaches by cluster name + that id (or the job's name in the queue).
"""

from __future__ import annotations

import contextlib
import shlex
import shutil
import sys
import time
import warnings
from collections.abc import Mapping, Sequence
from concurrent.futures import Future
from pathlib import Path
from typing import Any

from backends._skypilot_client import (
    ClusterGone,
    RequestPool,
    ServerUnavailable,
    SkyClient,
    sky_task,
    unavailable,
)
from backends._skypilot_jobs import ClusterState, Ended, Job, Round, Watch, find_job, record_of, write_record
from backends._skypilot_output import OutputMirror, is_whole
from backends._skypilot_tasks import (
    RUNNING_STATUSES,
    WorkerSpec,
    build_workers,
    clean_log,
    job_state,
    remote_dir_name,
    resources_config,
    run_script,
    setup_script,
    stage_upload,
    task_config,
)
from backends.base import Backend, Finished, JobHandle, JobState, RunSpec, Worker
from hybrid.errors import BackendError, ConfigError
from hybrid.types import Experiment

__all__ = ["SkyPilotBackend"]

# How long an ended job's final log is asked for again, at every status round, while fetching it
# fails, before the end is reported without it: what the job printed since the last fetch of its
# running log (its final metric) exists only in that log.
FINAL_LOG_RETRY_S = 120.0


class SkyPilotBackend(Backend):
    """Workers that are SkyPilot clusters.

    ``workers``: a number N (``w01``...``wNN``, all alike) or a list of ``{name, accelerators,
    infra, cpus, memory, resources, hardware, hourly_usd}`` overriding the backend-level values.
    ``accelerators``: ``H100:1``, alternatives ``{H100: 1, H200: 1}`` (any of) or
    ``[H100:1, H200:1]`` (in order). ``hourly_usd``: one price or one per accelerator type.
    ``resources``: more SkyPilot resource fields (``use_spot``, ``disk_size``, ``image_id``...).
    ``setup``: shell commands run once per cluster, in the first experiment's copy of the code.
    ``python``: the interpreter on the clusters; it replaces this machine's interpreter path that
    the target's ``{python}`` placeholder put into the command. ``progress_poll_s``: the least
    time between two fetches of one running job's log for ``read_output`` (each is a request to
    the API server that returns up to ``log_tail_lines`` lines).
    """

    def __init__(
        self,
        workers: int | Sequence[Mapping[str, Any]] = 1,
        accelerators: Any = None,
        infra: str | None = None,
        cpus: Any = None,
        memory: Any = None,
        resources: Mapping[str, Any] | None = None,
        hardware: str | None = None,
        hourly_usd: float | Mapping[str, float] = 0.0,
        setup: str = "",
        python: str = "python3",
        campaign: str = "hybrid",
        keep_clusters: bool = False,
        max_parallel_requests: int = 4,
        status_interval_s: float = 5.0,
        autostop_minutes: int | None = None,
        extra_accelerators: Sequence[str] = (),
        log_tail_lines: int = 20000,
        progress_poll_s: float = 15.0,
        name: str = "skypilot",
        client: Any = None,  # tests pass a stand-in for SkyClient
    ) -> None:
        super().__init__()
        if isinstance(max_parallel_requests, bool) or not isinstance(max_parallel_requests, int) \
                or max_parallel_requests < 1:
            raise ConfigError(f"backend.max_parallel_requests: expected an integer >= 1, got {max_parallel_requests!r}")
        if not isinstance(status_interval_s, int | float) or status_interval_s <= 0:
            raise ConfigError(f"backend.status_interval_s: expected seconds > 0, got {status_interval_s!r}")
        if isinstance(progress_poll_s, bool) or not isinstance(progress_poll_s, int | float) or progress_poll_s <= 0:
            raise ConfigError(f"backend.progress_poll_s: expected seconds > 0 between two fetches of a running "
                              f"job's log, got {progress_poll_s!r}; e.g. backend.progress_poll_s=15")
        self.name = name
        self.setup = str(setup or "")
        self.python = str(python or "")
        self.keep_clusters = bool(keep_clusters)
        self.status_interval_s = float(status_interval_s)
        self.autostop_minutes = autostop_minutes
        self.log_tail_lines = int(log_tail_lines)
        self.progress_poll_s = float(progress_poll_s)
        self.final_log_retry_s = FINAL_LOG_RETRY_S
        self._final_log_failing: dict[str, float] = {}  # job id -> since when (status thread only)
        self._client = client if client is not None else SkyClient()  # ConfigError without skypilot
        defaults = {"accelerators": accelerators, "infra": infra, "cpus": cpus, "memory": memory,
                    "resources": dict(resources or {}), "hardware": hardware, "hourly_usd": hourly_usd}
        self._specs = build_workers(workers, defaults, campaign, list(extra_accelerators or ()))
        self._state = {s.name: ClusterState() for s in self._specs}
        for i, spec in enumerate(self._specs):  # SkyPilot's own schema, before anything starts
            try:
                sky_task(task_config(name="check", stage="/tmp", run="true", envs={},
                                     resources=resources_config(spec)))
            except ConfigError:
                raise
            except Exception as e:
                where = "backend" if isinstance(workers, int) else f"backend.workers[{i}]"
                raise ConfigError(f"{where}: SkyPilot rejects the resources of worker {spec.name}: "
                                  f"{' '.join(str(e).split())}") from e
        self._check_server_and_infra()
        self._jobs: dict[str, Job] = {}
        self._requests = RequestPool(max_parallel_requests, "skypilot-request")
        self._background = RequestPool(1, "skypilot-status")  # status, logs, cancels: short requests
        self._output = RequestPool(2, "skypilot-output")  # running jobs' logs: never delay a cancel
        self._refresh: Future[Round] | None = None
        self._last_refresh = float("-inf")
        self._unavailable: BackendError | None = None
        self._kept_for_resume = False
        self._closed = False

    # ---- the public contract ------------------------------------------------------------------
    def workers(self) -> list[Worker]:
        with self._lock:
            return [self._worker(s) for s in self._specs]

    def clusters(self) -> list[str]:
        """The names of this campaign's clusters, one per worker."""
        return [s.cluster for s in self._specs]

    def recover(self, exp: Experiment) -> JobHandle | None:
        """Find the job of ``exp`` by its name in the worker cluster's queue (the orchestrator
        died between submit and mark_running)."""
        spec = self._spec(exp.worker)
        return None if spec is None else self.attach(f"{spec.cluster}/{exp.id}", exp)

    def read_output(self, handle: JobHandle, offset: int = 0) -> tuple[str, int]:
        """``Backend.read_output`` of the job's log mirror in its workdir; a running job's mirror is
        refreshed in the background, at most once per ``progress_poll_s`` (a fetch that fails
        changes nothing: the job's state is the status check's to decide, never the log's)."""
        with self._lock:
            job = self._jobs.get(handle.job_id)
        if job is not None:
            self._refresh_output(job)
        return super().read_output(handle, offset)

    def detach(self) -> None:
        with self._lock:
            if self._active:
                self._kept_for_resume = True  # close() must not tear down what they run on
            self._jobs.clear()
        super().detach()

    def close(self) -> None:
        """Tear down this campaign's clusters (all of them, also those a previous session of the
        campaign launched), unless ``keep_clusters`` or jobs were detached to be resumed."""
        if self._closed:
            return
        self._closed = True
        self._requests.shutdown()
        self._background.shutdown()
        self._output.shutdown()
        if self.keep_clusters:
            return
        if self._kept_for_resume:
            warnings.warn(f"SkyPilot clusters {', '.join(self.clusters())} are kept: running experiments were "
                          "left running for a resume; `sky down` them when the campaign is over", stacklevel=2)
            return
        try:
            existing = self._client.granted(self.clusters())
            failures = {c: e for c, e in self._client.down(sorted(existing)).items() if e is not None}
        except BackendError as e:
            failures = {c: e for c in self.clusters()}
        for cluster, err in failures.items():
            warnings.warn(f"could not tear down SkyPilot cluster {cluster} ({err}); run `sky down {cluster}`",
                          stacklevel=2)

    # ---- hooks --------------------------------------------------------------------------------
    def _start(self, exp: Experiment, spec: RunSpec, worker: Worker) -> JobHandle:
        if self._unavailable is not None:
            raise self._unavailable
        ws = self._spec(worker.name)
        assert ws is not None  # Backend.submit checked the name
        remote_dir = remote_dir_name(exp.id)
        workdir = spec.workdir.resolve()
        try:
            stage = stage_upload(workdir, remote_dir)
        except OSError as e:
            raise BackendError(f"could not prepare the upload of experiment {exp.id}: {e}") from e
        handle = JobHandle(f"{ws.cluster}/{exp.id}", exp.id, worker, time.time(), workdir, spec.log_name)
        job = Job(handle, ws.cluster)
        envs = {**{str(k): str(v) for k, v in spec.env.items()}, "HYBRID_WORKER": worker.name}
        run = run_script(remote_dir, self._remote_command(spec.command), spec.timeout_s)
        write_record(workdir, {"cluster": ws.cluster, "job_name": exp.id, "sky_job_id": None,
                                "log_name": spec.log_name, "submitted": handle.started})
        with self._lock:
            self._jobs[handle.job_id] = job
        job.start = self._requests.submit(self._launch_or_exec, job, ws, exp.id, stage, remote_dir, run, envs)
        return handle

    def _poll(self, handles: Sequence[JobHandle]) -> list[Finished]:
        if self._unavailable is not None:
            raise self._unavailable
        with self._lock:
            jobs = [self._jobs[h.job_id] for h in handles if h.job_id in self._jobs]
        for job in jobs:
            if job.start is not None and job.start.done() and not job.start_seen:
                self._started(job)
        if self._refresh is not None and self._refresh.done():
            refresh, self._refresh = self._refresh, None
            try:
                found = refresh.result()
            except ServerUnavailable as e:
                self._unavailable = unavailable(e)
                raise self._unavailable from e
            except BackendError:
                found = Round([], set())  # a failed status query: asked again next time
            for job_id in found.running:
                job = self._jobs.get(job_id)
                if job is not None:
                    job.seen_running = True
            for job_id, end in found.ended:
                job = self._jobs.get(job_id)
                if job is not None and job.ended is None:
                    job.ended = end
                    if end.cluster_broken:
                        self._set_state(job.cluster, ready=False)
        watched = [j for j in jobs if j.sky_job_id is not None and j.ended is None]
        now = time.monotonic()
        if watched and self._refresh is None and now - self._last_refresh >= self.status_interval_s:
            self._last_refresh = now
            snapshot = [Watch(j.handle.job_id, j.cluster, j.sky_job_id) for j in watched
                        if j.sky_job_id is not None]
            self._refresh = self._background.submit(self._check_jobs, snapshot)
        out: list[Finished] = []
        for job in jobs:
            if job.ended is not None:
                out.append(self._finished(job, job.ended))
                with self._lock:
                    self._jobs.pop(job.handle.job_id, None)
        return out

    def _cancel(self, handle: JobHandle) -> None:
        job = self._jobs.get(handle.job_id)
        if job is None or job.cancel_requested:
            return
        job.cancel_requested = True
        if job.sky_job_id is not None:
            self._send_cancel(job)
        elif job.request_id is not None:
            self._background.submit(self._client.cancel_request, job.request_id)
        # else: the launch/exec request is not even sent; _started cancels the job it creates

    def _attach(self, job_id: str, exp: Experiment, worker: Worker) -> JobHandle | None:
        cluster, sep, name = job_id.rpartition("/")
        if not sep or not cluster or name != exp.id:
            return None  # not a SkyPilot job id of ours (the campaign ran on another backend)
        workdir = Path(exp.workdir) if exp.workdir else None
        record = record_of(workdir) if workdir else {}
        known_id = record.get("sky_job_id") if record.get("cluster") == cluster else None
        try:
            found = self._client.queues([cluster])[cluster]
        except ServerUnavailable as e:
            raise unavailable(e) from e
        if isinstance(found, ClusterGone):
            return None  # the cluster is gone, and its jobs with it
        if isinstance(found, BackendError):
            raise found  # a failed query must not make a running job look lost
        job = find_job(found, exp.id, known_id, exp.started)
        if job is None:
            return None
        spec = next((s for s in self._specs if s.cluster == cluster), None)
        if spec is not None:  # the cluster is up and set up: later experiments only exec
            try:
                granted = self._client.granted([cluster]).get(cluster)
            except BackendError:
                granted = None
            self._set_state(cluster, ready=True, granted=granted)
            worker = self._worker(spec)
        started = exp.started or job.submitted_at or time.time()
        handle = JobHandle(job_id, exp.id, worker, float(started), workdir or Path.cwd(),
                           str(record.get("log_name") or "run.log"))
        if workdir is not None:
            write_record(workdir, {**record, "cluster": cluster, "job_name": exp.id, "sky_job_id": job.job_id})
        with self._lock:
            self._jobs[job_id] = Job(handle, cluster, sky_job_id=job.job_id, start_seen=True,
                                      seen_running=job.status == "RUNNING")
        return handle

    # ---- the request pool (worker threads) ---------------------------------------------------
    def _launch_or_exec(self, job: Job, ws: WorkerSpec, exp_id: str, stage: Path, remote_dir: str,
                        run: str, envs: Mapping[str, str]) -> None:
        """Launch the worker's cluster (first experiment: setup + run) or exec on it."""
        state = self._state[ws.name]

        def on_request(request_id: str) -> None:
            job.request_id = request_id

        try:
            with state.lock:  # one request per cluster at a time: an exec never overtakes its launch
                sky_job_id: int | None = None
                if state.ready:
                    task = task_config(name=exp_id, stage=stage, run=run, envs=envs,
                                       resources=resources_config(ws, state.granted or {}))
                    try:
                        sky_job_id = self._client.exec(task, ws.cluster, on_request)
                    except ClusterGone:
                        self._set_state(ws.cluster, ready=False)  # downed from outside: launch again
                if sky_job_id is None:
                    task = task_config(name=exp_id, stage=stage, run=run, envs=envs,
                                       resources=resources_config(ws), setup=setup_script(remote_dir, self.setup))
                    sky_job_id, granted = self._client.launch(task, ws.cluster, on_request, self.autostop_minutes)
                    self._set_state(ws.cluster, ready=True, granted=granted)
                    with self._lock:
                        job.handle.worker = self._worker(ws)  # the granted hardware, for this result too
                job.sky_job_id = sky_job_id
        finally:
            shutil.rmtree(stage, ignore_errors=True)
        # Written here, not by poll: a job detached while its request was in flight is found too.
        self._record_job_id(job)

    def _started(self, job: Job) -> None:
        """The launch/exec request of ``job`` has returned (main thread)."""
        job.start_seen = True
        assert job.start is not None
        err = job.start.exception()
        if err is None:
            if job.cancel_requested:
                self._send_cancel(job)
            return
        if isinstance(err, ServerUnavailable):
            self._unavailable = unavailable(err)
            raise self._unavailable from err
        if job.cancel_requested:
            job.ended = Ended(JobState.CANCELLED, None, "cancelled before it started", "")
        else:
            job.ended = Ended(JobState.LOST, None, f"could not start the job: {err}", "")

    def _check_jobs(self, watched: Sequence[Watch]) -> Round:
        """One status round for every watched job (background thread): the job queues of all
        their clusters (one batch), then the logs of the jobs that ended."""
        queues = self._client.queues(sorted({w.cluster for w in watched}))
        out: list[tuple[str, Ended]] = []
        running: set[str] = set()
        for w in watched:
            found = queues.get(w.cluster)
            if isinstance(found, ClusterGone):
                out.append((w.job_id, Ended(JobState.LOST, None, f"cluster {w.cluster} is gone ({found})", "",
                                             cluster_broken=True)))
                continue
            if not isinstance(found, list):
                continue  # a failed query: asked again next round
            job = next((j for j in found if j.job_id == w.sky_job_id), None)
            if job is None:
                out.append((w.job_id, Ended(JobState.LOST, None,
                                             f"job {w.sky_job_id} is not in the queue of cluster {w.cluster}", "")))
                continue
            if job.status in RUNNING_STATUSES:
                if job.status == "RUNNING":
                    running.add(w.job_id)
                continue
            whole = True
            try:
                raw = self._client.logs(w.cluster, job.job_id, self.log_tail_lines)
                whole = is_whole(raw, self.log_tail_lines)
            except ServerUnavailable:
                raise
            except BackendError as e:
                since = self._final_log_failing.setdefault(w.job_id, time.monotonic())
                if time.monotonic() - since < self.final_log_retry_s:
                    continue  # a fetch failing for a while: the end is reported with its log
                raw = f"(the log could not be fetched for {self.final_log_retry_s:g} s: {e})\n"
                whole = False  # not the log's start: the mirror keeps what it has and adds this
            self._final_log_failing.pop(w.job_id, None)
            log, exit_line = clean_log(raw)
            state, code, reason = job_state(job.status, exit_line)  # type: ignore[misc]
            out.append((w.job_id, Ended(state, code, reason, log, started=job.start_at, ended=job.end_at,
                                         cluster_broken=job.status == "FAILED_SETUP", log_whole=whole)))
        return Round(out, running)

    # ---- internals -------------------------------------------------------------------------
    def _check_server_and_infra(self) -> None:
        """Before anything is launched: an API server answers, and the infra asked for is enabled."""
        try:
            url = self._client.check_server()
            enabled = [e.lower() for e in self._client.enabled_infra()]
        except BackendError as e:
            raise unavailable(e) from e
        aliases = {"k8s": "kubernetes"}
        for i, spec in enumerate(self._specs):
            if spec.infra is None:
                if not enabled:
                    raise ConfigError(f"backend.infra: no infra is enabled on the SkyPilot API server at {url}; "
                                      "run `sky check` (e.g. `sky check slurm`) and fix what it reports")
                continue
            cloud = spec.infra.split("/", 1)[0].lower()
            if cloud != "*" and aliases.get(cloud, cloud) not in enabled:
                where = "backend.infra" if all(s.infra == spec.infra for s in self._specs) else f"backend.workers[{i}].infra"
                raise ConfigError(f"{where}: {spec.infra!r} is not enabled on the SkyPilot API server at {url} "
                                  f"(enabled: {', '.join(enabled) or 'none'}); run `sky check {cloud}`")

    def _spec(self, worker: str) -> WorkerSpec | None:
        return next((s for s in self._specs if s.name == worker), None)

    def _worker(self, spec: WorkerSpec) -> Worker:
        granted = self._state[spec.name].granted
        return Worker(spec.name, spec.label(granted), spec.price(granted))

    def _set_state(self, cluster: str, ready: bool, granted: Mapping[str, float] | None = None) -> None:
        with self._lock:
            for spec in self._specs:
                if spec.cluster == cluster:
                    state = self._state[spec.name]
                    state.ready = ready
                    if granted is not None:
                        state.granted = dict(granted)

    def _remote_command(self, command: str) -> str:
        if not self.python:
            return command
        return command.replace(shlex.quote(sys.executable), self.python)

    def _send_cancel(self, job: Job) -> None:
        if not job.cancel_sent and job.sky_job_id is not None:
            job.cancel_sent = True
            self._background.submit(self._client.cancel, job.cluster, [job.sky_job_id])

    def _refresh_output(self, job: Job) -> None:
        """Fetch the log of a running job in the background, unless a fetch is in flight or the
        last one is less than ``progress_poll_s`` old. Only jobs the status check saw RUNNING:
        for a queued one SkyPilot waits for a log file (seconds) and prints notes of its own."""
        if job.sky_job_id is None or not job.seen_running or job.ended is not None or self._closed:
            return
        if job.output_fetch is not None and not job.output_fetch.done():
            return
        now = time.monotonic()
        if now - job.output_fetched_at < self.progress_poll_s:
            return
        job.output_fetched_at = now
        job.output_fetch = self._output.submit(self._fetch_output, job.mirror, job.cluster, job.sky_job_id)

    def _fetch_output(self, mirror: OutputMirror, cluster: str, sky_job_id: int) -> None:
        """One fetch of a running job's log into its mirror (a helper thread)."""
        try:
            raw = self._client.logs(cluster, sky_job_id, self.log_tail_lines)
        except BackendError:  # the server or the cluster: the status check tells, this one waits
            return
        mirror.add_fetch(raw, self.log_tail_lines)

    def _record_job_id(self, job: Job) -> None:
        record = record_of(job.handle.workdir)
        with contextlib.suppress(OSError):
            write_record(job.handle.workdir, {**record, "cluster": job.cluster, "sky_job_id": job.sky_job_id})

    def _finished(self, job: Job, end: Ended) -> Finished:
        h = job.handle
        if end.log:
            job.mirror.add_final(end.log, end.log_whole)
        started = end.started if end.started else h.started
        ended = end.ended if end.ended else time.time()
        return Finished(h.job_id, h.experiment_id, end.state, end.exit_code, end.log, float(started),
                        max(float(ended), float(started)), h.worker, end.reason)
