"""What a user reads of learning-curve pruning: findings.md's Pruning section and plots/curves.png,
results.tsv's pruned rows and the summary's count, from a real store with known durations."""

from __future__ import annotations

import csv
import math
import re
from pathlib import Path

import numpy as np
import pytest

from hybrid.reports import summarize, write_reports, write_results_tsv
from hybrid.reports.plots import CurveSeries, plot_curves
from hybrid.reports.reader import read_campaign
from hybrid.store import Store
from hybrid.types import (
    PRUNED_BOUND,
    Candidate,
    ExperimentState,
    FailureKind,
    Objective,
    ProgressPoint,
    Result,
)

VAL_BPB = Objective("val_bpb", "minimize")
HOURLY = {"h100": 3.0, "h200": 4.5}
CONFIG = {"space": {"params": {"x": {"type": "int", "low": 0, "high": 9, "default": 0}}},
          "target": {"metric": "val_bpb", "direction": "minimize"}, "campaign": {"name": "prune"}}
REASON = ("at {pct}% of its budget train_loss {last} predicts val_bpb ≥ {bound} (95%), worse than the best 0.95 "
          "(from 8 finished runs on {hw}, rank correlation 0.81 at this fraction)")
# (x, hardware, state, duration_s, val_bpb or the pruned run's bound, how far its curve goes)
RUNS = [
    (0, "h100", "done", 600.0, 1.00, 1.0),  # e0001, the baseline
    (1, "h100", "done", 580.0, 0.95, 1.0),
    (2, "h100", "done", 620.0, 0.97, 1.0),
    (3, "h100", "pruned", 250.0, 1.02, 0.45),  # e0004: pruned, then run in full as e0009: the best
    (4, "h100", "pruned", 700.0, 1.05, 0.6),  # e0005: ran longer than a full h100 run: saved 0
    (5, "h200", "done", 400.0, 0.99, 1.0),
    (6, "h200", "done", 500.0, 0.98, 1.0),
    (7, "h200", "pruned", 150.0, 0.99, 0.3),  # e0008: pruned, then run in full as e0010: not the best
    (3, "h100", "done", 640.0, 0.90, 1.0),  # e0009
    (7, "h200", "done", 450.0, 0.985, 1.0),  # e0010
]
# medians of the DONE durations: h100 (600, 580, 620, 640) -> 610 s, h200 (400, 500, 450) -> 450 s
SAVED_S = (610 - 250) + 0 + (450 - 150)  # 660 s = 11.0 min
USED_S = 250 + 700 + 150  # 1100 s = 18.3 min


def loss_at(x: int, f: float) -> float:
    return round(3.0 + 0.1 * x + 2.0 * (1 - f) ** 2, 4)


def curve(x: int, upto: float) -> list[ProgressPoint]:
    steps = round(upto * 20)
    return [ProgressPoint(i / 20, {"train_loss": loss_at(x, i / 20), "lr": 0.01}) for i in range(1, steps + 1)]


def write_store(d: Path, runs=RUNS, curves: bool = True) -> Path:
    store = Store(d / "state.sqlite")
    store.claim("prune", "val_bpb")
    store.set_meta("config", CONFIG)
    store.set_meta("created", 1000.0)
    t = 1000.0
    for x, hw, state, dur, value, upto in runs:
        e = store.create(Candidate({"x": x}, "baseline" if x == 0 else "sobol", f"try x={x}"), f"w-{hw}", hw, 1,
                         d / "experiments")
        store.mark_running(e.id, f"job{e.seq}", t)
        if curves:
            store.record_progress(e.id, curve(x, upto))
        cost = dur / 3600 * HOURLY[hw]
        if state == "done":
            result = Result(e.id, ExperimentState.DONE, {"val_bpb": value, "peak_vram_mb": 2048.0}, hw, dur, cost)
        else:
            pct, last = round(upto * 100), loss_at(x, upto)
            reason = f"pruned at {pct}% of its budget: " + REASON.format(pct=pct, last=f"{last:.4g}", bound=value, hw=hw)
            result = Result(e.id, ExperimentState.PRUNED, {"val_bpb": 1.3, PRUNED_BOUND: value, "peak_vram_mb": 2048.0},
                            hw, dur, cost, reason=reason)
        t += 100.0
        store.record(result, ended=t + dur)
    store.set_meta("stop_reason", "budget.max_experiments reached")
    store.close()
    return d


def section(text: str, title: str) -> str:
    m = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", text, flags=re.S | re.M)
    assert m, f"no section {title!r} in:\n{text}"
    return m.group(1)


@pytest.fixture(scope="module")
def pruned_campaign(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = write_store(tmp_path_factory.mktemp("pruning") / "c")
    write_reports(d)
    return d


def test_the_reader_fills_each_experiment_s_curve_from_the_store(tmp_path: Path) -> None:
    r = read_campaign(write_store(tmp_path))
    by = {e.id: e for e in r.experiments}
    assert by["e0004"].curve == curve(3, 0.45) and by["e0004"].curve[-1].fraction == pytest.approx(0.45)
    assert len(by["e0001"].curve) == 20 and by["e0004"].state is ExperimentState.PRUNED


def test_the_pruning_section_counts_time_used_and_saved(pruned_campaign: Path) -> None:
    text = (pruned_campaign / "findings.md").read_text()
    s = section(text, "Pruning")
    assert "- Pruned: 3 of 10 finished runs (h100 2 of 6, h200 1 of 4); 10 reported learning curves (train_loss)." in s
    assert f"- GPU time used by the pruned runs: {USED_S / 60:.1f} min" in s
    assert f"- GPU time saved, an estimate: {SAVED_S / 60:.1f} min" in s
    assert "median duration of the DONE runs on its hardware minus its own duration, floored at 0" in s
    # the reasons table: id, where it stopped, its last train_loss, the rule's reason (its prefix off)
    assert "| experiment | pruned at | last train_loss | reason |" in s
    assert (f"| e0004 | 45% | {loss_at(3, 0.45):.4g} | at 45% of its budget train_loss {loss_at(3, 0.45):.4g} "
            "predicts val_bpb ≥ 1.02 (95%)") in s
    assert re.search(r"^\| e0008 \| 30% \| [\d.]+ \| at 30% of its budget", s, flags=re.M)
    assert "pruned at 45%" not in s
    assert "![learning curves](plots/curves.png)" in s
    assert "3 pruned" in section(text, "Progress")  # neither done nor failed
    assert "No failures." in section(text, "Failures")


def test_a_pruned_configuration_run_in_full_says_whether_it_won(pruned_campaign: Path) -> None:
    s = section((pruned_campaign / "findings.md").read_text(), "Pruning")
    assert "e0004's configuration ran in full as e0009: it won, the campaign's best val_bpb 0.9;" in s
    assert ("e0008's configuration ran in full as e0010: it got val_bpb 0.985, not the best; the rule's bound for "
            "it was val_bpb ≥ 0.99, which did not hold (it ended better); the best is 0.9 by e0009.") in s
    assert "e0005's configuration" not in s  # never run again


def test_curves_png_shows_finished_best_and_pruned_runs(pruned_campaign: Path) -> None:
    from matplotlib.image import imread

    path = pruned_campaign / "plots" / "curves.png"
    assert path.stat().st_size > 10_000
    img = imread(path)[..., :3]

    def has(color: str) -> bool:
        rgb = np.array([int(color[i:i + 2], 16) / 255 for i in (1, 3, 5)])
        return bool((np.abs(img - rgb).max(axis=-1) < 0.03).sum() > 50)

    assert has("#e08a1e") and has("#2a9d4b") and has("#7f7f7f")  # pruned orange, best green, finished grey


def test_without_progress_lines_pruning_did_not_apply(tmp_path: Path) -> None:
    d = write_store(tmp_path, [r for r in RUNS if r[2] == "done"], curves=False)
    written = write_reports(d)
    s = section((d / "findings.md").read_text(), "Pruning")
    assert s.strip() == ("The target reports no progress (no `progress: <fraction> <name>: <value>` lines in any "
                         "run's output), so pruning did not apply.")
    assert not (d / "plots" / "curves.png").exists() and d / "plots" / "curves.png" not in written


def test_curves_without_a_prune_say_how_many_reported_them(tmp_path: Path) -> None:
    d = write_store(tmp_path, [r for r in RUNS if r[2] == "done"])
    write_reports(d)
    s = section((d / "findings.md").read_text(), "Pruning")
    assert s.strip().startswith("No run was pruned; 7 of 7 finished runs reported learning curves (train_loss).")
    assert (d / "plots" / "curves.png").is_file()


def test_curves_png_never_raises_on_odd_points(tmp_path: Path) -> None:
    odd = [CurveSeries("e0001", [(math.nan, 1.0), (0.5, math.inf), (2.0, 1.0), ("x", None)], "finished")]  # type: ignore[list-item]
    assert not plot_curves(tmp_path / "none.png", odd, "train_loss") and not (tmp_path / "none.png").exists()
    one = [*odd, CurveSeries("e0002", [(0.4, 3.0)], "pruned"), CurveSeries("e0003", [(0.5, 1e12), (0.1, 2.0)], "best"),
           CurveSeries("e0004", [(0.1, 2.0), (0.2, 1e9)], "finished")]
    assert plot_curves(tmp_path / "odd.png", one, "train_loss") and (tmp_path / "odd.png").stat().st_size > 1000


def test_results_tsv_leaves_the_metric_empty_unless_it_is_a_result(tmp_path: Path) -> None:
    exps = read_campaign(write_store(tmp_path)).experiments
    crashed = exps[1]
    crashed.state = ExperimentState.CRASHED
    crashed.result = Result(crashed.id, crashed.state, {"val_bpb": math.nan}, "h100", 3.0, 0.01,
                            reason="val_bpb is nan", failure=FailureKind.NO_METRIC)
    write_results_tsv(tmp_path / "results.tsv", exps, VAL_BPB)
    with open(tmp_path / "results.tsv") as f:
        rows = {r["experiment_id"]: r for r in csv.DictReader(f, delimiter="\t")}
    pruned = rows["e0004"]
    assert pruned["status"] == "pruned" and pruned["val_bpb"] == ""  # its log printed val_bpb 1.3: not a result
    assert pruned["description"].startswith("pruned at 45% of its budget: at 45% of its budget train_loss")
    assert pruned["description"].endswith("; try x=3") and pruned["memory_gb"] == "2.0"
    assert (rows["e0002"]["status"], rows["e0002"]["val_bpb"]) == ("crashed", "")  # not "nan"
    assert rows["e0009"]["val_bpb"] == "0.900000"


def test_the_summary_counts_pruned_runs(tmp_path: Path) -> None:
    exps = read_campaign(write_store(tmp_path)).experiments
    s = summarize("prune", exps, VAL_BPB, "budget reached", 60.0)
    assert s.n_pruned == 3 and s.n_done == 7 and s.n_failed == 0
    assert "(7 done, 0 failed, 3 pruned, 0 cancelled)" in s.text().splitlines()[1]
    m = s.as_metrics()
    assert m["n_pruned"] == 3 and m["n_finished"] == 10 and m["n_done"] == 7
    assert s.best_id == "e0009"  # a pruned run's printed val_bpb 1.3 is no result, nor is its bound
    # the time the pruned runs used and saved: the same estimate as findings.md's Pruning section
    assert (s.pruned_used_s, s.pruned_saved_s) == (USED_S, SAVED_S)
    line = s.text().splitlines()[2]
    assert line.startswith(f"  pruning: 3 runs stopped early used {USED_S / 3600:.2f} worker-h; saved about "
                           f"{SAVED_S / 3600:.2f} worker-h ($")
    assert s.as_json()["pruning"]["saved_s"] == SAVED_S and m["pruned_saved_s"] == SAVED_S
    assert m["pruned_saved_usd"] == pytest.approx(s.pruned_saved_usd) and s.pruned_saved_usd > 0
    none = summarize("p", [e for e in exps if e.state is not ExperimentState.PRUNED], VAL_BPB, "r", 1.0)
    assert "pruning:" not in none.text() and "pruned_saved_s" not in none.as_metrics()
