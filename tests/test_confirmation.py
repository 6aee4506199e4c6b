"""Replicates, the confirmation phase and the recommendation, in real local campaigns (issue 16):
the baseline runs twice, the budget's last runs confirm the top configs, summary.txt and
summary.json say the recommendation as mean ± sd (n runs) and the best single run apart; the faults:
a replicate that crashes, confirming runs that fail or land on other hardware, all runs identical,
a budget too small to confirm anything, kill -9 in the middle of the confirmation phase."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from collections.abc import Sequence
from pathlib import Path

import pytest

from backends.local import LocalBackend
from hybrid.campaign import Campaign
from hybrid.proposers.base import Proposer
from hybrid.space import SearchSpace
from hybrid.stopping import Budget
from hybrid.store import Store, StoreError
from hybrid.targets import TargetSpec
from hybrid.types import Candidate, Experiment, ExperimentState, Objective

ROOT = Path(__file__).resolve().parents[1]
# val_bpb = x + a deterministic per-experiment noise of amplitude `amp` (its id hashed); the ids in
# crash_ids.txt (in the target dir, so in every snapshot) crash; `sleep` seconds first.
NOISY = textwrap.dedent(
    """
    import hashlib, json, os, sys, time
    p = json.load(open("params.json"))
    eid = os.environ["HYBRID_EXPERIMENT_ID"]
    time.sleep(float(p["sleep"]))
    if eid in open("crash_ids.txt").read().split():
        print("RuntimeError: CUDA error: an illegal memory access was encountered", flush=True)
        sys.exit(1)
    u = int(hashlib.sha256(eid.encode()).hexdigest(), 16) % 10000 / 10000 - 0.5
    print(f"val_bpb: {p['x'] + p['amp'] * u:.6f}")
    """
)
SPACE = SearchSpace.from_config({
    "x": {"type": "float", "low": 0.0, "high": 10.0, "default": 5.0},
    "amp": {"type": "float", "low": 0.0, "high": 1.0, "default": 0.1},
    "sleep": {"type": "float", "low": 0.0, "high": 5.0, "default": 0.05},
})
MIN = Objective("val_bpb", "minimize")


class ListProposer(Proposer):
    """A fixed list of configurations, in order (a real Proposer, for scripted scenarios)."""

    name = "list"

    def __init__(self, configs: Sequence[dict]) -> None:
        super().__init__(SPACE, MIN)
        self.configs = [SPACE.complete(c) for c in configs]

    def propose(self, history: Sequence[Experiment], n: int) -> list[Candidate]:
        seen = {self.space.key(e.params) for e in history}
        return [Candidate(c, "list") for c in self.configs if self.space.key(c) not in seen][:n]


def campaign(root: Path, configs: Sequence[dict], max_experiments: int | None, *, workers: int | list = 1,
             crash: Sequence[str] = (), replicates: int = 1, confirm_top_k: int = 3, name: str = "c",
             defaults: dict | None = None, **kw) -> Campaign:
    target_dir = root / "target"
    target_dir.mkdir(exist_ok=True)
    (target_dir / "noisy.py").write_text(NOISY)
    (target_dir / "crash_ids.txt").write_text(" ".join(crash) + "\n")
    space = SPACE if defaults is None else SearchSpace.from_config(
        {k: {**v, "default": defaults.get(k, v["default"])} for k, v in {
            "x": {"type": "float", "low": 0.0, "high": 10.0, "default": 5.0},
            "amp": {"type": "float", "low": 0.0, "high": 1.0, "default": 0.1},
            "sleep": {"type": "float", "low": 0.0, "high": 5.0, "default": 0.05}}.items()})
    target = TargetSpec.from_config({"name": "noisy", "command": "{python} noisy.py", "workdir": str(target_dir),
                                     "metric": "val_bpb", "timeout_s": 60})
    return Campaign(name=name, dir=root / "runs" / name, space=space, target=target,
                    backend=kw.pop("backend", None) or LocalBackend(workers=workers, hourly_usd=3.6),
                    proposer=ListProposer(configs), budget=Budget(max_experiments=max_experiments),
                    poll_interval_s=0.02, replicates=replicates, confirm_top_k=confirm_top_k, **kw)


def sources(c: Campaign) -> list[tuple[str, str, float | None]]:
    return [(e.source, f"x={e.params['x']:g}", e.value("val_bpb")) for e in c.experiments()]


def summary_json(c: Campaign) -> dict:
    return json.loads((c.dir / "summary.json").read_text())


CONFIGS = [{"x": 3.0}, {"x": 1.0}, {"x": 2.0}, {"x": 4.0}, {"x": 1.01}, {"x": 2.5}]  # x=1 and 1.01: within noise


def test_the_baseline_runs_twice_and_the_budgets_last_runs_confirm_the_top_configs(tmp_path: Path) -> None:
    c = campaign(tmp_path, CONFIGS, 9, confirm_top_k=2)
    s = c.run()
    got = [(src, x) for src, x, _ in sources(c)]
    assert got == [("baseline", "x=5"), ("replicate", "x=5"),  # the noise, early on
                   ("list", "x=3"), ("list", "x=1"), ("list", "x=2"), ("list", "x=4"), ("list", "x=1.01"),
                   ("confirm", "x=1.01"), ("confirm", "x=1")]  # the budget's last 2: the top 2 again, best first
    rec = s.recommendation
    assert rec is not None and rec.confirmed and rec.n == 2 and rec.runs.params["x"] == 1.01
    assert rec.runs.ids == ("e0007", "e0008") and rec.mean == pytest.approx((1.0035 + 0.9982) / 2, abs=1e-4)
    j = summary_json(c)
    assert j["recommended"]["experiment_ids"] == list(rec.runs.ids) and j["recommended"]["confirmed"] is True
    assert j["recommended"]["n"] == 2 and j["recommended"]["mean"] == pytest.approx(rec.mean)
    assert j["recommended"]["params"] == dict(rec.runs.params) and j["recommended"]["hardware"] == "cpu"
    assert j["best_observed"]["value"] == min(v for _, _, v in sources(c) if v is not None)
    assert j["baseline"]["experiment_ids"] == ["e0001", "e0002"] and j["baseline"]["n"] == 2
    cpu = j["noise"]["cpu"]  # 3 replicated configs: baseline, x=1, x=1.01
    assert cpu["dof"] == 3 and cpu["n_configs"] == 3 and 0 < cpu["interval_95"][0] < cpu["sd"] < cpu["interval_95"][1]
    assert cpu["sd"] < 0.1  # the noise is uniform on +-0.05: sd ~0.029
    assert j["stop_reason"] == "budget.max_experiments reached (9)" and j["spend_usd"] > 0
    text = (c.dir / "summary.txt").read_text().splitlines()
    assert text[2].startswith(f"  recommended: val_bpb {rec.estimate()} by {', '.join(rec.runs.ids)} on cpu, ")
    assert any(line.startswith("  best single run: val_bpb ") for line in text)
    assert text[-1].startswith("  noise sd: cpu ") and "(3 dof from 3 configs)" in text[-1]


def test_a_budget_too_small_to_confirm_recommends_the_best_estimate_marked_unconfirmed(tmp_path: Path) -> None:
    c = campaign(tmp_path, CONFIGS, 1)
    s = c.run()
    assert [src for src, _, _ in sources(c)] == ["baseline"]
    assert s.recommendation is not None and not s.recommendation.confirmed
    j = summary_json(c)
    assert j["recommended"]["confirmed"] is False and j["recommended"]["n"] == 1
    assert "no configuration ran 2 times on cpu" in j["recommended"]["note"]
    assert j["noise"]["cpu"]["sd"] is None
    text = (c.dir / "summary.txt").read_text()
    assert "(1 run, unconfirmed)" in text and "unconfirmed: no configuration ran 2 times on cpu" in text
    assert "noise sd: not measured" in text


def test_a_replicate_that_crashes_measures_nothing_and_is_not_retried_forever(tmp_path: Path) -> None:
    c = campaign(tmp_path, CONFIGS[:3], 5, crash=["e0002"], confirm_top_k=0)
    s = c.run()
    assert [(src, e) for src, _, e in sources(c)][:2] == [("baseline", pytest.approx(5.0, abs=0.06)), ("replicate", None)]
    assert [src for src, _, _ in sources(c)].count("replicate") == 1  # replicates=1: one try
    assert s.noise["cpu"].sd is None
    assert summary_json(c)["noise"]["cpu"]["sd"] is None


def test_all_runs_identical_give_a_noise_of_zero(tmp_path: Path) -> None:
    c = campaign(tmp_path, [{"x": 1.0, "amp": 0.0}, {"x": 2.0, "amp": 0.0}], 4, defaults={"amp": 0.0}, confirm_top_k=1)
    s = c.run()
    assert [src for src, _, _ in sources(c)] == ["baseline", "replicate", "list", "confirm"]
    assert s.noise["cpu"].sd == 0.0 and summary_json(c)["noise"]["cpu"]["interval_95"] == [0.0, 0.0]
    assert s.recommendation is not None and s.recommendation.confirmed and s.recommendation.sd == 0.0
    assert "noise sd: cpu 0 (every replicate gave the same value" in (c.dir / "summary.txt").read_text()


def test_confirming_runs_that_keep_failing_are_given_up_and_said(tmp_path: Path) -> None:
    # x=1 is the best single run (e0004); all its confirming runs crash: after 3 tries it is given
    # up, and the recommendation is the best config that did confirm
    crash = [f"e{i:04d}" for i in range(6, 12)]
    c = campaign(tmp_path, CONFIGS[:3], 11, crash=crash[:3], confirm_top_k=1)  # e0006-e0008: x=1's three tries
    s = c.run()
    got = sources(c)
    assert [src for src, _, _ in got] == ["baseline", "replicate", "list", "list", "list",
                                         "confirm", "confirm", "confirm"]
    assert all(x == "x=1" and v is None for src, x, v in got[5:])
    # x=1 could not be confirmed, but it beats the only confirmed config (the baseline, 5.0) by far
    # more than the noise: it is the answer, unconfirmed, and the summary says so
    rec = s.recommendation
    assert rec is not None and not rec.confirmed and rec.runs.ids == ("e0004",)
    assert rec.note.startswith("e0004 beats the best confirmed config (e0001, e0002: ") and "run it again" in rec.note
    assert s.stop_reason.startswith("search space exhausted")
    assert summary_json(c)["recommended"]["confirmed"] is False


def test_confirmations_go_to_the_target_hardware_and_only_its_runs_count(tmp_path: Path) -> None:
    workers = [{"name": "big", "hardware": "h200", "hourly_usd": 3.6}, {"name": "small", "hardware": "h100"}]
    c = campaign(tmp_path, CONFIGS[:4], 8, workers=workers, target_hardware="h200", confirm_top_k=1)
    s = c.run()
    exps = c.experiments()
    confirm = [e for e in exps if e.source == "confirm"]
    assert confirm and all(e.hardware == "h200" for e in confirm)
    rec = s.recommendation
    assert rec is not None and rec.hardware == "h200" and rec.confirmed
    assert all(e.hardware == "h200" for e in exps if e.id in rec.runs.ids)
    assert summary_json(c)["recommended"]["hardware"] == "h200"


def test_a_soft_stop_confirms_the_top_configs_before_the_campaign_ends(tmp_path: Path) -> None:
    c = campaign(tmp_path, [{"x": 3.0}, {"x": 1.0}, {"x": 1.01}], None, confirm_top_k=3)  # no cap: the proposer runs dry
    s = c.run()
    got = [(src, x, round(v, 4)) for src, x, v in sources(c)]
    assert got == [("baseline", "x=5", 5.0191), ("replicate", "x=5", 4.9585),  # the noise: sd 0.043
                   ("list", "x=3", 2.9957), ("list", "x=1", 1.0195),
                   ("list", "x=1.01", 0.9784),  # a new best by 0.041 < 2 sd: within noise...
                   ("replicate", "x=1.01", 1.0493),  # ...so it runs again: mean 1.0139
                   ("confirm", "x=1", 0.9935)]  # exhausted: the top configs confirmed (x=3 is far behind: not)
    assert s.stop_reason.startswith("search space exhausted")
    rec = s.recommendation  # the luckiest run (0.9784) is not the answer: x=1's mean 1.0065 is
    assert rec is not None and rec.confirmed and rec.runs.ids == ("e0004", "e0007") and s.best_id == "e0005"
    text = (c.dir / "summary.txt").read_text()
    assert "  recommended: val_bpb 1.00652 ± 0.0184 (2 runs) by e0004, e0007 on cpu, " in text
    assert "  best single run: val_bpb 0.97841 by e0005 on cpu (differs from the recommended in x=1.01)\n" in text


SLOW = [{"x": 3.0, "sleep": 1.0}, {"x": 1.0, "sleep": 1.0}, {"x": 1.01, "sleep": 1.0}]


def kill_script(root: str) -> None:  # run by the orchestrator process the test kills
    campaign(Path(root), SLOW, 7, workers=2, confirm_top_k=2).run()


def kill_9_while_confirming(root: Path, script: str) -> list[Experiment]:
    """Run ``tests.test_confirmation.<script>(root)`` as an orchestrator process and SIGKILL it as
    soon as a confirming run is running: those runs (the test fails if none showed within 60 s)."""
    code = (f"import sys; sys.path.insert(0, {str(ROOT)!r})\n"
            f"from tests.test_confirmation import {script}; {script}({str(root)!r})\n")
    orch = subprocess.Popen([sys.executable, "-c", code], cwd=root, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    db = root / "runs/c/state.sqlite"
    deadline, confirming = time.monotonic() + 60, []
    while time.monotonic() < deadline and not confirming and orch.poll() is None:
        time.sleep(0.01)
        try:
            exps = Store.open_read_only(db).experiments() if db.exists() else []
        except (StoreError, sqlite3.Error):  # the store is being created
            exps = []
        confirming = [e for e in exps if e.source == "confirm" and e.state is ExperimentState.RUNNING]
    os.kill(orch.pid, signal.SIGKILL)
    orch.wait()
    assert confirming, orch.stderr.read().decode() if orch.stderr else ""
    return confirming


def test_kill_9_in_the_middle_of_the_confirmation_phase_resumes_it_without_repeating_a_run(tmp_path: Path) -> None:
    # the confirming runs take a second: the orchestrator is killed while they run; the resume
    # re-attaches them and finishes the phase
    confirming = kill_9_while_confirming(tmp_path, "kill_script")
    again = campaign(tmp_path, SLOW, 7, workers=2, confirm_top_k=2)
    s = again.run()
    exps = again.experiments()
    counted = [e for e in exps if not e.requeued]
    assert len(counted) == 7 and all(e.state is ExperimentState.DONE for e in counted)
    running = {e.id for e in confirming}
    assert all(not e.requeued for e in exps if e.id in running)  # the running confirmations were re-attached
    # one created but not yet submitted when the orchestrator died is run again (and counts once)
    assert all(e.value("val_bpb") is None and e.id not in running for e in exps if e.requeued)
    confirms = [e for e in counted if e.source == "confirm"]
    assert sorted(e.params["x"] for e in confirms) == [1.0, 1.01]  # each top config confirmed once
    assert s.recommendation is not None and s.recommendation.confirmed


def soft_kill_script(root: str) -> None:  # run by the orchestrator process the test kills
    campaign(Path(root), SLOW, None, workers=2, confirm_top_k=2).run()


def test_a_resume_after_a_soft_stop_goes_on_confirming_and_explores_nothing_new(tmp_path: Path) -> None:
    """The soft stop (here: the proposer ran dry) is stored: a resume in the middle of its
    confirmations finishes them, even when the proposer would now have new configurations."""
    kill_9_while_confirming(tmp_path, "soft_kill_script")
    db = tmp_path / "runs/c/state.sqlite"
    assert Store.open_read_only(db).get_meta("soft_stop", "").startswith("search space exhausted")
    more = [*SLOW, {"x": 7.0}, {"x": 8.0}]
    s = campaign(tmp_path, more, None, workers=2, confirm_top_k=2).run()
    exps = [e for e in campaign(tmp_path, more, None).experiments() if not e.requeued]
    assert not any(e.params["x"] in (7.0, 8.0) for e in exps)  # nothing new after the stop
    assert s.stop_reason.startswith("search space exhausted") and s.recommendation is not None
    assert s.recommendation.confirmed
    assert Store.open_read_only(db).get_meta("soft_stop") is None  # finished: a later resume explores again
