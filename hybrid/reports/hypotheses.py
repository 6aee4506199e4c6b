"""``hypotheses.md``: every LLM hypothesis with what its experiment showed.

The outcome of each hypothesis (new best, beat the baseline, no better, failed) is
:func:`hybrid.history.hypothesis_outcomes`'; this module only writes the table.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from hybrid.history import hypothesis_outcomes
from hybrid.types import Experiment, Objective

__all__ = ["write_hypotheses_md"]


def write_hypotheses_md(path: Path, exps: Sequence[Experiment], objective: Objective) -> bool:
    """Write ``hypotheses.md``. False (nothing written) when the campaign had no finished
    LLM-proposed experiment."""
    rows = [o for o in hypothesis_outcomes(exps, objective) if o.outcome != "running"]
    if not rows:
        return False
    held = sum(o.improved for o in rows)
    lines = [f"# LLM hypotheses and what the experiments showed ({objective.metric}, {objective.direction})", "",
             f"{held} of {len(rows)} finished LLM experiments improved on the best result before them or on "
             "the baseline.", "",
             f"| experiment | {objective.metric} | outcome | hypothesis |", "|---|---|---|---|"]
    for o in rows:
        value = "" if o.value is None else f"{o.value:.6f}"
        outcome = f"{o.outcome} ({o.detail})" if o.detail else o.outcome
        text = o.hypothesis.replace("|", "\\|").replace("\n", " ")
        lines.append(f"| {o.experiment_id} | {value} | {outcome.replace('|', '/')} | {text} |")
    tmp = path.with_suffix(".md.tmp")
    tmp.write_text("\n".join(lines) + "\n")
    os.replace(tmp, path)
    return True
