"""Learning-curve pruning at equal GPU spend: surrogate.pruning.PruningRule against no pruning and
Optuna's pruners, on a simulation whose learning curves cross.

The simulation (``LearningCurves``): a GPT-like target trained for a fixed wall-clock budget, its
configuration ``aspect_ratio`` (width), ``depth``, ``total_batch_size``, ``matrix_lr`` and
``warmdown_ratio``. Each configuration has a final val_bpb (best near size 0.7 of the range, batch
2^18, the size's learning rate, a warm-down of 0.4) and a distance still to go at each fraction t,
``remaining * (t^-0.7 - 1)``, where ``remaining`` grows with size and batch (fewer steps in the
budget) and with a low learning rate: bigger models start slower and end lower, so curves cross
(aspect ratio 96 is behind 64 at 30% of the budget and ahead at the end; the best 5% of random
configurations sit at the median at 31% of the budget, in the best 20% only at 50%). Until its
warm-down anneals it, a gradient-noise floor (smaller with a big batch) lifts the curve: a late drop
the mid-run curve does not show. Too high a learning rate diverges part-way (the loss climbs to ~10
and stays there: ~14% of random configurations). The target reports ``train_loss`` at ``--points``
evenly spaced fractions of its budget (noise sd 0.02 on each point, plus a per-run offset it shares
with the final) and a final ``val_bpb`` (the curve's end, that offset and its own noise). The TRUE
final is the noiseless curve's end: "best found" is measured on it.

The fleet: ``--workers`` alike workers, every run's full budget one unit of GPU time (5 minutes),
the campaign's budget ``--budget`` full runs' worth of GPU time (120 by default: 10 GPU-hours),
spent on a virtual clock until every worker has used its share (``budget / workers``); runs
still going at that moment are cut and count for nothing (every method spends the budget
exactly). A freed worker (a run that ended, or was pruned at a progress point) takes the next
configuration at once. For one seed every method gets the same configurations, uniformly random
over the space, in the same order, and the same noise for each (drawn per configuration), so the
only difference between methods is the pruning.

Methods:
  rule        surrogate.pruning.PruningRule(space=the space) at every point, against the runs
              that finished (its defaults: grace 0.3, 95% bound, 8 finished runs minimum)
  none        no pruning: every run spends its full budget
  median      optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=<grace in points>)
  sha         optuna.pruners.SuccessiveHalvingPruner(min_resource=<grace in points>)
  hyperband   optuna.pruners.HyperbandPruner(min_resource=<grace in points>, max_resource=points)
  median-default, sha-default  the same two pruners with Optuna's defaults (no warm-up)
The Optuna pruners are driven by the real API: one study per run (minimize), ``study.ask()`` for
each experiment, ``trial.report(train_loss, step)`` at each progress point then
``trial.should_prune()``, ``study.tell`` with the final value or ``TrialState.PRUNED``. They get
the rule's grace as their warm-up (Optuna's default 0 would prune after the first point: worse
still on crossing curves), so the comparison is of the decisions, not of the warm-up.

Reported per method (median [q25, q75] over seeds): experiments run (ended by themselves or
pruned within the budget), pruned, best TRUE final among the runs that completed, its gap to no
pruning on the same seed, GPU minutes per experiment, experiments per GPU-hour as a ratio to no
pruning on the same seed, and "lost": pruned runs whose true final would have beaten the best
the method found (the runs a naive rule kills).

The rule's defaults were chosen on seeds 100-129 (``--first-seed 100 --seeds 30``); the reported
numbers use seeds 0-9, on which no setting was chosen.

Usage: .venv/bin/python -m benchmarks.pruning [--seeds 10] [--jobs 1] [--tag NAME]   (~25 s)
Results: benchmarks/results/pruning-<tag>.json (config, every run's numbers).
"""

from __future__ import annotations

import argparse
import heapq
import json
import math
import sys
import time
import warnings
from collections.abc import Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from hybrid.curves import ProgressPoint
from hybrid.space import CategoricalParam, FloatParam, IntParam, SearchSpace
from hybrid.types import Objective
from surrogate.pruning import PruningRule, RunCurve

RESULTS = Path(__file__).resolve().parent / "results"
METHODS = ("rule", "none", "median", "sha", "hyperband", "median-default", "sha-default")
OBJECTIVE = Objective("val_bpb")
SIGNAL = "train_loss"
RUN_MINUTES = 5.0  # one full run's GPU time (the reference run's budget)
HARDWARE = "sim"

SPACE = SearchSpace([
    IntParam("aspect_ratio", 32, 128, step=16, default=64),
    IntParam("depth", 4, 12, step=2, default=8),
    CategoricalParam("total_batch_size", (2**16, 2**17, 2**18, 2**19), default=2**17),
    FloatParam("matrix_lr", 0.01, 0.1, log=True, default=0.04),
    FloatParam("warmdown_ratio", 0.0, 0.8, default=0.4),
])


# ---- the simulated target ----------------------------------------------------------------------
class LearningCurves:
    """Noiseless val_bpb curves of a fixed-wall-clock GPT (module docstring), on ``grid`` steps."""

    grid = 160  # curve resolution: fractions 1/grid .. 1
    point_sd = 0.02  # observation noise of one train_loss point (smoothed loss)
    run_sd = 0.003  # per-run offset (data order, init), shared by the curve and the final, in val_bpb
    final_sd = 0.002  # evaluation noise of the final val_bpb

    def curve(self, params: Mapping[str, Any]) -> np.ndarray:
        """(grid,) true val_bpb after each 1/grid of the budget: final + remaining progress + noise floor."""
        s = 0.7 * (params["aspect_ratio"] - 32) / 96 + 0.3 * (params["depth"] - 4) / 8  # size in [0, 1]
        b = math.log2(params["total_batch_size"] / 2**16) / 3  # batch in [0, 1]
        lr = (math.log(params["matrix_lr"]) - math.log(0.01)) / (math.log(0.1) - math.log(0.01))
        off = lr - (0.65 - 0.3 * s)  # distance from the size's best learning rate (share of the log range)
        wd = params["warmdown_ratio"]
        # the final: best at size 0.7, batch 2^18, the size's learning rate, a warm-down of 0.4
        final = (0.96 + (0.05 * ((s - 0.7) / 0.7) ** 2 if s <= 0.7 else 0.03 * ((s - 0.7) / 0.3) ** 2)
                 + 0.02 * (b - 2 / 3) ** 2 / 0.45 + 0.15 * off**2 + 0.015 * ((wd - 0.4) / 0.4) ** 2)
        # how far from its final a run still is: more for a bigger model or batch (fewer steps in the
        # budget) and for a low learning rate; the curves of different sizes cross
        remaining = 0.03 * math.exp(1.3 * s + 0.8 * b - 1.0 * min(off, 0.0))
        floor = 0.03 * (1 - 0.7 * b)  # gradient noise until the warm-down anneals it: less with a big batch
        t = np.arange(1, self.grid + 1) / self.grid
        annealed = np.clip((t - (1 - wd)) / max(wd, 1e-9), 0.0, 1.0)
        loss = final + remaining * (t**-0.7 - 1) + floor * (1 - annealed)
        if off > 0.35:  # diverges: the loss climbs towards ~random and stays there
            t_div = max(0.08, 0.6 - 2.5 * (off - 0.35))
            loss = loss + np.where(t > t_div, 2.5 * (1 - np.exp(-(t - t_div) / 0.05)), 0.0)
        return loss

    def train_loss(self, params: Mapping[str, Any], val: np.ndarray) -> np.ndarray:
        """The reported signal on the grid: train loss in nats, a bigger model fitting train a bit better."""
        s = 0.7 * (params["aspect_ratio"] - 32) / 96 + 0.3 * (params["depth"] - 4) / 8
        return 2.9 * val - 0.06 * s

    def observe(self, params: Mapping[str, Any], n_points: int,
                rng: np.random.Generator) -> tuple[list[ProgressPoint], float, float]:
        """(the progress points, the observed final val_bpb, the true final val_bpb)."""
        val = self.curve(params)
        offset = self.run_sd * float(rng.standard_normal())
        signal = self.train_loss(params, val + offset)
        idx = [round(k / n_points * self.grid) - 1 for k in range(1, n_points + 1)]
        noise = self.point_sd * rng.standard_normal(n_points)
        points = [ProgressPoint(k / n_points, {SIGNAL: float(signal[i] + e)})
                  for k, (i, e) in enumerate(zip(idx, noise, strict=True), start=1)]
        final = float(val[-1] + offset + self.final_sd * rng.standard_normal())
        return points, final, float(val[-1])


def configurations(seed: int, n: int) -> list[dict[str, Any]]:
    """``n`` uniformly random configurations: the same for every method of a seed."""
    rng = np.random.default_rng([seed, 1])
    return [SPACE.decode(rng.random(len(SPACE))) for _ in range(n)]


# ---- the methods -------------------------------------------------------------------------------
class Arm:
    """One pruning method: told of each run's start, progress points and end; says prune or not."""

    def start(self, i: int, params: Mapping[str, Any]) -> None: ...

    def report(self, i: int, step: int, point: ProgressPoint) -> str | None:
        return None

    def finish(self, i: int, final: float) -> None: ...

    def pruned(self, i: int) -> None: ...


class RuleArm(Arm):
    def __init__(self, rule: PruningRule) -> None:
        self.rule = rule
        self.params: dict[int, Mapping[str, Any]] = {}
        self.points: dict[int, list[ProgressPoint]] = {}
        self.finished: list[RunCurve] = []

    def start(self, i: int, params: Mapping[str, Any]) -> None:
        self.params[i], self.points[i] = params, []

    def report(self, i: int, step: int, point: ProgressPoint) -> str | None:
        self.points[i].append(point)
        return self.rule.decide(RunCurve(self.params[i], HARDWARE, tuple(self.points[i])), self.finished, OBJECTIVE)

    def finish(self, i: int, final: float) -> None:
        self.finished.append(RunCurve(self.params.pop(i), HARDWARE, tuple(self.points.pop(i)), final))

    def pruned(self, i: int) -> None:
        del self.params[i], self.points[i]


class OptunaArm(Arm):
    """An Optuna pruner on its own study, through trial.report / trial.should_prune / study.tell."""

    def __init__(self, pruner: Any, seed: int) -> None:
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
        self.study = optuna.create_study(direction="minimize", pruner=pruner,
                                         sampler=optuna.samplers.RandomSampler(seed=seed))
        self.trials: dict[int, Any] = {}

    def start(self, i: int, params: Mapping[str, Any]) -> None:
        self.trials[i] = self.study.ask()  # the configuration comes from the shared list

    def report(self, i: int, step: int, point: ProgressPoint) -> str | None:
        trial = self.trials[i]
        trial.report(point.values[SIGNAL], step)
        return f"optuna pruned at step {step}" if trial.should_prune() else None

    def finish(self, i: int, final: float) -> None:
        self.study.tell(self.trials.pop(i), final)

    def pruned(self, i: int) -> None:
        from optuna.trial import TrialState

        self.study.tell(self.trials.pop(i), state=TrialState.PRUNED)


def make_arm(method: str, seed: int, grace: float, n_points: int) -> Arm:
    import optuna

    warmup = max(1, math.ceil(grace * n_points))  # the first point at or past the grace fraction
    if method == "rule":
        return RuleArm(PruningRule(grace=grace, space=SPACE, signal=SIGNAL))
    if method == "none":
        return Arm()
    if method == "median":
        return OptunaArm(optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=warmup), seed)
    if method == "sha":
        return OptunaArm(optuna.pruners.SuccessiveHalvingPruner(min_resource=warmup), seed)
    if method == "hyperband":
        return OptunaArm(optuna.pruners.HyperbandPruner(min_resource=warmup, max_resource=n_points), seed)
    if method == "median-default":
        return OptunaArm(optuna.pruners.MedianPruner(), seed)
    if method == "sha-default":
        return OptunaArm(optuna.pruners.SuccessiveHalvingPruner(), seed)
    raise ValueError(f"unknown method {method!r}; one of {', '.join(METHODS)}")


# ---- one campaign on the simulated fleet --------------------------------------------------------
@dataclass
class Run:
    method: str
    seed: int
    gpu_hours: float
    experiments: int = 0  # ended within the budget: completed or pruned
    completed: int = 0
    pruned: int = 0
    cut: int = 0  # still running when the budget was spent
    best_true: float = math.inf  # best TRUE final among the completed runs
    lost: int = 0  # pruned runs whose true final beats best_true
    prune_fractions: list[float] = field(default_factory=list)
    reasons: list[str] = field(default_factory=list)  # the first few, for the record
    decide_ms: float = 0.0  # 90th percentile of the milliseconds one decision takes (report + should-prune)
    wall_s: float = 0.0


def simulate(method: str, seed: int, budget: float = 120.0, workers: int = 8, n_points: int = 16,
             grace: float = 0.3) -> Run:
    """One method's campaign for one seed (module docstring): ``budget`` full runs of GPU time."""
    t0 = time.perf_counter()
    curves = LearningCurves()
    horizon = budget / workers  # virtual time, in full runs, until each worker has spent its share
    configs = configurations(seed, math.ceil(budget * n_points) + workers)  # more than any method can start
    arm = make_arm(method, seed, grace, n_points)
    run = Run(method, seed, budget * RUN_MINUTES / 60)
    observed: dict[int, tuple[list[ProgressPoint], float, float]] = {}
    pruned_true: list[float] = []
    events: list[tuple[float, int, int]] = []  # (virtual time, run index, point k)
    decide_s: list[float] = []
    next_config = 0

    def start(now: float) -> None:
        nonlocal next_config
        i = next_config
        next_config += 1
        rng = np.random.default_rng([seed, 2, i])  # the i-th configuration's noise, whatever the method
        observed[i] = curves.observe(configs[i], n_points, rng)
        arm.start(i, configs[i])
        heapq.heappush(events, (now + 1 / n_points, i, 1))

    for _ in range(workers):
        start(0.0)
    while events:
        now, i, k = heapq.heappop(events)
        if now > horizon + 1e-9:
            run.cut = len(events) + 1
            break
        points, final, true = observed[i]
        reason = None
        if k < n_points:
            t_decide = time.perf_counter()
            reason = arm.report(i, k, points[k - 1])
            decide_s.append(time.perf_counter() - t_decide)
        if reason is not None:
            arm.pruned(i)
            run.pruned += 1
            run.prune_fractions.append(points[k - 1].fraction)
            pruned_true.append(true)
            if len(run.reasons) < 5:
                run.reasons.append(reason)
        elif k == n_points:
            arm.finish(i, final)
            run.completed += 1
            run.best_true = min(run.best_true, true)
        else:
            heapq.heappush(events, (now + 1 / n_points, i, k + 1))
            continue
        start(now)
    run.experiments = run.completed + run.pruned
    run.lost = sum(t < run.best_true for t in pruned_true)
    run.decide_ms = 1000 * float(np.quantile(decide_s, 0.9)) if decide_s else 0.0
    run.wall_s = time.perf_counter() - t0
    return run


# ---- many runs, the table, the file -----------------------------------------------------------
def _job(args: tuple) -> Run:
    return simulate(*args)


def run_all(methods: Sequence[str], seeds: Sequence[int], budget: float, workers: int, n_points: int,
            grace: float, jobs: int = 1) -> list[Run]:
    tasks = [(m, s, budget, workers, n_points, grace) for s in seeds for m in methods]
    if jobs <= 1:
        return [simulate(*t) for t in tasks]
    with ProcessPoolExecutor(jobs) as pool:
        return list(pool.map(_job, tasks))


def _q(values: Sequence[float], fmt: str = "{:.4f}") -> str:
    a = np.asarray(values, dtype=float)
    return f"{fmt.format(np.median(a))} [{fmt.format(np.quantile(a, 0.25))}, {fmt.format(np.quantile(a, 0.75))}]"


def table(runs: Sequence[Run]) -> tuple[str, list[dict[str, Any]]]:
    """The printed table (median [q25, q75] over seeds) and its rows."""
    by_method: dict[str, dict[int, Run]] = {}
    for r in runs:
        by_method.setdefault(r.method, {})[r.seed] = r
    ref = by_method.get("none", {})
    head = (f"{'method':<15}{'experiments':>20}{'pruned':>17}{'best true val_bpb':>27}{'gap to none':>27}"
            f"{'GPU min/exp':>20}{'exp/GPU-h vs none':>22}{'lost':>12}{'p90 ms/dec':>12}")
    lines = [head]
    rows = []
    for m, by_seed in by_method.items():
        rs = list(by_seed.values())
        per_exp = [r.gpu_hours * 60 / max(r.experiments, 1) for r in rs]
        paired = [(r, ref[r.seed]) for r in rs if r.seed in ref]
        ratio = [r.experiments / max(n.experiments, 1) for r, n in paired]
        gap = [r.best_true - n.best_true for r, n in paired]
        lines.append(f"{m:<15}{_q([r.experiments for r in rs], '{:.0f}'):>20}{_q([r.pruned for r in rs], '{:.0f}'):>17}"
                     f"{_q([r.best_true for r in rs]):>27}{(_q(gap, '{:+.4f}') if gap else '-'):>27}"
                     f"{_q(per_exp, '{:.2f}'):>20}{(_q(ratio, '{:.2f}') if ratio else '-'):>22}"
                     f"{_q([r.lost for r in rs], '{:.0f}'):>12}{np.median([r.decide_ms for r in rs]):>12.2f}")
        rows.append({"method": m, "seeds": len(rs),
                     "experiments": float(np.median([r.experiments for r in rs])),
                     "best_true": float(np.median([r.best_true for r in rs])),
                     "gap_to_none": float(np.median(gap)) if gap else None,
                     "gpu_min_per_experiment": float(np.median(per_exp)),
                     "ratio_vs_none": float(np.median(ratio)) if ratio else None,
                     "lost": float(np.median([r.lost for r in rs])),
                     "decide_ms": float(np.median([r.decide_ms for r in rs]))})
    return "\n".join(lines), rows


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--methods", default=",".join(METHODS), help=f"comma list of {', '.join(METHODS)}")
    ap.add_argument("--seeds", type=int, default=10)
    ap.add_argument("--first-seed", type=int, default=0, help="seeds first..first+seeds-1 (tuning used 100-109)")
    ap.add_argument("--budget", type=float, default=120.0, help="GPU time in full runs (5 min each)")
    ap.add_argument("--workers", type=int, default=8)
    ap.add_argument("--points", type=int, default=16, help="progress points per run")
    ap.add_argument("--grace", type=float, default=0.3, help="fraction before any prune (every method)")
    ap.add_argument("--jobs", type=int, default=1, help="runs in parallel processes")
    ap.add_argument("--tag", default=time.strftime("%Y%m%d-%H%M%S"))
    a = ap.parse_args(argv)
    methods = a.methods.split(",")
    for m in methods:
        if m not in METHODS:
            ap.error(f"--methods: {m!r} is not one of {', '.join(METHODS)}")
    if a.budget < a.workers:
        ap.error("--budget: at least one full run per worker")
    t0 = time.perf_counter()
    seeds = list(range(a.first_seed, a.first_seed + a.seeds))
    runs = run_all(methods, seeds, a.budget, a.workers, a.points, a.grace, a.jobs)
    text, rows = table(runs)
    print(f"== pruning at equal GPU spend: {a.budget:g} full runs = {a.budget * RUN_MINUTES / 60:g} GPU-hours on "
          f"{a.workers} workers, {a.points} progress points, grace {a.grace:g}; seeds {seeds[0]}-{seeds[-1]}; "
          f"median [q25, q75]")
    print(text)
    for m in methods:
        reason = next((x for r in runs if r.method == m for x in r.reasons), None)
        if reason:
            print(f"  e.g. {m}: {reason}")
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"pruning-{a.tag}.json"
    path.write_text(json.dumps({"config": vars(a), "rows": rows, "runs": [asdict(r) for r in runs]}))
    print(f"{len(runs)} runs in {time.perf_counter() - t0:.0f} s; wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
