"""The campaign loop with the real local backend: dispatch, faults, stopping, sync vs async, resume."""

from __future__ import annotations

import csv
import json
import textwrap
from collections.abc import Sequence
from pathlib import Path

import pytest

from backends.local import LocalBackend
from hybrid.campaign import Campaign
from hybrid.proposers.base import Proposer
from hybrid.proposers.sobol import SobolProposer
from hybrid.space import SearchSpace
from hybrid.stopping import Budget
from hybrid.targets import TargetSpec
from hybrid.types import Candidate, Experiment, ExperimentState, Objective

# A target whose behaviour is chosen by its params: the faults a real training run shows.
FAULTY = textwrap.dedent(
    """
    import json, sys, time
    p = json.load(open("params.json"))
    mode, x = p["mode"], p["x"]
    print("starting", mode, flush=True)
    if mode == "crash":
        print("Traceback (most recent call last):\\nValueError: diverged", flush=True)
        sys.exit(1)
    if mode == "nometric":
        print("finished, but forgot to print the metric")
        sys.exit(0)
    if mode == "nan":
        print("val_bpb: nan")
        sys.exit(0)
    if mode == "hang":
        time.sleep(60)
    time.sleep(float(p.get("sleep", 0.1)))
    print(f"val_bpb: {x}")
    """
)

SPACE = SearchSpace.from_config({
    "x": {"type": "float", "low": 0.0, "high": 10.0, "default": 5.0},
    "mode": {"type": "categorical", "choices": ["ok", "crash", "nometric", "nan", "hang"], "default": "ok"},
    "sleep": {"type": "float", "low": 0.0, "high": 2.0, "default": 0.1},
})


class ListProposer(Proposer):
    """Proposes a fixed list of configurations in order (a real Proposer, for scripted scenarios)."""

    name = "list"

    def __init__(self, configs: Sequence[dict], space: SearchSpace = SPACE) -> None:
        super().__init__(space, Objective("val_bpb", "minimize"))
        self.configs = [space.complete(c) for c in configs]

    def propose(self, history: Sequence[Experiment], n: int) -> list[Candidate]:
        seen = {self.space.key(e.params) for e in history}
        todo = [c for c in self.configs if self.space.key(c) not in seen]
        return [Candidate(c, "list", f"scripted #{self.configs.index(c)}") for c in todo[:n]]


@pytest.fixture
def target_dir(tmp_path: Path) -> Path:
    d = tmp_path / "target"
    d.mkdir()
    (d / "faulty.py").write_text(FAULTY)
    return d


def make(tmp_path: Path, target_dir: Path, proposer: Proposer, workers: int = 2, max_experiments: int | None = 6,
         timeout_s: float = 30.0, mode: str = "async", name: str = "c", **kw) -> Campaign:
    target = TargetSpec.from_config({"name": "faulty", "command": "{python} faulty.py", "workdir": str(target_dir),
                                     "metric": "val_bpb", "timeout_s": timeout_s})
    return Campaign(name=name, dir=tmp_path / "runs" / name, space=SPACE, target=target,
                    backend=LocalBackend(workers=workers, hourly_usd=3.6), proposer=proposer,
                    budget=Budget(max_experiments=max_experiments), mode=mode, poll_interval_s=0.02, **kw)


def rows(campaign_dir: Path) -> list[dict]:
    with open(campaign_dir / "results.tsv") as f:
        return list(csv.DictReader(f, delimiter="\t"))


def test_campaign_runs_baseline_first_and_writes_results(tmp_path, target_dir):
    c = make(tmp_path, target_dir, ListProposer([{"x": 1.0}, {"x": 2.0}, {"x": 3.0}]), max_experiments=4)
    summary = c.run()
    got = rows(c.dir)
    assert [r["experiment_id"] for r in got] == ["e0001", "e0002", "e0003", "e0004"]
    assert got[0]["source"] == "baseline" and json.loads(got[0]["params"]) == SPACE.defaults()
    assert all(r["status"] == "done" for r in got)
    assert summary.best_value == 1.0 and summary.baseline_value == 5.0
    assert summary.improvement_pct == pytest.approx(80.0)
    assert summary.stop_reason == "budget.max_experiments reached (4)"
    assert float(got[1]["cost_usd"]) > 0  # $3.6/h workers
    assert (c.dir / "summary.txt").read_text().startswith("campaign c: stopped: budget.max_experiments reached (4)")
    # each experiment ran in its own snapshot, with its params and its own log
    for r in got:
        wd = c.dir / "experiments" / r["experiment_id"]
        assert json.loads((wd / "params.json").read_text()) == json.loads(r["params"])
        assert "val_bpb:" in (wd / "run.log").read_text()


def test_faults_are_recorded_and_the_campaign_goes_on(tmp_path, target_dir):
    scripted = [{"mode": "crash"}, {"mode": "nometric"}, {"mode": "nan"}, {"mode": "hang"}, {"x": 0.5}]
    c = make(tmp_path, target_dir, ListProposer(scripted), workers=3, max_experiments=6, timeout_s=1.5,
             max_failure_rate=0.9)
    summary = c.run()
    by_mode = {json.loads(r["params"])["mode"] + str(json.loads(r["params"])["x"]): r for r in rows(c.dir)}
    assert by_mode["crash5.0"]["status"] == "crashed" and "exit code 1" in by_mode["crash5.0"]["description"]
    assert by_mode["nometric5.0"]["status"] == "crashed"
    assert "no metric 'val_bpb' printed" in by_mode["nometric5.0"]["description"]
    assert by_mode["nan5.0"]["status"] == "crashed" and "val_bpb is nan" in by_mode["nan5.0"]["description"]
    assert by_mode["hang5.0"]["status"] == "timeout" and "timed out after 1.5s" in by_mode["hang5.0"]["description"]
    assert by_mode["ok0.5"]["status"] == "done"
    assert summary.best_value == 0.5 and summary.n_failed == 4
    crashed = next(e for e in c.experiments() if e.params["mode"] == "crash")
    assert "ValueError: diverged" in crashed.result.log_tail  # the log tail is kept


def test_failure_rate_stops_the_campaign(tmp_path, target_dir):
    c = make(tmp_path, target_dir, ListProposer([{"mode": "crash", "x": i / 2} for i in range(20)]),
             workers=2, max_experiments=20, max_failure_rate=0.5)
    summary = c.run()
    assert summary.stop_reason.startswith("campaign.max_failure_rate exceeded")
    assert summary.n_experiments < 12  # it stopped early, after at least 5 finished


def test_async_keeps_workers_busy_and_sync_runs_strict_waves(tmp_path, target_dir):
    # one slow experiment per wave: async lets the other worker go on, sync waits for it
    configs = [{"x": float(i), "sleep": 1.0 if i % 2 else 0.05} for i in range(1, 7)]
    results = {}
    for mode in ("async", "sync"):
        c = make(tmp_path, target_dir, ListProposer(configs), workers=2, max_experiments=7, mode=mode, name=mode)
        c.run()
        exps = c.experiments()
        results[mode] = exps
    for wave in {e.wave for e in results["sync"]}:
        this = [e for e in results["sync"] if e.wave == wave]
        earlier = [e for e in results["sync"] if e.wave < wave]
        if earlier:  # sync: a wave starts only after every earlier experiment ended
            assert min(e.started for e in this) >= max(e.ended for e in earlier)
    span = {m: max(e.ended for e in xs) - min(e.started for e in xs) for m, xs in results.items()}
    assert span["async"] < span["sync"]


def test_resume_continues_without_duplicates(tmp_path, target_dir):
    configs = [{"x": float(i)} for i in range(1, 10)]
    make(tmp_path, target_dir, ListProposer(configs), max_experiments=4).run()
    c = make(tmp_path, target_dir, ListProposer(configs), max_experiments=7)
    summary = c.run()
    exps = c.experiments()
    assert [e.id for e in exps] == [f"e{i:04d}" for i in range(1, 8)]
    assert len({SPACE.key(e.params) for e in exps}) == 7
    assert summary.n_done == 7 and summary.stop_reason == "budget.max_experiments reached (7)"


def test_second_orchestrator_on_the_same_campaign_is_refused(tmp_path, target_dir):
    from hybrid.errors import ConfigError

    c = make(tmp_path, target_dir, ListProposer([{"x": 1.0}]))
    c.dir.mkdir(parents=True)
    held = c._lock()
    try:
        with pytest.raises(ConfigError, match="already running in another process"):
            make(tmp_path, target_dir, ListProposer([{"x": 1.0}])).run()
    finally:
        held.close()


def test_exhausted_space_stops(tmp_path, target_dir):
    c = make(tmp_path, target_dir, ListProposer([{"x": 1.0}]), max_experiments=None)
    summary = c.run()
    assert summary.n_experiments == 2 and summary.stop_reason.startswith("search space exhausted")


def test_sobol_campaign_on_the_example_target(tmp_path):
    root = Path(__file__).resolve().parent.parent
    space = SearchSpace.from_config({
        "lr": {"type": "float", "low": 0.001, "high": 0.1, "log": True, "default": 0.01},
        "depth": {"type": "int", "low": 2, "high": 16, "step": 2, "default": 8},
    })
    target = TargetSpec.from_config({"name": "example", "command": "{python} objective.py",
                                     "workdir": str(root / "examples"), "env": {"EXAMPLE_SECONDS": "0.1"}})
    c = Campaign(name="ex", dir=tmp_path / "ex", space=space, target=target, backend=LocalBackend(workers=2),
                 proposer=SobolProposer(space, target.objective, seed=0), budget=Budget(max_experiments=5),
                 poll_interval_s=0.02)
    summary = c.run()
    assert summary.n_done == 5 and summary.best_value is not None
    sources = [e.source for e in c.experiments()]
    assert sources == ["baseline"] + ["sobol"] * 4
    assert all(e.state is ExperimentState.DONE for e in c.experiments())


def test_live_view_shows_workers_best_and_spend(tmp_path, target_dir):
    import io

    from rich.console import Console

    from hybrid.progress import Progress

    buf = io.StringIO()
    console = Console(file=buf, force_terminal=True, width=140, color_system=None)
    c = make(tmp_path, target_dir, ListProposer([{"x": 1.0, "sleep": 0.4}, {"x": 2.0, "sleep": 0.4}]),
             max_experiments=3, progress=Progress("rich", console=console))
    c.run()
    out = buf.getvalue()
    assert "campaign c" in out and "w00" in out and "w01" in out and "running" in out
    assert "best val_bpb 1" in out and "spend $" in out and "-80.00% vs baseline" not in out
    assert "+80.00% vs baseline 5" in out


class _BadThenGood(ListProposer):
    """Returns an out-of-range and an unknown-param proposal before valid ones."""

    def propose(self, history, n):
        bad = [Candidate({**SPACE.defaults(), "x": 50.0}, "list"), Candidate({"x": 1.0, "lr": 3}, "list")]
        return bad + super().propose(history, n)


def test_invalid_proposals_are_dropped_with_a_reason(tmp_path, target_dir):
    from hybrid.progress import Progress

    messages: list[str] = []
    progress = Progress("none")
    progress.message = messages.append  # type: ignore[method-assign]
    c = make(tmp_path, target_dir, _BadThenGood([{"x": 1.0}, {"x": 2.0}]), max_experiments=3, progress=progress)
    summary = c.run()
    assert summary.n_done == 3 and summary.best_value == 1.0
    assert any("dropped an invalid list proposal: x: 50 is outside [0, 10]" in m for m in messages)
    assert any("lr: unknown parameter" in m for m in messages)
