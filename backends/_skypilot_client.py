"""The SkyPilot SDK, reduced to the few calls the SkyPilot backend makes.

Every SDK call goes to a SkyPilot API server and returns a request id; ``sky.get`` waits for the
request and re-raises the server-side error. This module hides that, turns SkyPilot's exceptions
into ours (a cluster that is gone, an API server that cannot be reached, anything else), and is
the only place that imports ``sky`` -- lazily, so ``import backends`` stays fast and the project
works without SkyPilot installed. Tests of the backend's own logic swap it for an in-memory fake;
the real thing is exercised by the end-to-end lane (``pytest -m skypilot_e2e``).
"""

from __future__ import annotations

import io
import logging
import queue
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from hybrid.errors import BackendError, ConfigError

MISSING_SKYPILOT = (
    "backend=skypilot needs the skypilot package: pip install 'hybrid-autoresearch[skypilot]' "
    "(or pip install 'skypilot[slurm]==0.14.*' with the extra for your infra)"
)


class ClusterGone(BackendError):
    """The cluster does not exist (any more) or is not up."""


class ServerUnavailable(BackendError):
    """The SkyPilot API server cannot be reached (or refuses us)."""


@dataclass(frozen=True)
class SkyJob:
    """One row of a cluster's job queue (``sky queue``)."""

    job_id: int
    name: str
    status: str  # a SkyPilot JobStatus name: RUNNING, SUCCEEDED, FAILED_SETUP...
    submitted_at: float | None = None
    start_at: float | None = None
    end_at: float | None = None


def import_sky() -> Any:
    # SkyPilot's database layer logs alembic's plugin setup at INFO while it imports, which
    # Hydra's logging configuration would print on every run.
    logging.getLogger("alembic").setLevel(logging.WARNING)
    try:
        import sky
    except ImportError as e:
        raise ConfigError(MISSING_SKYPILOT) from e
    return sky


def sky_task(config: Mapping[str, Any]) -> Any:
    """A ``sky.Task`` from a task YAML dict, validated by SkyPilot's own schema."""
    return import_sky().Task.from_yaml_config(dict(config))


def granted_accelerators(handle: Any) -> dict[str, float]:
    """The accelerators a launch was granted, read from the cluster handle (``{}``: CPU only)."""
    resources = getattr(handle, "launched_resources", None)
    accelerators = getattr(resources, "accelerators", None) or {}
    return {str(name): float(count) for name, count in dict(accelerators).items()}


def _field(record: Any, name: str) -> Any:
    """A field of an SDK response: pydantic models and plain dicts both occur."""
    if isinstance(record, Mapping):
        return record.get(name)
    return getattr(record, name, None)


def _status_name(status: Any) -> str | None:
    if status is None:
        return None
    return str(getattr(status, "value", status))


class SkyClient:
    """Blocking wrappers over the SDK (0.14); call them from worker threads, not the loop."""

    def __init__(self) -> None:
        self.sky = import_sky()
        from sky import exceptions

        self._exc = exceptions

    @contextmanager
    def _errors(self, what: str) -> Iterator[None]:
        exc = self._exc
        try:
            yield
        except (exc.ClusterDoesNotExist, exc.ClusterNotUpError) as e:
            raise ClusterGone(f"{what}: {_one_line(e)}") from e
        except (
            exc.ApiServerConnectionError,
            exc.ApiServerAuthenticationError,
            exc.APIVersionMismatchError,
        ) as e:
            raise ServerUnavailable(f"{what}: {_one_line(e)}") from e
        except BackendError:
            raise
        except Exception as e:
            import requests

            if isinstance(e, requests.exceptions.ConnectionError):
                raise ServerUnavailable(f"{what}: SkyPilot API server unreachable: {_one_line(e)}") from e
            raise BackendError(f"{what}: {type(e).__name__}: {_one_line(e)}") from e

    # ---- the API server ---------------------------------------------------------------------
    def check_server(self) -> str:
        """Raise ServerUnavailable unless an API server answers (a local one is started the way
        every SkyPilot command starts it). Returns its URL."""
        from sky.server import common as server_common

        url = server_common.get_server_url()
        try:
            with self._errors("SkyPilot API server"):
                server_common.check_server_healthy_or_start_fn()
        except BackendError as e:  # SkyPilot's own message names the URL already
            cause = e.__cause__
            raise ServerUnavailable(_one_line(cause) if cause else str(e)) from cause
        return url

    def enabled_infra(self) -> list[str]:
        """Names of the infra (clouds, Kubernetes, Slurm...) enabled by ``sky check``."""
        from sky.client import sdk  # not re-exported as sky.enabled_clouds in 0.14

        with self._errors("listing the enabled infra"):
            return [str(c) for c in self.sky.get(sdk.enabled_clouds())]

    # ---- jobs --------------------------------------------------------------------------------
    def launch(
        self,
        task_config: Mapping[str, Any],
        cluster: str,
        on_request: Callable[[str], None],
        autostop_minutes: int | None = None,
    ) -> tuple[int, dict[str, float]]:
        """Create (or reuse) ``cluster``, run the task's setup, submit its run. Returns the job id
        and the accelerators the cluster was granted."""
        with self._errors(f"launching cluster {cluster}"):
            request_id = self.sky.launch(
                sky_task(task_config), cluster_name=cluster, idle_minutes_to_autostop=autostop_minutes
            )
            on_request(str(request_id))
            job_id, handle = self.sky.get(request_id)
        if job_id is None:
            raise BackendError(f"launching cluster {cluster}: SkyPilot submitted no job")
        return int(job_id), granted_accelerators(handle)

    def exec(self, task_config: Mapping[str, Any], cluster: str, on_request: Callable[[str], None]) -> int:
        """Sync the task's workdir to ``cluster`` and queue its run (no setup). Returns the job id."""
        with self._errors(f"submitting to cluster {cluster}"):
            request_id = self.sky.exec(sky_task(task_config), cluster_name=cluster)
            on_request(str(request_id))
            job_id, _ = self.sky.get(request_id)
        if job_id is None:
            raise BackendError(f"submitting to cluster {cluster}: SkyPilot submitted no job")
        return int(job_id)

    def queues(self, clusters: Sequence[str]) -> dict[str, list[SkyJob] | BackendError]:
        """The job queue of each cluster: every request is sent first, then all are awaited, so
        N clusters cost one round trip, not N."""
        requests: dict[str, Any] = {}
        out: dict[str, list[SkyJob] | BackendError] = {}
        for cluster in clusters:
            try:
                with self._errors(f"job queue of cluster {cluster}"):
                    requests[cluster] = self.sky.queue(cluster, skip_finished=False)
            except ServerUnavailable:
                raise
            except BackendError as e:
                out[cluster] = e
        for cluster, request_id in requests.items():
            try:
                with self._errors(f"job queue of cluster {cluster}"):
                    records = self.sky.get(request_id)
            except ServerUnavailable:
                raise
            except BackendError as e:
                out[cluster] = e
                continue
            out[cluster] = [
                SkyJob(
                    job_id=int(_field(r, "job_id")),
                    name=str(_field(r, "job_name") or ""),
                    status=_status_name(_field(r, "status")) or "INIT",
                    submitted_at=_field(r, "submitted_at"),
                    start_at=_field(r, "start_at"),
                    end_at=_field(r, "end_at"),
                )
                for r in records
            ]
        return out

    def logs(self, cluster: str, job_id: int, tail: int = 0) -> str:
        """The job's log as SkyPilot streams it (colours and ``(task, pid=N)`` prefixes included)."""
        buffer = io.StringIO()
        with self._errors(f"logs of job {job_id} on cluster {cluster}"):
            self.sky.tail_logs(cluster, job_id, follow=False, tail=tail, output_stream=buffer)
        return buffer.getvalue()

    def cancel(self, cluster: str, job_ids: Sequence[int]) -> None:
        with self._errors(f"cancelling jobs {list(job_ids)} on cluster {cluster}"):
            self.sky.get(self.sky.cancel(cluster, job_ids=list(job_ids)))

    def cancel_request(self, request_id: str) -> None:
        """Abort a launch/exec request still in flight on the API server."""
        with self._errors(f"aborting request {request_id}"):
            self.sky.get(self.sky.api_cancel(request_id, silent=True))

    # ---- clusters ------------------------------------------------------------------------------
    def granted(self, clusters: Sequence[str]) -> dict[str, dict[str, float]]:
        """For each of ``clusters`` that exists: the accelerators it was granted."""
        with self._errors("cluster status"):
            records = self.sky.get(self.sky.status(cluster_names=list(clusters)))
        out: dict[str, dict[str, float]] = {}
        for r in records:
            name = _field(r, "name")
            if name in clusters:
                out[str(name)] = granted_accelerators(_field(r, "handle"))
        return out

    def down(self, clusters: Sequence[str]) -> dict[str, BackendError | None]:
        """Tear the clusters down (all requests first, then wait for each)."""
        requests: dict[str, Any] = {}
        out: dict[str, BackendError | None] = {}
        for cluster in clusters:
            try:
                with self._errors(f"tearing down cluster {cluster}"):
                    requests[cluster] = self.sky.down(cluster)
            except BackendError as e:
                out[cluster] = e
        for cluster, request_id in requests.items():
            try:
                with self._errors(f"tearing down cluster {cluster}"):
                    self.sky.get(request_id)
                out[cluster] = None
            except ClusterGone:
                out[cluster] = None  # already gone: nothing to tear down
            except BackendError as e:
                out[cluster] = e
        return out


def _one_line(err: BaseException) -> str:
    text = " ".join(part.strip() for part in str(err).splitlines() if part.strip())
    return text or type(err).__name__


class RequestPool:
    """At most ``size`` calls at once, on daemon threads: an abandoned launch (the campaign
    detached or was interrupted) never holds up the exit; the API server finishes it anyway."""

    def __init__(self, size: int, name: str) -> None:
        self._queue: queue.SimpleQueue[tuple[Future[Any], Callable[..., Any], tuple[Any, ...]] | None] = \
            queue.SimpleQueue()
        self._size, self._name = size, name
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()

    def submit(self, fn: Callable[..., Any], *args: Any) -> Future[Any]:
        future: Future[Any] = Future()
        self._queue.put((future, fn, args))
        with self._lock:
            if len(self._threads) < self._size:
                t = threading.Thread(target=self._work, name=f"{self._name}-{len(self._threads)}", daemon=True)
                self._threads.append(t)
                t.start()
        return future

    def _work(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            future, fn, args = item
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(fn(*args))
            except BaseException as e:
                future.set_exception(e)

    def shutdown(self) -> None:
        with self._lock:
            for _ in self._threads:
                self._queue.put(None)


def unavailable(err: BaseException) -> BackendError:
    """The error a campaign stops with when the API server cannot be reached: what to do, and that
    re-running the same command loses nothing."""
    return BackendError(
        f"SkyPilot API server unavailable: {err}; start it with `sky api start` (or fix "
        "SKYPILOT_API_SERVER_ENDPOINT / api_server.endpoint in ~/.sky/config.yaml), then re-run the same "
        "command: running experiments are re-attached, none is recorded as run"
    )
