"""What a resume resumes, and what happens to the store file: a hostile user's cases (issue 13).

A campaign re-run under its name with another identity is refused; harmless changes are allowed
and recorded; a store deleted under a running campaign stops it with everything saved; a campaign
dir holding results without its store is never started over; Ctrl-C re-queues what it cancelled;
a campaign dir inside the target's workdir is never copied into the snapshots.
"""

from __future__ import annotations

import _thread
import csv
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from backends.local import LocalBackend
from hybrid import history
from hybrid.campaign import Campaign
from hybrid.errors import ConfigError, StoreError
from hybrid.proposers.sobol import SobolProposer
from hybrid.space import SearchSpace
from hybrid.stopping import Budget
from hybrid.store import Store
from hybrid.targets import TargetSpec
from hybrid.types import ExperimentState

# Sleeps HOLD seconds (an env var: not part of the campaign's identity), then reports x.
TARGET = textwrap.dedent(
    """
    import json, os, time
    p = json.load(open("params.json"))
    time.sleep(float(os.environ.get("HOLD", "0")))
    print(f"val_bpb: {p['x']}")
    """
)

SPACE = {"x": {"type": "float", "low": 0.0, "high": 10.0, "default": 5.0}}


@pytest.fixture
def target_dir(tmp_path: Path) -> Path:
    d = tmp_path / "target"
    d.mkdir()
    (d / "t.py").write_text(TARGET)
    return d


def make(tmp_path: Path, target_dir: Path, *, space=SPACE, direction="minimize", command="{python} t.py",
         max_experiments=3, hold=0.0, workers=1, dir: Path | None = None, config=None) -> Campaign:
    target = TargetSpec.from_config({"name": "t", "command": command, "workdir": str(target_dir),
                                     "metric": "val_bpb", "direction": direction, "timeout_s": 60,
                                     "env": {"HOLD": str(hold)}})
    s = SearchSpace.from_config(space)
    return Campaign(name="c", dir=dir or tmp_path / "runs" / "c", space=s, target=target,
                    backend=LocalBackend(workers=workers, hourly_usd=1.0),
                    proposer=SobolProposer(s, target.objective, seed=0),
                    budget=Budget(max_experiments=max_experiments), poll_interval_s=0.02,
                    config=config or {"budget": {"max_experiments": max_experiments}})


def seen(db: Path) -> list:
    """The store's experiments as another process sees them ([] before the campaign created it)."""
    try:
        return Store.open_read_only(db).experiments() if db.exists() else []
    except (StoreError, sqlite3.Error):  # created a moment ago, tables not yet written
        return []


def rows(campaign_dir: Path) -> list[dict]:
    with open(campaign_dir / "results.tsv") as f:
        return list(csv.DictReader(f, delimiter="\t"))


# ---- identity --------------------------------------------------------------------------------------
@pytest.mark.parametrize(("change", "field"), [
    ({"direction": "maximize"}, "target.direction: 'minimize' -> 'maximize'"),
    ({"space": {"x": {"type": "float", "low": 0.0, "high": 20.0, "default": 5.0}}}, "space.params.x"),
    ({"space": {**SPACE, "y": {"type": "int", "low": 1, "high": 4, "default": 2}}}, "space.params.y: (none) ->"),
    ({"command": "{python} t.py --other"}, "target.command"),
])
def test_resume_with_another_identity_is_refused_and_changes_nothing(tmp_path, target_dir, change, field):
    make(tmp_path, target_dir).run()
    before = (tmp_path / "runs/c/results.tsv").read_text()
    with pytest.raises(ConfigError) as err:
        make(tmp_path, target_dir, max_experiments=5, **change).run()
    msg = str(err.value)
    assert msg.startswith("campaign.name: campaign 'c'") and field in msg
    assert "another campaign.name" in msg and "campaign.warm_start=[c]" in msg
    assert (tmp_path / "runs/c/results.tsv").read_text() == before
    store = Store.open_read_only(tmp_path / "runs/c/state.sqlite")
    assert store.count() == 3 and not store.events("resume")


def test_another_workdir_is_another_campaign(tmp_path, target_dir):
    make(tmp_path, target_dir).run()
    other = tmp_path / "elsewhere"
    other.mkdir()
    (other / "t.py").write_text(TARGET)
    with pytest.raises(ConfigError, match=r"target\.workdir"):
        make(tmp_path, other).run()


def test_harmless_changes_resume_and_are_recorded(tmp_path, target_dir):
    make(tmp_path, target_dir, max_experiments=2).run()
    summary = make(tmp_path, target_dir, max_experiments=4, hold=0.01, workers=2).run()
    assert summary.n_experiments == 4
    store = Store.open_read_only(tmp_path / "runs/c/state.sqlite")
    changes = [d for _, _, d in store.events("config_changed")]
    assert changes == ["budget.max_experiments: 2 -> 4"]
    assert [e.id for e in store.experiments()] == ["e0001", "e0002", "e0003", "e0004"]


def test_cli_refuses_a_flipped_direction_in_one_line(tmp_path):
    args = [sys.executable, "-m", "hybrid", "target=example", "tracking=none", "proposer=sobol",
            "surrogate=none", "budget.max_experiments=2", "backend.workers=2", "campaign.name=flip",
            f"campaign.dir={tmp_path / 'flip'}", "target.env.EXAMPLE_SECONDS=0", "campaign.findings=false",
            "campaign.progress=none"]
    first = subprocess.run(args, capture_output=True, text=True, timeout=180)
    assert first.returncode == 0, first.stderr
    flipped = subprocess.run([*args, "target.direction=maximize"], capture_output=True, text=True, timeout=180)
    assert flipped.returncode == 2
    lines = flipped.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ConfigError: campaign.name:"), flipped.stderr
    assert "target.direction: 'minimize' -> 'maximize'" in lines[0]


# ---- the store file --------------------------------------------------------------------------------
def test_a_store_deleted_mid_campaign_stops_it_with_everything_saved(tmp_path, target_dir):
    c = make(tmp_path, target_dir, max_experiments=40, hold=0.05)
    db = tmp_path / "runs/c/state.sqlite"

    def delete_after_some_results():
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if sum(1 for e in seen(db) if e.result) >= 3:
                for suffix in ("", "-wal", "-shm"):
                    db.with_name(db.name + suffix).unlink(missing_ok=True)
                return
            time.sleep(0.02)

    deleter = threading.Thread(target=delete_after_some_results)
    deleter.start()
    with pytest.raises(StoreError) as err:
        c.run()
    deleter.join()
    msg = str(err.value)
    assert "was deleted while the campaign ran" in msg and "re-run the same command to resume" in msg
    (copy,) = (tmp_path / "runs/c").glob("state.recovered-*.sqlite")
    assert str(copy) in msg and copy.stat().st_mode & 0o077 == 0
    saved = Store.open_read_only(copy).experiments()
    assert sum(1 for e in saved if e.result) >= 3 and len(saved) < 40
    # The way out works: the copy put back resumes the campaign with nothing lost or duplicated.
    for e in saved:  # jobs left running when it stopped end on their own (re-attached on resume)
        assert e.state in (ExperimentState.DONE, ExperimentState.RUNNING, ExperimentState.PENDING)
    copy.rename(db)
    summary = make(tmp_path, target_dir, max_experiments=len(saved) + 1, hold=0.05).run()
    final = Store.open_read_only(db).experiments()
    assert [e.id for e in final[:len(saved)]] == [e.id for e in saved]
    assert len(final) == len(saved) + 1 == len(history.counted(final)) == summary.n_experiments


def test_a_campaign_dir_with_results_but_no_store_is_not_started_over(tmp_path, target_dir):
    make(tmp_path, target_dir, max_experiments=3).run()
    d = tmp_path / "runs/c"
    before = (d / "results.tsv").read_text()
    for name in ("state.sqlite", "state.sqlite-wal", "state.sqlite-shm"):
        (d / name).unlink(missing_ok=True)
    with pytest.raises(ConfigError) as err:
        make(tmp_path, target_dir, max_experiments=3).run()
    assert str(err.value).startswith("campaign.name: ")
    assert "results.tsv" in str(err.value) and "no state.sqlite" in str(err.value)
    assert "pick another campaign.name" in str(err.value)
    assert (d / "results.tsv").read_text() == before and not (d / "state.sqlite").exists()


def test_the_campaign_dir_is_the_users_only(tmp_path, target_dir):
    make(tmp_path, target_dir, max_experiments=1).run()
    assert (tmp_path / "runs/c").stat().st_mode & 0o777 == 0o700


# ---- Ctrl-C ----------------------------------------------------------------------------------------
@pytest.fixture
def ctrl_c_handled():
    """Python's own SIGINT handler, as a terminal's Ctrl-C finds it: a shell that starts pytest in
    the background (``nohup .ci/run &``) leaves SIGINT ignored, and ``_thread.interrupt_main`` then
    does nothing (the campaign waited for its 30 s job and the test failed)."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


def test_ctrl_c_during_the_baseline_requeues_it_outside_the_budget(tmp_path, target_dir, ctrl_c_handled):
    c = make(tmp_path, target_dir, max_experiments=3, hold=30)
    db = tmp_path / "runs/c/state.sqlite"

    def interrupt_when_running():
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if any(e.state is ExperimentState.RUNNING for e in seen(db)):
                _thread.interrupt_main()  # Ctrl-C, as the terminal delivers it to the main thread
                return
            time.sleep(0.02)

    t = threading.Thread(target=interrupt_when_running)
    t.start()
    started = time.monotonic()
    interrupted = c.run()
    t.join()
    assert time.monotonic() - started < 25  # cancelled, not waited for
    assert interrupted.stop_reason.startswith("interrupted: 1 running experiments cancelled")
    (base,) = Store.open_read_only(db).experiments()
    assert base.source == "baseline" and base.state is ExperimentState.CANCELLED and base.requeued

    summary = make(tmp_path, target_dir, max_experiments=3, hold=0).run()
    exps = Store.open_read_only(db).experiments()
    assert [e.source for e in exps][:2] == ["baseline", "baseline"]
    assert exps[1].state is ExperimentState.DONE and exps[1].params == base.params
    assert len(exps) == 4 and len(history.counted(exps)) == 3  # the cancelled one is not counted
    assert history.baseline(exps) is exps[1] and summary.baseline_value == 5.0
    assert [r["status"] for r in rows(tmp_path / "runs/c")].count("cancelled") == 1


# ---- snapshots ---------------------------------------------------------------------------------------
def test_a_campaign_dir_inside_the_workdir_is_never_copied(tmp_path, target_dir):
    out = target_dir / "out"
    (target_dir / "data.txt").write_text("kept")
    make(tmp_path, target_dir, max_experiments=4, dir=out).run()
    for i in range(1, 5):
        snap = out / "experiments" / f"e{i:04d}"
        assert (snap / "data.txt").read_text() == "kept"
        assert not (snap / "out").exists(), f"e{i:04d} copied the campaign dir"
    assert os.path.getsize(out / "results.tsv") > 0


def test_the_default_mlflow_store_next_to_a_campaign_dir_in_the_workdir_is_never_copied(tmp_path, target_dir):
    from hybrid.tracking.mlflow import MLflowTracker

    out = target_dir / "out"
    c = make(tmp_path, target_dir, max_experiments=3, dir=out)
    c.tracker = MLflowTracker()  # its default store: <campaign.dir>/../mlflow.db = the workdir's root
    c.run()
    assert (target_dir / "mlflow.db").exists() and (target_dir / "mlartifacts").is_dir()
    for i in (2, 3):  # experiments started after the store existed
        snap = out / "experiments" / f"e{i:04d}"
        assert (snap / "t.py").exists()
        assert not (snap / "mlflow.db").exists() and not (snap / "mlartifacts").exists()
