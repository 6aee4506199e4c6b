"""examples/code_variants_demo.py end to end: a campaign on target=gpt (gpt_tiny, CPU, two local
workers) whose code variants come from a scripted Claude behind the real anthropic SDK. A variant
runs in its own snapshot (the user's model/ never changes), the broken one is rejected before it
runs, findings.md shows the code changes, and an ok variant's diff applies to a clean model/."""

from __future__ import annotations

import csv
import hashlib
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from hybrid.store import Store

ROOT = Path(__file__).resolve().parents[1]
GPT = ROOT / "model" / "gpt.py"
GELU = "        return self.c_proj(F.gelu(self.c_fc(x)))  # GeLU: (B, T, 4C) -> (B, T, C)"


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.slow
def test_the_demo_runs_code_variants_in_snapshots_and_reports_them(tmp_path: Path) -> None:
    before = {p.name: digest(p) for p in (ROOT / "model").glob("*.py")}
    camp = tmp_path / "cv"
    out = subprocess.run([sys.executable, str(ROOT / "examples" / "code_variants_demo.py"), "--experiments", "4",
                          "--seconds", "2", "--workers", "2", "--dir", str(camp)],
                         capture_output=True, text=True, timeout=280, cwd=tmp_path)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    with open(camp / "results.tsv") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    assert len(rows) == 4
    store = Store.open_read_only(camp / "state.sqlite")
    records = {r.variant.id: r for r in store.variants()}
    store.close()

    # a variant ran, in a snapshot holding its edit; the user's files are unchanged
    ran = [r for r in rows if r["variant"] and r["status"] == "done"]
    assert ran, rows
    gelu = next(v for v, r in records.items() if r.ok and "GeLU" in r.variant.hypothesis)
    on_gelu = [r["experiment_id"] for r in ran if r["variant"] == gelu or
               records[r["variant"]].variant.parent == gelu]
    assert on_gelu, rows
    snapshot_gpt = (camp / "experiments" / on_gelu[0] / "model" / "gpt.py").read_text()
    assert GELU in snapshot_gpt and "F.relu(self.c_fc(x)).square()" not in snapshot_gpt
    assert {p.name: digest(p) for p in (ROOT / "model").glob("*.py")} == before

    # the broken edit: rejected with its reason, never ran
    (broken,) = [r for r in records.values() if not r.ok]
    assert "syntax error" in broken.reason and broken.variant.edits[0].file == "model/gpt.py"
    assert broken.variant.id not in {r["variant"] for r in rows}
    assert f"{broken.variant.id} rejected, never ran: model/gpt.py: syntax error" in out.stdout

    # findings.md has the code changes; each ok variant's diff applies to a clean copy of model/
    findings = (camp / "findings.md").read_text()
    assert "## Code changes" in findings and gelu in findings and broken.variant.id in findings
    clean = tmp_path / "clean"
    shutil.copytree(ROOT / "model", clean / "model", ignore=shutil.ignore_patterns("__pycache__"))
    for vid in {r["variant"] for r in ran}:
        diff = camp / "variants" / f"{vid}.diff"
        assert str(diff) in out.stdout
        check = subprocess.run(["git", "apply", "--check", str(diff)], cwd=clean, capture_output=True, text=True)
        assert check.returncode == 0, check.stderr
    subprocess.run(["git", "apply", str(camp / "variants" / f"{gelu}.diff")], cwd=clean, check=True)
    assert GELU in (clean / "model" / "gpt.py").read_text()
    assert str(camp / "findings.md") in out.stdout
