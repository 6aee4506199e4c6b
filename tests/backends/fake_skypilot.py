"""An in-memory stand-in for ``backends._skypilot_client.SkyClient`` (tests of the SkyPilot
backend's own logic; the real client runs in the end-to-end lane)."""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from backends._skypilot_client import ClusterGone, ServerUnavailable, SkyJob
from hybrid.errors import BackendError


class FakeSky:
    """Clusters and job queues in memory. ``gate``: while set to an unset Event, launches wait on
    it (a slow launch). ``grants``: cluster -> accelerators granted (default: the first asked).
    ``logs_fail``: log fetches fail (a log that cannot be read for a while); ``logs_gate``: while
    set to an unset Event, log fetches wait on it (a fetch that hangs); ``log_fetches``: (job name,
    its status) of every fetch."""

    def __init__(self, enabled: Sequence[str] = ("Slurm",)) -> None:
        self.enabled = list(enabled)
        self.server_up = True
        self.gate: threading.Event | None = None
        self.grants: dict[str, dict[str, float]] = {}
        self.clusters: dict[str, dict[str, Any]] = {}  # name -> {granted, jobs: {id: dict}}
        self.calls: list[tuple[str, str]] = []  # (what, cluster)
        self.tasks: list[dict[str, Any]] = []
        self.uploads: list[list[str]] = []  # the stage directory's files at request time
        self.cancelled_requests: list[str] = []
        self.queue_batches: list[list[str]] = []
        self.logs_fail = False
        self.logs_gate: threading.Event | None = None
        self.log_fetches: list[tuple[str, str]] = []
        self.in_flight = self.max_in_flight = 0
        self._lock = threading.Lock()
        self._requests = 0

    # -- the SkyClient interface
    def check_server(self) -> str:
        if not self.server_up:
            raise ServerUnavailable("SkyPilot API server at http://127.0.0.1:46580: connection refused")
        return "http://127.0.0.1:46580"

    def enabled_infra(self) -> list[str]:
        return list(self.enabled)

    def launch(self, task: Mapping[str, Any], cluster: str, on_request: Any, autostop: Any = None) -> tuple[int, dict]:
        with self._request(task, "launch", cluster, on_request):
            if self.gate is not None:
                self.gate.wait(10)
            self._check_up()
            granted = self.grants.get(cluster, _first_asked(task["resources"]))
            entry = self.clusters.setdefault(cluster, {"granted": granted, "jobs": {}})
            entry["granted"] = granted
            return self._new_job(cluster, task), dict(granted)

    def exec(self, task: Mapping[str, Any], cluster: str, on_request: Any) -> int:
        with self._request(task, "exec", cluster, on_request):
            self._check_up()
            if cluster not in self.clusters:
                raise ClusterGone(f"submitting to cluster {cluster}: Cluster {cluster!r} does not exist.")
            return self._new_job(cluster, task)

    def queues(self, clusters: Sequence[str]) -> dict[str, Any]:
        self._check_up()
        self.queue_batches.append(list(clusters))
        out: dict[str, Any] = {}
        for c in clusters:
            if c not in self.clusters:
                out[c] = ClusterGone(f"job queue of cluster {c}: Cluster {c!r} does not exist.")
            else:
                out[c] = [SkyJob(j["id"], j["name"], j["status"], j["submitted"], j["start"], j["end"])
                          for j in self.clusters[c]["jobs"].values()]
        return out

    def logs(self, cluster: str, job_id: int, tail: int = 0) -> str:
        job = self.clusters[cluster]["jobs"][job_id]
        self.log_fetches.append((job["name"], job["status"]))
        if self.logs_gate is not None:
            self.logs_gate.wait(10)
        if self.logs_fail:
            raise BackendError(f"logs of job {job_id} on cluster {cluster}: ConnectionResetError: reset by peer")
        lines = job["log"].splitlines(keepends=True)
        return "".join(lines[-tail:] if tail > 0 else lines)  # SkyPilot's tail: the last N lines

    def cancel(self, cluster: str, job_ids: Sequence[int]) -> None:
        self.calls.append(("cancel", cluster))
        for i in job_ids:
            job = self.clusters[cluster]["jobs"][i]
            if job["status"] in ("PENDING", "RUNNING"):
                self._end(job, "CANCELLED", job["log"])

    def cancel_request(self, request_id: str) -> None:
        self.cancelled_requests.append(request_id)

    def granted(self, clusters: Sequence[str]) -> dict[str, dict[str, float]]:
        self._check_up()
        return {c: dict(self.clusters[c]["granted"]) for c in clusters if c in self.clusters}

    def down(self, clusters: Sequence[str]) -> dict[str, Any]:
        for c in clusters:
            self.calls.append(("down", c))
            self.clusters.pop(c, None)
        return dict.fromkeys(clusters)

    # -- test controls
    def job(self, name: str) -> dict[str, Any]:
        return next(j for c in self.clusters.values() for j in c["jobs"].values() if j["name"] == name)

    def write(self, name: str, output: str) -> None:
        """A running job prints ``output`` (logged the way SkyPilot logs it: prefix, colour)."""
        job = self.job(name)
        job["log"] += _logged(output)

    def end(self, name: str, status: str, output: str = "", exit_code: int | None = None,
            timed_out: bool = False) -> None:
        """End a job: ``output`` is printed by the command (after what it wrote before); the run
        script's exit line follows when ``exit_code`` is given."""
        raw = self.job(name)["log"] + _logged(output)
        if exit_code is not None:
            end = "timeout" if timed_out else "exited"
            raw += f"(task, pid=4242) \n(task, pid=4242) hybrid-skypilot: exit_code={exit_code} end={end}\n"
        raw += f"\x1b[32m✓ Job finished (status: {status}).\x1b[0m\n"
        self._end(self.job(name), status, raw)

    def names(self, what: str) -> list[str]:
        return [c for w, c in self.calls if w == what]

    # -- internals
    def _check_up(self) -> None:
        if not self.server_up:
            raise ServerUnavailable("SkyPilot API server unreachable: connection refused")

    def _request(self, task: Mapping[str, Any], what: str, cluster: str, on_request: Any) -> Any:
        fake = self

        class Request:
            def __enter__(self) -> None:
                with fake._lock:
                    fake._requests += 1
                    on_request(f"request-{fake._requests}")
                    fake.in_flight += 1
                    fake.max_in_flight = max(fake.max_in_flight, fake.in_flight)
                    fake.calls.append((what, cluster))
                    fake.tasks.append(dict(task))
                    stage = Path(task["workdir"])
                    fake.uploads.append(sorted(str(p.relative_to(stage)) for p in stage.rglob("*")))

            def __exit__(self, *exc: Any) -> None:
                with fake._lock:
                    fake.in_flight -= 1

        return Request()

    def _new_job(self, cluster: str, task: Mapping[str, Any]) -> int:
        jobs = self.clusters[cluster]["jobs"]
        job_id = len(jobs) + 1
        jobs[job_id] = {"id": job_id, "name": task["name"], "status": "RUNNING", "submitted": time.time(),
                        "start": time.time(), "end": None, "log": ""}
        return job_id

    def _end(self, job: dict[str, Any], status: str, raw: str) -> None:
        job.update(status=status, log=raw, end=time.time())


def _logged(output: str) -> str:
    return "".join(f"\x1b[36m(task, pid=4242)\x1b[0m {line}\n" for line in output.splitlines())


def _first_asked(resources: Mapping[str, Any]) -> dict[str, float]:
    acc = resources.get("accelerators")
    if isinstance(acc, Mapping):
        name, count = next(iter(acc.items()))
        return {name: float(count)}
    if isinstance(acc, list):
        name, _, count = acc[0].partition(":")
        return {name: float(count or 1)}
    return {}
