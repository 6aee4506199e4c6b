"""The restructuring of issue 12 changed no result: a campaign with the same seed and the same explicit
overrides on the example target runs exactly the experiments it ran before (golden file written by the
code before the change: tests/golden/example-optuna-sync-10.tsv). Floats in params are compared at 10
significant digits: another numpy/optuna build may propose a value one last digit apart (the example
target draws its noise from the same rounding)."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

GOLDEN = Path(__file__).parent / "golden" / "example-optuna-sync-10.tsv"
COLUMNS = ("experiment_id", "wave", "status", "val_bpb", "memory_gb", "source", "params")


def rounded(row: list[str]) -> list[object]:
    params = {k: f"{v:.10g}" if isinstance(v, float) else v for k, v in json.loads(row[-1]).items()}
    return [*row[:-1], params]


def test_same_seed_same_overrides_same_experiments(tmp_path: Path) -> None:
    args = ["target=example", "space=example", "proposer=optuna", "surrogate=none", "campaign.mode=sync",
            "backend.workers=2", "budget.max_experiments=10", "target.env.EXAMPLE_SECONDS=0", "tracking=none",
            "campaign.findings=false", "campaign.progress=none", "campaign.name=golden",
            "campaign.replicates=0", "campaign.confirm_top_k=0",  # (issue 16's repeats: the exploration itself is unchanged)
            f"campaign.dir={tmp_path / 'golden'}"]
    p = subprocess.run([sys.executable, "-m", "hybrid", *args], cwd=tmp_path, capture_output=True, text=True,
                       timeout=300)
    assert p.returncode == 0, p.stderr
    with open(tmp_path / "golden" / "results.tsv", newline="") as f:
        rows = [[r[c] for c in COLUMNS] for r in csv.DictReader(f, delimiter="\t")]
    with open(GOLDEN, newline="") as f:
        golden = list(csv.reader(f, delimiter="\t"))
    assert [rounded(r) for r in rows] == [rounded(r) for r in golden]
