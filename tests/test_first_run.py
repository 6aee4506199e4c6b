"""The first command shows the product: the README's first command ends in a bare `hybrid`, which
runs proposer=hybrid with the GP surrogate on the GPT target (gpt_tiny on the CPU, a short budget per
experiment), and prepares the data itself when the machine has none."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from hybrid.cli import compose
from hybrid.store import Store
from hybrid.types import ExperimentState

ROOT = Path(__file__).resolve().parents[1]


def test_the_readmes_first_command_runs_hybrid_with_no_overrides():
    readme = (ROOT / "README.md").read_text()
    first = re.search(r"```bash\n(.*?)\n```", readme, re.DOTALL)
    assert first is not None
    assert first.group(1).strip().endswith("&& .venv/bin/hybrid"), first.group(1)


def test_the_defaults_are_the_product_on_the_gpt_target():
    cfg = compose([])
    assert cfg["target"]["name"] == "gpt" and cfg["proposer"]["name"] == "hybrid"
    assert cfg["surrogate"]["name"] == "gp" and cfg["backend"]["name"] == "local"
    assert cfg["backend"]["workers"] == 2 and cfg["budget"]["max_experiments"] == 12  # target_budget/gpt.yaml
    assert "optim.matrix_lr" in cfg["space"]["params"]  # gpt_tiny's
    command = cfg["target"]["command"]
    assert "preset=gpt_tiny" in command and "threads=1" in command and "time_budget_s=15" in command
    assert cfg["target"]["check_command"] == command + " check=true"


def test_the_example_target_keeps_its_old_defaults():
    """`target=example` (the quickstart) keeps the old budget; with surrogate=none it is the old
    default campaign exactly."""
    cfg = compose(["target=example", "surrogate=none"])
    assert cfg["budget"] == {"max_experiments": 20, "max_hours": None, "max_cost_usd": None}
    assert cfg["target"]["name"] == "example" and cfg["target"]["check_command"] is None
    assert set(cfg["space"]["params"]) == {"lr", "warmup_ratio", "weight_decay", "depth", "window_pattern"}
    assert cfg["campaign"]["name"] == "example-hybrid-s0" and cfg["surrogate"]["name"] == "none"


def test_a_budget_on_the_command_line_wins_over_the_targets():
    assert compose(["budget.max_experiments=3"])["budget"]["max_experiments"] == 3
    assert compose(["target=gpt_h100"])["budget"]["max_experiments"] == 20  # it has no budget of its own


@pytest.mark.slow
def test_first_run_on_a_machine_without_data(tmp_path):
    """`hybrid` with its defaults (fewer experiments) in a fresh directory on a machine with no
    prepared data: the first experiments prepare it once, every experiment trains, the GP ranks."""
    cache = tmp_path / "cache"
    env = {**os.environ, "HYBRID_CACHE": str(cache), "MPLCONFIGDIR": str(tmp_path / "mpl")}
    p = subprocess.run([sys.executable, "-m", "hybrid", "budget.max_experiments=4", "campaign.progress=plain"],
                       cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stdout[-4000:] + p.stderr[-4000:]
    assert "campaign gpt-hybrid-s0: stopped: budget.max_experiments reached (4)" in p.stdout
    assert "experiments: 4 (4 done, 0 failed, 0 cancelled)" in p.stdout
    assert re.search(r"recommended: val_bpb \d\.\d+ .* baseline \d\.\d+", p.stdout), p.stdout
    assert re.search(r"best single run: val_bpb \d\.\d+ by e000\d on cpu", p.stdout), p.stdout
    campaign = tmp_path / "runs" / "gpt-hybrid-s0"
    store = Store.open_read_only(campaign / "state.sqlite")
    try:
        exps = store.experiments()
        config = store.get_meta("config")
    finally:
        store.close()
    assert [e.state for e in exps] == [ExperimentState.DONE] * 4
    assert (config["proposer"]["name"], config["surrogate"]["name"]) == ("hybrid", "gp")
    logs = [(Path(e.workdir) / "run.log").read_text() for e in exps]
    assert sum("prepare: ready at" in log for log in logs) == 1  # prepared once, by one of the first two
    assert (cache / "offline-v2048" / "manifest.json").is_file()
    assert (campaign / "results.tsv").is_file() and (campaign / "findings.md").is_file()
