"""Warm start (campaign.warm_start): earlier campaigns' results as prior data for a new one.

Real stores, the real GP ranker, the real Campaign on the local backend, the real CLI.
"""

from __future__ import annotations

import csv
import hashlib
import json
import re
import subprocess
import sys
import textwrap
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

from backends.base import Worker
from backends.local import LocalBackend
from hybrid.campaign import Campaign
from hybrid.errors import ConfigError
from hybrid.history import is_prior
from hybrid.progress import Progress
from hybrid.proposers.hybrid import HybridProposer
from hybrid.proposers.llm_context import PromptInputs, build_prompt, tool_definition
from hybrid.proposers.local import LocalProposer
from hybrid.proposers.sobol import SobolProposer
from hybrid.space import SearchSpace
from hybrid.stopping import Budget
from hybrid.store import Store
from hybrid.targets import TargetSpec
from hybrid.types import Candidate, Experiment, ExperimentState, Objective, Prior, Result
from hybrid.warm_start import identity, load_priors
from surrogate.acquisition import GPRanker

OBJ = Objective("val_bpb", "minimize")
SPACE = SearchSpace.from_config({
    "x": {"type": "float", "low": 0.0, "high": 1.0, "default": 0.5},
    "y": {"type": "float", "low": 0.0, "high": 1.0, "default": 0.5},
})
OPT = {"x": 0.3, "y": 0.7}  # the synthetic target's optimum

QUAD = textwrap.dedent(
    """
    import json
    p = json.load(open("params.json"))
    print(f"val_bpb: {1 + (p['x'] - 0.3) ** 2 + (p['y'] - 0.7) ** 2}")
    """
)


def quad(p: Mapping[str, Any]) -> float:
    return 1 + (p["x"] - OPT["x"]) ** 2 + (p["y"] - OPT["y"]) ** 2


@pytest.fixture
def target_dir(tmp_path: Path) -> Path:
    d = tmp_path / "target"
    d.mkdir()
    (d / "quad.py").write_text(QUAD)
    return d


def target(workdir: Path, **kw: Any) -> TargetSpec:
    cfg = {"name": "quad", "command": "{python} quad.py", "workdir": str(workdir), "metric": "val_bpb",
           "timeout_s": 30, **kw}
    return TargetSpec.from_config(cfg)


def write_campaign(root: Path, name: str, results: Sequence[tuple[Mapping[str, Any], float | None]], *,
                   ident: Mapping[str, Any] | None = None, config: Mapping[str, Any] | None = None,
                   hardware: str = "h100", metric: str = "val_bpb") -> Path:
    """An earlier campaign's store as the campaign writes it: one experiment per (params, value)
    (None: crashed), then one still running and one cancelled (neither is prior data)."""
    d = root / name
    store = Store(d / "state.sqlite")
    store.claim(name, metric)
    if ident is not None:
        store.set_meta("identity", dict(ident))
    if config is not None:
        store.set_meta("config", dict(config))
    for i, (params, value) in enumerate(results):
        e = store.create(Candidate(dict(params), "tpe", f"try #{i}"), "w0", hardware, 1, d / "experiments")
        store.mark_running(e.id, f"job{i}", time.time())
        state = ExperimentState.DONE if value is not None else ExperimentState.CRASHED
        store.record(Result(e.id, state, {} if value is None else {metric: value}, hardware, 60.0, 0.1, "",
                            "" if value is not None else "exit code 1"))
    running = store.create(Candidate({"x": 0.9, "y": 0.9}, "tpe"), "w0", hardware, 2, d / "experiments")
    store.mark_running(running.id, "job-running", time.time())
    cancelled = store.create(Candidate({"x": 0.1, "y": 0.9}, "tpe"), "w0", hardware, 2, d / "experiments")
    store.record(Result(cancelled.id, ExperimentState.CANCELLED, {}, hardware, 0.0, 0.0))
    store.close()
    return d


def grid_results(n: int = 5) -> list[tuple[dict[str, float], float]]:
    """A prior with a clear optimum: an n x n grid over the square, plus points near OPT."""
    pts = [{"x": i / (n - 1), "y": j / (n - 1)} for i in range(n) for j in range(n)]
    pts += [{"x": 0.28, "y": 0.72}, {"x": 0.33, "y": 0.66}]
    return [(p, quad(p)) for p in pts]


def priors_of(tmp_path: Path, name: str = "A", **kw: Any) -> list[Experiment]:
    write_campaign(tmp_path / "runs", name, grid_results(), ident=identity(target(tmp_path), SPACE), **kw)
    warm = load_priors([name], campaign_name="B", campaign_dir=tmp_path / "runs" / "B", target=target(tmp_path),
                       space=SPACE)
    return [e for w in warm for e in w.experiments]


def workers(n: int, hardware: str = "cpu") -> list[Worker]:
    return [Worker(f"w{i}", hardware, 1.0) for i in range(n)]


# ---- loading -----------------------------------------------------------------------------------
def test_priors_are_marked_read_only_and_skip_what_this_space_cannot_hold(tmp_path: Path) -> None:
    results = [*grid_results(), ({"x": 0.5, "y": 0.5}, None)]  # + a crash: prior data for feasibility
    a = write_campaign(tmp_path / "runs", "A", results, ident=identity(target(tmp_path), SPACE))
    before = hashlib.sha256((a / "state.sqlite").read_bytes()).hexdigest()
    narrow = SearchSpace.from_config({"x": {"type": "float", "low": 0.0, "high": 0.6, "default": 0.5},
                                      "y": {"type": "float", "low": 0.0, "high": 1.0, "default": 0.5}})
    [w] = load_priors(["A"], campaign_name="B", campaign_dir=tmp_path / "runs" / "B", target=target(tmp_path),
                      space=narrow)
    outside = sum(1 for p, _ in results if p["x"] > 0.6)
    assert w.name == "A" and w.dir == a.resolve() and w.skipped == outside
    assert w.record() == {"name": "A", "dir": str(a.resolve()), "n": len(results) - outside, "skipped": outside}
    assert w.message() == (f"warm start: {len(results) - outside} results from A as prior data "
                           f"({len(results) - outside - 1} succeeded, 1 failed; {outside} outside this space, "
                           "not used)")
    e = w.experiments[0]
    assert e.id == "A/e0001" and e.source == "prior" and e.prior == Prior("A", "e0001", "tpe") and is_prior(e)
    assert e.hardware == "h100" and e.ended is not None and e.extra == {}
    assert [x.seq for x in w.experiments] == list(range(-len(w.experiments), 0))  # before experiment 1
    assert all(x.result is not None and x.result.experiment_id == x.id for x in w.experiments)
    assert not any(x.state in (ExperimentState.RUNNING, ExperimentState.CANCELLED) for x in w.experiments)
    # read-only: the earlier campaign's store is exactly as it was, and still its own
    assert hashlib.sha256((a / "state.sqlite").read_bytes()).hexdigest() == before
    # by path as well as by name; listed twice, loaded once
    again = load_priors([str(a), "A"], campaign_name="B", campaign_dir=tmp_path / "runs" / "B",
                        target=target(tmp_path), space=narrow)
    assert len(again) == 1 and again[0].record() == w.record()


def err(tmp_path: Path, entries: list[str], name: str = "B", **kw: Any) -> str:
    with pytest.raises(ConfigError) as info:
        load_priors(entries, campaign_name=name, campaign_dir=tmp_path / "runs" / name,
                    target=kw.pop("tgt", target(tmp_path)), space=kw.pop("space", SPACE))
    msg = str(info.value)
    assert "\n" not in msg and msg.startswith("campaign.warm_start: ")
    return msg


def test_each_mismatch_is_a_one_line_config_error(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    own = identity(target(tmp_path), SPACE)
    assert err(tmp_path, ["nope"]) == (f"campaign.warm_start: no campaign 'nope' at {runs / 'nope'} (no "
                                       "state.sqlite); give the name of an earlier campaign or its directory")
    write_campaign(runs, "B", grid_results(), ident=own)
    assert "'B' is this campaign (B) itself" in err(tmp_path, ["B"])
    write_campaign(runs, "loss", grid_results(), ident={**own, "objective": {"metric": "loss", "direction": "minimize"}},
                   metric="loss")
    assert "campaign 'loss' optimized loss (minimize), this campaign val_bpb (minimize)" in err(tmp_path, ["loss"])
    write_campaign(runs, "up", grid_results(), ident={**own, "objective": {"metric": "val_bpb", "direction": "maximize"}})
    assert "optimized val_bpb (maximize)" in err(tmp_path, ["up"])
    write_campaign(runs, "gpt", grid_results(), ident={**own, "target": {"name": "gpt", "command": "{python} -m x"}})
    msg = err(tmp_path, ["gpt"])
    assert "campaign 'gpt' ran target 'gpt' ('{python} -m x'), this campaign 'quad'" in msg
    assert "needs the same target" in msg
    write_campaign(runs, "cmd", grid_results(), ident={**own, "target": {"name": "quad", "command": "other.py"}})
    assert "ran target 'quad' ('other.py')" in err(tmp_path, ["cmd"])
    write_campaign(runs, "z", grid_results(), ident={**own, "space": {"x": "float", "z": "float"}})
    msg = err(tmp_path, ["z"])
    assert "another search space (z is not in this space; y is not in z's space)" in msg
    write_campaign(runs, "int", grid_results(), ident={**own, "space": {"x": "int", "y": "float"}})
    assert "x is int there but float here" in err(tmp_path, ["int"])
    # a store without the identity meta is checked against its stored config
    write_campaign(runs, "old", grid_results(), config={"target": {"name": "gpt", "command": "c", "direction": "minimize"},
                                                        "space": {"params": {"x": {"type": "float"}}}})
    assert "ran target 'gpt' ('c')" in err(tmp_path, ["old"])
    # and the first bad entry of a list is named even after good ones
    write_campaign(runs, "A", grid_results(), ident=own)
    assert "no campaign 'typo'" in err(tmp_path, ["A", "typo"])


def test_a_bad_warm_start_starts_nothing(tmp_path: Path, target_dir: Path) -> None:
    c = campaign(tmp_path, target_dir, "B", warm_start=["nope"])
    with pytest.raises(ConfigError, match=r"^campaign.warm_start: no campaign 'nope' at .*runs/nope \(no state"):
        c.run()
    assert not (tmp_path / "runs" / "B").exists()


def test_cli_warm_start_typo_is_one_line_exit_2(tmp_path: Path) -> None:
    p = subprocess.run([sys.executable, "-m", "hybrid", "target=example", "surrogate=none", "campaign.warm_start=[nope]", "campaign.progress=plain"],
                       cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert p.returncode == 2, p.stderr
    lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in p.stderr + p.stdout, p.stderr
    assert re.match(r"ConfigError: campaign.warm_start: no campaign 'nope' at .*/runs/nope \(no state.sqlite\); "
                    r"give the name of an earlier campaign or its directory$", lines[0]), lines[0]
    assert not list(tmp_path.rglob("state.sqlite"))  # nothing started


# ---- the decision history ------------------------------------------------------------------------
FAR = [{"x": 0.95, "y": 0.05}, {"x": 0.9, "y": 0.15}, {"x": 0.05, "y": 0.1}, {"x": 0.8, "y": 0.3}]
NEAR = {"x": 0.31, "y": 0.69}
POOL = [Candidate(p, "sobol") for p in FAR] + [Candidate(NEAR, "tpe")]


def test_warm_start_changes_the_gps_first_ranking_towards_the_priors_optimum(tmp_path: Path) -> None:
    cold = GPRanker(SPACE, OBJ, seed=0)
    [(cold_pick, _)] = cold.rank(POOL, [], [], workers(1))
    assert cold_pick.params == FAR[0] and not cold.last_decision.fitted  # no data: the pool's order
    priors = priors_of(tmp_path)
    warm = GPRanker(SPACE, OBJ, seed=0)
    [(pick, worker)] = warm.rank(POOL, priors, [], workers(1))
    assert pick.params == NEAR and "[gp: EI=" in pick.rationale  # the candidate at the priors' optimum
    assert warm.last_decision.fitted and warm.last_decision.n_observations == len(grid_results())
    assert worker.hardware == "cpu"  # priors ran on h100: other hardware is fine (a task of the GP)


def test_priors_do_not_count_toward_the_llms_share_of_the_wave(tmp_path: Path) -> None:
    """wave_shares ask for 30% of *this campaign's* experiments; 27 priors must not inflate that."""
    priors = priors_of(tmp_path)
    pool = [Candidate(p, "llm") for p in FAR] + [Candidate(NEAR, "tpe"), Candidate({"x": 0.29, "y": 0.71}, "tpe")]
    ranker = GPRanker(SPACE, OBJ, seed=0)
    ranker.wave_shares = {"llm": 0.3}
    got = [c.source for c, _ in ranker.rank(pool, priors, [], workers(2))]
    assert sorted(got) == ["llm", "tpe"]  # owed round(0.3 x (0 + 2)) = 1 llm slot, not 2
    hybrid = HybridProposer(SPACE, OBJ, sources={"sobol": 0.5, "local": 0.5})
    assert hybrid.quotas(5, priors) == hybrid.quotas(5, [])  # per-source shares count this campaign only


def test_the_llm_prompt_shows_prior_results_as_such(tmp_path: Path) -> None:
    results = [*grid_results(), ({"x": 0.0, "y": 1.0}, None)]
    write_campaign(tmp_path / "runs", "A", results, ident=identity(target(tmp_path), SPACE))
    [w] = load_priors(["A"], campaign_name="B", campaign_dir=tmp_path / "runs" / "B", target=target(tmp_path),
                      space=SPACE)
    base = Experiment("e0001", Candidate(SPACE.defaults(), "baseline"), "w0", "cpu", 1, ExperimentState.DONE, seq=1)
    base.result = Result("e0001", ExperimentState.DONE, {"val_bpb": quad(SPACE.defaults())}, "cpu", 5.0, 0.0)
    inputs = PromptInputs(SPACE, OBJ, "find the optimum", [*w.experiments, base])
    tool = tool_definition(SPACE, 8)
    user = build_prompt(inputs, tool, 20_000).user
    assert "1 experiments: 1 succeeded, 0 failed" in user  # this campaign's own counts
    assert f"Best val_bpb: {quad(SPACE.defaults()):.6f} (e0001)" in user
    section = user.split("## Results from earlier campaigns (warm start", 1)[1].split("\n## ", 1)[0]
    best = min((p for p, v in grid_results()), key=quad)
    assert f"A: {len(results)} results on h100 ({len(results) - 1} succeeded, 1 failed), best val_bpb " in section
    assert f"The best configuration so far is A/e00{[p for p, _ in grid_results()].index(best) + 1:02d}" in section
    rows = [ln for ln in section.splitlines() if ln.startswith("- A/e")]
    assert len(rows) == 10 and all("on h100 [tpe]" in r for r in rows)  # their ids, hardware, source there
    assert "## Parameter effects (with the earlier campaigns' results)" in user
    # the token budget shrinks the section with the others, never drops it
    small = build_prompt(inputs, tool, 1500)
    assert small.tokens <= 1500 and "- A/e" in small.user and small.limits["prior"] >= 3


# ---- end to end: the real campaign on the local backend ------------------------------------------
class RecordingGP(GPRanker):
    """The real GP ranker, recording each wave it ranked (params, decision, history length)."""

    def __init__(self) -> None:
        super().__init__(SPACE, OBJ, seed=0, pool_size=16)
        self.waves: list[tuple[list[dict], Any, int]] = []

    def rank(self, pool, history, pending, workers):
        out = super().rank(pool, history, pending, workers)
        self.waves.append(([dict(c.params) for c, _ in out], self.last_decision, len(history)))
        return out


def campaign(tmp_path: Path, target_dir: Path, name: str, *, max_experiments: int = 4, proposer: Any = None,
             progress: Progress | None = None, **kw: Any) -> Campaign:
    return Campaign(name=name, dir=tmp_path / "runs" / name, space=SPACE, target=target(target_dir),
                    backend=LocalBackend(workers=2, hourly_usd=3.6),
                    proposer=proposer or SobolProposer(SPACE, OBJ, seed=0), budget=Budget(max_experiments=max_experiments),
                    poll_interval_s=0.02, prefetch_pool="inline", progress=progress, **kw)


def tsv(d: Path) -> list[dict]:
    with open(d / "results.tsv") as f:
        return list(csv.DictReader(f, delimiter="\t"))


def test_warm_started_campaign_end_to_end(tmp_path: Path, target_dir: Path, capsys) -> None:
    a = campaign(tmp_path, target_dir, "A", max_experiments=8)
    a.run()
    a_exps = a.experiments()
    a_keys = {SPACE.key(e.params) for e in a_exps}
    capsys.readouterr()

    ranker = RecordingGP()
    b = campaign(tmp_path, target_dir, "B", ranker=ranker, warm_start=["A"], progress=Progress("plain"))
    summary = b.run()
    out = capsys.readouterr().out
    assert "warm start: 8 results from A as prior data (8 succeeded, 0 failed)" in out
    cold_ranker = RecordingGP()
    cold = campaign(tmp_path, target_dir, "Bcold", ranker=cold_ranker)
    cold.run()

    # the first ranked wave: B's GP fitted A's 8 results; the cold B' had nothing and kept the pool order
    first, decision, n_hist = ranker.waves[0]
    cold_first, cold_decision, _ = cold_ranker.waves[0]
    assert decision.fitted and decision.n_observations == 8 and n_hist == 8
    assert not cold_decision.fitted and first != cold_first
    b_exps, cold_exps = b.experiments(), cold.experiments()
    assert "[gp: EI=" in b_exps[1].candidate.rationale and "[gp:" not in cold_exps[1].candidate.rationale
    # the baseline still runs first; then nothing A tried is proposed again (B' repeats A's Sobol points)
    assert b_exps[0].source == "baseline" and b_exps[0].params == SPACE.defaults()
    assert not {SPACE.key(e.params) for e in b_exps[1:]} & a_keys
    assert {SPACE.key(e.params) for e in cold_exps[1:]} <= a_keys
    # B's results, summary, budget and spend are its own
    rows = tsv(b.dir)
    assert [r["experiment_id"] for r in rows] == ["e0001", "e0002", "e0003", "e0004"]
    assert summary.n_experiments == 4 and summary.stop_reason == "budget.max_experiments reached (4)"
    assert summary.best_id in {e.id for e in b_exps}
    assert summary.best_value == pytest.approx(min(e.value("val_bpb") for e in b_exps))
    assert summary.baseline_value == pytest.approx(quad(SPACE.defaults()))
    assert summary.spend_usd == pytest.approx(sum(e.result.cost_usd for e in b_exps))
    assert (b.dir / "summary.txt").read_text().startswith("campaign B: stopped: budget.max_experiments reached (4)")
    store = Store(b.dir / "state.sqlite")
    try:
        record = [{"name": "A", "dir": str(a.dir.resolve()), "n": 8, "skipped": 0}]
        assert store.get_meta("warm_start") == record
        assert [json.loads(d) for _, _, d in store.events("warm_start")] == [record]
        assert store.count() == 4 and all("/" not in e.id for e in store.experiments())
    finally:
        store.close()

    # resume: the same priors again, nothing duplicated, B's budget counts B only
    ranker2 = RecordingGP()
    b2 = campaign(tmp_path, target_dir, "B", ranker=ranker2, warm_start=["A"], max_experiments=6,
                  progress=Progress("plain"))
    summary2 = b2.run()
    out = capsys.readouterr().out
    assert "resumed campaign B: 4 results kept" in out and "warm start: 8 results from A" in out
    exps2 = b2.experiments()
    assert [e.id for e in exps2] == [f"e{i:04d}" for i in range(1, 7)] and summary2.n_experiments == 6
    assert len({SPACE.key(e.params) for e in exps2}) == 6
    assert not {SPACE.key(e.params) for e in exps2[1:]} & a_keys
    assert ranker2.waves[0][2] == 8 + 4  # the decision history: A's 8, then B's own 4
    store = Store(b.dir / "state.sqlite")
    try:
        assert store.get_meta("warm_start") == record and len(store.events("warm_start")) == 2
    finally:
        store.close()


def test_without_a_surrogate_the_proposers_learn_from_the_priors(tmp_path: Path, target_dir: Path) -> None:
    write_campaign(tmp_path / "runs", "A", grid_results(), ident=identity(target(target_dir), SPACE))
    c = campaign(tmp_path, target_dir, "B", max_experiments=2, warm_start=["A"],
                 proposer=LocalProposer(SPACE, OBJ, seed=0))
    c.run()
    first, second = c.experiments()
    assert first.source == "baseline"
    best = min(range(len(grid_results())), key=lambda i: grid_results()[i][1])
    assert f"around A/e{best + 1:04d}" in second.candidate.rationale  # a perturbation of A's best
