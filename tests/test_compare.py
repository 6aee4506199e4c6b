"""Strategy comparison of a multirun (hybrid/reports/compare.py): a real sweep in a subprocess, the
``hybrid compare`` command, and the aggregation on stores built by hand."""

from __future__ import annotations

import csv
import json
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hybrid.callbacks import CompareCallback
from hybrid.errors import ConfigError
from hybrid.reports import compare_sweep, summarize
from hybrid.reports.reader import read_campaign
from hybrid.store import Store
from hybrid.types import Candidate, ExperimentState, FailureKind, Result
from tests.test_cli import interruptible

SWEEP = ["-m", "target=example", "surrogate=none", "proposer=sobol,grid", "campaign.seed=0,1", "budget.max_experiments=5", "backend.workers=2",
         "target.env.EXAMPLE_SECONDS=0.2", "campaign.progress=plain", "campaign.poll_interval_s=0.05", "tracking=none"]
FILES = ("comparison.md", "comparison.json", "comparison.png")


def hybrid(args: list[str], cwd: Path, timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "hybrid", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture(scope="module")
def sweep(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    """One real multirun: 2 strategies x 2 seeds, its campaigns apart from its sweep dir."""
    root = tmp_path_factory.mktemp("multirun")
    p = hybrid([*SWEEP, f"hydra.sweep.dir={root / 'sweep'}", f"campaign.dir={root / 'runs'}/${{campaign.name}}"], root)
    assert p.returncode == 0, p.stdout + p.stderr
    return root / "sweep", p


def tsv_best(campaign_dir: Path) -> float:
    with open(campaign_dir / "results.tsv") as f:
        return min(float(r["val_bpb"]) for r in csv.DictReader(f, delimiter="\t") if r["val_bpb"])


# ---- a real sweep --------------------------------------------------------------------------
@pytest.mark.slow
def test_multirun_ends_with_a_comparison_of_its_strategies(sweep):
    sweep_dir, p = sweep
    assert f"sweep dir: {sweep_dir}" in p.stdout
    assert f"comparison: {sweep_dir / 'comparison.md'}" in p.stdout
    for name in FILES:
        assert (sweep_dir / name).stat().st_size > 0
    assert (sweep_dir / "comparison.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for job in range(4):  # each job points at its campaign, outside the sweep dir
        pointer = json.loads((sweep_dir / str(job) / "campaign.json").read_text())
        assert Path(pointer["campaign_dir"]).is_absolute() and sweep_dir not in Path(pointer["campaign_dir"]).parents
        assert pointer["job_num"] == job and pointer["metric"] == "val_bpb" and pointer["direction"] == "minimize"
        assert f"campaign.seed={pointer['seed']}" in pointer["overrides"]
    data = json.loads((sweep_dir / "comparison.json").read_text())
    assert data["objective"] == {"metric": "val_bpb", "direction": "minimize"}
    assert "budget.max_experiments=5" in data["common_overrides"]
    assert sorted(s["label"] for s in data["strategies"]) == ["proposer=grid", "proposer=sobol"]
    jobs = {j["job"]: j for j in data["jobs"]}
    assert sorted(jobs) == ["0", "1", "2", "3"]
    for j in jobs.values():
        assert j["best"] == pytest.approx(tsv_best(Path(j["campaign_dir"])), abs=1e-6)
        assert j["n_experiments"] == 5 and j["status"] == "finished" and len(j["curve"]) == 5
    for s in data["strategies"]:
        assert s["seeds"] == [0, 1] and s["runs"] == 2
        bests = [jobs[j]["best"] for j in s["jobs"]]
        assert {jobs[j]["strategy"] for j in s["jobs"]} == {s["label"]}
        assert s["median"] == pytest.approx(statistics.median(bests))
        assert s["best"] == min(bests)
        assert s["curve"]["median"][-1] == pytest.approx(s["median"])
        assert s["curve"]["q25"][-1] <= s["median"] <= s["curve"]["q75"][-1]
    winner = min(data["strategies"], key=lambda s: (s["median"], s["evals_to_reach"]))
    assert data["winner"] == winner["label"] and winner["ratio"] == "1.00"
    md = (sweep_dir / "comparison.md").read_text()
    assert f"**Winner: {winner['label']}**" in md
    for j in jobs.values():
        assert f"| {j['job']} | {j['strategy']} | {j['seed']} | {j['campaign_dir']} |" in md


@pytest.mark.slow
def test_compare_command_regenerates_the_same_files(sweep, tmp_path):
    sweep_dir, _ = sweep
    before = {name: (sweep_dir / name).read_bytes() for name in FILES}
    p = hybrid(["compare", str(sweep_dir)], tmp_path, timeout=60)
    assert p.returncode == 0, p.stderr
    assert "<- winner" in p.stdout
    assert {name: (sweep_dir / name).read_bytes() for name in FILES} == before
    p = hybrid(["compare", str(sweep_dir), "--out", "elsewhere"], tmp_path, timeout=60)
    assert p.returncode == 0, p.stderr
    assert {name: (tmp_path / "elsewhere" / name).read_bytes() for name in FILES} == before


@pytest.mark.slow
def test_crashed_unrelated_and_other_metric_jobs_are_reported_not_mixed_in(sweep, tmp_path):
    sweep_dir, _ = sweep
    mixed = tmp_path / "sweep"
    shutil.copytree(sweep_dir, mixed)
    (mixed / "notes" / "deeper").mkdir(parents=True)  # not a job: ignored
    (mixed / "notes" / "readme.txt").write_text("not a job")
    sobol = json.loads((sweep_dir / "0" / "campaign.json").read_text())
    grid = json.loads((sweep_dir / "2" / "campaign.json").read_text())
    seed2 = [o.replace("campaign.seed=0", "campaign.seed=2") for o in sobol["overrides"]]
    pointer(mixed / "4", {**sobol, "seed": 2, "overrides": seed2, "campaign_dir": str(tmp_path / "never")})
    crashed = campaign(tmp_path / "runs" / "crashed", [None, None], metric="val_bpb", status="failed")
    pointer(mixed / "5", {**grid, "seed": 2, "campaign": "crashed", "campaign_dir": str(crashed),
                          "overrides": [o.replace("campaign.seed=0", "campaign.seed=2") for o in grid["overrides"]]})
    (mixed / "6" / ".hydra").mkdir(parents=True)  # a Hydra job without a pointer
    acc = campaign(tmp_path / "runs" / "acc", [0.5, 0.7], metric="accuracy", direction="maximize")
    pointer(mixed / "7", {**sobol, "campaign": "acc", "campaign_dir": str(acc), "metric": "accuracy",
                          "direction": "maximize"})

    c, _ = compare_sweep(mixed)
    original = {s["label"]: s for s in json.loads((sweep_dir / "comparison.json").read_text())["strategies"]}
    assert [r.job for r in c.runs] == ["0", "1", "2", "3", "4", "5"]
    for s in c.strategies:  # the statistics are those of the runs with a result
        assert len(s.runs) == 3 and len(s.with_result) == 2
        assert s.median == pytest.approx(original[s.label]["median"])
    md = (mixed / "comparison.md").read_text()
    assert md.count("| 3 (seeds 0,1,2), 1 no result |") == 2
    assert f"| 4 | proposer=sobol | 2 | {tmp_path / 'never'} | — | — | 0 | 0 | no result: the campaign never started" in md
    assert "| 5 | proposer=grid | 2 |" in md and "no val_bpb among 2 experiments (2 crashed); campaign failed" in md
    assert "- `6`: no campaign.json" in md
    assert "- `7`: campaign acc optimizes accuracy (maximize), not val_bpb (minimize)" in md
    assert "notes" not in md

    only = compare_sweep(mixed, tmp_path / "acc-out", metric="accuracy")[0]
    assert [r.job for r in only.runs] == ["7"] and only.strategies[0].median == 0.7
    assert only.strategies[0].label == "proposer=sobol surrogate=none"


@pytest.mark.slow
def test_an_interrupted_sweep_is_still_compared(tmp_path):
    args = ["-m", "target=example", "surrogate=none", "proposer=sobol,grid", "budget.max_experiments=2", "backend.workers=2", "campaign.progress=plain",
            "target.env.EXAMPLE_SECONDS=30", "tracking=none", f"hydra.sweep.dir={tmp_path / 'sweep'}"]
    proc = subprocess.Popen([sys.executable, "-m", "hybrid", *args], cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, preexec_fn=interruptible)
    seen, deadline = "", time.monotonic() + 60
    while "e0002 -> " not in seen and time.monotonic() < deadline:
        seen += proc.stdout.readline()
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 130, seen + out
    p = hybrid(["compare", str(tmp_path / "sweep")], tmp_path, timeout=60)
    assert p.returncode == 0, p.stderr
    assert "0/1 runs  no result" in p.stdout
    md = (tmp_path / "sweep" / "comparison.md").read_text()
    # the interrupt's cancellations are re-queued for a resume: not counted as experiments
    assert "no result: no experiment finished (2 re-queued for a resume); campaign interrupted" in md


@pytest.mark.parametrize(("args", "message"), [
    (["compare", "missing"], r"compare: missing: no such directory; give the sweep dir printed by `hybrid -m`"),
    (["compare", "."], r"compare: \.: no multirun jobs found \(no .hydra/ job dirs with a campaign pointer\)"),
    (["compare"], r"compare: the following arguments are required: sweep_dir; usage: hybrid compare SWEEP_DIR"),
    (["compare", ".", "--bogus"], r"compare: unrecognized arguments: --bogus; usage:"),
])
def test_bad_input_is_one_config_error_line_exit_2(tmp_path, args, message):
    p = hybrid(args, tmp_path, timeout=60)
    assert p.returncode == 2, p.stdout + p.stderr
    lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("ConfigError: "), p.stderr
    import re

    assert re.search(message, lines[0]), lines[0]
    assert not list(tmp_path.glob("comparison.*"))


def test_callback_failure_is_one_line_and_never_raises(tmp_path, capsys):
    from omegaconf import OmegaConf

    cb = CompareCallback()
    config = OmegaConf.create({"hydra": {"sweep": {"dir": str(tmp_path)}}})
    cb.on_multirun_start(config)
    cb.on_multirun_end(config)
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("compare: skipped (ConfigError: compare: "), err


# ---- the aggregation, on stores built by hand -------------------------------------------------
T0 = 1_700_000_000.0


def campaign(cdir: Path, values: list[float | None], metric: str = "loss", direction: str = "minimize",
             status: str | None = "finished", step_s: float = 60.0, proposer_usd: float = 0.0,
             hardware: list[str] | None = None, target_hardware: str | None = None,
             xs: list[int] | None = None) -> Path:
    """A campaign store whose experiment k (1-based) runs from T0+(k-1)*step to T0+k*step on
    ``hardware[k-1]`` (default cpu) with params x=``xs[k-1]`` (default k: every config once) and
    gives ``values[k-1]`` (None: crashed); each costs $0.5."""
    store = Store(cdir / "state.sqlite")
    store.claim(cdir.name, metric)
    store.set_meta("config", {"target": {"metric": metric, "direction": direction},
                              "campaign": {"target_hardware": target_hardware}})
    for k, v in enumerate(values, 1):
        hw = hardware[k - 1] if hardware else "cpu"
        exp = store.create(Candidate({"x": xs[k - 1] if xs else k}, "sobol"), "w0", hw, k, cdir / "experiments")
        store.mark_running(exp.id, f"job{k}", T0 + (k - 1) * step_s)
        state = ExperimentState.DONE if v is not None else ExperimentState.CRASHED
        store.record(Result(exp.id, state, {} if v is None else {metric: v}, hw, step_s, 0.5,
                            reason="" if v is not None else "exit code 1",
                            failure=None if v is not None else FailureKind.CRASH), ended=T0 + k * step_s)
    if status:
        store.set_meta("status", status)
        store.set_meta("stop_reason", "budget.max_experiments reached")
    if proposer_usd:
        store.event("proposer_call", json.dumps({"source": "llm", "cost_usd": proposer_usd}))
    store.close()
    return cdir


def pointer(job_dir: Path, data: dict) -> None:
    (job_dir / ".hydra").mkdir(parents=True)
    (job_dir / "campaign.json").write_text(json.dumps(data))


def job(sweep: Path, num: int, proposer: str, seed: int, values: list[float | None], **kw) -> None:
    cdir = campaign(sweep.parent / "runs" / f"{proposer}-s{seed}", values, **kw)
    pointer(sweep / str(num), {
        "campaign": cdir.name, "campaign_dir": str(cdir), "job_num": num, "proposer": proposer, "surrogate": "none",
        "seed": seed, "metric": kw.get("metric", "loss"), "direction": kw.get("direction", "minimize"),
        "overrides": [f"proposer={proposer}", f"campaign.seed={seed}", "budget.max_experiments=9",
                      "campaign.progress=plain", "tracking=none"]})


def test_ratio_column_counts_experiments_to_reach_the_winners_median(tmp_path):
    sweep = tmp_path / "sweep"
    job(sweep, 0, "a", 0, [3, 1, 2, 2])  # best so far 3 1 1 1
    job(sweep, 1, "a", 1, [3, 2, 1, 2])  # 3 2 1 1     -> median 3 1.5 1 1: reaches 1 at 3
    job(sweep, 2, "b", 0, [3, 3, 3, 3, 3, 1])  # ties a's median, reaching it at 6
    job(sweep, 3, "b", 1, [3, 3, 3, 3, 3, 1])
    job(sweep, 4, "c", 0, [3, 2.5])
    job(sweep, 5, "c", 1, [3, None])  # -> median 3 2.75: never reaches 1
    c, _ = compare_sweep(sweep)
    a, b, cc = c.strategies
    assert [s.label for s in c.strategies] == ["proposer=a", "proposer=b", "proposer=c"]
    assert c.common == ["budget.max_experiments=9"]
    assert a.winner and not b.winner and not cc.winner  # a tie on the median goes to the faster one
    assert a.curve["median"] == [3, 1.5, 1, 1]
    assert (a.to_reach, a.ratio, b.to_reach, b.ratio, cc.to_reach, cc.ratio) == ("3", "1.00", "6", "2.00", ">2", ">0.67")
    assert b.winner_needs == "3 of 6" and cc.winner_needs == "2 of 2"  # a reaches 2.75 at its 2nd experiment
    assert (cc.median, cc.q25, cc.q75, cc.best, cc.best_job) == (2.75, 2.625, 2.875, 2.5, "4")
    assert cc.failure_rate == 0.25 and cc.median_experiments == 2 and cc.median_spend_usd == 1.0
    assert cc.mean == 2.75 and cc.sd == pytest.approx(0.353553, rel=1e-5)
    md = (sweep / "comparison.md").read_text()
    # every config ran once: each recommendation is its best single run, unconfirmed
    assert ("| **proposer=a** (winner) | 2 (seeds 0,1) | 1 [1, 1] | 0 of 2 | 1 [1, 1] | 1 ± 0 | 1 (job 0) | 4 | 2.00 "
            "| 4.0 min | 0% | 3 | 1.00 | — |") in md
    assert ("| proposer=c | 2 (seeds 0,1) | 2.75 [2.625, 2.875] | 0 of 2 | 2.75 [2.625, 2.875] | 2.75 ± 0.354 "
            "| 2.5 (job 4) | 2 | 1.00 | 2.0 min | 25% | >2 | >0.67 | 2 of 2 |") in md


def test_each_strategy_shows_its_recommendations_apart_from_the_best_single_runs(tmp_path):
    """A campaign's answer is its recommendation (the best mean of a config run twice), not its
    luckiest run: the comparison shows both, per job and per strategy, as the summary does."""
    sweep = tmp_path / "sweep"
    job(sweep, 0, "a", 0, [1.0, 0.9, 0.95, 0.85], xs=[1, 2, 2, 3])  # x=2 twice: 0.925 ± 0.0354; x=3 once: 0.85
    job(sweep, 1, "a", 1, [1.0, 0.8], xs=[1, 2])  # nothing ran twice: 0.8, unconfirmed
    job(sweep, 2, "b", 0, [1.0, 1.0, 0.97], xs=[1, 1, 2])  # x=1 twice: 1.0 ± 0, confirmed; x=2 (0.97) ran once
    c, paths = compare_sweep(sweep)
    a, b = sorted(c.strategies, key=lambda s: s.label)
    first = c.runs[0]
    assert (first.recommended, first.recommended_n, first.recommended_confirmed, first.recommended_ids) == (
        pytest.approx(0.925), 2, True, ["e0002", "e0003"])
    assert first.recommended_sd == pytest.approx(0.0353553, rel=1e-5) and first.best == 0.85
    assert (a.rec_median, a.n_confirmed, a.median) == (pytest.approx(0.8625), 1, 0.825)
    # x=1 twice gave 1.0 both times (noise 0): x=2's 0.97, run once, is beyond that noise: the answer, unconfirmed
    assert (b.rec_median, b.n_confirmed) == (pytest.approx(0.97), 0)
    md = paths[0].read_text()
    assert f"| 0 | proposer=a | 0 | {first.campaign_dir} | 0.925 ± 0.0354 (2 runs, confirmed) | 0.85 | 4 | 0 |" in md
    assert f"| 1 | proposer=a | 1 | {c.runs[1].campaign_dir} | 0.8 (1 run, unconfirmed) | 0.8 | 2 | 0 |" in md
    assert "| **proposer=a** (winner) | 2 (seeds 0,1) | 0.8625 [0.83125, 0.89375] | 1 of 2 | 0.825 [0.8125, 0.8375] |" in md
    assert "| proposer=b | 1 (seeds 0) | 0.97 [0.97, 0.97] | 0 of 1 | 0.97 [0.97, 0.97] |" in md
    assert "its runs recommend loss 0.8625 (median; 1 of 2 confirmed)" in md
    data = json.loads(paths[1].read_text())
    strategies = {s["label"]: s for s in data["strategies"]}
    assert strategies["proposer=a"]["rec_median"] == pytest.approx(0.8625) and strategies["proposer=a"]["n_confirmed"] == 1
    jobs = {j["job"]: j for j in data["jobs"]}
    assert (jobs["0"]["recommended"], jobs["0"]["recommended_n"], jobs["0"]["best"]) == (pytest.approx(0.925), 2, 0.85)
    from hybrid.reports.compare_render import summary_text

    line = next(x for x in summary_text(c, paths).splitlines() if "proposer=a" in x)
    assert "recommended median 0.8625 [0.83125, 0.89375] (1 confirmed), best single run median 0.825" in line


def test_maximize_ranks_the_highest_and_curves_rise(tmp_path):
    sweep = tmp_path / "sweep"
    job(sweep, 0, "a", 0, [0.5, 0.7, 0.6], metric="acc", direction="maximize")
    job(sweep, 1, "a", 1, [0.5, 0.9, 0.8], metric="acc", direction="maximize")
    job(sweep, 2, "b", 0, [0.5, 0.6, 0.6], metric="acc", direction="maximize")
    job(sweep, 3, "b", 1, [0.5, 0.55, 0.65], metric="acc", direction="maximize")
    c, _ = compare_sweep(sweep)
    a, b = c.strategies
    assert a.label == "proposer=a" and a.winner and c.objective.direction == "maximize"
    assert (a.median, a.q25, a.q75, a.best) == (0.8, 0.75, 0.85, 0.9)
    assert a.curve == {"median": [0.5, 0.8, 0.8], "q25": [0.5, 0.75, 0.75], "q75": [0.5, 0.85, 0.85]}
    assert b.median == pytest.approx(0.625) and (b.to_reach, b.ratio) == (">3", ">1.50")
    assert a.time_curve["minutes"] == [0, 1, 2, 3] and a.time_curve["median"] == [None, 0.5, 0.8, 0.8]


def test_time_axis_is_active_time_and_spend_includes_the_proposers(tmp_path):
    sweep = tmp_path / "sweep"
    job(sweep, 0, "a", 0, [2.0, 1.0], proposer_usd=0.25)
    db = sweep.parent / "runs" / "a-s0" / "state.sqlite"
    with sqlite3.connect(db) as conn:  # a second session, two hours after the first ended
        conn.execute("INSERT INTO events(ts, kind, detail) VALUES (?, 'resume', '')", (T0 + 7320,))
        conn.execute("UPDATE experiments SET started = ?, ended = ? WHERE id = 'e0002'", (T0 + 7320, T0 + 7380))
    c, _ = compare_sweep(sweep)
    run = c.runs[0]
    assert run.timeline == [(60.0, 2.0), (120.0, 1.0)]  # 60 s per session: the two hours between do not count
    assert run.spend_usd == 1.25


def test_best_so_far_is_judged_where_the_summary_judges_it(tmp_path):
    """history.best's hardware: the target when it has a result, else the label with the most
    successes; a lucky result on another label is not the campaign's best."""
    values, hardware = [1.0, 0.5, 0.9, None], ["h100", "h200", "h100", "h100"]
    sweep = tmp_path / "sweep"
    job(sweep, 0, "a", 0, values, hardware=hardware)
    job(sweep, 1, "b", 0, values, hardware=hardware, target_hardware="h200")
    c, _ = compare_sweep(sweep)
    untargeted, targeted = c.runs
    assert untargeted.curve == [1.0, 1.0, 0.9, 0.9] and untargeted.best == 0.9
    assert [v for _, v in untargeted.timeline] == [1.0, 1.0, 0.9, 0.9]
    assert targeted.curve == [None, 0.5, 0.5, 0.5] and targeted.best == 0.5
    exps = read_campaign(untargeted.campaign_dir).experiments
    assert summarize("a", exps, c.objective, "", 1.0).best_value == untargeted.best


def test_no_jobs_is_a_config_error(tmp_path):
    (tmp_path / "0" / ".hydra").mkdir(parents=True)
    with pytest.raises(ConfigError, match="no multirun jobs found"):
        compare_sweep(tmp_path)
