"""Following running experiments' learning curves on the real local backend: points are stored
while the job runs, all of them once at its end, kept over a resume, and bad lines said once."""

from __future__ import annotations

import textwrap
import threading
import time
from pathlib import Path

import pytest

from backends.local import LocalBackend
from hybrid.campaign import Campaign
from hybrid.errors import StoreError
from hybrid.following import Follower
from hybrid.proposers.sobol import SobolProposer
from hybrid.space import SearchSpace
from hybrid.stopping import Budget
from hybrid.store import Store
from hybrid.targets import TargetSpec
from hybrid.types import Candidate, ExperimentState, ProgressPoint

# prints a point, then waits for the test's go-ahead file before the next ones and its result
CURVE = textwrap.dedent(
    """
    import json, os, sys, time
    x = json.load(open("params.json"))["x"]
    print(f"progress: 0.25 train_loss: {3.0 + x}", flush=True)
    deadline = time.time() + 30
    while not os.path.exists(os.environ["GO"]) and time.time() < deadline:
        time.sleep(0.02)
    print("progress: 0.5 train_loss: 2.5", flush=True)
    print("progress: 0.4 train_loss: 2.4", flush=True)  # out of order: refused
    print("progress: 1.0 train_loss: 2.0")
    print(f"val_bpb: {1.0 + x}")
    """
)
SPACE = SearchSpace.from_config({"x": {"type": "float", "low": 0.0, "high": 1.0, "default": 0.5}})


def seen(db: Path) -> dict:
    try:
        return Store.open_read_only(db).progress() if db.exists() else {}
    except StoreError:
        return {}


def test_points_are_stored_while_the_job_runs_and_all_of_them_at_its_end(tmp_path):
    work = tmp_path / "t"
    work.mkdir()
    (work / "curve.py").write_text(CURVE)
    go = tmp_path / "go"
    target = TargetSpec.from_config({"name": "c", "command": "{python} curve.py", "workdir": str(work),
                                     "env": {"GO": str(go)}, "timeout_s": 60})
    c = Campaign(name="c", dir=tmp_path / "runs/c", space=SPACE, target=target, backend=LocalBackend(workers=1),
                 proposer=SobolProposer(SPACE, target.objective), budget=Budget(max_experiments=1),
                 poll_interval_s=0.02, follow_interval_s=0.05)
    db = tmp_path / "runs/c/state.sqlite"
    during: dict = {}

    def watch():
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not during:
            during.update(seen(db))
            time.sleep(0.02)
        go.write_text("")  # the first point was stored while the job still ran: let it finish

    t = threading.Thread(target=watch)
    t.start()
    c.run()
    t.join()
    assert during == {"e0001": [ProgressPoint(0.25, {"train_loss": 3.5})]}
    store = Store.open_read_only(db)
    (e,) = store.experiments()
    assert e.state is ExperimentState.DONE
    assert store.progress() == {"e0001": [ProgressPoint(0.25, {"train_loss": 3.5}),
                                          ProgressPoint(0.5, {"train_loss": 2.5}),
                                          ProgressPoint(1.0, {"train_loss": 2.0})]}


def test_a_resumed_campaign_keeps_the_curves_and_stores_nothing_twice(tmp_path):
    work = tmp_path / "t"
    work.mkdir()
    (work / "curve.py").write_text(CURVE)
    (tmp_path / "go").write_text("")
    target = TargetSpec.from_config({"name": "c", "command": "{python} curve.py", "workdir": str(work),
                                     "env": {"GO": str(tmp_path / "go")}, "timeout_s": 60})

    def campaign(n: int) -> Campaign:
        return Campaign(name="c", dir=tmp_path / "runs/c", space=SPACE, target=target,
                        backend=LocalBackend(workers=1), proposer=SobolProposer(SPACE, target.objective),
                        budget=Budget(max_experiments=n), poll_interval_s=0.02, follow_interval_s=0.05)

    campaign(2).run()
    again = campaign(3)
    again.run()
    assert [len(again.exps[f"e000{i}"].curve) for i in (1, 2, 3)] == [3, 3, 3]
    assert {k: len(v) for k, v in Store.open_read_only(tmp_path / "runs/c/state.sqlite").progress().items()} == {
        "e0001": 3, "e0002": 3, "e0003": 3}


@pytest.mark.parametrize("prints", ["", "progress: 2.0 loss: 1\nprogress: 0.5 loss: x\n"])
def test_no_progress_and_bad_progress_are_said_once(tmp_path, prints):
    said: list[str] = []
    store = Store(tmp_path / "state.sqlite")
    backend = LocalBackend(workers=1)
    follower = Follower(store, backend, said.append, interval_s=0.0)
    for _ in range(2):
        e = store.create(Candidate({"x": 0.5}, "sobol"), "w00", "cpu", 1, tmp_path / "e")
        (tmp_path / "e" / e.id).mkdir(parents=True)
        follower.finished(e, prints + "val_bpb: 1.0\n", succeeded=True)
    if prints:
        assert said == ["e0001: progress line refused: 'progress: 2.0 loss: 1': the fraction 2.0 is outside [0, 1] "
                        "(and 1 more)", "e0002: progress line refused: 'progress: 2.0 loss: 1': the fraction 2.0 "
                        "is outside [0, 1] (and 1 more)"]
        assert store.progress() == {"e0001": [ProgressPoint(0.5, {})], "e0002": [ProgressPoint(0.5, {})]}
    else:
        assert said == ["e0001 printed no progress lines ('progress: <fraction> <name>: <value>'); pruning does "
                        "not apply to this target"]
