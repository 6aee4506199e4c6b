"""``results.tsv``: one row per experiment, the campaign's table for people and spreadsheets.

The metric column is named after the objective's metric (``val_bpb`` for the GPT and example
targets), as in autoresearch's results.tsv. ``variant`` is the id of the code variant the experiment
ran (its diff: ``variants/<id>.diff``), empty for the target's unchanged code.

The metric column holds results only (``Experiment.value``): it is empty for a run that is not a
success, whatever its log printed (a crash's NaN, a pruned run's partial metric); such a row's
``status`` says what it is (``crashed``, ``pruned``...) and its description starts with the reason.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Sequence
from pathlib import Path

from hybrid.types import Experiment, Objective

__all__ = ["results_columns", "write_results_tsv"]


def results_columns(objective: Objective) -> tuple[str, ...]:
    """The header of results.tsv: the fourth column is the objective's metric."""
    return ("experiment_id", "wave", "status", objective.metric, "memory_gb", "hardware", "cost_usd", "source",
            "variant", "params", "description")


def write_results_tsv(path: Path, exps: Sequence[Experiment], objective: Objective) -> None:
    """One row per experiment, written atomically (tmp + rename) so readers never see half a file."""
    tmp = path.with_suffix(".tsv.tmp")
    with open(tmp, "w", newline="") as f:
        w = csv.writer(f, delimiter="\t", lineterminator="\n")
        w.writerow(results_columns(objective))
        for e in exps:
            r = e.result
            value = e.value(objective.metric)  # a result, or nothing
            vram = r.metrics.get("peak_vram_mb") if r else None
            desc = e.candidate.rationale
            if r is not None and r.reason:
                desc = f"{r.reason}; {desc}" if desc else r.reason
            w.writerow([
                e.id, e.wave, e.state.name.lower(),
                "" if value is None else f"{value:.6f}",
                "" if vram is None else f"{vram / 1024:.1f}",
                e.hardware,
                "" if r is None else f"{r.cost_usd:.4f}",
                e.source,
                e.variant or "",
                json.dumps(dict(e.params), sort_keys=True),
                desc.replace("\t", " ").replace("\n", " "),
            ])
    os.replace(tmp, path)
