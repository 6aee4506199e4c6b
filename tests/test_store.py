from __future__ import annotations

import math
import sqlite3

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
    assert done.extra["idle_before_s"] == 0.5 and done.extra["_ended"] == 12.0
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
