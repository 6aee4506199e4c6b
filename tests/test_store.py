from __future__ import annotations

import math
import os
import sqlite3
import subprocess
import sys
from contextlib import closing
from pathlib import Path

import pytest

from hybrid.errors import StoreError
from hybrid.store import Store
from hybrid.types import Candidate, ExperimentState, Result


def _result(exp_id: str, state=ExperimentState.DONE, value=1.0) -> Result:
    return Result(exp_id, state, {"val_bpb": value, "peak_vram_mb": 1000.0}, "cpu", 2.0, 0.01, "tail", "")


def test_create_run_record_roundtrip(tmp_path):
    store = Store(tmp_path / "state.sqlite")
    assert store.claim("c1", "val_bpb") is False
    e1 = store.create(Candidate({"lr": 0.1, "depth": 4}, "baseline", "defaults"), "w00", "cpu", 1, tmp_path / "x")
    e2 = store.create(Candidate({"lr": 0.2, "depth": 6}, "sobol"), "w01", "cpu", 1, tmp_path / "x")
    assert (e1.id, e1.seq, e2.id, e2.seq) == ("e0001", 1, "e0002", 2)
    assert e1.workdir == str(tmp_path / "x" / "e0001")
    store.mark_running(e1.id, "123@456", 10.0, {"idle_before_s": 0.5})
    assert store.record(_result(e1.id), ended=12.0) is True
    store.close()

    again = Store(tmp_path / "state.sqlite")
    assert again.claim("c1", "val_bpb") is True
    exps = again.experiments()
    assert [e.id for e in exps] == ["e0001", "e0002"]
    done, pending = exps
    assert done.state is ExperimentState.DONE and done.job_id == "123@456" and done.started == 10.0
    assert done.value("val_bpb") == 1.0 and done.result.log_tail == "tail"
    assert done.idle_before_s == 0.5 and done.ended == 12.0
    assert done.candidate == Candidate({"lr": 0.1, "depth": 4}, "baseline", "defaults")
    assert pending.state is ExperimentState.PENDING and pending.result is None


def test_a_result_is_recorded_once(tmp_path):
    store = Store(tmp_path / "s.sqlite")
    store.claim("c", "val_bpb")
    e = store.create(Candidate({"x": 1}, "sobol"), "w", "cpu", 1, tmp_path)
    assert store.record(_result(e.id, value=1.0))
    assert not store.record(_result(e.id, value=2.0))  # a late duplicate changes nothing
    assert store.experiments()[0].value("val_bpb") == 1.0


def test_nan_metric_survives_and_is_not_a_value(tmp_path):
    store = Store(tmp_path / "s.sqlite")
    store.claim("c", "val_bpb")
    e = store.create(Candidate({"x": 1}, "sobol"), "w", "cpu", 1, tmp_path)
    store.record(Result(e.id, ExperimentState.CRASHED, {"val_bpb": float("nan")}, "cpu", 1, 0, "", "val_bpb is nan"))
    got = store.experiments()[0]
    assert math.isnan(got.result.metrics["val_bpb"]) and got.value("val_bpb") is None
    assert got.result.reason == "val_bpb is nan"


def test_store_refuses_another_campaign_or_metric(tmp_path):
    store = Store(tmp_path / "s.sqlite")
    store.claim("first", "val_bpb")
    with pytest.raises(StoreError, match="belongs to campaign 'first', not 'second'"):
        store.claim("second", "val_bpb")
    with pytest.raises(StoreError, match="optimized 'val_bpb', not 'loss'"):
        store.claim("first", "loss")


def test_corrupt_store_is_a_clear_error(tmp_path):
    path = tmp_path / "state.sqlite"
    path.write_bytes(b"this is not a database" * 100)
    with pytest.raises(StoreError, match="not a usable campaign store"):
        Store(path)


def test_mirrored_flag_and_events(tmp_path):
    store = Store(tmp_path / "s.sqlite")
    store.claim("c", "val_bpb")
    e = store.create(Candidate({"x": 1}, "sobol"), "w", "cpu", 1, tmp_path)
    store.record(_result(e.id))
    assert [x.id for x in store.unmirrored()] == [e.id]
    store.mark_mirrored(e.id)
    assert store.unmirrored() == []
    store.event("stop", "budget")
    assert store.events("stop")[0][1:] == ("stop", "budget")


def test_writes_are_visible_to_other_connections_at_once(tmp_path):
    store = Store(tmp_path / "s.sqlite")
    store.claim("c", "val_bpb")
    e = store.create(Candidate({"x": 1}, "sobol"), "w", "cpu", 1, tmp_path)
    other = sqlite3.connect(tmp_path / "s.sqlite")
    assert other.execute("SELECT id, state FROM experiments").fetchall() == [(e.id, 0)]


# ---- Store.open_read_only: reports, comparisons and warm starts read other campaigns' stores ----------
ROOT = Path(__file__).resolve().parent.parent
ODD = "a'; echo foo ?#%20"  # a folder name that breaks naive quoting of the SQLite URI


def _finished_store(folder) -> tuple:
    store = Store(folder / "state.sqlite")
    store.claim("done", "val_bpb")
    e = store.create(Candidate({"x": 1}, "sobol"), "w", "cpu", 1, folder)
    store.record(_result(e.id, value=0.5), ended=3.0)
    store.close()  # the last connection: SQLite checkpoints and deletes -wal and -shm
    return folder / "state.sqlite", e.id


def _snapshot(folder) -> dict:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_read_only_store_reads_a_finished_campaign_and_changes_nothing(tmp_path):
    folder = tmp_path / ODD
    folder.mkdir()
    path, exp_id = _finished_store(folder)
    before = _snapshot(folder)
    assert list(before) == ["state.sqlite"]
    store = Store.open_read_only(path)
    assert store.get_meta("campaign") == "done"
    assert [(e.id, e.value("val_bpb")) for e in store.experiments()] == [(exp_id, 0.5)]
    for write in (lambda: store.set_meta("status", "x"), lambda: store.event("stop"),
                  lambda: store.claim("done", "val_bpb"), lambda: store.mark_mirrored(exp_id),
                  lambda: store.create(Candidate({"x": 2}, "sobol"), "w", "cpu", 1, folder)):
        with pytest.raises(StoreError, match="opened read-only"):
            write()
    store.close()
    # no -wal/-shm left behind: left by a reader, they are the reader's files, and when the reader is
    # another user the campaign's next write would fail
    assert _snapshot(folder) == before


def test_read_only_store_sees_what_a_running_campaign_commits(tmp_path):
    writer = Store(tmp_path / "state.sqlite")
    writer.claim("running", "val_bpb")
    first = writer.create(Candidate({"x": 1}, "sobol"), "w", "cpu", 1, tmp_path)
    reader = Store.open_read_only(tmp_path / "state.sqlite")
    assert [e.id for e in reader.experiments()] == [first.id]
    writer.record(_result(first.id, value=0.7))
    second = writer.create(Candidate({"x": 2}, "sobol"), "w", "cpu", 1, tmp_path)
    exps = reader.experiments()
    assert [e.id for e in exps] == [first.id, second.id] and exps[0].value("val_bpb") == 0.7
    reader.close()
    writer.set_meta("status", "finished")  # the campaign goes on writing after the reader left
    assert writer.get_meta("status") == "finished"
    writer.close()


KILLED_WRITER = """
import os, sys
from hybrid.store import Store
from hybrid.types import Candidate
store = Store(sys.argv[1])
store.claim("killed", "val_bpb")
for i in range(3):
    store.create(Candidate({"x": i}, "sobol"), "w", "cpu", 1, store.path.parent)
os._exit(0)  # killed: its commits are in the -wal only, next to its -shm
"""


@pytest.mark.parametrize("shm", ["kept", "deleted"])
def test_read_only_store_reads_the_wal_of_a_killed_campaign(tmp_path, shm):
    path = tmp_path / "state.sqlite"
    subprocess.run([sys.executable, "-c", KILLED_WRITER, str(path)], cwd=ROOT, check=True, timeout=60)
    assert Path(f"{path}-wal").stat().st_size > 0
    if shm == "deleted":  # the -wal still holds frames: reading the main file alone would lose them
        Path(f"{path}-shm").unlink()
    store = Store.open_read_only(path)
    assert [e.id for e in store.experiments()] == ["e0001", "e0002", "e0003"]
    store.close()


def test_read_only_store_in_a_read_only_folder(tmp_path):
    """Without -shm, plain ``mode=ro`` must create it, and fails where the folder is not writable
    ("attempt to write a readonly database"): an archived campaign, another user's."""
    folder = tmp_path / "archived"
    folder.mkdir()
    path, exp_id = _finished_store(folder)
    folder.chmod(0o555)
    try:
        if os.access(folder, os.W_OK):
            pytest.skip("the folder stays writable for this user (root)")
        store = Store.open_read_only(path)
        assert [e.id for e in store.experiments()] == [exp_id]
        store.close()
    finally:
        folder.chmod(0o755)


def test_read_only_store_refuses_what_is_not_a_campaign_store(tmp_path):
    with pytest.raises(StoreError, match="cannot open it read-only"):
        Store.open_read_only(tmp_path / "missing" / "state.sqlite")
    assert not (tmp_path / "missing").exists()  # nothing created
    (tmp_path / "garbage.sqlite").write_bytes(b"this is not a database" * 100)
    with pytest.raises(StoreError, match=r"not a readable campaign store \(file is not a database\)"):
        Store.open_read_only(tmp_path / "garbage.sqlite")
    Store(tmp_path / "future.sqlite").close()
    with closing(sqlite3.connect(tmp_path / "future.sqlite")) as conn, conn:  # a store of a later version
        conn.execute("UPDATE meta SET value = '2' WHERE key = 'schema_version'")
    with pytest.raises(StoreError, match="store schema 2 is not 1"):
        Store.open_read_only(tmp_path / "future.sqlite")


def test_a_store_being_created_shows_a_reader_no_tables_or_all_of_them(tmp_path, monkeypatch):
    """A report or a test that opens the store while its campaign creates it never finds a part of the
    schema (CI once read 'meta' before 'events' existed: "no such table: events")."""
    path = tmp_path / "state.sqlite"
    seen: list[tuple[str, ...]] = []

    def look(_statement: str) -> None:  # before each statement the creating connection runs
        if not path.exists() or path.stat().st_size == 0:
            return
        with closing(connect(f"{path.as_uri()}?mode=ro", uri=True)) as reader:
            tables = tuple(sorted(r[0] for r in reader.execute("SELECT name FROM sqlite_master WHERE type = 'table'")))
            if "meta" in tables:
                tables += tuple(r[0] for r in reader.execute("SELECT key FROM meta"))
        seen.append(tables)

    connect = sqlite3.connect

    def traced(*args, **kwargs):
        conn = connect(*args, **kwargs)
        conn.set_trace_callback(look)
        return conn

    monkeypatch.setattr(sqlite3, "connect", traced)
    Store(path).close()
    monkeypatch.undo()
    whole = ("events", "experiments", "meta", "progress", "variants", "schema_version")
    assert whole in seen  # the reader looked while the store was open
    assert set(seen) <= {(), whole}, sorted(set(seen))
