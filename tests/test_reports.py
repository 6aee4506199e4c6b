"""The reports wing's small outputs (hybrid/reports/): results.tsv, the summary, and the one reader
of a campaign's store that findings, compare and warm start share."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from hybrid.errors import StoreError
from hybrid.reports import Summary, summarize, write_results_tsv
from hybrid.reports.reader import read_campaign
from hybrid.store import Store
from hybrid.types import Candidate, Experiment, ExperimentState, FailureKind, Objective, Result

VAL_BPB = Objective("val_bpb", "minimize")


def exp(seq: int, params: dict, value: float | None, source: str = "sobol", hardware: str = "cpu") -> Experiment:
    e = Experiment(f"e{seq:04d}", Candidate(params, source, f"try {seq}"), "w0", hardware, 1, ExperimentState.DONE,
                   seq=seq)
    if value is None:
        e.state = ExperimentState.CRASHED
        e.result = Result(e.id, e.state, {}, hardware, 3.0, 0.01, reason="exit code 1", failure=FailureKind.CRASH)
    else:
        e.result = Result(e.id, e.state, {"val_bpb": value, "peak_vram_mb": 2048.0}, hardware, 3.0, 0.01)
    return e


def test_results_tsv_names_the_metric_column_after_the_metric(tmp_path: Path) -> None:
    exps = [exp(1, {"lr": 0.01}, 1.0123456, "baseline"), exp(2, {"lr": 0.02}, None)]
    write_results_tsv(tmp_path / "results.tsv", exps, VAL_BPB)
    with open(tmp_path / "results.tsv") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    assert list(rows[0]) == ["experiment_id", "wave", "status", "val_bpb", "memory_gb", "hardware", "cost_usd",
                             "source", "variant", "params", "description"]
    assert [(r["experiment_id"], r["status"], r["val_bpb"]) for r in rows] == [("e0001", "done", "1.012346"),
                                                                               ("e0002", "crashed", "")]
    assert rows[0]["memory_gb"] == "2.0" and rows[1]["description"] == "exit code 1; try 2"
    write_results_tsv(tmp_path / "acc.tsv", exps, Objective("accuracy", "maximize"))  # any target's metric
    assert (tmp_path / "acc.tsv").read_text().splitlines()[0].split("\t")[3] == "accuracy"


def test_the_summary_prints_values_as_people_write_them() -> None:
    base = exp(1, {"lr": 0.01, "depth": 8, "window_pattern": "SSSL"}, 1.0093671234, "baseline")
    best = exp(2, {"lr": 0.010000000000000004, "depth": 12, "window_pattern": "SL"}, 0.98765432101)
    s = summarize("demo", [base, best, exp(3, {"lr": 0.5}, None)], VAL_BPB, "budget reached", 90.0)
    assert isinstance(s, Summary) and s.best_id == "e0002" and s.n_failed == 1
    lines = s.text().splitlines()
    assert lines[2:] == [
        "  recommended: val_bpb 0.987654 (1 run, unconfirmed) by e0002 on cpu, +2.15% vs baseline 1.00937",
        "  recommended config: lr=0.01 depth=12 window_pattern=SL",
        "  unconfirmed: no configuration ran 2 times on cpu: the best estimate is a single run",
        "  best single run: val_bpb 0.987654 by e0002 on cpu (one of the recommended's runs)",
        "  noise sd: not measured (no configuration succeeded twice)",
    ]
    assert s.as_metrics()["best_val_bpb"] == 0.98765432101  # the metrics keep every digit


def test_the_summary_judges_best_on_the_target_hardware() -> None:
    exps = [exp(1, {"x": 1}, 1.0, "baseline", "h100"), exp(2, {"x": 2}, 0.5, hardware="h200"),
            exp(3, {"x": 3}, 0.9, hardware="h100")]
    assert summarize("c", exps, VAL_BPB, "", 1.0, target_hardware="h100").best_id == "e0003"
    assert summarize("c", exps, VAL_BPB, "", 1.0, target_hardware="h200").best_id == "e0002"
    # unset: the hardware with the most successes (history.judged_hardware), not the luckiest label
    assert summarize("c", exps, VAL_BPB, "", 1.0).best_id == "e0003"


def store_with(tmp_path: Path, config: dict | None) -> Path:
    store = Store(tmp_path / "state.sqlite")
    store.claim("demo", "loss")
    if config is not None:
        store.set_meta("config", config)
    e = store.create(Candidate({"x": 1}, "baseline"), "w0", "cpu", 1, tmp_path / "experiments")
    store.mark_running(e.id, "job1", 100.0)
    store.record(Result(e.id, ExperimentState.DONE, {"loss": 0.5}, "cpu", 10.0, 0.25), ended=110.0)
    store.event("proposer_call", json.dumps({"source": "llm", "cost_usd": 0.5}))
    store.event("proposer_call", "not json")  # an odd event is read as no spend, not as an error
    store.set_meta("status", "finished")
    store.set_meta("active_s", 12.5)
    store.close()
    return tmp_path


def test_the_reader_gives_config_objective_identity_and_spend(tmp_path: Path) -> None:
    d = store_with(tmp_path, {"target": {"name": "quad", "command": "q.py", "metric": "loss", "direction": "maximize"},
                              "campaign": {"target_hardware": "h100"},
                              "space": {"params": {"x": {"type": "int", "low": 0, "high": 3}}}})
    before = (d / "state.sqlite").read_bytes()
    r = read_campaign(d)
    assert (d / "state.sqlite").read_bytes() == before  # read-only
    assert r.name == "demo" and r.objective() == Objective("loss", "maximize") and r.target_hardware == "h100"
    assert r.identity == {"target": {"name": "quad", "command": "q.py"},
                          "objective": {"metric": "loss", "direction": "maximize"}, "space": {"x": "int"}}
    assert r.status == "finished" and r.active_s == 12.5 and r.created is not None
    assert r.proposer_calls == 2 and r.proposer_usd == 0.5 and r.worker_usd(r.experiments) == 0.25
    [e] = r.experiments
    assert e.ended == 110.0 and e.value("loss") == 0.5


def test_the_reader_without_a_stored_config(tmp_path: Path) -> None:
    r = read_campaign(store_with(tmp_path, None))
    assert r.objective() == Objective("loss", "minimize")  # the metric the store was claimed with
    assert r.objective(Objective("x", "maximize")) == Objective("loss", "maximize")
    assert r.target_hardware is None and r.identity["target"] == {} and r.identity["space"] == {}


def test_the_reader_refuses_what_is_not_a_store(tmp_path: Path) -> None:
    (tmp_path / "state.sqlite").write_bytes(b"not a database" * 100)
    with pytest.raises(StoreError, match=r"state\.sqlite"):
        read_campaign(tmp_path)
