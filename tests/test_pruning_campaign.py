"""Pruning in a real campaign on the real local backend: a hopeless run is stopped, recorded as
pruned with its reason and partial curve, and its worker gets the next experiment at once; the
baseline is never pruned; a prune racing the run's own end records exactly one outcome; a run
killed while it writes its final lines is pruned, not a result; ``kill -9`` of the orchestrator
after a decision keeps the run pruned on resume."""

from __future__ import annotations

import csv
import os
import signal
import statistics
import subprocess
import sys
import textwrap
import time
from collections.abc import Sequence
from pathlib import Path

from backends._runner import EXIT_FILE, STATE_DIR
from backends.base import RunSpec
from backends.local import LocalBackend
from hybrid import targets
from hybrid.campaign import Campaign
from hybrid.errors import StoreError
from hybrid.following import Follower
from hybrid.pruner import EVENT, Decision, Pruner
from hybrid.space import SearchSpace
from hybrid.stopping import Budget
from hybrid.store import Store
from hybrid.targets import TargetSpec
from hybrid.types import PRUNED_BOUND, Candidate, Experiment, ExperimentState, Objective
from surrogate.pruning import Prediction, PruningRule, RunCurve
from tests.test_campaign import ListProposer

ROOT = Path(__file__).resolve().parent.parent
SPACE = SearchSpace.from_config({"x": {"type": "float", "low": 0.0, "high": 1.0, "default": 0.9}})
OBJ = Objective("val_bpb", "minimize")

# 10 progress points, STEP_S apart: train_loss falls towards the final val_bpb = 1 + x (larger x
# starts no better and falls slower: hopeless); SLOW_FINALS: the final lines come slowly
CURVE = textwrap.dedent(
    """
    import json, os, time, zlib
    x = json.load(open("params.json"))["x"]
    final = 1.0 + x
    noise = (zlib.crc32(repr(x).encode()) % 1000) / 1000 * 0.01
    step = float(os.environ.get("STEP_S", "0.12"))
    for i in range(1, 11):
        time.sleep(step)
        f = i / 10
        print(f"progress: {f:.2f} train_loss: {final + (0.6 - 0.2 * x) * (1 - f) + noise:.4f}", flush=True)
    finals = [f"val_bpb: {final:.4f}", "num_steps: 10", "training_seconds: 1.0", "peak_vram_mb: 1.0"]
    for line in finals:
        print(line, flush=True)
        time.sleep(float(os.environ.get("SLOW_FINALS", "0")))
    """
)


class PruneAt(PruningRule):
    """A stand-in for the rule's *decision* (the rule itself is tested in tests/surrogate/
    test_pruning.py): prunes any unprotected run once it reports ``at`` of its budget. These tests
    are about what the campaign does once a decision is made."""

    def __init__(self, at: float) -> None:
        super().__init__()
        object.__setattr__(self, "at", at)

    def verdict(self, run: RunCurve, finished: Sequence[RunCurve], objective: Objective):
        f = max((p.fraction for p in run.points), default=0.0)
        if run.is_protected or f < self.at:  # type: ignore[attr-defined]
            return None
        p = Prediction(f, "train_loss", 9.0, 9.0, 8.0, 1.0, 8, 0.9, False)
        return f"at {f:.0%} of its budget (scripted)", p


def campaign(root: Path, configs: list[dict], n: int, rule: PruningRule | None, workers: int = 2,
             env: dict | None = None, backend: LocalBackend | None = None) -> Campaign:
    work = root / "target"
    work.mkdir(exist_ok=True)
    (work / "curve.py").write_text(CURVE)
    target = TargetSpec.from_config({"name": "p", "command": "{python} curve.py", "workdir": str(work),
                                     "env": env or {}, "timeout_s": 60})
    return Campaign(name="p", dir=root / "runs/p", space=SPACE, target=target,
                    backend=backend or LocalBackend(workers=workers, hourly_usd=3.6),
                    proposer=ListProposer(configs, SPACE), budget=Budget(max_experiments=n), poll_interval_s=0.02,
                    follow_interval_s=0.03, pruning=rule, findings=False)


def tsv(root: Path) -> list[dict]:
    with open(root / "runs/p/results.tsv") as f:
        return list(csv.DictReader(f, delimiter="\t"))


def test_a_hopeless_run_is_pruned_recorded_and_its_worker_reused_at_once(tmp_path):
    # the baseline (x=0.9) is as hopeless as e0006 but protected; e0002-e0004 end before 4 runs have
    # finished (no decision for them), e0005 is the best so far, e0006 is hopeless, e0007-8 good
    configs = [{"x": 0.3}, {"x": 0.5}, {"x": 0.2}, {"x": 0.05}, {"x": 0.95}, {"x": 0.01}, {"x": 0.02}]
    rule = PruningRule(min_finished=4, space=SPACE)
    c = campaign(tmp_path, configs, 8, rule, env={"STEP_S": "0.25"})  # 7 points after the grace to decide in
    c.run()
    exps = c.experiments()
    pruned = [e for e in exps if e.state is ExperimentState.PRUNED]
    assert [e.params["x"] for e in pruned] == [0.95]
    (p,) = pruned
    base = exps[0]
    assert base.source == "baseline" and base.state is ExperimentState.DONE  # never pruned
    assert p.result is not None and p.result.failure is None and p.value("val_bpb") is None
    assert p.result.reason.startswith("pruned at ") and "worse than the best" in p.result.reason
    assert p.result.metrics[PRUNED_BOUND] > min(e.value("val_bpb") or 9 for e in exps)
    curve = Store.open_read_only(c.dir / "state.sqlite").progress()[p.id]
    assert 0.3 <= curve[-1].fraction < 1.0  # its partial curve is kept
    full = statistics.median(e.result.duration_s for e in exps if e.state is ExperimentState.DONE)
    assert p.result.duration_s < 0.8 * full and p.result.cost_usd > 0  # it stopped early; its time is spent
    nxt = min((e for e in exps if e.worker == p.worker and e.seq > p.seq), key=lambda e: e.seq)
    assert nxt.idle_before_s is not None and nxt.idle_before_s < 1.0  # its worker got the next one at once
    assert nxt.started is not None and p.ended is not None and nxt.started - p.ended < 1.0
    row = next(r for r in tsv(tmp_path) if r["experiment_id"] == p.id)
    assert row["status"] == "pruned" and row["description"].startswith("pruned at ")
    assert sum(e.state is ExperimentState.DONE for e in exps) == 7


def test_pruning_none_runs_every_experiment_to_its_end(tmp_path):
    configs = [{"x": 0.1}, {"x": 0.3}, {"x": 0.5}, {"x": 0.2}, {"x": 0.95}]
    c = campaign(tmp_path, configs, 6, None)
    c.run()
    assert [e.state for e in c.experiments()] == [ExperimentState.DONE] * 6


def _job(store: Store, backend: LocalBackend, root: Path, script: str) -> tuple[Experiment, object]:
    exp = store.create(Candidate({"x": 0.9}, "list"), "w00", "cpu", 1, root / "e")
    wd = Path(exp.workdir)
    wd.mkdir(parents=True)
    (wd / "job.py").write_text(textwrap.dedent(script))
    handle = backend.submit(exp, RunSpec(f"{sys.executable} job.py", wd, timeout_s=30))
    store.mark_running(exp.id, handle.job_id, handle.started)
    exp.state = ExperimentState.RUNNING
    return exp, handle


def test_a_prune_racing_the_runs_own_end_records_exactly_one_outcome(tmp_path):
    said: list[str] = []
    store, backend = Store(tmp_path / "state.sqlite"), LocalBackend(workers=1)
    exp, handle = _job(store, backend, tmp_path, "print('progress: 0.5 train_loss: 3.0'); print('val_bpb: 1.9')")
    deadline = time.monotonic() + 30
    while not (handle.workdir / STATE_DIR / EXIT_FILE).exists() and time.monotonic() < deadline:
        time.sleep(0.01)  # the run has ended by itself; nobody has polled it yet
    follower = Follower(store, backend, said.append, interval_s=0.0)
    pruner = Pruner(PruneAt(0.3), store, backend, OBJ, said.append)
    exps = {exp.id: exp}
    decided = pruner.consider(follower.read(backend.running(), exps), exps, backend.running())
    assert [d.exp_id for d in decided] == [exp.id]  # the rule decided: the kill comes too late
    (f,) = backend.wait(10)
    result = pruner.outcome(exp, targets.to_result(f, OBJ, "cpu", 0.0))
    assert result.state is ExperimentState.DONE and result.value("val_bpb") == 1.9
    assert store.record(result) is True
    assert store.record(result) is False  # once only, whatever else arrives
    assert [e.state for e in store.experiments()] == [ExperimentState.DONE]
    assert said[-1] == f"{exp.id} ended by itself (done) before the prune took effect; its own result stands"


def test_a_run_killed_while_it_writes_its_final_lines_is_pruned_not_a_result(tmp_path):
    c = campaign(tmp_path, [{"x": 0.2}], 2, PruneAt(0.4), env={"STEP_S": "0.05", "SLOW_FINALS": "0.4"})
    c.run()
    base, e = c.experiments()
    assert base.state is ExperimentState.DONE and base.result.metrics["peak_vram_mb"] == 1.0
    assert e.state is ExperimentState.PRUNED and e.value("val_bpb") is None
    assert "peak_vram_mb" not in e.result.metrics  # it was killed before its last line
    assert e.result.metrics[PRUNED_BOUND] == 8.0
    row = tsv(tmp_path)[1]
    assert row["status"] == "pruned" and row["val_bpb"] == ""  # not a result, whatever it printed


class SlowCancel(LocalBackend):
    """The real local backend whose cancel takes 3 s to be sent (as ``scancel`` to a busy
    controller may): the orchestrator is killed between storing a decision and the kill."""

    def cancel(self, job_id: str) -> None:
        time.sleep(3.0)
        super().cancel(job_id)


def kill_script(root: str) -> None:  # run by the orchestrator process the test kills
    configs = [{"x": 0.3}, {"x": 0.5}]
    campaign(Path(root), configs, 3, PruneAt(0.3), env={"STEP_S": "0.5"},
             backend=SlowCancel(workers=3, hourly_usd=3.6)).run()


def test_kill_9_after_a_prune_decision_keeps_the_run_pruned_and_reattaches_the_others(tmp_path):
    code = (f"import sys; sys.path.insert(0, {str(ROOT)!r})\n"
            f"from tests.test_pruning_campaign import kill_script; kill_script({str(tmp_path)!r})\n")
    orch = subprocess.Popen([sys.executable, "-c", code], cwd=tmp_path, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    db = tmp_path / "runs/p/state.sqlite"
    deadline, decided = time.monotonic() + 60, []
    while time.monotonic() < deadline and not decided and orch.poll() is None:
        time.sleep(0.02)
        try:
            decided = Store.open_read_only(db).events(EVENT) if db.exists() else []
        except StoreError:
            decided = []
    os.kill(orch.pid, signal.SIGKILL)
    orch.wait()
    assert decided, orch.stderr.read().decode() if orch.stderr else ""
    before = Store.open_read_only(db).experiments()
    assert [e.state for e in before] == [ExperimentState.RUNNING] * 3  # the kill was never sent
    again = campaign(tmp_path, [{"x": 0.3}, {"x": 0.5}], 3, PruneAt(0.3), env={"STEP_S": "0.5"})
    again.run()
    exps = again.experiments()
    assert [e.state for e in exps] == [ExperimentState.DONE, ExperimentState.PRUNED, ExperimentState.PRUNED]
    assert not any(e.requeued for e in exps) and len(exps) == 3  # nothing lost, nothing run twice
    curves = Store.open_read_only(db).progress()
    assert [p.fraction for p in curves["e0001"]] == [i / 10 for i in range(1, 11)]  # re-attached, whole curve


def test_a_pruned_run_whose_job_is_gone_on_resume_is_recorded_pruned_not_lost(tmp_path):
    campaign(tmp_path, [], 1, None).run()  # the baseline
    store = Store(tmp_path / "runs/p/state.sqlite")
    e = store.create(Candidate({"x": 0.95}, "list"), "w00", "cpu", 2, tmp_path / "runs/p/experiments")
    started = time.time() - 30
    store.mark_running(e.id, "999999999@1", started)  # its job is gone: no such process
    decision = Decision(e.id, 0.4, 1.9, "at 40% of its budget (stored before a kill -9)", started + 12)
    store.event(EVENT, decision.to_json())
    store.close()
    again = campaign(tmp_path, [{"x": 0.95}], 2, PruneAt(0.3))
    again.run()
    got = again.experiments()[1]
    assert got.state is ExperimentState.PRUNED and not got.requeued
    assert got.result.reason == "pruned at 40% of its budget (stored before a kill -9)"
    assert got.result.duration_s == 12.0 and got.result.cost_usd == 12.0 / 3600 * 3.6
    assert len(again.experiments()) == 2  # not run again
