"""Compare the strategies of a Hydra multirun: ``hybrid -m proposer=hybrid,optuna campaign.seed=0,1,2``.

Each job of a sweep leaves ``campaign.json`` in its Hydra output dir (``<sweep dir>/<job num>``,
written by the CLI before its campaign starts): the campaign it runs, where, and the job's
overrides. A *strategy* is a job's overrides less the seed and presentation keys, so jobs that
differ only by seed are the runs of one strategy. Each campaign's ``state.sqlite`` gives its
best-so-far curve over experiments (creation order; a failed experiment keeps the previous best)
and over active wall-clock time; per strategy they become median [q25, q75] curves and a table.

Writes, in the sweep dir (or ``--out``): ``comparison.md`` (table, winner, every job aggregated
and every one left out with the reason), ``comparison.json`` (the same, with the curves) and
``comparison.png`` (median best-so-far with IQR bands). The same inputs give the same bytes.

    hybrid compare runs/multirun/2025-01-01_12-00-00 [--out DIR] [--metric NAME]

``CompareCallback`` (registered in conf/config.yaml under ``hydra.callbacks``) runs it when a
multirun ends.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback

from hybrid.errors import ConfigError, HybridError
from hybrid.types import Objective

POINTER = "campaign.json"
SEED_KEYS = ("campaign.seed", "seed")
PRESENTATION_KEYS = ("campaign.name", "campaign.dir", "campaign.progress", "hydra")  # and tracking*, hydra.*
USAGE = "hybrid compare SWEEP_DIR [--out DIR] [--metric NAME]"


# ---- jobs ------------------------------------------------------------------------------------
@dataclass
class JobRun:
    """One job of the sweep and what its campaign did."""

    job: str  # the job's dir relative to the sweep dir ("0", "1", ...)
    campaign: str
    campaign_dir: str
    overrides: list[str]  # the strategy's overrides (no seed, no presentation keys), in CLI order
    seed: int | None
    objective: Objective
    proposer: str = ""
    surrogate: str = ""
    status: str = "not started"  # finished | interrupted | failed | incomplete | not started
    stop_reason: str = ""
    n_experiments: int = 0  # counted experiments (re-queued lost ones are not)
    n_finished: int = 0
    n_failed: int = 0  # crashed or timed out
    spend_usd: float = 0.0  # workers + the proposers' own (LLM) spend
    elapsed_s: float = 0.0  # active campaign time over all its sessions
    curve: list[float | None] = field(default_factory=list)  # best so far after experiment k (1-based)
    timeline: list[tuple[float, float]] = field(default_factory=list)  # (active s, best so far) per result
    note: str = ""  # why it has no result

    @property
    def best(self) -> float | None:
        return next((v for v in reversed(self.curve) if v is not None), None)

    @property
    def started(self) -> bool:
        return self.status != "not started"


def _key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def strategy_overrides(overrides: Sequence[str]) -> list[str]:
    """A job's overrides that define its strategy: no seed, no naming/progress/tracking/hydra keys."""
    return [o for o in overrides if _key(o) not in SEED_KEYS + PRESENTATION_KEYS
            and not _key(o).startswith(("tracking", "hydra."))]


def _job_order(job: str) -> tuple:
    return tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in job.split("/"))


def find_jobs(sweep_dir: Path) -> tuple[list[tuple[str, dict[str, Any]]], list[tuple[str, str]]]:
    """The sweep's Hydra job dirs (those with ``.hydra/``): ``(job, pointer)`` for campaign jobs,
    ``(job, reason)`` for those without a readable pointer. Other dirs are ignored."""
    jobs, ignored = [], []
    for dirpath, dirnames, filenames in os.walk(sweep_dir):
        here = Path(dirpath)
        job = here.relative_to(sweep_dir).as_posix()
        if ".hydra" not in dirnames or here == sweep_dir:
            dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and job.count("/") < 2)
            continue
        dirnames[:] = []  # a job dir: its campaign (wherever it is) is read through the pointer
        if POINTER not in filenames:
            ignored.append((job, f"no {POINTER}: not a hybrid campaign job, or it failed before its campaign "
                                 "was set up (see its .log)"))
            continue
        try:
            pointer = json.loads((here / POINTER).read_text())
            if not isinstance(pointer, dict) or "campaign_dir" not in pointer:
                raise ValueError("no campaign_dir in it")
            jobs.append((job, pointer))
        except (OSError, ValueError) as e:
            ignored.append((job, f"unreadable {POINTER} ({e})"))
    return sorted(jobs, key=lambda j: _job_order(j[0])), sorted(ignored, key=lambda j: _job_order(j[0]))


def _active_clock(stamps: Sequence[float], resumes: Sequence[float]) -> Callable[[float], float]:
    """Wall-clock time -> active campaign seconds: the gap between sessions (from the last thing
    the store heard before a ``resume`` to the resume) does not count."""
    stamps = sorted(stamps)
    t0 = stamps[0] if stamps else 0.0
    gaps = [(r, r - max(before)) for r in resumes if (before := [s for s in stamps if s < r])]
    return lambda t: max(0.0, t - t0 - sum(g for r, g in gaps if r <= t))


def read_job(job: str, pointer: dict[str, Any]) -> JobRun:
    """A job's campaign as its store holds it (a campaign may still be running: read only)."""
    from hybrid.store import Store

    seed = pointer.get("seed")
    run = JobRun(job=job, campaign=str(pointer.get("campaign", "?")), campaign_dir=str(pointer["campaign_dir"]),
                 overrides=strategy_overrides(pointer.get("overrides") or []),
                 seed=seed if isinstance(seed, int) else None,
                 objective=Objective(str(pointer.get("metric") or "val_bpb"), pointer.get("direction") or "minimize"),
                 proposer=str(pointer.get("proposer") or ""), surrogate=str(pointer.get("surrogate") or ""))
    path = Path(run.campaign_dir) / "state.sqlite"
    if not path.is_file():
        run.note = f"the campaign never started: no {path}"
        return run
    try:
        store = Store.open_read_only(path)
    except HybridError as e:
        run.note = f"unreadable store: {e}"
        return run
    try:
        held = store.get_meta("campaign")
        if held is not None and held != run.campaign:
            run.note = f"{path} belongs to campaign {held!r}, not {run.campaign!r}"
            return run
        config = store.get_meta("config") or {}
        target = config.get("target") or {}  # the campaign's own config decides the objective
        run.objective = Objective(str(target.get("metric") or store.get_meta("metric") or run.objective.metric),
                                  target.get("direction") or run.objective.direction)
        hardware = (config.get("campaign") or {}).get("target_hardware") or pointer.get("target_hardware")
        exps = [e for e in store.experiments() if not e.extra.get("requeued")]
        events = store.events()
        status = store.get_meta("status")
        run.status = status or "incomplete"
        run.stop_reason = store.get_meta("stop_reason") or ("" if status else "no final status: still running, or "
                                                             "the job was killed")
        run.elapsed_s = float(store.get_meta("active_s") or 0.0)
    finally:
        store.close()
    metric, sign = run.objective.metric, run.objective.sign()
    run.n_experiments = len(exps)
    run.n_finished = sum(1 for e in exps if e.result is not None)
    run.n_failed = sum(1 for e in exps if e.state.is_failure())
    run.spend_usd = sum(e.result.cost_usd for e in exps if e.result is not None) + sum(
        float(json.loads(d or "{}").get("cost_usd", 0.0)) for _, k, d in events if k == "proposer_call")
    on_target = hardware is not None and any(e.hardware == hardware and e.value(metric) is not None for e in exps)

    def improve(best: float | None, e: Any) -> float | None:  # the summary's rule: on the target hardware if any
        v = e.value(metric) if not on_target or e.hardware == hardware else None
        return v if v is not None and (best is None or sign * v < sign * best) else best

    best: float | None = None
    for e in exps:  # creation order
        best = improve(best, e)
        run.curve.append(best)
    stamps = [ts for ts, _, _ in events] + [t for e in exps for t in (e.started, e.extra.get("_ended")) if t]
    active = _active_clock(stamps, [ts for ts, kind, _ in events if kind == "resume"])
    best = None
    for e in sorted((e for e in exps if e.result is not None and "_ended" in e.extra), key=lambda e: e.extra["_ended"]):
        best = improve(best, e)
        if best is not None:
            run.timeline.append((round(active(e.extra["_ended"]), 3), best))
    if not run.elapsed_s and stamps:
        run.elapsed_s = active(max(stamps))
    if run.best is None:
        states = Counter(e.state.name.lower() for e in exps)
        run.note = (f"no {metric} among {run.n_experiments} experiments ("
                    + ", ".join(f"{n} {state}" for state, n in sorted(states.items())) + ")" if exps
                    else "no experiment was created") + f"; campaign {run.status}"
    return run


# ---- strategies ------------------------------------------------------------------------------
@dataclass
class Strategy:
    label: str
    overrides: list[str]
    runs: list[JobRun]  # every job of this strategy, by seed
    median: float | None = None  # of the best values of the runs with a result
    q25: float | None = None
    q75: float | None = None
    mean: float | None = None
    sd: float | None = None
    best: float | None = None
    best_job: str | None = None
    median_experiments: float = 0.0  # these three: medians over the runs that started
    median_spend_usd: float = 0.0
    median_elapsed_s: float = 0.0
    failure_rate: float | None = None  # failed / finished experiments, all runs
    curve: dict[str, list[float | None]] = field(default_factory=dict)  # median/q25/q75 after experiment k
    time_curve: dict[str, list[float | None]] = field(default_factory=dict)  # minutes + median/q25/q75
    evals_to_reach: int | None = None  # of the winner's final median
    to_reach: str = "—"
    ratio: str = "—"
    winner_needs: str = "—"  # "k of n": the winner's median curve reaches this one's final median at k
    winner: bool = False

    @property
    def with_result(self) -> list[JobRun]:
        return [r for r in self.runs if r.best is not None]


def _quantiles(losses: Any, sign: float) -> dict[str, list[float | None]]:
    """Median, q25, q75 of each column of ``losses`` (runs x points of ``sign * value``, +inf where a
    run has no result yet), back in the metric's units; None where undefined."""
    import numpy as np

    out: dict[str, list[float | None]] = {}
    for name, q in (("median", 0.5), ("q25", 0.25), ("q75", 0.75)):
        with np.errstate(invalid="ignore"):
            col = np.quantile(losses, q if sign > 0 else 1 - q, axis=0)
        out[name] = [sign * float(x) if math.isfinite(x) else None for x in np.atleast_1d(col)]
    return out


def _summarize(s: Strategy, sign: float) -> None:
    import numpy as np

    started = [r for r in s.runs if r.started]
    if started:
        s.median_experiments = float(statistics.median(r.n_experiments for r in started))
        s.median_spend_usd = float(statistics.median(r.spend_usd for r in started))
        s.median_elapsed_s = float(statistics.median(r.elapsed_s for r in started))
        finished = sum(r.n_finished for r in started)
        s.failure_rate = sum(r.n_failed for r in started) / finished if finished else None
    done = s.with_result
    if not done:
        return
    bests: list[float] = [r.best for r in done]  # type: ignore[misc]
    q = _quantiles(np.array([sign * b for b in bests]), sign)
    s.median, s.q25, s.q75 = q["median"][0], q["q25"][0], q["q75"][0]
    s.mean = statistics.fmean(bests)
    s.sd = statistics.stdev(bests) if len(bests) > 1 else None
    top = min(done, key=lambda r: sign * r.best)  # type: ignore[operator]
    s.best, s.best_job = top.best, top.job
    n = max(len(r.curve) for r in done)
    rows = [[math.inf if v is None else sign * v for v in r.curve] for r in done]
    s.curve = _quantiles(np.array([row + row[-1:] * (n - len(row)) for row in rows]), sign)  # short runs hold
    grid = sorted({0.0} | {t for r in done for t, _ in r.timeline} | {round(r.elapsed_s, 3) for r in done})
    rows = []
    for r in done:  # step functions: the best result ended by each time of the grid
        row, i, cur = [], 0, math.inf
        for t in grid:
            while i < len(r.timeline) and r.timeline[i][0] <= t:
                cur, i = sign * r.timeline[i][1], i + 1
            row.append(cur)
        rows.append(row)
    s.time_curve = {"minutes": [round(t / 60, 4) for t in grid], **_quantiles(np.array(rows), sign)}


def evals_to_reach(median: Sequence[float | None], target: float, sign: float) -> int | None:
    """Experiments a median curve needs to reach ``target`` (None: never)."""
    return next((k for k, v in enumerate(median, 1) if v is not None and sign * v <= sign * target + 1e-12), None)


def _labels(groups: Sequence[list[str]], fallback: Sequence[str]) -> list[str]:
    """Each strategy's label: its overrides whose value differs between strategies, in CLI order."""
    keys = list(dict.fromkeys(_key(o) for g in groups for o in g))
    varying = {k for k in keys if len({next((o for o in g if _key(o) == k), None) for g in groups}) > 1}
    return [" ".join(o for o in g if _key(o) in varying) or fb for g, fb in zip(groups, fallback, strict=True)]


@dataclass
class Comparison:
    sweep_dir: str
    objective: Objective
    strategies: list[Strategy]  # best median first
    common: list[str]  # the overrides every compared job shares
    left_out: list[tuple[str, str]]  # (job, reason): another objective, no pointer, unreadable pointer
    runs: list[JobRun]  # every job of the compared objective

    @property
    def winner(self) -> Strategy | None:
        return next((s for s in self.strategies if s.winner), None)


def aggregate(sweep_dir: Path | str, runs: Sequence[JobRun], left_out: Sequence[tuple[str, str]] = (),
              metric: str | None = None) -> Comparison:
    """Group jobs into strategies and compare them on one objective: ``metric``'s if given, else the
    one most jobs optimize (the jobs of another objective are left out, with the reason)."""
    if not runs:
        raise ConfigError(f"compare: {sweep_dir}: no campaign jobs to compare")
    objectives = Counter(r.objective for r in runs)  # in the order of the jobs: ties go to the first
    chosen = [o for o in objectives if metric is None or o.metric == metric]
    if not chosen:
        have = ", ".join(sorted({o.metric for o in objectives}))
        raise ConfigError(f"compare: --metric {metric}: no job of {sweep_dir} optimizes it; they optimize {have}")
    objective = max(chosen, key=lambda o: objectives[o])
    left_out = list(left_out) + [
        (r.job, f"campaign {r.campaign} optimizes {r.objective.metric} ({r.objective.direction}), "
                f"not {objective.metric} ({objective.direction})") for r in runs if r.objective != objective]
    kept = [r for r in runs if r.objective == objective]
    groups: dict[tuple[str, ...], list[JobRun]] = {}
    for r in kept:
        groups.setdefault(tuple(sorted(r.overrides)), []).append(r)
    members = list(groups.values())
    common = [o for o in members[0][0].overrides if all(o in g[0].overrides for g in members)]
    labels = _labels([[o for o in g[0].overrides if o not in common] for g in members],
                     [f"proposer={g[0].proposer} surrogate={g[0].surrogate}" for g in members])
    strategies = [Strategy(label, g[0].overrides, sorted(g, key=lambda r: (r.seed is None, r.seed or 0, r.job)))
                  for label, g in zip(labels, members, strict=True)]
    sign = objective.sign()
    for s in strategies:
        _summarize(s, sign)
    ranked = sorted((s for s in strategies if s.median is not None),  # ties: the one that got there first
                    key=lambda s: (sign * s.median, evals_to_reach(s.curve["median"], s.median, sign), s.label))  # type: ignore[arg-type, operator]
    if ranked:
        lead = ranked[0]
        lead.winner = True
        k_ref = evals_to_reach(lead.curve["median"], lead.median, sign) or 1  # type: ignore[arg-type]
        for s in ranked:
            k, n = evals_to_reach(s.curve["median"], lead.median, sign), len(s.curve["median"])  # type: ignore[arg-type]
            s.evals_to_reach = k
            s.to_reach, s.ratio = (str(k), f"{k / k_ref:.2f}") if k else (f">{n}", f">{n / k_ref:.2f}")
            if not s.winner:
                k_w = evals_to_reach(lead.curve["median"], s.median, sign)  # type: ignore[arg-type]
                s.winner_needs = f"{k_w} of {evals_to_reach(s.curve['median'], s.median, sign)}"  # type: ignore[arg-type]
    strategies = ranked + [s for s in strategies if s.median is None]
    return Comparison(str(sweep_dir), objective, strategies, common, left_out, sorted(kept, key=lambda r: _job_order(r.job)))


# ---- outputs ---------------------------------------------------------------------------------
def _g(v: float | None) -> str:
    return "—" if v is None else f"{v:.6g}"


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.1f} min" if seconds < 5400 else f"{seconds / 3600:.1f} h"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def markdown(c: Comparison) -> str:
    m, w = c.objective.metric, c.winner
    lines = [f"# Strategy comparison: {c.sweep_dir}", "",
             f"{m} ({c.objective.direction}) over {len(c.runs)} jobs in {len(c.strategies)} strategies (jobs that "
             "differ only by seed are one strategy)."]
    if c.common:
        lines.append("Common overrides: " + " ".join(f"`{o}`" for o in c.common) + ".")
    if w is not None:
        lines += ["", f"**Winner: {w.label}**: median best {m} {_g(w.median)} over {len(w.with_result)} runs, "
                      f"reached by its median curve at experiment {w.evals_to_reach}."]
    else:
        lines += ["", f"No strategy has a {m} result yet."]
    lines += ["", f"| strategy | runs | median best [q25, q75] | mean ± sd | best | experiments | spend $ | elapsed "
                  f"| failures | to reach {_g(w.median if w else None)} | ratio | winner needs |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for s in c.strategies:
        seeds = ",".join(str(r.seed) for r in s.runs if r.seed is not None)
        missing = len(s.runs) - len(s.with_result)
        runs = f"{len(s.runs)}" + (f" (seeds {seeds})" if seeds else "") + (f", {missing} no result" if missing else "")
        med = "—" if s.median is None else f"{_g(s.median)} [{_g(s.q25)}, {_g(s.q75)}]"
        mean = "—" if s.mean is None else _g(s.mean) + ("" if s.sd is None else f" ± {s.sd:.3g}")
        fails = "—" if s.failure_rate is None else f"{s.failure_rate:.0%}"
        lines.append(f"| {f'**{_cell(s.label)}** (winner)' if s.winner else _cell(s.label)} | {runs} | {med} | {mean} "
                     f"| {'—' if s.best is None else f'{_g(s.best)} (job {s.best_job})'} | {s.median_experiments:g} "
                     f"| {s.median_spend_usd:.2f} | {_duration(s.median_elapsed_s)} | {fails} | {s.to_reach} "
                     f"| {s.ratio} | {s.winner_needs} |")
    lines += ["", "Medians, means and curves are over the runs with a result; experiments, spend and elapsed (active "
              "campaign time) are medians over the runs that started; failures: crashed or timed-out experiments "
              "over finished ones. *to reach*: experiments the strategy's median best-so-far curve needs to reach "
              "the winner's final median; *ratio*: that over the winner's own count (>x: not reached within its "
              "runs). *winner needs*: k of n, the winner's median curve reaches this strategy's final median after "
              "k experiments, this strategy's after n.",
              "", "![median best-so-far per strategy](comparison.png)", "", "## Jobs", "",
              f"| job | strategy | seed | campaign dir | best {m} | experiments | failed | status |",
              "|---|---|---|---|---|---|---|---|"]
    label = {id(r): s.label for s in c.strategies for r in s.runs}
    for r in c.runs:
        status = f"no result: {r.note}" if r.best is None else r.status + (f": {r.stop_reason}" if r.stop_reason else "")
        lines.append(f"| {r.job} | {_cell(label[id(r)])} | {'' if r.seed is None else r.seed} | {r.campaign_dir} "
                     f"| {_g(r.best)} | {r.n_experiments} | {r.n_failed} | {_cell(status)} |")
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


def _write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def compare_sweep(sweep_dir: Path | str, out_dir: Path | str | None = None,
                  metric: str | None = None) -> tuple[Comparison, list[Path]]:
    """Compare the strategies of a sweep: writes comparison.md/.json/.png into ``out_dir`` (default:
    the sweep dir); returns the comparison and the files."""
    given = Path(sweep_dir)
    if not given.is_dir():
        raise ConfigError(f"compare: {given}: no such directory; give the sweep dir printed by `hybrid -m` "
                          "(runs/multirun/<date>_<time> by default)")
    sweep = given.resolve()
    pointers, ignored = find_jobs(sweep)
    if not pointers:
        raise ConfigError(f"compare: {given}: no multirun jobs found (no .hydra/ job dirs with a campaign "
                          "pointer); give the sweep dir printed by `hybrid -m`")
    comparison = aggregate(sweep, [read_job(job, p) for job, p in pointers], ignored, metric)
    out = Path(out_dir).resolve() if out_dir is not None else sweep
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / "comparison.md", out / "comparison.json", out / "comparison.png"]
    _write(paths[0], markdown(comparison))
    _write(paths[1], json.dumps(as_json(comparison), indent=1, allow_nan=False) + "\n")
    plot(comparison, paths[2])
    return comparison, paths


def summary_text(c: Comparison, paths: Sequence[Path]) -> str:
    """What the CLI prints: one line per strategy, the winner, and where the files are."""
    lines = [f"comparison of {len(c.strategies)} strategies ({len(c.runs)} jobs), "
             f"{c.objective.metric} ({c.objective.direction}):"]
    width = max(len(s.label) for s in c.strategies)
    for s in c.strategies:
        med = "no result" if s.median is None else f"median {_g(s.median)} [{_g(s.q25)}, {_g(s.q75)}]"
        lines.append(f"  {s.label:<{width}}  {len(s.with_result)}/{len(s.runs)} runs  {med}  to reach "
                     f"{s.to_reach} (ratio {s.ratio})" + ("  <- winner" if s.winner else ""))
    if c.left_out:
        lines.append(f"  not compared: {len(c.left_out)} job(s), see comparison.md")
    return "\n".join([*lines, f"comparison: {paths[0]} (+ {paths[1].name}, {paths[2].name})"])


# ---- entry points ----------------------------------------------------------------------------
class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:  # one ConfigError line, not argparse's usage + exit
        raise ConfigError(f"compare: {message}; usage: {USAGE}")


def compare_command(argv: list[str]) -> None:
    """``hybrid compare SWEEP_DIR [--out DIR] [--metric NAME]``."""
    ap = _Parser(prog="hybrid compare", description="Compare the strategies of a multirun sweep.")
    ap.add_argument("sweep_dir", help="the multirun's sweep dir (runs/multirun/<date>_<time> by default)")
    ap.add_argument("--out", help="where to write comparison.md/.json/.png (default: the sweep dir)")
    ap.add_argument("--metric", help="compare the jobs that optimize this metric (default: most jobs' metric)")
    a = ap.parse_args(argv)
    comparison, paths = compare_sweep(a.sweep_dir, a.out, a.metric)
    print(summary_text(comparison, paths), flush=True)


class CompareCallback(Callback):
    """Hydra callback: when a multirun ends, compare its strategies in the sweep dir. A failure is
    one printed line; it never changes how the sweep ends."""

    def __init__(self) -> None:
        self.sweep_dir: str | None = None

    def on_multirun_start(self, config: Any, **kwargs: Any) -> None:
        try:  # resolved once, at the start, as the launcher does (the default name holds ${now:...})
            self.sweep_dir = str(config.hydra.sweep.dir)
        except Exception:  # resolved again at the end
            self.sweep_dir = None
        else:
            print(f"sweep dir: {self.sweep_dir} (its strategies are compared at the end; again with "
                  f"`hybrid compare {self.sweep_dir}`)", flush=True)

    def on_multirun_end(self, config: Any, **kwargs: Any) -> None:
        try:
            comparison, paths = compare_sweep(self.sweep_dir or str(config.hydra.sweep.dir))
            print(summary_text(comparison, paths), flush=True)
        except Exception as e:  # the sweep's own outcome must not depend on its report
            msg = " ".join(str(e).split()) or type(e).__name__
            print(f"compare: skipped ({type(e).__name__}: {msg}); run `hybrid compare <sweep dir>` to retry",
                  file=sys.stderr, flush=True)
