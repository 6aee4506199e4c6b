"""Durable campaign state: one SQLite file per campaign, the source of truth.

Every state change is one transaction, written *before* the side effect it describes (an
experiment row exists before its job is submitted) or right *after* the fact it records (a
result is committed before MLflow hears of it). ``kill -9`` at any moment therefore loses no
recorded result and duplicates no experiment: a resume reads this file and re-attaches jobs.

Other processes read a campaign's store with ``Store.open_read_only`` (reports, multirun
comparisons, warm starts): never created, claimed or written, and safe while the campaign runs.
"""

from __future__ import annotations

import json
import math
import os
import sqlite3
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hybrid.errors import StoreError
from hybrid.secrets import create_private_file
from hybrid.types import (
    Candidate,
    Edit,
    Experiment,
    ExperimentState,
    FailureKind,
    ProgressPoint,
    Result,
    Variant,
)

SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS experiments (
    id         TEXT PRIMARY KEY,
    seq        INTEGER NOT NULL UNIQUE,
    wave       INTEGER NOT NULL,
    params     TEXT NOT NULL,
    source     TEXT NOT NULL,
    rationale  TEXT NOT NULL DEFAULT '',
    worker     TEXT NOT NULL,
    hardware   TEXT NOT NULL,
    state      INTEGER NOT NULL,
    job_id     TEXT,
    workdir    TEXT NOT NULL DEFAULT '',
    created    REAL NOT NULL,
    started    REAL,
    ended      REAL,
    metrics    TEXT,
    duration_s REAL,
    cost_usd   REAL,
    log_tail   TEXT,
    reason     TEXT,
    failure    TEXT,
    mirrored   INTEGER NOT NULL DEFAULT 0,
    extra      TEXT NOT NULL DEFAULT '{}',
    variant    TEXT
);
CREATE TABLE IF NOT EXISTS variants (
    id         TEXT PRIMARY KEY,
    parent     TEXT,
    edits      TEXT NOT NULL,
    hypothesis TEXT NOT NULL DEFAULT '',
    source     TEXT NOT NULL DEFAULT '',
    status     TEXT NOT NULL,
    reason     TEXT NOT NULL DEFAULT '',
    diff       TEXT NOT NULL DEFAULT '',
    built      TEXT NOT NULL DEFAULT '{}',
    created    REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS progress (
    experiment_id TEXT NOT NULL,
    fraction      REAL NOT NULL,
    point         TEXT NOT NULL,
    ts            REAL NOT NULL,
    PRIMARY KEY (experiment_id, fraction)
);
CREATE TABLE IF NOT EXISTS events (
    ts     REAL NOT NULL,
    kind   TEXT NOT NULL,
    detail TEXT NOT NULL DEFAULT ''
);
"""


def _json_metrics(metrics: Mapping[str, float]) -> str:
    # JSON has no NaN/inf; keep them as strings so a crash's "nan" survives a round trip.
    return json.dumps({k: (v if math.isfinite(v) else str(v)) for k, v in metrics.items()})


def _load_metrics(text: str | None) -> dict[str, float]:
    return {k: float(v) for k, v in json.loads(text or "{}").items()}


def _legacy_failure(state: ExperimentState, reason: str, metrics: Mapping[str, float]) -> FailureKind | None:
    """The failure kind of a result recorded before stores had a ``failure`` column: derived once from
    the reason it was stored with (the only place a reason string is read for its meaning)."""
    if not state.is_finished() or state in (ExperimentState.DONE, ExperimentState.PRUNED):
        return None  # a pruned run is neither a success nor a failure
    if state is ExperimentState.CANCELLED:
        return FailureKind.CANCELLED
    if state is ExperimentState.TIMEOUT:
        return FailureKind.TIMEOUT
    text = reason.lower()
    if "out of memory" in text or metrics.get("oom") == 1:
        return FailureKind.OOM
    if "lost" in text or "never submitted" in text:
        return FailureKind.LOST
    return FailureKind.NO_METRIC if text.startswith("no metric") or " is nan" in text else FailureKind.CRASH


def _read_only_uri(path: Path) -> str:
    """The SQLite URI that opens ``path`` for reading only.

    ``mode=ro`` reads a WAL database through its wal-index, the ``-shm`` file, which exists while any
    connection has the database open: the reader then shares it and sees every commit. Without one,
    ``mode=ro`` creates ``-shm`` and an empty ``-wal`` and leaves them behind, owned by the reader
    (when that is another user, the campaign's next write fails: "attempt to write a readonly
    database"), or fails with that error where the folder is not writable. But without ``-shm``
    nothing has the database open, and without frames in ``-wal`` the main file holds every commit:
    it is then read with ``immutable=1``, which takes no locks and creates no files. A campaign that
    starts meanwhile writes to a new ``-wal``; the main file changes only at its first checkpoint.
    """
    wal, shm = (path.with_name(path.name + suffix) for suffix in ("-wal", "-shm"))
    immutable = _is_wal_database(path) and not shm.exists() and _size(wal) == 0
    return f"{path.resolve().as_uri()}?mode=ro" + ("&immutable=1" if immutable else "")


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def _is_wal_database(path: Path) -> bool:
    """The file's header says WAL mode (file format read/write versions 2)."""
    try:
        with path.open("rb") as f:
            header = f.read(20)
    except OSError:
        return False
    return header[:16] == b"SQLite format 3\x00" and header[18:20] == b"\x02\x02"


@dataclass(frozen=True)
class VariantRecord:
    """A code variant as the store holds it."""

    variant: Variant
    source: str
    status: str  # "ok" | "rejected"
    reason: str  # why it was rejected ("" when ok)
    diff: str  # unified diff against the user's tree when it was checked
    built: dict[str, Any]  # hybrid.variants.Built as JSON (chain, base, files) when ok
    created: float

    @property
    def ok(self) -> bool:
        return self.status == "ok"


class Store:
    """The campaign's SQLite database (``<campaign dir>/state.sqlite``)."""

    def __init__(self, path: Path | str):
        """Open the store for reading and writing, creating it (and its folder) when missing."""
        self._attach(Path(path), read_only=False)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        create_private_file(self.path)  # 0600 before SQLite creates it (its -wal/-shm get the same mode)
        try:
            self._conn = sqlite3.connect(self.path, timeout=30.0, isolation_level=None, check_same_thread=False)
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=FULL")
            # One transaction, the schema version in it: a reader (Store.open_read_only) of a store
            # being created sees no tables or every table, never a part of them.
            self._conn.executescript("BEGIN IMMEDIATE;" + _SCHEMA + "INSERT OR IGNORE INTO meta(key, value) "
                                     f"VALUES ('schema_version', '{SCHEMA_VERSION}');\nCOMMIT;")
            self._migrate()
        except sqlite3.DatabaseError as e:
            raise StoreError(f"{self.path}: not a usable campaign store ({e}); move it away or pick another campaign.name") from None
        version = self.get_meta("schema_version")
        if int(version) != SCHEMA_VERSION:
            raise StoreError(f"{self.path}: store schema {version} is not {SCHEMA_VERSION}; use a new campaign.name")

    @classmethod
    def open_read_only(cls, path: Path | str) -> Store:
        """Open an existing store for reading only (SQLite ``mode=ro``, see ``_read_only_uri``): no
        file or table is created, it is never claimed, and a write raises StoreError. Safe while its
        campaign runs: every read sees what that campaign has committed by then."""
        store = cls.__new__(cls)  # not __init__: that creates the file and the tables
        store._attach(Path(path), read_only=True)
        try:
            store._conn = sqlite3.connect(_read_only_uri(store.path), uri=True, timeout=30.0, isolation_level=None,
                                          check_same_thread=False)
        except sqlite3.Error as e:
            raise StoreError(f"{store.path}: cannot open it read-only ({e})") from None
        try:
            version = store.get_meta("schema_version")
        except sqlite3.Error as e:
            store.close()
            raise StoreError(f"{store.path}: not a readable campaign store ({e})") from None
        if version is not None and int(version) != SCHEMA_VERSION:
            store.close()
            raise StoreError(f"{store.path}: store schema {version} is not {SCHEMA_VERSION} (written by another "
                             "version of hybrid)")
        return store

    def _has_column(self, name: str) -> bool:
        return any(row[1] == name for row in self._read("PRAGMA table_info(experiments)"))

    def _has_failure_column(self) -> bool:
        return self._has_column("failure")

    def _migrate(self) -> None:
        """Stores written before the ``failure`` column get it, filled once from their reasons; before
        code variants, a ``variant`` column (empty: the unchanged code)."""
        if not self._has_column("variant"):
            with self._tx() as c:
                c.execute("ALTER TABLE experiments ADD COLUMN variant TEXT")
        if self._has_failure_column():
            return
        with self._tx() as c:
            c.execute("ALTER TABLE experiments ADD COLUMN failure TEXT")
            for exp_id, state, reason, metrics in c.execute(
                    "SELECT id, state, reason, metrics FROM experiments").fetchall():
                kind = _legacy_failure(ExperimentState(state), reason or "", _load_metrics(metrics))
                if kind is not None:
                    c.execute("UPDATE experiments SET failure = ? WHERE id = ?", (kind.value, exp_id))

    def _attach(self, path: Path, *, read_only: bool) -> None:
        self.path = path
        self.read_only = read_only
        # One connection shared by the loop and the MLflow mirror thread: every use holds the lock.
        self._lock = threading.RLock()

    def _check_writable(self, action: str) -> None:
        if self.read_only:
            raise StoreError(f"{self.path} was opened read-only (Store.open_read_only): it cannot {action}")

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        """One atomic write transaction."""
        self._check_writable("be written")
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            else:
                self._conn.execute("COMMIT")

    def _read(self, query: str, args: tuple = ()) -> list[tuple]:
        with self._lock:
            return self._conn.execute(query, args).fetchall()

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    # ---- campaign metadata -----------------------------------------------------------------
    def get_meta(self, key: str, default: Any = None) -> Any:
        rows = self._read("SELECT value FROM meta WHERE key = ?", (key,))
        return default if not rows else json.loads(rows[0][0])

    def set_meta(self, key: str, value: Any) -> None:
        with self._tx() as c:
            c.execute("INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)", (key, json.dumps(value)))

    def event(self, kind: str, detail: str = "") -> None:
        with self._tx() as c:
            c.execute("INSERT INTO events(ts, kind, detail) VALUES (?, ?, ?)", (time.time(), kind, detail))

    def events(self, kind: str | None = None) -> list[tuple[float, str, str]]:
        q = "SELECT ts, kind, detail FROM events" + (" WHERE kind = ?" if kind else "") + " ORDER BY rowid"
        return self._read(q, (kind,) if kind else ())

    def claim(self, name: str, objective_metric: str) -> bool:
        """Bind this store to a campaign. Returns True when it already held that campaign (resume).

        A store created for another campaign or objective is refused, so two configurations
        never mix their results by accident.
        """
        self._check_writable("be claimed")
        held = self.get_meta("campaign")
        if held is None:
            with self._tx() as c:
                for k, v in (("campaign", name), ("metric", objective_metric), ("created", time.time())):
                    c.execute("INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)", (k, json.dumps(v)))
            return False
        if held != name:
            raise StoreError(f"{self.path} belongs to campaign {held!r}, not {name!r}; set campaign.dir to a new folder")
        metric = self.get_meta("metric")
        if metric != objective_metric:
            raise StoreError(
                f"campaign {name!r} optimized {metric!r}, not {objective_metric!r}; "
                "choose another campaign.name to start a new campaign"
            )
        return True

    # ---- experiments -----------------------------------------------------------------------
    def create(self, candidate: Candidate, worker: str, hardware: str, wave: int, workdir_root: Path) -> Experiment:
        """Create the next experiment (state PENDING) before anything is submitted."""
        now = time.time()
        with self._tx() as c:
            seq = c.execute("SELECT COALESCE(MAX(seq), 0) + 1 FROM experiments").fetchone()[0]
            exp_id = f"e{seq:04d}"
            workdir = str(workdir_root / exp_id)
            c.execute(
                "INSERT INTO experiments(id, seq, wave, params, source, rationale, worker, hardware, state,"
                " workdir, created, variant) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                (exp_id, seq, wave, json.dumps(dict(candidate.params)), candidate.source, candidate.rationale,
                 worker, hardware, int(ExperimentState.PENDING), workdir, now, candidate.variant),
            )
        return Experiment(exp_id, candidate, worker, hardware, wave, ExperimentState.PENDING, None, None, seq, workdir)

    def mark_running(self, exp_id: str, job_id: str, started: float, extra: Mapping[str, Any] | None = None, *,
                     idle_before_s: float | None = None) -> None:
        with self._tx() as c:
            row = c.execute("SELECT extra FROM experiments WHERE id = ?", (exp_id,)).fetchone()
            merged = {**json.loads(row[0] if row else "{}"), **(extra or {})}
            if idle_before_s is not None:
                merged["idle_before_s"] = idle_before_s
            c.execute(
                "UPDATE experiments SET state = ?, job_id = ?, started = ?, extra = ? WHERE id = ?",
                (int(ExperimentState.RUNNING), job_id, started, json.dumps(merged), exp_id),
            )

    def record(self, result: Result, ended: float | None = None, extra: Mapping[str, Any] | None = None, *,
               requeued: bool = False) -> bool:
        """Record a finished experiment. Returns False (and changes nothing) when it was already
        finished: a result is recorded exactly once. ``requeued``: the orchestrator lost it and its
        configuration is run again (it does not count against the budget)."""
        if not result.state.is_finished():
            raise ValueError(f"record() needs a finished state, got {result.state.name}")
        with self._tx() as c:
            row = c.execute("SELECT state, extra FROM experiments WHERE id = ?", (result.experiment_id,)).fetchone()
            if row is None:
                raise StoreError(f"no experiment {result.experiment_id} in {self.path}")
            if ExperimentState(row[0]).is_finished():
                return False
            merged = {**json.loads(row[1] or "{}"), **(extra or {})}
            if requeued:
                merged["requeued"] = True
            c.execute(
                "UPDATE experiments SET state = ?, ended = ?, metrics = ?, duration_s = ?, cost_usd = ?,"
                " log_tail = ?, reason = ?, failure = ?, hardware = ?, extra = ? WHERE id = ?",
                (int(result.state), ended if ended is not None else time.time(), _json_metrics(result.metrics),
                 result.duration_s, result.cost_usd, result.log_tail, result.reason,
                 result.failure.value if result.failure is not None else None, result.hardware,
                 json.dumps(merged), result.experiment_id),
            )
        return True

    def mark_mirrored(self, exp_id: str) -> None:
        with self._tx() as c:
            c.execute("UPDATE experiments SET mirrored = 1 WHERE id = ?", (exp_id,))

    def unmirrored(self) -> list[Experiment]:
        return [e for e in self.experiments() if e.result is not None and not e.mirrored]

    def experiments(self) -> list[Experiment]:
        """Every experiment in creation order, finished ones with their Result."""
        # an old store opened read-only has neither column
        failure_col = "failure" if self._has_failure_column() else "NULL"
        variant_col = "variant" if self._has_column("variant") else "NULL"
        rows = self._read(
            "SELECT id, seq, wave, params, source, rationale, worker, hardware, state, job_id, workdir,"
            f" started, ended, metrics, duration_s, cost_usd, log_tail, reason, {failure_col}, mirrored, extra,"
            f" {variant_col} FROM experiments ORDER BY seq"
        )
        out = []
        for (exp_id, seq, wave, params, source, rationale, worker, hardware, state, job_id, workdir, started,
             ended, metrics, duration_s, cost_usd, log_tail, reason, failure, mirrored, extra, variant) in rows:
            st = ExperimentState(state)
            result = None
            if st.is_finished():
                values = _load_metrics(metrics)
                kind = FailureKind(failure) if failure else _legacy_failure(st, reason or "", values)
                result = Result(exp_id, st, values, hardware, duration_s or 0.0, cost_usd or 0.0,
                                log_tail or "", reason or "", kind)
            extra_d = json.loads(extra or "{}")
            requeued = bool(extra_d.pop("requeued", False))
            idle = extra_d.pop("idle_before_s", None)
            out.append(Experiment(exp_id, Candidate(json.loads(params), source, rationale, variant), worker, hardware, wave,
                                  st, job_id, started, seq, workdir, result, extra_d, ended=ended,
                                  mirrored=bool(mirrored), requeued=requeued, idle_before_s=idle))
        return out

    # ---- learning curves ---------------------------------------------------------------------------
    def record_progress(self, exp_id: str, points: Sequence[ProgressPoint]) -> int:
        """Add an experiment's progress points (the progress contract, hybrid.curves) in one
        transaction; a point already stored at that fraction is kept as it was. Returns how many
        were new."""
        if not points:
            return 0
        now = time.time()
        with self._tx() as c:
            before = c.total_changes
            c.executemany("INSERT OR IGNORE INTO progress(experiment_id, fraction, point, ts) VALUES (?,?,?,?)",
                          [(exp_id, p.fraction, json.dumps(p.values), now) for p in points])
            return c.total_changes - before

    def progress(self, exp_id: str | None = None) -> dict[str, list[ProgressPoint]]:
        """Stored progress points by experiment id, in rising fraction (all experiments, or one)."""
        if not self._read("SELECT name FROM sqlite_master WHERE type = 'table' AND name = 'progress'"):
            return {}  # an old store opened read-only
        q = "SELECT experiment_id, fraction, point FROM progress"
        rows = self._read(q + (" WHERE experiment_id = ?" if exp_id else "") + " ORDER BY experiment_id, fraction",
                          (exp_id,) if exp_id else ())
        out: dict[str, list[ProgressPoint]] = {}
        for eid, fraction, point in rows:
            out.setdefault(eid, []).append(ProgressPoint(float(fraction), json.loads(point)))
        return out

    # ---- code variants ---------------------------------------------------------------------------
    def add_variant(self, variant: Variant, status: str, *, source: str = "", reason: str = "", diff: str = "",
                    built: Mapping[str, Any] | None = None) -> bool:
        """Record a proposed variant once (ids are content hashes): ``status`` "ok" (checked, may run)
        or "rejected" (with its ``reason``; it never runs). ``built``: what it changes (the chain of
        edits, the base and new text of each file), so a resume needs no re-check against a tree the
        user may have changed. Returns False when the id was already recorded (nothing changes)."""
        edits = [[e.file, e.search, e.replace] for e in variant.edits]
        with self._tx() as c:
            cur = c.execute(
                "INSERT OR IGNORE INTO variants(id, parent, edits, hypothesis, source, status, reason, diff, built,"
                " created) VALUES (?,?,?,?,?,?,?,?,?,?)",
                (variant.id, variant.parent, json.dumps(edits), variant.hypothesis, source, status, reason, diff,
                 json.dumps(dict(built or {})), time.time()))
            return cur.rowcount == 1

    def variants(self) -> list[VariantRecord]:
        """Every recorded variant, in the order proposed."""
        if not self._read("SELECT name FROM sqlite_master WHERE type = 'table' AND name = 'variants'"):
            return []  # an old store opened read-only
        rows = self._read("SELECT id, parent, edits, hypothesis, source, status, reason, diff, built, created"
                          " FROM variants ORDER BY created, rowid")
        return [VariantRecord(Variant(vid, parent, tuple(Edit(*e) for e in json.loads(edits)), hypothesis),
                              source, status, reason, diff, json.loads(built or "{}"), created)
                for vid, parent, edits, hypothesis, source, status, reason, diff, built, created in rows]

    def count(self) -> int:
        return int(self._read("SELECT COUNT(*) FROM experiments")[0][0])

    def backup(self, dest: Path | str) -> None:
        """Copy the whole database, as this connection sees it, to a new file ``dest`` (SQLite's
        online backup: consistent even while written, and it works on a store whose file was
        deleted under the open connection). ``dest`` is created readable by the user only."""
        os.close(os.open(dest, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
        target = sqlite3.connect(Path(dest))
        try:
            with self._lock:
                self._conn.backup(target)
        finally:
            target.close()
