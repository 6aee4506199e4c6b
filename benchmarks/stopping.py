"""Calibration of the cost-aware stopping rule (``stopping=cost_aware``, hybrid/stopping.py).

Every (problem, seed) runs the product's ``hybrid proposer=hybrid surrogate=gp`` campaign
(benchmarks/product.py: hybrid.assemble and the campaign's own loop) once, to the full budget, on a
simulated async fleet of ``--workers`` workers (lognormal durations, median 1 h, at ``HOURLY_USD``
per worker-hour). Every decision the campaign feeds the rule is recorded (benchmarks/product.py:
DecisionLog), then the real :class:`~hybrid.stopping.CostAwareStop` is replayed over the records for
each threshold. The rule changes a run only by dispatching nothing new once it fires (the running
experiments finish), so for any threshold the stop point, the money not spent and the regret given
up (the best TRUE value among the experiments dispatched before the stop, against all of them) are
exact from the one run. The confirmation phase (``campaign.confirm_top_k``) is off in these runs:
it re-runs the same few configurations after a stop as at the end of a full budget, so it costs
alike either way, and leaving it out keeps the replay exact.

Problems: the development benchmarks (Hartmann6, Ackley10, FCNet x4, HPOBench car) and two
simulations of a training target's val_bpb with a seed's noise (sd 0.002, benchmarks/problems.py
ReturnsProblem): ``returns-flat`` (the reference run's diminishing returns: late gains of the order
of the noise) and ``returns-steep`` (gains that stay steep over the budget: the rule must keep
quiet). Per problem: how much its gains flatten (how much a campaign's regret falls over the
budget's second half, in the noise sd at that campaign's best configurations, median over seeds:
flat below 1 sd, else steep; also the median regret curve's fall, and in the noise at the optimum),
the noise sd the GP inferred over the campaigns' (far above 1 where the noise differs across the
space), the share of decisions judged by the replicates' upper bound, and how many seeds each
threshold fires on; then, for the
default (StoppingConfig's, or --default): fired (n of seeds), median stop point (experiments
dispatched), money saved (median share of the full budget's spend not spent), regret given up
(median of regret at the stop minus regret at the full budget, also in noise sd) and how many seeds
it stopped early, before their own gains had flattened (``flat_from``: the experiment after which a
campaign's regret falls by less than 1 sd until the budget's end; a stop before it gives up >= 1 sd).

    python benchmarks/stopping.py --quick
    python benchmarks/stopping.py [--problems ...] [--seeds 10] [--evals 100] [--workers 4] [--jobs 1]
        [--thresholds 0.01,0.02,...] [--patience 3] [--min-experiments 20] [--window 20]
    python benchmarks/stopping.py --first-seed 10 ...   (more seeds, then --report both files)
    python benchmarks/stopping.py --report benchmarks/results/stopping-<tag>.json [...] [--thresholds ...]
Results: benchmarks/results/stopping-<tag>.json (every run's decisions and experiments, the table).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.problems import PROBLEMS, Problem, make_problem  # noqa: E402
from benchmarks.product import run_product  # noqa: E402
from hybrid.config import StoppingConfig  # noqa: E402
from hybrid.stopping import CostAwareStop, StopSignal  # noqa: E402

DEFAULT_PROBLEMS = ("hartmann6", "ackley10", "fcnet-protein", "fcnet-naval", "fcnet-parkinsons", "fcnet-slice",
                    "hpobench-car", "returns-flat", "returns-steep")
# `hybrid <these>` (plus benchmarks.product.QUIET): the rule only watches (DecisionLog), no confirmation phase
OVERRIDES = ("proposer=hybrid", "surrogate=gp", "stopping=budget", "campaign.confirm_top_k=0")
METRIC = "loss"  # what the simulated target prints
HOURLY_USD = 2.5  # simulated price of one worker-hour
THRESHOLDS = (0.01, 0.02, 0.03, 0.04, 0.05, 0.06, 0.08, 0.1, 0.15)
TOP_K = 5  # the noise a campaign's answer is judged in: at its TOP_K best configurations (top_sd)
FLAT_SD = 1.0  # a problem "flattens" when a campaign's regret falls by less than this many noise sd in its second half
RESULTS = ROOT / "benchmarks" / "results"


@dataclass
class Run:
    problem: str
    seed: int
    # every decision fed to the rule: (StopSignal as a list, or None; finished; created)
    decisions: list[tuple[list[float] | None, int, int]]
    # every experiment in creation order: (true value, observed value: None if it failed; cost USD;
    # the run-to-run noise sd at its configuration: Problem.noise_sd_at; older files lack it)
    experiments: list[tuple]
    wall_s: float


@lru_cache(maxsize=16)
def _problem(name: str) -> Problem:
    return make_problem(name)


def simulate(problem_name: str, seed: int, evals: int, workers: int) -> Run:
    """One full-budget campaign; the rule's inputs and the experiments' true values."""
    problem = _problem(problem_name)
    with tempfile.TemporaryDirectory(prefix="hybrid-stop-") as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # GP fit notices: the decisions say whether a model was fitted
        run = run_product(problem, OVERRIDES, seed=seed, evals=evals, workers=workers, root=Path(tmp),
                          name=f"stop-{problem.name}-s{seed}", hourly_usd=HOURLY_USD, metric=METRIC)
    exps = [(problem.true_value(e.params) if e.value(METRIC) is not None else None, e.value(METRIC),
             e.result.cost_usd if e.result is not None else 0.0, problem.noise_sd_at(e.params))
            for e in run.experiments]
    decisions = [(list(s) if s is not None else None, n, c) for s, n, c in run.decisions]
    return Run(problem.name, seed, decisions, exps, run.wall_s)


def _job(args: tuple) -> Run:
    import torch

    torch.set_num_threads(1)  # --jobs processes share the cores
    return simulate(*args)


def run_all(problems: Sequence[str], seeds: int, evals: int, workers: int, jobs: int = 1,
            first_seed: int = 0) -> list[Run]:
    for p in problems:  # fail fast on a bad name or a missing package
        _problem(p)
    tasks = [(p, s, evals, workers) for p in problems for s in range(first_seed, first_seed + seeds)]
    if jobs <= 1:
        out = []
        for i, t in enumerate(tasks):
            out.append(simulate(*t))
            print(f"  [{i + 1}/{len(tasks)}] {t[0]} seed {t[1]}: {out[-1].wall_s:.0f} s", file=sys.stderr, flush=True)
        return out
    with ProcessPoolExecutor(jobs) as pool:
        return list(pool.map(_job, tasks))


# ---- the replay ------------------------------------------------------------------------------
def regret_curve(problem: Problem, run: Run) -> list[float]:
    """Simple regret (best TRUE value so far minus the optimum) after each experiment, in creation order."""
    best, out = float("inf"), []
    for value, *_ in run.experiments:
        if value is not None:
            best = min(best, value)
        out.append(best - problem.optimum)
    return out


def stop_point(problem: Problem, run: Run, rule: CostAwareStop) -> dict[str, Any]:
    """Replay ``rule`` over the run's decisions: where it stops, what that saves and gives up."""
    k, fired = len(run.experiments), False
    for signal, n_finished, n_created in run.decisions:
        if rule.observe(StopSignal(*signal) if signal is not None else None, n_finished):
            k, fired = max(n_created, 1), True
            break
    regret = regret_curve(problem, run)
    usd_cap = sum(e[2] for e in run.experiments)
    usd_stop = sum(e[2] for e in run.experiments[:k])
    return {"fired": fired, "stop": k, "cap": len(run.experiments), "saved": 1 - usd_stop / usd_cap if usd_cap else 0.0,
            "regret_stop": regret[k - 1], "regret_cap": regret[-1], "top_sd": top_sd(problem, run)}


def top_sd(problem: Problem, run: Run, k: int = TOP_K) -> float:
    """The noise the campaign's answer is judged in: the median run-to-run sd at the ``k`` best
    (by true value) distinct configurations it ran. On a problem whose noise differs across the
    space (FCNet: the table's 100 best configurations are far quieter than those a 100-experiment
    campaign reaches) this, not the noise at the table's optimum, is what "within noise" means
    for the configurations a user compares."""
    seen: dict[float, float] = {}
    for e in run.experiments:
        if e[0] is not None and len(e) > 3:
            seen[e[0]] = e[3]
    best = [seen[v] for v in sorted(seen)[:k]]
    return float(statistics.median(best)) if best and statistics.median(best) > 0 else problem.noise_sd


def flat_from(problem: Problem, run: Run) -> int:
    """Where this campaign's gains flattened: the first experiment (1-based, creation order) after
    which its regret falls by less than ``FLAT_SD`` noise sd at its best configurations
    (:func:`top_sd`) until the budget's end. A stop before it gives up at least that much."""
    curve, sd = regret_curve(problem, run), top_sd(problem, run)
    return next(k + 1 for k, r in enumerate(curve) if r - curve[-1] < FLAT_SD * sd)


def late_gain(problem: Problem, runs: Sequence[Run]) -> float:
    """How much the median regret still falls over the budget's second half (metric units): the
    median curve, which a few seeds with a late jump can hold up while most seeds have flattened."""
    curves = np.array([regret_curve(problem, r) for r in runs])
    med = np.median(curves, axis=0)
    n = curves.shape[1]
    return float(med[n // 2 - 1] - med[-1])


def seed_late_gain(problem: Problem, runs: Sequence[Run]) -> float:
    """How much one campaign's regret still falls over its second half, in the noise sd at its own
    best configurations (:func:`top_sd`), median over seeds: the typical campaign, measured the
    way the regret a stop gives up is (per seed, then the median)."""
    gains = []
    for r in runs:
        curve = regret_curve(problem, r)
        gains.append((curve[len(curve) // 2 - 1] - curve[-1]) / top_sd(problem, r))
    return float(statistics.median(gains))


def campaign_sd(problem: Problem, runs: Sequence[Run]) -> float:
    """The median over seeds of :func:`top_sd`."""
    return float(statistics.median(top_sd(problem, r) for r in runs))


def summary(problem: Problem, runs: Sequence[Run], threshold: float, patience: int, min_experiments: int,
            window: int) -> dict[str, Any]:
    """One (problem, threshold) cell: medians over seeds."""
    pts = [stop_point(problem, r, CostAwareStop(min_experiments, threshold, patience, window)) for r in runs]
    given_up = statistics.median(p["regret_stop"] - p["regret_cap"] for p in pts)
    return {"problem": problem.name, "threshold": threshold, "seeds": len(pts), "fired": sum(p["fired"] for p in pts),
            "stop": statistics.median(p["stop"] for p in pts), "cap": statistics.median(p["cap"] for p in pts),
            "saved": statistics.median(p["saved"] for p in pts), "given_up": given_up,
            "given_up_sd": given_up / problem.noise_sd,
            "given_up_top_sd": statistics.median((p["regret_stop"] - p["regret_cap"]) / p["top_sd"] for p in pts),
            "regret_cap": statistics.median(p["regret_cap"] for p in pts),
            "early": sum(p["regret_stop"] - p["regret_cap"] >= FLAT_SD * p["top_sd"] for p in pts), "points": pts}


def _fmt(x: float) -> str:
    return f"{x:.3g}" if abs(x) >= 1e-3 or x == 0 else f"{x:.1e}"


def gp_noise_ratio(problem: Problem, runs: Sequence[Run]) -> float:
    """The median noise sd the GP inferred (over every fitted decision of every seed) over the
    noise at the campaign's best configurations (:func:`campaign_sd`): far above 1 where the GP's
    homoscedastic fit absorbs a misfit or the noise differs across the space."""
    sds = [(sig[5] if len(sig) > 5 else sig[2]) for r in runs for sig, _, _ in r.decisions if sig is not None]
    return statistics.median(sds) / campaign_sd(problem, runs) if sds else float("nan")


def measured_share(runs: Sequence[Run]) -> float:
    """The share of fitted decisions judged by the replicates' upper bound instead of the GP's sd."""
    sigs = [sig for r in runs for sig, _, _ in r.decisions if sig is not None]
    return sum(1 for sig in sigs if len(sig) > 4 and sig[4]) / len(sigs) if sigs else 0.0


def report(runs: Sequence[Run], problems: Sequence[str], thresholds: Sequence[float], patience: int,
           min_experiments: int, window: int, default: float) -> tuple[str, list[dict[str, Any]]]:
    """The printed tables (every threshold's fired count; the default's full row) and the cells."""
    by_problem = {p: [r for r in runs if r.problem == _problem(p).name] for p in problems}
    by_problem = {p: rs for p, rs in by_problem.items() if rs}
    thresholds = sorted(set(thresholds) | {default})
    sd_top = {p: campaign_sd(_problem(p), rs) for p, rs in by_problem.items()}
    late_abs = {p: late_gain(_problem(p), rs) for p, rs in by_problem.items()}
    late_curve = {p: late_abs[p] / sd_top[p] for p in by_problem}
    late_opt = {p: late_abs[p] / _problem(p).noise_sd for p in by_problem}
    late = {p: seed_late_gain(_problem(p), rs) for p, rs in by_problem.items()}
    flat_at = {p: statistics.median(flat_from(_problem(p), r) for r in rs) for p, rs in by_problem.items()}
    flat = [p for p in by_problem if late[p] < FLAT_SD]
    cells = {(p, t): summary(_problem(p), rs, t, patience, min_experiments, window)
             for p, rs in by_problem.items() for t in thresholds}
    seeds = max(len(rs) for rs in by_problem.values())
    lines = [f"cost-aware stop (min_experiments {min_experiments}, patience {patience}, window {window}); "
             f"{seeds} seeds; fired per threshold (min_gain_sd_per_experiment)",
             f"{'problem':<18}{'late gain':>10}{'':6}{'(curve)':>8}{'(opt)':>8}{'flat at':>8}{'GP sd':>9}{'repl':>6}  "
             + "".join(f"{t:>7g}" for t in thresholds)]
    for p, rs in by_problem.items():
        kind = "flat" if p in flat else "steep"
        lines.append(f"{p:<18}{late[p]:>6.2f} sd {kind:<5}{late_curve[p]:>8.3g}{late_opt[p]:>8.3g}{flat_at[p]:>8.0f}"
                     f"{gp_noise_ratio(_problem(p), rs):>8.3g}x"
                     f"{measured_share(rs):>6.0%} "
                     + "".join(f"{cells[p, t]['fired']:>4}/{cells[p, t]['seeds']:<2}" for t in thresholds))
    ok_flat = ["yes" if all(cells[p, t]["fired"] >= 0.8 * cells[p, t]["seeds"] for p in flat) else "no"
               for t in thresholds]
    quiet = [sum(cells[p, t]["fired"] <= 0.1 * cells[p, t]["seeds"] for p in by_problem if p not in flat)
             for t in thresholds]
    lines.append(f"{'every flat >= 80%':<42}" + "".join(f"{x:>7}" for x in ok_flat))
    lines.append(f"{'steep ones <= 10% (of ' + str(len(by_problem) - len(flat)) + ')':<42}"
                 + "".join(f"{x:>7}" for x in quiet))
    lines.append(f"late gain: how much a campaign's regret falls over the budget's second half, in the noise sd at "
                 f"its {TOP_K} best configurations, median over seeds (flat: < {FLAT_SD:g} sd); (curve): the fall of "
                 f"the median regret curve in the median of that sd; (opt): the curve's fall in the noise sd at the "
                 f"problem's optimum; flat at: the experiment after which a campaign's regret falls by less than "
                 f"{FLAT_SD:g} sd until the budget's end, median over seeds; GP sd: the GP's inferred noise sd over the campaigns' sd; repl: share of "
                 f"decisions judged by the replicates' 95% upper bound (smaller than the GP's)")
    lines += ["", f"-- min_gain_sd_per_experiment={default:g}: medians over seeds",
              f"{'problem':<18}{'fired':>7}{'stop at':>12}{'saved':>8}{'regret given up':>17}{'in sd':>7}"
              f"{'(opt)':>8}{'early':>7}{'regret at cap':>15}"]
    for p in by_problem:
        c = cells[p, default]
        lines.append(f"{p:<18}{c['fired']:>4}/{c['seeds']:<2}{c['stop']:>6.0f}/{c['cap']:<5.0f}{c['saved']:>8.0%}"
                     f"{_fmt(c['given_up']):>17}{c['given_up_top_sd']:>7.2f}{c['given_up_sd']:>8.2f}"
                     f"{c['early']:>4}/{c['seeds']:<2}{_fmt(c['regret_cap']):>15}")
    lines.append("regret given up: in sd: per seed over the noise at its best configurations, median; (opt): the "
                 f"median over the noise at the problem's optimum; early: seeds stopped before their gains flattened "
                 f"(giving up >= {FLAT_SD:g} sd)")
    rows = [{**{k: v for k, v in c.items() if k != "points"}, "late_gain_sd": late[p], "late_gain_curve_sd": late_curve[p],
             "late_gain_opt_sd": late_opt[p], "flat_at": flat_at[p],
             "campaign_sd": sd_top[p], "flat": p in flat} for (p, _), c in cells.items()]
    return "\n".join(lines), rows


def save(runs: Sequence[Run], rows: Sequence[dict[str, Any]], config: dict[str, Any], tag: str) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"stopping-{tag}.json"
    with open(path, "w") as f:
        json.dump({"config": config, "runs": [asdict(r) for r in runs], "table": list(rows)}, f)
    return path


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--problems", default=",".join(DEFAULT_PROBLEMS), help=f"comma list of {', '.join(PROBLEMS)}")
    ap.add_argument("--seeds", type=int, default=10)
    ap.add_argument("--first-seed", type=int, default=0, help="seeds first-seed .. first-seed + seeds - 1")
    ap.add_argument("--evals", type=int, default=100, help="experiments per run (the full budget)")
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--jobs", type=int, default=1, help="runs in parallel processes")
    ap.add_argument("--quick", action="store_true", help="2 seeds, 40 experiments")
    ap.add_argument("--thresholds", default=",".join(f"{t:g}" for t in THRESHOLDS),
                    help="comma list of min_gain_sd_per_experiment values to replay")
    defaults = StoppingConfig()
    ap.add_argument("--patience", type=int, default=defaults.patience)
    ap.add_argument("--min-experiments", type=int, default=defaults.min_experiments)
    ap.add_argument("--window", type=int, default=defaults.window)
    ap.add_argument("--default", type=float, default=defaults.min_gain_sd_per_experiment,
                    help="the threshold whose full row is printed (default: StoppingConfig's)")
    ap.add_argument("--tag", default=time.strftime("%Y%m%d-%H%M%S"))
    ap.add_argument("--report", metavar="JSON", nargs="+",
                    help="only replay the runs of saved files, together (e.g. other thresholds, more seeds)")
    a = ap.parse_args(argv)
    if a.quick:
        a.seeds, a.evals = 2, 40
    problems = a.problems.split(",")
    thresholds = [float(x) for x in a.thresholds.split(",")]
    if a.evals < 2 or a.seeds < 1:
        ap.error("--evals: at least 2; --seeds: at least 1")
    t0 = time.perf_counter()
    if a.report:
        runs = [Run(**r) for path in a.report for r in json.loads(Path(path).read_text())["runs"]
                if r["problem"] in problems]
    else:
        runs = run_all(problems, a.seeds, a.evals, a.workers, a.jobs, a.first_seed)
    text, rows = report(runs, problems, thresholds, a.patience, a.min_experiments, a.window, a.default)
    print(text)
    print(f"median {statistics.median(r.wall_s for r in runs):.1f} s per run")
    if not a.report:
        path = save(runs, rows, vars(a), a.tag)
        print(f"{len(runs)} runs in {time.perf_counter() - t0:.0f} s; wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
