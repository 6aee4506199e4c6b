"""The progress contract's reader (hybrid/curves.py): what a pruning rule may trust of a target's
progress lines, read incrementally from a growing log, and every refusal said with a reason."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from hybrid.curves import ProgressPoint, ProgressReader
from hybrid.targets import parse_metrics


def test_points_are_read_across_chunks_that_end_mid_line():
    r = ProgressReader()
    assert r.feed("step 1 | loss 3.4\nprogress: 0.25 train_loss: 3.2104 val: 3.5\nprogress: 0.5") == [
        ProgressPoint(0.25, {"train_loss": 3.2104, "val": 3.5})]
    assert r.feed("0 train_loss: 3.0\n") == [ProgressPoint(0.5, {"train_loss": 3.0})]
    assert r.feed("progress: 1 train_loss: 2.9") == []
    assert r.flush() == [ProgressPoint(1.0, {"train_loss": 2.9})] and r.rejected == []
    assert r.last_fraction == 1.0


def test_bad_lines_are_refused_with_a_reason_and_the_curve_goes_on():
    r = ProgressReader()
    got = r.feed("\n".join([
        "progress: 0.2 train_loss: 3.1",
        "progress: abc train_loss: 3.0",   # malformed fraction
        "progress: 1.5 train_loss: 3.0",   # outside [0, 1]
        "progress: -0.1 train_loss: 3.0",
        "progress: nan train_loss: 3.0",
        "progress: 0.1 train_loss: 3.0",   # out of order
        "progress: 0.2 train_loss: 3.0",   # not rising
        "progress: 0.3",                   # no values
        "progress: 0.3 train_loss 3.0",    # no colon
        "progress: 0.4 train_loss: nan other: 2.0",  # NaN value left out, the point kept
        "progress: 0.5 train_loss: inf",
        "progress: 0.6 train_loss: fast",
        "",
    ]))
    assert [p.fraction for p in got] == [0.2, 0.4, 0.5, 0.6]
    assert got[1].values == {"other": 2.0} and got[2].values == {} and got[3].values == {}
    reasons = "\n".join(r.rejected)
    for expected in ("'abc' is not a number", "1.5 is outside [0, 1]", "-0.1 is outside", "nan is outside",
                     "fraction 0.1 does not rise (last 0.2)", "fraction 0.2 does not rise",
                     "expected '<name>: <value>' pairs", "train_loss is nan, left out", "train_loss is inf",
                     "'fast' is not a number"):
        assert expected in reasons, expected
    assert len(r.rejected) == 11


def test_a_target_without_progress_lines_gives_no_points_and_no_complaint():
    r = ProgressReader()
    assert r.feed("config: {}\nval_bpb: 1.02\nprogressive: 3\n") == [] and r.flush() == [] and r.rejected == []


def test_progress_lines_are_not_results():
    assert parse_metrics("progress: 0.5 train_loss: 3.0\nval_bpb: 1.01\n") == {"val_bpb": 1.01}


def test_the_gpt_targets_own_progress_lines_read_whole(tmp_path):
    root = Path(__file__).resolve().parent.parent
    p = subprocess.run([sys.executable, "-m", "model.train", "preset=gpt_tiny", "threads=1", "time_budget_s=2",
                        "total_batch_size=2048", "device_batch_size=8", "eval_tokens=2048"],
                       cwd=root, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    r = ProgressReader()
    for i in range(0, len(p.stdout), 37):  # as a growing log is read: arbitrary chunks
        r.feed(p.stdout[i:i + 37])
    r.flush()
    assert len(r.points) >= 2 and r.rejected == []
    assert all("train_loss" in pt.values for pt in r.points) and r.points[-1].fraction <= 1.0


def test_progress_points_are_durable_once_each_and_read_back_in_order(tmp_path):
    import sqlite3

    from hybrid.store import Store
    from hybrid.types import Candidate

    store = Store(tmp_path / "state.sqlite")
    e = store.create(Candidate({"x": 1}, "sobol"), "w0", "cpu", 1, tmp_path)
    pts = [ProgressPoint(0.5, {"train_loss": 3.0}), ProgressPoint(0.25, {"train_loss": 3.5})]
    assert store.record_progress(e.id, pts) == 2
    # re-read after a resume: the same points again add nothing, a new one is added
    assert store.record_progress(e.id, [ProgressPoint(0.5, {"train_loss": 9.9}), ProgressPoint(0.75, {})]) == 1
    store.close()
    ro = Store.open_read_only(tmp_path / "state.sqlite")
    assert ro.progress() == {e.id: [ProgressPoint(0.25, {"train_loss": 3.5}), ProgressPoint(0.5, {"train_loss": 3.0}),
                                    ProgressPoint(0.75, {})]}
    assert ro.progress("e9999") == {}
    ro.close()
    with sqlite3.connect(tmp_path / "state.sqlite") as c:  # a store from before progress points
        c.execute("DROP TABLE progress")
    assert Store.open_read_only(tmp_path / "state.sqlite").progress() == {}


def test_a_pruned_experiment_is_finished_and_not_a_failure():
    from hybrid.types import ExperimentState

    assert ExperimentState.PRUNED.is_finished() and not ExperimentState.PRUNED.is_failure()
    assert ExperimentState.PRUNED.name.lower() == "pruned"  # its results.tsv status
