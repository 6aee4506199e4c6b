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

``hybrid.callbacks.CompareCallback`` (registered in conf/config.yaml under ``hydra.callbacks``)
runs it when a multirun ends. "Best" is :mod:`hybrid.history`'s: a campaign's best-so-far curve
counts the results on its judged hardware (``campaign.target_hardware`` when it has a result,
else the label with the most successes), as its summary does. Each campaign's answer is its
*recommendation* (:func:`hybrid.noise.recommend`, as in its summary.txt): the best mean of a
configuration confirmed by >= 2 runs there, or the best estimate marked unconfirmed; per strategy
the median of the recommendations' means and how many were confirmed are shown beside the best
single runs (the luckiest result of each campaign, biased under noise). The files are written by
:mod:`hybrid.reports.compare_render`.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hybrid.errors import ConfigError, HybridError
from hybrid.history import counted, judged_hardware, running_best
from hybrid.noise import recommend
from hybrid.reports.compare_render import as_json, markdown, plot, summary_text, write_atomic
from hybrid.reports.reader import STORE_FILE, read_campaign
from hybrid.types import Experiment, Objective

__all__ = ["Comparison", "JobRun", "Strategy", "aggregate", "compare_command", "compare_sweep", "find_jobs",
           "read_job", "strategy_overrides"]

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
    recommended: float | None = None  # the recommendation's mean (hybrid.noise.recommend; None: no result)
    recommended_sd: float | None = None  # the sd of its runs (None: one run)
    recommended_n: int = 0  # its runs on the judged hardware
    recommended_confirmed: bool = False
    recommended_ids: list[str] = field(default_factory=list)

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


def best_so_far(exps: Sequence[Experiment], objective: Objective, hardware: str | None) -> list[float | None]:
    """After each experiment (in the given order), the best result so far on ``hardware``: the value
    of ``history.best_on`` over that prefix; a failure keeps the previous best."""
    return running_best([e.value(objective.metric) if e.hardware == hardware else None for e in exps], objective)


def read_job(job: str, pointer: dict[str, Any]) -> JobRun:
    """A job's campaign as its store holds it (a campaign may still be running: read only)."""
    seed = pointer.get("seed")
    run = JobRun(job=job, campaign=str(pointer.get("campaign", "?")), campaign_dir=str(pointer["campaign_dir"]),
                 overrides=strategy_overrides(pointer.get("overrides") or []),
                 seed=seed if isinstance(seed, int) else None,
                 objective=Objective(str(pointer.get("metric") or "val_bpb"), pointer.get("direction") or "minimize"),
                 proposer=str(pointer.get("proposer") or ""), surrogate=str(pointer.get("surrogate") or ""))
    path = Path(run.campaign_dir) / STORE_FILE
    if not path.is_file():
        run.note = f"the campaign never started: no {path}"
        return run
    try:
        record = read_campaign(run.campaign_dir)
    except HybridError as e:
        run.note = f"unreadable store: {e}"
        return run
    if record.name is not None and record.name != run.campaign:
        run.note = f"{path} belongs to campaign {record.name!r}, not {run.campaign!r}"
        return run
    run.objective = record.objective(default=run.objective)  # the campaign's own config decides it
    hardware = record.target_hardware or pointer.get("target_hardware")
    exps = counted(record.experiments)  # a lost experiment that was re-run counts once
    run.status = record.status or "incomplete"
    run.stop_reason = record.stop_reason or ("" if record.status else "no final status: still running, or "
                                             "the job was killed")
    run.elapsed_s = record.active_s or 0.0
    run.n_experiments = len(exps)
    run.n_finished = sum(1 for e in exps if e.result is not None)
    run.n_failed = sum(1 for e in exps if e.state.is_failure())
    run.spend_usd = record.worker_usd(exps) + record.proposer_usd
    judged = judged_hardware(exps, run.objective, hardware)
    run.curve = best_so_far(exps, run.objective, judged)  # creation order
    events = record.events
    stamps = [ts for ts, _, _ in events] + [t for e in exps for t in (e.started, e.ended) if t]
    active = _active_clock(stamps, [ts for ts, kind, _ in events if kind == "resume"])
    ended = sorted((e for e in exps if e.result is not None and e.ended is not None), key=lambda e: e.ended or 0.0)
    run.timeline = [(round(active(e.ended or 0.0), 3), v) for e, v in
                    zip(ended, best_so_far(ended, run.objective, judged), strict=True) if v is not None]
    rec = recommend(exps, run.objective, hardware)
    if rec is not None:
        run.recommended, run.recommended_sd, run.recommended_n = rec.mean, rec.sd, rec.n
        run.recommended_confirmed, run.recommended_ids = rec.confirmed, list(rec.runs.ids)
    if not run.elapsed_s and stamps:
        run.elapsed_s = active(max(stamps))
    if run.best is None:
        states = Counter(e.state.name.lower() for e in exps)
        requeued = len(record.experiments) - len(exps)  # cancelled by an interrupt or lost: run again on resume
        run.note = (f"no {run.objective.metric} among {run.n_experiments} experiments ("
                    + ", ".join(f"{n} {state}" for state, n in sorted(states.items())) + ")" if exps
                    else f"no experiment finished ({requeued} re-queued for a resume)" if requeued
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
    rec_median: float | None = None  # these three: of the recommendations' means of its runs
    rec_q25: float | None = None
    rec_q75: float | None = None
    n_confirmed: int = 0  # runs whose recommendation is confirmed (>= 2 runs on the judged hardware)
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
    recs = [r.recommended for r in done if r.recommended is not None]
    if recs:
        q = _quantiles(np.array([sign * v for v in recs]), sign)
        s.rec_median, s.rec_q25, s.rec_q75 = q["median"][0], q["q25"][0], q["q75"][0]
    s.n_confirmed = sum(r.recommended_confirmed for r in done)
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
    write_atomic(paths[0], markdown(comparison))
    write_atomic(paths[1], json.dumps(as_json(comparison), indent=1, allow_nan=False) + "\n")
    plot(comparison, paths[2])
    return comparison, paths


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
