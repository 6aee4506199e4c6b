"""findings.md and plots/ (hybrid/reports/): what a campaign learned, from a real store with known effects."""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from hybrid.errors import ConfigError
from hybrid.reports import report_command, write_reports
from hybrid.reports.analysis import analyze, hardware_rows, load_campaign
from hybrid.reports.effects import main_effects
from hybrid.reports.render import render
from hybrid.store import Store
from hybrid.tracking import make_tracker
from hybrid.types import Candidate, ExperimentState, FailureKind, Result
from surrogate.gp import GPSurrogate

ROOT = Path(__file__).resolve().parent.parent

SPACE = {
    "lr": {"type": "float", "low": 0.0001, "high": 0.1, "log": True, "default": 0.003},
    "weight_decay": {"type": "float", "low": 0.0, "high": 0.3, "default": 0.0},
    "depth": {"type": "int", "low": 2, "high": 16, "step": 2, "default": 8},
    "window_pattern": {"type": "categorical", "choices": ["L", "SL", "SSSL"], "default": "SSSL"},
}
HOURLY = {"h100": 3.0, "h200": 4.5}
H200_OFFSET = -0.05  # the same config scores 0.05 lower (better) on h200


def _u(x: float, low: float, high: float, log: bool = False) -> float:
    return (math.log(x / low) / math.log(high / low)) if log else (x - low) / (high - low)


def true_metric(p: Mapping[str, Any], hardware: str) -> float:
    """1 + 0.5 u_lr (higher lr: worse) - 0.3 u_wd u_depth (weight decay helps deep models) + hardware."""
    u_lr = _u(p["lr"], 0.0001, 0.1, log=True)
    u_wd = _u(p["weight_decay"], 0.0, 0.3)
    u_depth = (p["depth"] - 1) / 16  # the space's own encoding of an int (bin centres)
    return 1.0 + 0.5 * u_lr - 0.3 * u_wd * u_depth + (H200_OFFSET if hardware == "h200" else 0.0)


def ooms(p: Mapping[str, Any]) -> bool:
    return p["depth"] >= 14 and p["window_pattern"] == "L"


def write_campaign(path: Path, runs: list[tuple[dict, str, str, str]], config: dict | None = None,
                   metric: Callable[[Mapping[str, Any], str], float | None] | None = None, *,
                   llm_usd: float = 0.0, cost_stop: str | None = None, name: str = "synthetic") -> Path:
    """A campaign store with ``runs`` = [(params, hardware, source, rationale)], one after another.
    ``metric`` None for a run: it crashed (OOM when ``ooms`` says so)."""
    noise = 0.004 if metric is None else 0.0
    metric = metric or (lambda p, hw: None if ooms(p) else true_metric(p, hw))
    rng = np.random.default_rng(7)
    store = Store(path / "state.sqlite")
    store.claim(name, "val_bpb")
    store.set_meta("config", config if config is not None else {
        "space": {"params": SPACE}, "target": {"metric": "val_bpb", "direction": "minimize"},
        "campaign": {"name": name, "target_hardware": None}, "tracking": {"name": "none"}})
    store.set_meta("created", 1000.0)
    t = 1000.0
    for params, hw, source, rationale in runs:
        e = store.create(Candidate(params, source, rationale), f"w-{hw}", hw, 1, path / "experiments")
        store.mark_running(e.id, f"job{e.seq}", t)
        duration = 300.0
        value = metric(params, hw)
        cost = duration / 3600 * HOURLY.get(hw, 1.0)
        if value is None:
            oom = ooms(params)
            result = Result(e.id, ExperimentState.CRASHED, {}, hw, 20.0, 20 / 3600 * HOURLY.get(hw, 1.0),
                            "CUDA out of memory" if oom else "diverged",
                            "out of memory" if oom else "exit code 1", FailureKind.OOM if oom else FailureKind.CRASH)
        else:
            value += float(rng.normal(0, noise)) if noise else 0.0
            steps = 1000 if hw == "h100" else 1500
            result = Result(e.id, ExperimentState.DONE, {"val_bpb": value, "num_steps": steps,
                                                         "training_seconds": 280.0}, hw, duration, cost)
        t += result.duration_s / 4  # four workers
        store.record(result, ended=t + result.duration_s)
    if llm_usd:
        store.event("proposer_call", json.dumps({"source": "llm", "cost_usd": llm_usd}))
    if cost_stop:
        store.event("cost_stop", cost_stop)
    store.set_meta("stop_reason", cost_stop or "budget.max_experiments reached")
    store.set_meta("status", "finished")
    store.set_meta("active_s", t - 1000.0)
    store.close()
    return path


def random_params(rng: np.random.Generator) -> dict:
    return {"lr": float(10 ** rng.uniform(-4, -1)), "weight_decay": float(rng.uniform(0, 0.3)),
            "depth": int(rng.choice(range(2, 17, 2))), "window_pattern": str(rng.choice(["L", "SL", "SSSL"]))}


def synthetic_runs(n: int = 60, seed: int = 0) -> list[tuple[dict, str, str, str]]:
    rng = np.random.default_rng(seed)
    base = {"lr": 0.003, "weight_decay": 0.0, "depth": 8, "window_pattern": "SSSL"}
    runs = [(base, "h100", "baseline", "defaults")]
    sources = ["sobol", "tpe", "local", "llm"]
    for i in range(n - 1):
        params = random_params(rng)
        if i % 12 == 0:  # a deep, full-attention config: out of memory
            params.update(depth=16 - 2 * (i % 24 == 0), window_pattern="L")
        src = sources[i % 4]
        runs.append((params, "h200" if i % 3 == 0 else "h100", src, f"hypothesis {i}: lower lr helps" * (src == "llm")))
    for params, hw, _, _ in list(runs[5:40:7]):  # validation re-runs on the other label: paired offsets
        runs.append((params, "h100" if hw == "h200" else "h200", "validate", ""))
    return runs


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("findings") / "synthetic"
    write_campaign(d, synthetic_runs(), llm_usd=1.25,
                   cost_stop="expected gain per dollar below 0.001 for 3 decisions; about $12.50 of the budget left unspent")
    write_reports(d, gp=GPSurrogate)
    return d


def findings(d: Path) -> str:
    return (d / "findings.md").read_text()


def section(text: str, title: str) -> str:
    m = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", text, flags=re.S | re.M)
    assert m, f"no section {title!r} in:\n{text}"
    return m.group(1)


def test_sections_in_order(synthetic):
    text = findings(synthetic)
    titles = re.findall(r"^## (.+)$", text, flags=re.M)
    assert titles == ["Headline", "Progress", "Noise", "What mattered: main effects", "Interactions", "Response slices (GP)",
                      "Hardware", "Sources", "Failures", "Pruning", "Spend", "LLM hypotheses"]
    assert "could not compute" not in text and "failed (" not in text.split("## Failures")[0]


def test_headline_best_vs_baseline(synthetic):
    head = section(findings(synthetic), "Headline")
    assert re.search(r"\*\*Best single run val_bpb [\d.]+\*\* by e\d{4} \[\w+\] on h(100|200): [\d.]+ \([\d.]+%\) better than "
                     r"the baseline [\d.]+ \(e0001 on h100\)", head), head
    assert "| lr | 0.003 |" in head  # the changed params, with the baseline's value


def test_headline_lists_only_what_really_changed(tmp_path):
    """A value that differs from the baseline's only in float noise (0.010000000000000004 vs 0.01)
    is not a change; values print with 4 significant digits."""
    base = {"lr": 0.01, "weight_decay": 0.0, "depth": 8, "window_pattern": "SSSL"}
    best = {**base, "lr": 0.1 * 0.1 + 4e-18, "depth": 12, "weight_decay": 0.123456789}
    assert best["lr"] != 0.01
    runs = [(base, "cpu", "baseline", ""), (best, "cpu", "tpe", "")]
    d = write_campaign(tmp_path / "c", runs, metric=lambda p, hw: 1.0 - 0.01 * p["depth"])
    write_reports(d)
    head = section(findings(d), "Headline")
    table = [line for line in head.splitlines() if line.startswith("| ") and "parameter" not in line]
    assert table == ["| weight_decay | 0 | 0.1235 |", "| depth | 8 | 12 |"], head


def test_without_a_target_hardware_best_is_judged_where_most_results_are(tmp_path):
    """history.best: the label with the most successes, said in the report; the best on any
    hardware is shown beside it."""
    base = {"lr": 0.003, "weight_decay": 0.0, "depth": 8, "window_pattern": "SSSL"}
    runs = [(base, "h100", "baseline", "")] + [({**base, "depth": k}, "h100", "sobol", "") for k in (2, 4, 6)]
    runs.append(({**base, "depth": 10}, "h200", "sobol", ""))  # h200 scores 0.05 lower: the luckiest label
    d = write_campaign(tmp_path / "c", runs)
    write_reports(d)
    text = findings(d)
    assert "Objective: val_bpb (minimize), judged on h100 (the hardware with the most successful results; set " \
           "campaign.target_hardware to choose)." in text
    head = section(text, "Headline")
    assert re.search(r"\*\*Best single run val_bpb [\d.]+\*\* by e000[1-4] \[\w+\] on h100", head), head
    assert re.search(r"\*\*Best single run on any hardware val_bpb [\d.]+\*\* by e0005 \[sobol\] on h200", head), head


def test_lr_is_the_top_main_effect_with_its_direction(synthetic):
    effects = section(findings(synthetic), "What mattered: main effects")
    assert "ANOVA" in effects and "Type-II" in effects
    rows = [line for line in effects.splitlines() if line.startswith("| ") and "parameter" not in line]
    assert rows[0].startswith("| lr |"), effects
    assert "higher lr → higher val_bpb (worse)" in rows[0]
    share = float(rows[0].split("|")[2].strip().rstrip("%"))
    assert share > 50
    assert "![effects](plots/effects.png)" in effects


def test_weight_decay_depth_interaction_with_its_sign(synthetic):
    inter = section(findings(synthetic), "Interactions")
    rows = [line for line in inter.splitlines() if line.startswith("| ") and "pair" not in line]
    assert rows[0].startswith("| weight_decay \u00d7 depth |"), inter
    assert "the effect of higher weight_decay is more favourable (lower val_bpb) at higher depth" in rows[0]
    assert "pairs tested" in inter


def test_gp_slices_name_the_argmin(synthetic):
    slices = section(findings(synthetic), "Response slices (GP)")
    assert re.search(r"- lr: GP argmin at lr=[\d.e-]+ \(predicted val_bpb [\d.]+ ± [\d.e-]+\)", slices), slices


def test_hardware_offset_is_paired_and_about_right(synthetic):
    hw = section(findings(synthetic), "Hardware")
    row = next(line for line in hw.splitlines() if line.startswith("| h200 |"))
    cells = [c.strip() for c in row.split("|")]
    assert "paired" in cells[9]
    assert float(cells[8]) == pytest.approx(H200_OFFSET, abs=0.015)
    assert cells[6] == "4.50"  # $/h
    assert float(cells[7]) == pytest.approx(1500 / 280, rel=1e-3)  # steps/s
    assert "| h100 |" in hw and "reference" in hw


def test_anova_hardware_factor_when_no_config_ran_on_both(tmp_path):
    runs = [r for r in synthetic_runs() if r[2] != "validate"]
    data = load_campaign(write_campaign(tmp_path / "c", runs))
    rows = data.successes()
    anova = main_effects(data.space, data.objective, rows, "h100")
    hw = {r.label: r for r in hardware_rows(data, anova, "h100")[0]}
    assert hw["h200"].offset_how == "ANOVA hardware factor"
    assert hw["h200"].offset == pytest.approx(H200_OFFSET, abs=0.015)
    assert hw["h100"].offset_how == "reference" and hw["h100"].runs + hw["h200"].runs == len(runs)


def test_sources_failures_spend_and_hypotheses(synthetic):
    text = findings(synthetic)
    sources = section(text, "Sources")
    assert re.search(r"\| baseline \| 1 \| 1 \| 0 \| 0 \| 0 \|", sources)
    assert "came from" in sources
    failures = section(text, "Failures")
    assert re.search(r"Counts: oom \d+\.", failures), failures
    assert re.search(r"Pattern: all \d+ oom failures had depth ≥ 14 and window_pattern=L \(\d+ of the \d+ finished "
                     r"runs there failed this way\)", failures), failures
    spend = section(text, "Spend")
    store = Store(synthetic / "state.sqlite")
    workers = sum(e.result.cost_usd for e in store.experiments() if e.result)
    store.close()
    assert f"Workers: ${workers:.2f}; LLM: $1.25 (1 call); total ${workers + 1.25:.2f}." in spend
    assert "Cost per improvement" in spend
    assert "cost-aware stopping rule fired" in spend and "estimated savings $12.50" in spend
    hyp = section(text, "LLM hypotheses")
    assert "hypotheses held" in hyp and "hypothesis" in hyp


def test_plots_are_non_empty_pngs(synthetic):
    from matplotlib.image import imread

    for name in ("progress.png", "effects.png", "hardware.png"):
        path = synthetic / "plots" / name
        assert path.stat().st_size > 10_000, name
        img = imread(path)
        assert img.ndim == 3 and img.shape[0] > 300 and float(img[..., :3].std()) > 0.05, name
    assert "![progress](plots/progress.png)" in findings(synthetic)


def test_report_is_idempotent(synthetic, tmp_path):
    before = {p.name: p.read_bytes() for p in [synthetic / "findings.md", *sorted((synthetic / "plots").iterdir())]}
    written = write_reports(synthetic, gp=GPSurrogate)
    assert [p.name for p in written] == ["findings.md", "progress.png", "effects.png", "hardware.png"]
    after = {p.name: p.read_bytes() for p in [synthetic / "findings.md", *sorted((synthetic / "plots").iterdir())]}
    assert after == before


def test_target_hardware_and_warm_start_in_the_headline(tmp_path):
    config = {"space": {"params": SPACE}, "campaign": {"target_hardware": "h100"}}
    d = write_campaign(tmp_path / "c", synthetic_runs(), config)
    store = Store(d / "state.sqlite")
    store.set_meta("warm_start", [{"name": "older", "dir": "runs/older", "n": 42}])
    store.close()
    data = load_campaign(d)
    text = render(data, analyze(data, GPSurrogate), None, {}, [])
    head = section(text, "Headline")
    assert re.search(r"\*\*Best single run val_bpb [\d.]+\*\* by e\d{4} \[\w+\] on h100 \(the target hardware\)", head), head
    assert re.search(r"\*\*Best single run on any hardware val_bpb [\d.]+\*\* by e\d{4} \[\w+\] on h200", head), head
    assert re.search(r"\*\*Recommended: val_bpb [\d.]+ \(1 run, unconfirmed\)\*\* by e\d{4} \[\w+\] on h100 \(the "
                     r"target hardware\)", head), head
    assert "Warm-started with 42 results of campaign older (runs/older)" in section(text, "Progress")
    assert "judged on h100" in text


def test_too_few_results_fall_back_to_rank_correlations(tmp_path):
    data = load_campaign(write_campaign(tmp_path / "c", synthetic_runs(n=9)[:9]))
    text = render(data, analyze(data, GPSurrogate), None, {}, [])
    effects = section(text, "What mattered: main effects")
    assert re.search(r"Too few results for an ANOVA \(n=\d+, need > \d+\)", effects), effects
    assert "Spearman" in effects and "rho =" in effects
    assert "Needs the main-effects ANOVA" in section(text, "Interactions")


def nan_metric(p: Mapping[str, Any], hw: str) -> float:
    return float("nan")


DEGENERATE: dict[str, tuple[list, dict | None, Any]] = {
    "only the baseline": (synthetic_runs()[:1], None, None),
    "everything crashed": (synthetic_runs(n=12), None, lambda p, hw: None),
    "constant metric": (synthetic_runs(n=12), None, lambda p, hw: 1.0),
    "nan metrics": (synthetic_runs(n=12), None, nan_metric),
    "one parameter": ([({"lr": 10 ** -(1 + i / 10)}, "cpu", "sobol", "") for i in range(20)],
                      {"space": {"params": {"lr": SPACE["lr"]}}}, lambda p, hw: 1 + p["lr"]),
    "only categorical params": ([({"window_pattern": w}, "cpu", "grid", "") for w in ["L", "SL", "SSSL"] * 6],
                                {"space": {"params": {"window_pattern": SPACE["window_pattern"]}}},
                                lambda p, hw: {"L": 1.0, "SL": 1.1, "SSSL": 1.2}[p["window_pattern"]]),
    "no stored config": (synthetic_runs(n=30), {}, None),
}


@pytest.mark.parametrize("case", list(DEGENERATE))
def test_degenerate_campaigns_still_get_a_report(tmp_path, case):
    runs, config, metric = DEGENERATE[case]
    d = write_campaign(tmp_path / "c", runs, config, metric)
    written = write_reports(d, gp=GPSurrogate)
    text = findings(d)
    assert written[0] == d / "findings.md" and text.startswith("# Findings: campaign synthetic")
    assert "could not compute" not in text, text
    for p in written[1:]:
        assert p.stat().st_size > 1000
    if case in ("everything crashed", "nan metrics"):
        assert "No successful experiment yet" in text
    if case == "constant metric":
        assert "is the same (1) in every successful result" in text
    if case == "only categorical params":
        assert "best L, worst SSSL" in text
    if case == "no stored config":
        assert "inferred from the experiments" in text


def test_unreadable_store_is_said_in_findings(tmp_path):
    (tmp_path / "state.sqlite").write_bytes(b"not a database" * 100)
    assert write_reports(tmp_path) == [tmp_path / "findings.md"]
    assert "could not be read" in findings(tmp_path)


def test_report_command_needs_a_campaign(tmp_path):
    with pytest.raises(ConfigError, match=r"campaign.name: no campaign at .* \(no state.sqlite\)"):
        report_command({"campaign": {"dir": str(tmp_path / "nope")}})


def test_hybrid_report_without_a_campaign_is_one_config_error_line(tmp_path):
    p = subprocess.run([sys.executable, "-m", "hybrid", "report", "campaign.name=nothing-here"], cwd=tmp_path,
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 2
    assert p.stderr.strip().splitlines() == [
        "ConfigError: campaign.name: no campaign at runs/nothing-here (no state.sqlite); give the name of a "
        "campaign under runs/, or campaign.dir=PATH"]


THIRD_PARTY_LOG = re.compile(r"matplotlib|fontTools|PIL\b|font cache|fontManager|findfont", re.IGNORECASE)


@pytest.mark.slow
def test_end_to_end_on_the_example_target_then_report(tmp_path):
    """A real campaign on the example target, mirrored to MLflow, on a machine whose matplotlib has
    no font cache yet (a fresh MPLCONFIGDIR); then ``hybrid report`` with the campaign's name:
    findings.md (with its GP slices) and plots written, their paths printed, uploaded to the
    campaign's MLflow run, and not one log line of matplotlib's in either output."""
    env = {**os.environ, "MPLCONFIGDIR": str(tmp_path / "mpl")}
    p = subprocess.run([sys.executable, "-m", "hybrid", "target=example", "surrogate=none", "proposer=sobol", "budget.max_experiments=8",
                        "target.env.EXAMPLE_SECONDS=0.2", "campaign.progress=plain", "campaign.poll_interval_s=0.05",
                        "backend.workers=4"], cwd=tmp_path, capture_output=True, text=True, timeout=180, env=env)
    assert p.returncode == 0, p.stdout + p.stderr
    assert not THIRD_PARTY_LOG.search(p.stdout + p.stderr), p.stdout + p.stderr
    (tmp_path / "runs" / "example-sobol-s0" / "findings.md").unlink()
    q = subprocess.run([sys.executable, "-m", "hybrid", "report", "target=example", "proposer=sobol"], cwd=tmp_path,
                       capture_output=True, text=True, timeout=180, env=env)
    assert q.returncode == 0, q.stdout + q.stderr
    d = "runs/example-sobol-s0"
    run_id = load_campaign(tmp_path / d).parent_run_id
    assert q.stdout.splitlines() == [f"{d}/findings.md", f"{d}/plots/progress.png", f"{d}/plots/effects.png",
                                     f"{d}/summary.txt", f"{d}/summary.json", f"uploaded to MLflow run {run_id}"]
    assert q.stderr == ""
    text = findings(tmp_path / d)
    assert "# Findings: campaign example-sobol-s0" in text and "8 experiments:" in text
    assert re.search(r"Best single run val_bpb [\d.]+\*\* by e\d{4} \[(sobol|baseline|replicate|confirm)\] on cpu", text), text
    assert re.search(r"\*\*Recommended: val_bpb [\d.]+( ± [\d.e-]+)? \(\d runs?(, unconfirmed)?\)\*\*", text), text
    assert "could not compute" not in text and "GP posterior mean" in section(text, "Response slices (GP)")

    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}")
    assert "findings.md" in {a.path for a in client.list_artifacts(run_id)}
    assert {a.path for a in client.list_artifacts(run_id, "plots")} == {"plots/progress.png", "plots/effects.png"}


QUIET_SCRIPT = """
import logging, sys
from pathlib import Path
logging.basicConfig(level=logging.DEBUG, stream=sys.stdout)  # as chatty as a Hydra job's logging, and more
from hybrid.reports import write_reports
from surrogate.gp import GPSurrogate
written = write_reports(Path(sys.argv[1]), gp=GPSurrogate)
print("written", len(written))
"""


def test_a_report_prints_no_matplotlib_log_lines(synthetic, tmp_path):
    """Root logging at DEBUG (Hydra's job logging prints INFO) and no font cache yet: writing the
    report and its plots logs nothing of matplotlib, fontTools or PIL."""
    d = tmp_path / "copy"
    shutil.copytree(synthetic, d)
    env = {**os.environ, "MPLCONFIGDIR": str(tmp_path / "mpl")}
    p = subprocess.run([sys.executable, "-c", QUIET_SCRIPT, str(d)], capture_output=True, text=True, timeout=300,
                       env=env, cwd=ROOT)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "written 4" in p.stdout
    chatty = [line for line in (p.stdout + p.stderr).splitlines() if THIRD_PARTY_LOG.search(line)]
    assert chatty == [], chatty[:5]
    assert (tmp_path / "mpl").is_dir()  # matplotlib did build its font cache in that process


def test_a_failed_upload_is_one_warning_line(tmp_path, capsys):
    config = {"space": {"params": SPACE}, "tracking": {"name": "mlflow", "uri": "http://127.0.0.1:9"}}
    d = write_campaign(tmp_path / "c", synthetic_runs(n=3), config)
    store = Store(d / "state.sqlite")
    store.set_meta("mlflow_parent_run_id", "0123456789abcdef")
    store.close()
    report_command({"campaign": {"dir": str(d)}}, make_tracker=make_tracker)
    out, err = capsys.readouterr()
    assert out.splitlines()[0] == str(d / "findings.md")
    assert len(err.strip().splitlines()) == 1 and err.startswith("warning: MLflow upload failed")


def test_hybrid_report_writes_hypotheses_md_again(synthetic, tmp_path, capsys):
    d = tmp_path / "copy"
    shutil.copytree(synthetic, d)
    (d / "hypotheses.md").unlink(missing_ok=True)
    report_command({"campaign": {"dir": str(d)}})
    out = capsys.readouterr().out.splitlines()
    assert str(d / "hypotheses.md") in out
    text = (d / "hypotheses.md").read_text()
    assert text.startswith("# LLM hypotheses") and "hypothesis 3: lower lr helps" in text
