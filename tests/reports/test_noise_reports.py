"""What a user reads of the run-to-run noise and the recommendation in findings.md and the progress
plot: the recommended configuration as mean ± sd (n runs), the best single run apart from it, the
noise per hardware with its interval, the runs the campaign repeated, and every improvement below
2 sd marked "within noise" — from a real store with known values."""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pytest

from hybrid.reports import write_reports
from hybrid.reports.analysis import load_campaign, progress_noise
from hybrid.reports.findings import progress_points
from hybrid.reports.plots import ProgressNoise, new_bests, progress_figure
from hybrid.store import Store
from hybrid.types import Candidate, ExperimentState, FailureKind, Objective, Result

VAL_BPB = Objective("val_bpb", "minimize")
CONFIG = {"space": {"params": {"x": {"type": "int", "low": 0, "high": 9, "default": 0},
                               "z": {"type": "int", "low": 0, "high": 1, "default": 0}}},
          "target": {"metric": "val_bpb", "direction": "minimize"}, "campaign": {"name": "noisy"}}
# (x, z, source, val_bpb or None: crashed), created and finished in this order, all on cpu
RUNS = [
    (0, 0, "baseline", 1.000),  # e0001
    (2, 0, "sobol", 0.990),  # e0002: a new best by 0.010: beyond the noise
    (0, 0, "replicate", 1.002),  # e0003: the baseline again
    (2, 1, "llm", 0.9895),  # e0004: a new best by 0.0005: within noise
    (2, 1, "replicate", 0.9935),  # e0005
    (6, 0, "tpe", 0.970),  # e0006: a new best by 0.0195: beyond
    (6, 0, "confirm", 0.972),  # e0007: the recommendation, mean 0.971 of 2 runs
    (2, 0, "confirm", 0.992),  # e0008
    (8, 0, "llm", 0.968),  # e0009: the best single run, a new best by 0.002: within noise; run once
    (8, 0, "replicate", None),  # e0010: its replicate crashed
]
# pooled over (0,0), (2,0), (2,1), (6,0): SS = 2e-6 + 2e-6 + 8e-6 + 2e-6 on 4 dof
NOISE_SD = math.sqrt(14e-6 / 4)  # 0.00187: 2 sd = 0.00374


def write_store(d: Path, runs: list = RUNS, gp_noise: dict | None = None) -> Path:
    store = Store(d / "state.sqlite")
    store.claim("noisy", "val_bpb")
    store.set_meta("config", CONFIG)
    store.set_meta("created", 1000.0)
    if gp_noise is not None:
        store.set_meta("gp_noise", gp_noise)
    t = 1000.0
    for x, z, source, value in runs:
        e = store.create(Candidate({"x": x, "z": z}, source, f"hypothesis of {source}"), "w0", "cpu", 1,
                         d / "experiments")
        store.mark_running(e.id, f"job{e.seq}", t)
        t += 60.0
        if value is None:
            result = Result(e.id, ExperimentState.CRASHED, {}, "cpu", 5.0, 0.0, "", "exit code 1", FailureKind.CRASH)
        else:
            result = Result(e.id, ExperimentState.DONE, {"val_bpb": value}, "cpu", 60.0, 0.05)
        store.record(result, ended=t)
    store.set_meta("stop_reason", "budget.max_experiments reached")
    store.set_meta("status", "finished")
    store.close()
    return d


def section(text: str, title: str) -> str:
    m = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", text, flags=re.S | re.M)
    assert m, f"no section {title!r} in:\n{text}"
    return m.group(1)


def rows(text: str) -> list[list[str]]:
    return [[c.strip() for c in line.strip("|").split("|")] for line in text.splitlines()
            if line.startswith("| ") and not line.startswith("|---")]


@pytest.fixture(scope="module")
def noisy(tmp_path_factory: pytest.TempPathFactory) -> str:
    d = write_store(tmp_path_factory.mktemp("noise") / "noisy")
    write_reports(d)
    return (d / "findings.md").read_text()


def test_the_headline_recommends_the_best_confirmed_mean_and_shows_the_luckiest_run_apart(noisy: str) -> None:
    head = section(noisy, "Headline")
    lines = head.strip().splitlines()
    assert lines[0] == ("- **Recommended: val_bpb 0.971 ± 0.00141 (2 runs)** by e0006, e0007 [tpe] on cpu, confirmed "
                        "(at least 2 runs there): 0.03 (3.00%) better than the baseline 1.001 ± 0.00141 (2 runs: "
                        "e0001, e0003) on cpu, beyond the noise (more than 2 sd = 0.00374).")
    assert lines[1] == ("  Note: 1 configs ran once on cpu; the best of them (e0009: 0.968) is not confirmed, "
                        "within noise of the recommendation.")
    assert lines[2].startswith("- **Best single run val_bpb 0.968** by e0009 [llm] on cpu: 0.032 (3.20%) better than "
                               "the baseline 1 (e0001 on cpu).")
    # both configurations against the baseline
    assert rows(head) == [["parameter", "baseline", "recommended", "best single run"], ["x", "0", "6", "8"]]


def test_the_noise_section_gives_the_sd_with_its_interval_and_the_runs_repeated(noisy: str) -> None:
    from scipy.stats import chi2

    text = section(noisy, "Noise")
    low, high = (NOISE_SD * math.sqrt(4 / chi2.ppf(q, 4)) for q in (0.975, 0.025))
    assert (f"- cpu: sd {NOISE_SD:.3g}, 95% interval [{low:.3g}, {high:.3g}], 4 dof from 4 configurations run more "
            "than once.") in text
    assert "A difference smaller than 2 sd" in text and "*within noise*" in text
    assert "3 replicates" in text and "2 confirmations" in text
    assert rows(text)[1:] == [
        ["e0001", "cpu", "e0001 [baseline], e0003 [replicate]", "1.001 ± 0.00141 (n 2)"],
        ["e0002", "cpu", "e0002 [sobol], e0008 [confirm]", "0.991 ± 0.00141 (n 2)"],
        ["e0004", "cpu", "e0004 [llm], e0005 [replicate]", "0.9915 ± 0.00283 (n 2)"],
        ["e0006", "cpu", "e0006 [tpe], e0007 [confirm]", "0.971 ± 0.00141 (n 2)"],
        ["e0009", "cpu", "e0009 [llm], e0010 [replicate] crashed", "0.968 (n 1)"],
    ]


def test_improvements_below_two_sd_are_marked_within_noise(noisy: str) -> None:
    progress = section(noisy, "Progress")
    assert ("- 2 of the 4 improvements were *within noise* (smaller than 2 sd of the noise on their hardware, see "
            "Noise); the last beyond the noise was e0006, result #6, 6.0 min after the start.") in progress
    assert [r[1:] for r in rows(progress)[1:]] == [
        ["e0002", "sobol", "cpu", "0.99", "0.01", "beyond noise"],
        ["e0004", "llm", "cpu", "0.9895", "0.0005", "within noise"],
        ["e0006", "tpe", "cpu", "0.97", "0.0195", "beyond noise"],
        ["e0009", "llm", "cpu", "0.968", "0.002", "within noise"],
    ]
    sources = {r[0]: r for r in rows(section(noisy, "Sources"))}
    assert sources["llm"][4] == "2 (2 within noise)" and sources["tpe"][4] == "1"
    assert "$0.11 (4 improvements); $0.22 per improvement beyond the noise (2)." in section(noisy, "Spend")
    hyp = section(noisy, "LLM hypotheses")
    assert "2 of 2 finished LLM hypotheses held (a new best, or better than the baseline), 2 of them by less than " \
           "2 sd (within noise)" in hyp
    assert "- e0009 (new best, -0.002 vs best before 0.97, within noise): hypothesis of llm" in hyp


def test_a_parameter_whose_effect_is_below_two_sd_is_marked_within_noise(noisy: str) -> None:
    effects = section(noisy, "What mattered: main effects")
    spread = {r[0]: r[4] for r in rows(effects)[1:]}
    assert "within noise" not in spread["x"] and float(spread["x"]) > 0.02
    assert spread["z"].endswith(" (within noise)") and float(spread["z"].split()[0]) < 2 * NOISE_SD
    assert "*within noise*: less than 2 sd of the run-to-run noise (0.00374)" in effects


def test_without_replicates_nothing_is_judged_against_noise_and_that_is_said_once(tmp_path: Path) -> None:
    once = [r for r in RUNS if r[2] not in ("replicate", "confirm")]
    d = write_store(tmp_path / "c", once)
    write_reports(d)
    text = (d / "findings.md").read_text()
    head = section(text, "Headline")
    assert head.strip().splitlines()[:2] == [
        "- **Recommended: val_bpb 0.968 (1 run, unconfirmed)** by e0005 [llm] on cpu: 0.032 (3.20%) better than the "
        "baseline 1 (1 run: e0001) on cpu.",
        "  Why unconfirmed: no configuration ran 2 times on cpu: the best estimate is a single run."]
    noise = section(text, "Noise")
    assert "- cpu: not measured (no configuration succeeded twice there)." in noise
    assert "No difference in this report is judged against the noise" in noise
    assert "No configuration ran more than once." in noise
    assert "within noise" not in text and "beyond noise" not in text and "beyond the noise" not in text
    assert text.count("not measured") == 1


def test_the_gps_noise_estimate_is_shown_and_used_when_nothing_is_measured(tmp_path: Path) -> None:
    once = [r for r in RUNS if r[2] not in ("replicate", "confirm")]
    d = write_store(tmp_path / "c", once, gp_noise={"cpu": 0.01})
    write_reports(d)
    text = (d / "findings.md").read_text()
    assert "- cpu: not measured (no configuration succeeded twice there); the GP's estimate 0.01." in text
    assert "the GP's estimate of the noise (nothing measured)" in text
    # 2 sd = 0.02: every improvement is within that noise
    marks = [r[-1] for r in rows(section(text, "Progress"))[1:]]
    assert marks == ["within noise"] * 4


def test_the_progress_plot_draws_new_bests_within_noise_hollow_and_the_recommendation(tmp_path: Path) -> None:
    data = load_campaign(write_store(tmp_path / "c"))
    noise = progress_noise(data)
    assert noise == ProgressNoise(pytest.approx(NOISE_SD), "cpu", pytest.approx(0.971), pytest.approx(math.sqrt(2e-6)),
                                  2, True)
    fig = progress_figure(progress_points(data), VAL_BPB, 1.0, noise)
    assert fig is not None
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    assert legend[:5] == ["best so far", "best so far ± 2 sd (sd 0.00187 on cpu)", "new best beyond noise (> 2 sd)",
                          "new best within noise (< 2 sd)", "recommended: 0.971 ± 0.00141 (2 runs, confirmed)"]
    ax = fig.axes[0]  # against the experiment number
    stars = [c for c in ax.collections if c.get_sizes().size and c.get_sizes()[0] == 120]
    hollow = sorted(tuple(c.get_offsets()[0]) for c in stars if not len(c.get_facecolors()))
    filled = sorted(tuple(c.get_offsets()[0]) for c in stars if len(c.get_facecolors()))
    assert hollow == [(4, 0.9895), (9, 0.968)] and filled == [(2, 0.99), (6, 0.97)]
    green = [line for line in ax.get_lines() if line.get_linestyle() == "-." and line.get_ydata()[0] == 0.971]
    assert green, "the recommendation's mean is drawn"


def test_new_bests_are_judged_against_two_sd() -> None:
    xs, ys = [1, 2, 3, 4], [1.0, 0.99, 0.985, 0.95]
    assert new_bests(xs, ys, VAL_BPB, 0.003) == [(2, 0.99, True), (3, 0.985, False), (4, 0.95, True)]
    assert new_bests(xs, ys, VAL_BPB, None) == [(2, 0.99, None), (3, 0.985, None), (4, 0.95, None)]
    assert [b for _, _, b in new_bests(xs, [1.0, 1.01, 0.9, 0.95], Objective("acc", "maximize"), 0.1)] == [False]
    fig = progress_figure(progress_points(load_campaign(write_store(Path(__import__("tempfile").mkdtemp()))))[:3],
                          VAL_BPB, None)
    assert fig is not None and "new best (noise not measured: not judged)" in [
        t.get_text() for t in fig.legends[0].get_texts()]
    assert np.isfinite(fig.axes[0].get_ylim()).all()
