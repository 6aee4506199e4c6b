"""A real ``mlflow server`` for tests, and its REST API as the MLflow UI sees it.

The server runs in its own process group on a free loopback port, with an SQLite backend store and
proxied artifacts (``mlflow-artifacts:/``) under a temporary directory; ``serve_mlflow`` stops the
whole group (uvicorn worker included) however the tests end and prints the server's log when they
fail. Campaigns reach it through the CLI in subprocesses (``tracking.uri=http://127.0.0.1:<port>``).
REST calls go through ``requests`` with the environment's proxies ignored: loopback is loopback.
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import requests

# a fresh SQLite store runs MLflow's schema migrations at start: ~15 s, far more on a busy 2-core box
STARTUP_TIMEOUT_S = 180.0
# what the campaigns of these tests look like: fast experiments of the example target
FAST = ["target=example", "surrogate=none", "target.env.EXAMPLE_SECONDS=0.2", "campaign.progress=plain", "campaign.poll_interval_s=0.05"]
# quiet, self-contained servers: no background job runner (seven extra processes) and no telemetry
SERVER_ENV = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", "MLFLOW_DISABLE_TELEMETRY": "true",
              "DO_NOT_TRACK": "true"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _loopback_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {**os.environ, **SERVER_ENV, **(extra or {})}
    no_proxy = ",".join(x for x in (env.get("NO_PROXY") or env.get("no_proxy"), "127.0.0.1", "localhost") if x)
    env["NO_PROXY"] = env["no_proxy"] = no_proxy
    return env


@dataclass
class MLflowServer:
    url: str  # http://127.0.0.1:<port>
    root: Path  # its store, artifacts, log, and the campaigns the tests run against it
    proc: subprocess.Popen
    log: Path
    http: requests.Session = field(default_factory=requests.Session)

    def __post_init__(self) -> None:
        self.http.trust_env = False  # no proxy between us and loopback

    # -- REST ----------------------------------------------------------------------------------
    def get(self, endpoint: str, **params: Any) -> dict[str, Any]:
        """``GET /api/2.0/mlflow/<endpoint>``: the JSON answer (fails the test on an HTTP error)."""
        return self._check(self.http.get(f"{self.url}/api/2.0/mlflow/{endpoint}", params=params, timeout=30))

    def post(self, endpoint: str, body: dict[str, Any]) -> dict[str, Any]:
        return self._check(self.http.post(f"{self.url}/api/2.0/mlflow/{endpoint}", json=body, timeout=30))

    def _check(self, r: requests.Response) -> dict[str, Any]:
        assert r.status_code == 200, f"{r.request.method} {r.url}: HTTP {r.status_code}: {r.text[:500]}"
        return r.json()

    def experiment(self, name: str) -> dict[str, Any]:
        return self.get("experiments/get-by-name", experiment_name=name)["experiment"]

    def search_runs(self, experiment_id: str) -> list[dict[str, Any]]:
        """Every run of the experiment (active and deleted), page by page, as the runs table loads them."""
        runs: list[dict[str, Any]] = []
        token = None
        while True:
            body: dict[str, Any] = {"experiment_ids": [experiment_id], "max_results": 100, "run_view_type": "ALL"}
            if token:
                body["page_token"] = token
            page = self.post("runs/search", body)
            runs += page.get("runs", [])
            token = page.get("next_page_token")
            if not token:
                return runs

    def artifacts(self, run_id: str, path: str = "") -> list[str]:
        """Every artifact file of the run, recursively (``plots/a.png``), via ``artifacts/list``."""
        params = {"run_id": run_id, **({"path": path} if path else {})}
        files: list[str] = []
        for f in self.get("artifacts/list", **params).get("files", []):
            files += self.artifacts(run_id, f["path"]) if f["is_dir"] else [f["path"]]
        return files

    def download(self, run_id: str, path: str) -> bytes:
        """One artifact, through the server's ``/get-artifact`` endpoint (the UI's artifact viewer)."""
        r = self.http.get(f"{self.url}/get-artifact", params={"path": path, "run_uuid": run_id}, timeout=30)
        assert r.status_code == 200, f"get-artifact {path} of {run_id}: HTTP {r.status_code}: {r.text[:300]}"
        return r.content

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    # -- campaigns -----------------------------------------------------------------------------
    def run_campaign(self, name: str, args: Sequence[str] = (), timeout: float = 180) -> subprocess.CompletedProcess:
        """``python -m hybrid ... tracking.uri=<this server>`` in ``root``; the campaign dir is ``root/runs/<name>``."""
        cmd = [sys.executable, "-m", "hybrid", *FAST, *args, f"tracking.uri={self.url}",
               f"campaign.dir={self.root / 'runs' / name}", f"campaign.name={name}"]
        env = _loopback_env()
        env.pop("ANTHROPIC_API_KEY", None)  # proposer=hybrid would call the real API; these tests never do
        p = subprocess.run(cmd, cwd=self.root, env=env, capture_output=True, text=True, timeout=timeout)
        assert p.returncode == 0, f"{' '.join(cmd)}\nexit {p.returncode}\n{p.stdout}\n{p.stderr}"
        return p


@contextmanager
def serve_mlflow(root: Path, timeout_s: float = STARTUP_TIMEOUT_S) -> Iterator[MLflowServer]:
    """Start ``mlflow server`` on a free loopback port and wait for ``/health``; stop it at exit."""
    root.mkdir(parents=True, exist_ok=True)
    port = free_port()
    log = root / "mlflow-server.log"
    cmd = [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
           "--workers", "1", "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
           "--serve-artifacts", "--artifacts-destination", str(root / "mlartifacts")]
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, cwd=root, env=_loopback_env(), stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    server = MLflowServer(f"http://127.0.0.1:{port}", root, proc, log)
    try:
        _wait_healthy(server, timeout_s)
        yield server
    except BaseException:
        print(f"---- mlflow server log ({log}) ----\n{server.log_text()[-20000:]}", file=sys.stderr)
        raise
    finally:
        _stop(proc)
        server.http.close()


def module_server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[MLflowServer]:
    """The body of a module-scoped server fixture: ``yield from module_server(request, tmp_path_factory)``.
    When a test of the module failed, the server's log is printed at teardown, past pytest's capture."""
    failed = request.session.testsfailed
    with serve_mlflow(tmp_path_factory.mktemp("mlflow-server")) as server:
        yield server
        if request.session.testsfailed > failed:
            capture = request.config.pluginmanager.getplugin("capturemanager")
            with capture.global_and_fixture_disabled() if capture else contextlib.nullcontext():
                print(f"\n---- mlflow server log ({server.log}), tail ----\n{server.log_text()[-20000:]}",
                      file=sys.stderr)


def _wait_healthy(server: MLflowServer, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.proc.poll() is not None:
            pytest.fail(f"mlflow server exited with {server.proc.returncode} before answering /health:\n"
                        f"{server.log_text()[-5000:]}")
        try:
            if server.http.get(f"{server.url}/health", timeout=2).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.25)
    pytest.fail(f"mlflow server did not answer {server.url}/health within {timeout_s:.0f} s:\n"
                f"{server.log_text()[-5000:]}")


def _stop(proc: subprocess.Popen) -> None:
    """SIGTERM the server's process group (it has its own session), SIGKILL what is left after 15 s."""
    for sig, wait_s in ((signal.SIGTERM, 15.0), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline and _group_alive(proc.pid):
            proc.poll()
            time.sleep(0.1)
        if not _group_alive(proc.pid):
            break
    proc.wait(timeout=5)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # zombies of our own children count as gone
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                fields = (proc / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[2]) == pgid and fields[0] != "Z":
                return True
    return False


# -- run data as the REST API returns it ---------------------------------------------------------
def tags(run: dict[str, Any]) -> dict[str, str]:
    return {t["key"]: t["value"] for t in run["data"].get("tags", [])}


def params(run: dict[str, Any]) -> dict[str, str]:
    return {p["key"]: p["value"] for p in run["data"].get("params", [])}


def metrics(run: dict[str, Any]) -> dict[str, float]:
    return {m["key"]: m["value"] for m in run["data"].get("metrics", [])}


def parent_and_children(runs: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(runs without ``mlflow.parentRunId``, runs with it), active runs only, children by name."""
    active = [r for r in runs if r["info"]["lifecycle_stage"] == "active"]
    parents = [r for r in active if "mlflow.parentRunId" not in tags(r)]
    children = sorted((r for r in active if "mlflow.parentRunId" in tags(r)), key=lambda r: r["info"]["run_name"])
    return parents, children


def results_tsv(campaign_dir: Path) -> dict[str, dict[str, str]]:
    """The campaign's results.tsv: experiment_id -> row."""
    with open(campaign_dir / "results.tsv", newline="") as f:
        return {row["experiment_id"]: row for row in csv.DictReader(f, delimiter="\t")}


def tsv_params(row: dict[str, str]) -> dict[str, str]:
    """An experiment's params in results.tsv (JSON), stringified as MLflow stores params."""
    return {k: str(v) for k, v in json.loads(row["params"]).items()}
