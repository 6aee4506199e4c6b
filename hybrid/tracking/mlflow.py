"""The MLflow tracker: one parent run per campaign, one child run per experiment, every MLflow call
guarded (a failure warns once per kind and the campaign goes on; after a few in a row it stops trying).

A child run of an experiment that ran a code variant has the tag ``variant`` (its id; no tag for the
unchanged code); at close the campaign's ``variants/<id>.diff`` files go to the parent run under
``variants/``, whatever artifacts the campaign names: every diff the LLM's code ran with is shown.

``mlflow`` is imported inside the methods that need it: importing this module stays cheap.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from hybrid.secrets import create_private_dir, create_private_file, scrub
from hybrid.tracking.base import CampaignInfo, TrackingWarning
from hybrid.tracking.values import (
    BATCH_METRICS,
    BATCH_PARAMS_TAGS,
    MAX_RATIONALE,
    MAX_TAG,
    as_text,
    finite_number,
    flatten,
    safe_key,
    to_params,
    truncate,
)
from hybrid.types import Experiment, ExperimentState, Result

if TYPE_CHECKING:
    from mlflow import MlflowClient

_log = logging.getLogger("hybrid.tracking")  # the logger name of the module before it was split
T = TypeVar("T")

# consecutive failures after which the tracker gives up for the rest of the campaign
_MAX_CONSECUTIVE_FAILURES = 3

_RUN_STATUS = {ExperimentState.DONE: "FINISHED", ExperimentState.CRASHED: "FAILED",
               ExperimentState.TIMEOUT: "FAILED", ExperimentState.CANCELLED: "KILLED",
               ExperimentState.PRUNED: "KILLED"}
CURVE_STEPS = 1000  # a progress point at fraction f is logged at step round(f * CURVE_STEPS)
_CAMPAIGN_STATUS = {"finished": "FINISHED", "interrupted": "KILLED", "failed": "FAILED"}


class MLflowTracker:
    """Mirror into MLflow through one ``MlflowClient`` (no fluent global state: several campaigns
    may run in one process under Hydra multirun).

    ``uri`` None: an SQLite store shared by the campaigns next to each other,
    ``<campaign.dir.parent>/mlflow.db``, artifacts in ``<campaign.dir.parent>/mlartifacts``.
    ``experiment`` None: one MLflow experiment per campaign name.
    """

    def __init__(self, uri: str | None = None, experiment: str | None = None, name: str = "mlflow") -> None:
        self.uri = uri
        self.experiment = experiment
        self.name = name
        self._client: MlflowClient | None = None
        self._client_uri: str | None = None
        self._experiment_id: str | None = None
        self._parent: str | None = None
        self._campaign = ""
        self._campaign_dir: Path | None = None
        self._logged: set[str] = set()  # experiment ids mirrored by this tracker
        self._warned: set[tuple[str, str]] = set()
        self._failures = 0  # consecutive
        self._disabled = False

    # -- the Tracker protocol ------------------------------------------------------------------
    def start(self, campaign: CampaignInfo) -> str | None:
        self._campaign, self._campaign_dir = campaign.name, Path(campaign.dir)
        self._disabled, self._failures, self._parent = False, 0, None
        return self._guarded("start", lambda: self._start(campaign))

    def log(self, exp: Experiment, result: Result) -> bool:
        if self._active() and exp.id not in self._logged:
            self._guarded(f"mirroring experiment {exp.id}", lambda: self._log(exp, result), kind="log")
        return exp.id in self._logged

    def update(self, summary: Mapping[str, Any]) -> None:
        if self._active():
            self._guarded("update", lambda: self._log_summary(summary))

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        if self._active():
            self._guarded("logging proposer metrics", lambda: _log_batch(*self._run(), metrics=metrics, step=step),
                          kind="metrics")

    def close(
        self, status: str, stop_reason: str, summary: Mapping[str, Any], artifacts: Sequence[Path] = ()
    ) -> None:
        if not self._active():
            return
        tags = {"status": status, "stop_reason": stop_reason}
        self._guarded("close", lambda: self._log_summary(summary, extra_tags=tags))
        for path in map(Path, artifacts):
            if self._active():
                self._guarded(f"uploading {path}", partial(self._log_artifact, path), kind="artifact")
        for path in self._variant_diffs(artifacts):
            if self._active():
                self._guarded(f"uploading {path}", partial(self._log_artifact, path, "variants"), kind="artifact")
        if self._active():
            end = _CAMPAIGN_STATUS.get(status, "FINISHED")
            self._guarded("close", lambda: self._run()[0].set_terminated(self._run()[1], end))
        self._parent = None

    def upload_artifacts(self, campaign_dir: Path, run_id: str, files: Sequence[Path]) -> None:
        """Upload files of ``campaign_dir`` to an existing campaign run (``hybrid report``), each
        under its folder relative to the campaign dir (``plots/progress.png`` -> ``plots/``).
        Not guarded: raises on failure, and the caller says what happened."""
        uri, _ = self._store_location(campaign_dir)
        _probe_server(uri)
        client = self._connect(uri)
        root = Path(campaign_dir).resolve()
        for path in map(Path, files):
            folder = path.resolve().parent
            sub = folder.relative_to(root).as_posix() if folder.is_relative_to(root) else "."
            client.log_artifact(run_id, str(path), artifact_path=None if sub == "." else sub)

    # -- MLflow calls --------------------------------------------------------------------------
    def _start(self, campaign: CampaignInfo) -> str:
        uri, artifact_root = self._store_location(campaign.dir)
        _probe_server(uri)  # before importing mlflow (seconds)
        if uri.startswith(("http://", "https://")):  # else every child run prints its URL to stdout
            os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
        from mlflow.exceptions import MlflowException

        client = self._connect(uri)
        tags = {
            "hybrid.campaign": campaign.name,
            "hybrid.campaign_dir": str(campaign.dir),
            "hybrid.objective.metric": campaign.objective.metric,
            "hybrid.objective.direction": campaign.objective.direction,
            "status": "running",
        }
        params = to_params(campaign.config)
        parent = None
        if campaign.parent_run_id:
            try:
                parent = client.get_run(campaign.parent_run_id)
            except MlflowException:
                _log.info("MLflow run %s of campaign %s not found; starting a new one",
                          campaign.parent_run_id, campaign.name)
            if parent is not None and parent.info.lifecycle_stage != "active":
                parent = None
        if parent is None:
            self._experiment_id = self._experiment(client, self.experiment or campaign.name, artifact_root)
            run_id = client.create_run(self._experiment_id, run_name=campaign.name, tags=_system_tags()).info.run_id
        else:  # resume: params are immutable in MLflow, so only add the new ones
            run_id, self._experiment_id = parent.info.run_id, parent.info.experiment_id
            old = parent.data.params
            changed = sorted(k for k, v in params.items() if k in old and old[k] != v)
            params = {k: v for k, v in params.items() if k not in old}
            if changed:
                tags["hybrid.changed_on_resume"] = truncate(", ".join(changed), MAX_TAG)
            client.update_run(run_id, status="RUNNING")
        _log_batch(client, run_id, params=params, tags=tags)
        self._parent = run_id
        return run_id

    def _log(self, exp: Experiment, result: Result) -> None:
        (client, parent), experiment_id = self._run(), str(self._experiment_id)
        if result.state not in _RUN_STATUS:
            raise ValueError(f"result of {exp.id} is {result.state.name}, not a finished state")
        found = client.search_runs(
            [experiment_id],
            filter_string=f"tags.experiment_id = {json.dumps(exp.id)} and tags.`mlflow.parentRunId` = '{parent}'",
        )
        for run in found:
            if run.info.status != "RUNNING":  # mirrored already (e.g. before a resume)
                self._logged.add(exp.id)
                return
            client.delete_run(run.info.run_id)  # a mirror interrupted halfway: redo it whole
        start = exp.started if exp.started is not None else time.time() - result.duration_s
        end = start + max(result.duration_s, 0.0)
        tags = {
            **_system_tags(),
            "mlflow.parentRunId": parent,
            "hybrid.campaign": self._campaign,
            "experiment_id": exp.id,
            "wave": str(exp.wave),
            "hardware": result.hardware or exp.hardware,
            "source": exp.source,
            "status": result.state.name.lower(),
            "worker": exp.worker,
        }
        if exp.variant:  # the code variant it ran (its diff: variants/<id>.diff of the parent run)
            tags["variant"] = exp.variant
        if exp.job_id:
            tags["job_id"] = exp.job_id
        if result.reason and result.state is not ExperimentState.DONE:
            tags["reason"] = scrub(result.reason)
        if exp.candidate.rationale:
            tags["rationale"] = truncate(scrub(exp.candidate.rationale), MAX_RATIONALE)
            tags["mlflow.note.content"] = tags["rationale"]  # the run's description in the UI
        run_id = client.create_run(experiment_id, start_time=_ms(start), tags=tags, run_name=exp.id).info.run_id
        metrics = {k: v for k, v in result.metrics.items() if finite_number(v) is not None}
        metrics.update(duration_s=result.duration_s, cost_usd=result.cost_usd)
        _log_batch(client, run_id, params=to_params(exp.params, by_key=False), metrics=metrics, timestamp=_ms(end))
        for point in exp.curve:  # the learning curve: one step per progress point, so the UI draws it
            values = {k: v for k, v in point.values.items() if finite_number(v) is not None}
            if values:
                _log_batch(client, run_id, metrics=values, step=round(point.fraction * CURVE_STEPS),
                           timestamp=_ms(start + point.fraction * max(result.duration_s, 0.0)))
        if result.log_tail:
            client.log_text(run_id, scrub(result.log_tail), "log_tail.txt")  # scrubbed at the source too
        client.set_terminated(run_id, status=_RUN_STATUS[result.state], end_time=_ms(end))
        self._logged.add(exp.id)

    def _log_summary(self, summary: Mapping[str, Any], extra_tags: Mapping[str, str] | None = None) -> None:
        flat: dict[str, Any] = {}
        flatten(summary, "", flat)
        metrics = {k: v for k, v in flat.items() if finite_number(v) is not None}
        tags = {k: truncate(scrub(as_text(v)), MAX_TAG) for k, v in flat.items()
                if k not in metrics and v is not None}
        tags.update(extra_tags or {})
        step = int(finite_number(summary.get("n_finished")) or 0)
        _log_batch(*self._run(), metrics=metrics, tags=tags, step=step)

    def _variant_diffs(self, artifacts: Sequence[Path]) -> list[Path]:
        """The campaign's ``variants/*.diff`` (its ``.smoke/`` scratch space left out), less any the
        campaign named itself."""
        if self._campaign_dir is None:
            return []
        named = {Path(p).resolve() for p in artifacts}
        folder = self._campaign_dir / "variants"
        if folder.resolve() in named or not folder.is_dir():
            return []
        return [p for p in sorted(folder.glob("*.diff")) if p.is_file() and p.resolve() not in named]

    def _log_artifact(self, path: Path, folder: str | None = None) -> None:
        client, parent = self._run()
        if path.is_dir():
            client.log_artifacts(parent, str(path), artifact_path=path.name)
        elif path.is_file():
            client.log_artifact(parent, str(path), artifact_path=folder)
        else:
            _log.info("artifact %s does not exist; not uploaded to MLflow", path)

    def _store_location(self, campaign_dir: Path) -> tuple[str, str | None]:
        """(tracking URI, artifact root for a new experiment or None to let the server decide).

        A local SQLite store this creates is readable by the user only (it holds the campaigns'
        configs, log tails and rationales): the database file 0600 before MLflow connects (SQLite
        gives its -journal/-wal files the same mode), the artifact folder 0700. Existing ones keep
        the mode their owner gave them."""
        db = self._local_db(campaign_dir)
        if db is None:
            return str(self.uri), None
        db.parent.mkdir(parents=True, exist_ok=True)
        create_private_file(db)
        create_private_dir(db.parent / "mlartifacts")
        return (f"sqlite:///{db}" if self.uri is None else self.uri), (db.parent / "mlartifacts").as_uri()

    def _local_db(self, campaign_dir: Path) -> Path | None:
        """The SQLite file of a local store (artifacts go next to it, not to ./mlruns of the cwd)."""
        if self.uri is None:
            return Path(campaign_dir).resolve().parent / "mlflow.db"
        if self.uri.startswith("sqlite:///") and (path := self.uri.removeprefix("sqlite:///").split("?")[0]) not in (
                "", ":memory:"):
            return Path(path).resolve()
        return None

    def local_paths(self, campaign_dir: Path) -> list[Path]:
        """The local store's files: never copied into an experiment's snapshot (with campaign.dir
        inside target.workdir the default store lands in the workdir)."""
        db = self._local_db(campaign_dir)
        if db is None:
            if self.uri and self.uri.startswith("file://"):
                return [Path(self.uri.removeprefix("file://")).resolve()]
            return []
        return [db, *(db.with_name(db.name + s) for s in ("-journal", "-wal", "-shm")), db.parent / "mlartifacts"]

    def _connect(self, uri: str) -> MlflowClient:
        if self._client is None or self._client_uri != uri:
            from mlflow import MlflowClient

            # a new SQLite store takes seconds to create its tables, and says so at INFO: keep quiet
            chatty = logging.getLogger("mlflow.store.db.utils")
            level = chatty.level
            chatty.setLevel(logging.WARNING)
            try:
                self._client, self._client_uri = MlflowClient(tracking_uri=uri), uri
            finally:
                chatty.setLevel(level)
        return self._client

    @staticmethod
    def _experiment(client: MlflowClient, name: str, artifact_root: str | None) -> str:
        """Get or create the MLflow experiment; a deleted one is restored (its name stays taken)."""
        from mlflow.exceptions import MlflowException

        exp = client.get_experiment_by_name(name)
        if exp is None:
            try:
                return client.create_experiment(name, artifact_location=artifact_root)
            except MlflowException:  # created meanwhile by another campaign of a multirun
                exp = client.get_experiment_by_name(name)
                if exp is None:
                    raise
        if exp.lifecycle_stage != "active":
            client.restore_experiment(exp.experiment_id)
        return exp.experiment_id

    # -- failure handling ----------------------------------------------------------------------
    def _active(self) -> bool:
        return not self._disabled and self._parent is not None

    def _run(self) -> tuple[MlflowClient, str]:
        assert self._client is not None and self._parent is not None, "MLflowTracker.start() was not called"
        return self._client, self._parent

    def _guarded(self, what: str, call: Callable[[], T], kind: str | None = None) -> T | None:
        """Run one MLflow step; on failure warn once per kind of failure and carry on."""
        try:
            out = call()
        except Exception as exc:
            self._failures += 1
            key = (kind or what, type(exc).__name__)
            first_line = (str(exc).strip().splitlines() or [""])[0][:300]
            where = self._client_uri or self.uri or "the default SQLite store"
            if key not in self._warned:
                self._warned.add(key)
                self._warn(
                    f"MLflow {what} failed for campaign {self._campaign!r} "
                    f"({type(exc).__name__}: {first_line}). The campaign continues and its store keeps "
                    f"every result{'; nothing is mirrored to MLflow' if what == 'start' else ''}. "
                    f"Check tracking.uri ({where}), or turn mirroring off with tracking=none."
                )
            if what == "start":  # nothing to mirror into
                self._disabled = True
            elif self._failures >= _MAX_CONSECUTIVE_FAILURES:
                self._disabled = True
                self._warn(
                    f"MLflow mirroring is off for the rest of campaign {self._campaign!r} after "
                    f"{self._failures} failures in a row (the campaign's store still records every result)."
                )
            return None
        self._failures = 0
        return out

    @staticmethod
    def _warn(message: str) -> None:
        warnings.warn(message, TrackingWarning, stacklevel=4)


# -- helpers -----------------------------------------------------------------------------------
def _system_tags() -> dict[str, str]:
    """The tags MLflow's UI shows as a run's User and Source (the client API sets none itself)."""
    import getpass

    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no passwd entry (some containers)
        user = "unknown"
    return {"mlflow.user": user, "mlflow.source.name": "hybrid", "mlflow.source.type": "LOCAL"}


def _probe_server(uri: str, timeout_s: float = 5.0) -> None:
    """Fail fast when an http(s) tracking server is not even listening: MLflow's own retries
    (MLFLOW_HTTP_REQUEST_MAX_RETRIES, default 7 with exponential backoff) take minutes."""
    import urllib.parse
    import urllib.request

    parts = urllib.parse.urlsplit(uri)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return
    if parts.scheme in urllib.request.getproxies() and not urllib.request.proxy_bypass(parts.hostname):
        return  # reached through a proxy: a direct connection proves nothing
    port = parts.port or (443 if parts.scheme == "https" else 80)
    with socket.create_connection((parts.hostname, port), timeout=timeout_s):
        pass


def _ms(seconds: float) -> int:
    return int(seconds * 1000)


def _log_batch(
    client: MlflowClient,
    run_id: str,
    params: Mapping[str, str] | None = None,
    metrics: Mapping[str, Any] | None = None,
    tags: Mapping[str, str] | None = None,
    step: int = 0,
    timestamp: int | None = None,
) -> None:
    """One ``log_batch`` request (more only past MLflow's per-request limits); non-finite metrics dropped."""
    from mlflow.entities import Metric, Param, RunTag

    now = timestamp if timestamp is not None else _ms(time.time())
    p = [Param(k, v) for k, v in (params or {}).items()]
    t = [RunTag(k if k.startswith("mlflow.") else safe_key(k), truncate(str(v), MAX_TAG))
         for k, v in (tags or {}).items()]
    m = [Metric(safe_key(k), x, now, step) for k, v in (metrics or {}).items() if (x := finite_number(v)) is not None]
    n, k = BATCH_PARAMS_TAGS, BATCH_METRICS
    for i in range(max(-(-len(p) // n), -(-len(t) // n), -(-len(m) // k))):
        client.log_batch(run_id, metrics=m[i * k : (i + 1) * k], params=p[i * n : (i + 1) * n],
                         tags=t[i * n : (i + 1) * n])
