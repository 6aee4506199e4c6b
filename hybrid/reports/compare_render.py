"""The files of a strategy comparison: ``comparison.md``, ``comparison.json`` and ``comparison.png``.

:mod:`hybrid.reports.compare` builds the :class:`~hybrid.reports.compare.Comparison`; this module
only shows it: the table and the jobs (markdown), the same with the curves (JSON), the median
best-so-far curves with their IQR bands (PNG, no version stamp), and the lines the CLI prints.
The same comparison gives the same bytes.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hybrid.reports.plots import quiet_matplotlib_logs

if TYPE_CHECKING:  # compare imports this module: the types only, for the annotations
    from hybrid.reports.compare import Comparison, JobRun, Strategy

__all__ = ["as_json", "markdown", "plot", "summary_text", "write_atomic"]


def _g(v: float | None) -> str:
    return "—" if v is None else f"{v:.6g}"


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.1f} min" if seconds < 5400 else f"{seconds / 3600:.1f} h"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _recommended(r: JobRun) -> str:
    """A job's recommendation: ``0.98231 ± 0.00017 (2 runs, confirmed)``; ``—`` without a result."""
    if r.recommended is None:
        return "—"
    sd = "" if r.recommended_sd is None else f" ± {r.recommended_sd:.3g}"
    runs = f"{r.recommended_n} run{'s' * (r.recommended_n != 1)}"
    return f"{_g(r.recommended)}{sd} ({runs}, {'confirmed' if r.recommended_confirmed else 'unconfirmed'})"


def _rec_median(s: Strategy) -> str:
    return "—" if s.rec_median is None else f"{_g(s.rec_median)} [{_g(s.rec_q25)}, {_g(s.rec_q75)}]"


def markdown(c: Comparison) -> str:
    m, w = c.objective.metric, c.winner
    lines = [f"# Strategy comparison: {c.sweep_dir}", "",
             f"{m} ({c.objective.direction}) over {len(c.runs)} jobs in {len(c.strategies)} strategies (jobs that "
             "differ only by seed are one strategy)."]
    if c.common:
        lines.append("Common overrides: " + " ".join(f"`{o}`" for o in c.common) + ".")
    if w is not None:
        lines += ["", f"**Winner: {w.label}**: median best single run {m} {_g(w.median)} over {len(w.with_result)} "
                      f"runs, reached by its median curve at experiment {w.evals_to_reach}; its runs recommend "
                      f"{m} {_g(w.rec_median)} (median; {w.n_confirmed} of {len(w.with_result)} confirmed)."]
    else:
        lines += ["", f"No strategy has a {m} result yet."]
    lines += ["", f"| strategy | runs | recommended: median [q25, q75] | confirmed | median best single run [q25, q75] "
                  f"| mean ± sd | best single run | experiments | spend $ | elapsed "
                  f"| failures | to reach {_g(w.median if w else None)} | ratio | winner needs |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for s in c.strategies:
        seeds = ",".join(str(r.seed) for r in s.runs if r.seed is not None)
        missing = len(s.runs) - len(s.with_result)
        runs = f"{len(s.runs)}" + (f" (seeds {seeds})" if seeds else "") + (f", {missing} no result" if missing else "")
        med = "—" if s.median is None else f"{_g(s.median)} [{_g(s.q25)}, {_g(s.q75)}]"
        mean = "—" if s.mean is None else _g(s.mean) + ("" if s.sd is None else f" ± {s.sd:.3g}")
        fails = "—" if s.failure_rate is None else f"{s.failure_rate:.0%}"
        confirmed = f"{s.n_confirmed} of {len(s.with_result)}" if s.with_result else "—"
        lines.append(f"| {f'**{_cell(s.label)}** (winner)' if s.winner else _cell(s.label)} | {runs} | {_rec_median(s)} "
                     f"| {confirmed} | {med} | {mean} "
                     f"| {'—' if s.best is None else f'{_g(s.best)} (job {s.best_job})'} | {s.median_experiments:g} "
                     f"| {s.median_spend_usd:.2f} | {_duration(s.median_elapsed_s)} | {fails} | {s.to_reach} "
                     f"| {s.ratio} | {s.winner_needs} |")
    lines += ["", "*Recommended*: each campaign's answer, as its summary.txt gives it: the best mean of a configuration "
              "run at least twice on its judged hardware (*confirmed*), else its best estimate (unconfirmed); "
              "*confirmed*: how many of the strategy's runs have a confirmed one. *Best single run*: each campaign's "
              "luckiest result, which noise flatters; the curves, the winner and *to reach* are about it. "
              "Medians, means and curves are over the runs with a result; experiments, spend and elapsed (active "
              "campaign time) are medians over the runs that started; failures: crashed or timed-out experiments "
              "over finished ones. *to reach*: experiments the strategy's median best-so-far curve needs to reach "
              "the winner's final median; *ratio*: that over the winner's own count (>x: not reached within its "
              "runs). *winner needs*: k of n, the winner's median curve reaches this strategy's final median after "
              "k experiments, this strategy's after n.",
              "", "![median best-so-far per strategy](comparison.png)", "", "## Jobs", "",
              f"| job | strategy | seed | campaign dir | recommended {m} | best single run {m} | experiments | failed "
              "| status |",
              "|---|---|---|---|---|---|---|---|---|"]
    label = {id(r): s.label for s in c.strategies for r in s.runs}
    for r in c.runs:
        status = f"no result: {r.note}" if r.best is None else r.status + (f": {r.stop_reason}" if r.stop_reason else "")
        lines.append(f"| {r.job} | {_cell(label[id(r)])} | {'' if r.seed is None else r.seed} | {r.campaign_dir} "
                     f"| {_recommended(r)} | {_g(r.best)} | {r.n_experiments} | {r.n_failed} | {_cell(status)} |")
    if c.left_out:
        lines += ["", "## Not compared", ""] + [f"- `{job}`: {reason}" for job, reason in c.left_out]
    return "\n".join(lines) + "\n"


def as_json(c: Comparison) -> dict[str, Any]:
    label = {id(r): s.label for s in c.strategies for r in s.runs}
    return {
        "version": 1, "sweep_dir": c.sweep_dir, "objective": asdict(c.objective), "common_overrides": c.common,
        "winner": c.winner.label if c.winner else None,
        "strategies": [{**{k: v for k, v in asdict(s).items() if k != "runs"}, "jobs": [r.job for r in s.runs],
                        "seeds": [r.seed for r in s.runs], "runs": len(s.runs), "runs_with_result": len(s.with_result)}
                       for s in c.strategies],
        "jobs": [{"strategy": label[id(r)], **{k: v for k, v in asdict(r).items() if k != "overrides"}, "best": r.best}
                 for r in c.runs],
        "left_out": [{"job": job, "reason": reason} for job, reason in c.left_out],
    }


def plot(c: Comparison, path: Path) -> None:
    """Median best-so-far per strategy with its IQR band: over experiments, and over active minutes."""
    quiet_matplotlib_logs()  # before matplotlib's first import: it logs while it builds its font cache
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    from matplotlib.ticker import MaxNLocator

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    colors = plt.get_cmap("tab10").colors  # type: ignore[attr-defined]
    for i, s in enumerate(c.strategies):
        if s.median is None:
            continue
        name = f"{s.label} ({len(s.with_result)} runs)" + (" - winner" if s.winner else "")
        for ax, x, curve in ((axes[0], np.arange(1, len(s.curve["median"]) + 1), s.curve),
                             (axes[1], np.array(s.time_curve["minutes"]), s.time_curve)):
            med, lo, hi = (np.array([np.nan if v is None else v for v in curve[k]], dtype=float)
                           for k in ("median", "q25", "q75"))
            ax.step(x, med, where="post", color=colors[i % 10], lw=2.2 if s.winner else 1.4, label=name)
            ax.plot(x[-1:], med[-1:], "o", color=colors[i % 10], ms=4)  # where the strategy's runs ended
            ax.fill_between(x, lo, hi, step="post", color=colors[i % 10], alpha=0.18, lw=0)
    for ax, xlabel in ((axes[0], "experiments (creation order)"), (axes[1], "active wall-clock minutes")):
        ax.set_xlabel(xlabel)
        ax.set_ylabel(f"best {c.objective.metric} so far ({c.objective.direction})")
        ax.grid(alpha=0.3)
        ax.set_title(f"median best-so-far [IQR] vs {xlabel.split(' (')[0]}", fontsize=10)
    axes[0].xaxis.set_major_locator(MaxNLocator(integer=True))
    if c.winner is not None:
        axes[0].legend(fontsize=8)
    fig.tight_layout()
    tmp = path.with_name(path.name + ".tmp")
    fig.savefig(tmp, format="png", dpi=100, metadata={"Software": None})  # no version stamp: same bytes
    plt.close(fig)
    os.replace(tmp, path)


def write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def summary_text(c: Comparison, paths: Sequence[Path]) -> str:
    """What the CLI prints: one line per strategy, the winner, and where the files are."""
    lines = [f"comparison of {len(c.strategies)} strategies ({len(c.runs)} jobs), "
             f"{c.objective.metric} ({c.objective.direction}):"]
    width = max(len(s.label) for s in c.strategies)
    for s in c.strategies:
        med = ("no result" if s.median is None else f"recommended median {_rec_median(s)} ({s.n_confirmed} "
               f"confirmed), best single run median {_g(s.median)} [{_g(s.q25)}, {_g(s.q75)}]")
        lines.append(f"  {s.label:<{width}}  {len(s.with_result)}/{len(s.runs)} runs  {med}  to reach "
                     f"{s.to_reach} (ratio {s.ratio})" + ("  <- winner" if s.winner else ""))
    if c.left_out:
        lines.append(f"  not compared: {len(c.left_out)} job(s), see comparison.md")
    return "\n".join([*lines, f"comparison: {paths[0]} (+ {paths[1].name}, {paths[2].name})"])
