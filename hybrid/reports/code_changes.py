"""findings.md's "Code changes": every code variant the campaign proposed, what it did, and the winner's diff.

One row per variant, in the order proposed (ok and rejected): its hypothesis, parent, diff stat,
status (a rejected one with its reason: it never ran), runs and failures, its best result and its
effect against the code it was built on (the best of its parent's code, the unchanged code for a
first-level variant), judged on the hardware where "best" is judged (:func:`hybrid.history.judged_hardware`),
and whether it held. "Held" compares bests (:func:`hybrid.noise.held`): when some configuration ran
twice on the same code on that hardware, the pooled sd of those replicates is the run-to-run noise
and a difference within 2 sd is "within noise" (the one rule of findings.md, the live view and the
LLM's prompt: :func:`hybrid.noise.significant`); without replicates the bests are compared as they
are and the table says how many runs each had.

The diffs are the store's (``Store.variants``): ``variants/<id>.diff`` in the campaign dir holds the
same text (``write_variant_diffs`` writes a missing one), a unified diff against the target's
tree as the campaign found it, which ``git apply`` or ``patch -p1`` applies in ``target.workdir``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from hybrid.history import clip, counted, fmt_value, judged_hardware, successes
from hybrid.noise import SIGNIFICANT_SIGMAS, held, noise_by_hardware
from hybrid.reports.summary import variant_diff_path
from hybrid.store import VariantRecord
from hybrid.types import Experiment, Objective
from hybrid.variants import diff_stat

__all__ = ["CodeChanges", "VariantRow", "code_changes", "section_code_changes", "write_variant_diffs"]

MAX_DIFF_LINES = 200  # of the winner's diff shown inline; the whole diff is in its file
UNCHANGED = "unchanged code"


@dataclass(frozen=True)
class VariantRow:
    """One variant's line of the table."""

    id: str
    hypothesis: str
    parent: str | None
    stat: str  # "1 file, +2 -1" ("" when it has no diff: rejected)
    status: str  # "ok" | "rejected" | "not in the store" (experiments name it, the store has no record)
    reason: str  # why it was rejected
    runs: int  # experiments that ran it (a lost one re-run counts once)
    failed: int
    n: int  # successful runs on the judged hardware
    best: float | None  # its best there
    base_n: int  # successful runs of its base code there
    base_best: float | None
    held: str  # "yes" | "no" | "within noise" | "" (rejected, not run, no result to compare)

    @property
    def effect(self) -> float | None:
        """Its best minus its base code's best, in the metric (None: one of them has no result)."""
        return None if self.best is None or self.base_best is None else self.best - self.base_best


@dataclass(frozen=True)
class CodeChanges:
    hardware: str | None  # where bests are judged (None: no success anywhere)
    unchanged_runs: int
    unchanged_n: int
    unchanged_best: float | None
    rows: list[VariantRow]
    noise: float | None  # pooled sd of replicates (None: no configuration ran twice)
    noise_groups: int
    winner: Experiment | None  # the best experiment, when it ran a variant
    records: dict[str, VariantRecord]


def _best(exps: Sequence[Experiment], objective: Objective, hardware: str | None) -> tuple[int, float | None]:
    values = [v for e, v in successes(exps, objective) if e.hardware == hardware]
    if not values:
        return 0, None
    return len(values), (min(values) if objective.direction == "minimize" else max(values))


def code_changes(exps: Sequence[Experiment], records: Sequence[VariantRecord], objective: Objective,
                 target_hardware: str | None, best: Experiment | None) -> CodeChanges | None:
    """The table of the section; None when the campaign has no code variants."""
    known = {r.variant.id: r for r in records}
    ran = [v for v in dict.fromkeys(e.variant for e in exps) if v is not None and v not in known]
    if not known and not ran:
        return None
    hw = judged_hardware(exps, objective, target_hardware)
    measured = noise_by_hardware(exps, objective).get(hw) if hw is not None else None  # where the bests are compared
    noise, n_groups = (measured.sd, measured.n_configs) if measured is not None else (None, 0)
    by: dict[str | None, list[Experiment]] = {}
    for e in counted(exps):
        by.setdefault(e.variant, []).append(e)
    rows = []
    for vid in [*known, *ran]:
        rec = known.get(vid)
        mine = by.get(vid, [])
        parent = rec.variant.parent if rec else None
        n, value = _best(mine, objective, hw)
        base_n, base_value = _best(by.get(parent, []), objective, hw)
        rows.append(VariantRow(
            vid, rec.variant.hypothesis if rec else "", parent, diff_stat(rec.diff) if rec and rec.diff else "",
            rec.status if rec else "not in the store", rec.reason if rec else "", len(mine),
            sum(e.state.is_failure() for e in mine), n, value, base_n, base_value,
            held(value, base_value, noise, objective)))
    u_n, u_best = _best(by.get(None, []), objective, hw)
    winner = best if best is not None and best.variant is not None else None
    return CodeChanges(hw, len(by.get(None, [])), u_n, u_best, rows, noise, n_groups, winner, known)


# ---- the section ----------------------------------------------------------------------------------
def _cell(x: object) -> str:
    return str(x).replace("|", "\\|").replace("\n", " ")


def _effect(row: VariantRow) -> str:
    if row.effect is None:
        return "n/a"
    pct = f" ({row.effect / abs(row.base_best) * 100:+.2f}%)" if row.base_best else ""  # type: ignore[arg-type]
    return f"{row.effect:+.4g}{pct}; n {row.n} vs {row.base_n}"


def _held_cell(row: VariantRow, hardware: str | None) -> str:
    if row.status == "rejected":
        return "never ran"
    if not row.runs:
        return "not run yet"
    if row.best is None:
        return "no (no successful run)" if row.failed == row.runs else f"no result on {hardware} yet"
    if row.base_best is None:
        return "no result of its base code"
    return row.held


def _status(row: VariantRow) -> str:
    return f"rejected: {clip(row.reason, 160)}" if row.status == "rejected" else row.status


def _fence(text: str) -> str:
    """A code fence longer than any run of backticks inside ``text``."""
    longest = max((len(m) for m in re.findall(r"`+", text)), default=0)
    return "`" * max(3, longest + 1)


def section_code_changes(cc: CodeChanges | None, objective: Objective, max_lines: int = MAX_DIFF_LINES,
                         ) -> list[str] | None:
    """The lines of "Code changes" (None: the campaign has no code variants)."""
    if cc is None:
        return None
    m = objective.metric
    where = f" on {cc.hardware}" if cc.hardware else ""
    n_ok = sum(r.status == "ok" for r in cc.rows)
    out = [f"{len(cc.rows)} code variant{'s' * (len(cc.rows) != 1)} proposed: {n_ok} passed the checks, "
           f"{sum(r.status == 'rejected' for r in cc.rows)} rejected (never ran). Best {m}{where}; effect = the "
           f"variant's best minus the best of the code it was built on (its parent, or the unchanged code), "
           f"with the number of successful runs of each.", "",
           "| variant | hypothesis | parent | diff | status | runs | failed | best | effect vs base code | held |",
           "|---|---|---|---|---|---|---|---|---|---|",
           f"| ({UNCHANGED}) | | | | | {cc.unchanged_runs} | | {_value(cc.unchanged_best)} | reference "
           f"(n {cc.unchanged_n}) | |"]
    for r in cc.rows:
        out.append(f"| {r.id} | {_cell(clip(r.hypothesis, 80)) or '(none given)'} | {r.parent or UNCHANGED} | "
                   f"{r.stat or '—'} | {_cell(_status(r))} | {r.runs} | {r.failed} | {_value(r.best)} | "
                   f"{_effect(r)} | {_held_cell(r, cc.hardware)} |")
    if cc.noise is not None:
        out += ["", f"Run-to-run noise: sd {cc.noise:.3g} of {m}, pooled over {cc.noise_groups} configuration"
                f"{'s' * (cc.noise_groups != 1)} run more than once on the same code{where}; \"within noise\": "
                f"the bests differ by less than {SIGNIFICANT_SIGMAS * cc.noise:.3g} ({SIGNIFICANT_SIGMAS:g} sd)."]
    else:
        out += ["", f"No configuration ran twice on the same code{where}, so the run-to-run noise is unknown: "
                "held compares the best of each code as it is (see n)."]
    out += ["", *_winner(cc, m, max_lines)]
    return out


def _value(v: float | None) -> str:
    return "n/a" if v is None else fmt_value(v)


def _winner(cc: CodeChanges, metric: str, max_lines: int) -> list[str]:
    w = cc.winner
    if w is None:
        return ["The best result ran the unchanged code: no variant beat it."]
    rec = cc.records.get(w.variant or "")
    path = variant_diff_path(str(w.variant))
    head = (f"The best result, {w.id} ({metric} {_value(w.value(metric))} on {w.hardware}), ran variant "
            f"**{w.variant}**")
    if rec is None or not rec.diff:
        return [head + f"; its diff is not in the store (expected at {path})."]
    stacked = f" It builds on {rec.variant.parent}; the diff includes its parent's edits." if rec.variant.parent else ""
    lines = rec.diff.splitlines()
    shown = lines[:max_lines]
    more = len(lines) - len(shown)
    fence = _fence(rec.diff)
    out = [head + (f": {_cell(clip(rec.variant.hypothesis, 300))}" if rec.variant.hypothesis else "") + ".",
           "", f"Its diff ({diff_stat(rec.diff)}), against the target's files as the campaign found them, is "
           f"`{path}` in the campaign dir: in target.workdir, `git apply <campaign dir>/{path}` (or "
           f"`patch -p1 < <campaign dir>/{path}`) gives the winning code.{stacked}", "",
           fence + "diff", *shown, fence]
    if more:
        out += ["", f"({more} more line{'s' * (more != 1)} in {path}.)"]
    return out


# ---- the files ------------------------------------------------------------------------------------
def write_variant_diffs(campaign_dir: Path, records: Sequence[VariantRecord]) -> list[Path]:
    """``variants/<id>.diff`` of every variant that passed the checks, from the store: a missing file
    is written (atomically), an existing one left as it is. Returns every such file, in the order proposed."""
    out = []
    for rec in records:
        if not rec.ok or not rec.diff:
            continue
        path = Path(campaign_dir) / variant_diff_path(rec.variant.id)
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(path.name + ".tmp")
            tmp.write_text(rec.diff, encoding="utf-8")
            os.replace(tmp, path)
        out.append(path)
    return out
