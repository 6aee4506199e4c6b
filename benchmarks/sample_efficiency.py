"""Sample efficiency of the hybrid (benchmark 1) and where cost-aware stopping would stop (benchmark 4).

Every method runs an ASYNC campaign on a simulated fleet (benchmarks/simbackend.py):
``--workers`` workers (default 8), lognormal durations (median 1 h, sigma 0.5) at ``HOURLY_USD``
per worker-hour, on a virtual clock; a freed worker at once gets the next candidate. For one
seed every method sees the same fleet: the k-th experiment submitted gets the k-th duration and
noise draw (the backend's own random streams).

Methods:
  hybrid       the product's ``hybrid proposer=hybrid surrogate=gp``, built by hybrid.assemble
               from conf/ and run by its own campaign loop (candidate pool, GP ranker, store)
  hybrid-nogp  the same with ``surrogate=none`` (the proposers' order)
  tpe, cmaes, random  the product's ``proposer=optuna proposer.sampler=<that> surrogate=none``:
               Optuna's sampler on a study rebuilt from the history, running experiments as
               RUNNING trials, in the same campaign loop
  gpsampler    optuna.samplers.GPSampler on one persistent study, ask/tell, pending trials
               RUNNING, submitting straight to the same simulated fleet (a peer only: not a
               product proposer, so not a campaign)
The campaigns (every method but gpsampler) start with the baseline (the space's defaults), as
every product campaign does; gpsampler starts from nothing. Campaign dirs go to a temp dir.

Simple regret after k finished evaluations = (best TRUE value among them) - optimum, so curves
are non-increasing and noise never flatters a method. Per problem the table shows median
[q25, q75] over seeds, and how many evaluations each method's median curve needs to reach the
reference's (hybrid's) final median regret, and the ratio to the reference's own count.
s/decision: wall seconds from a poll of the backend to the wave submitted (the campaign's
bookkeeping, pool, ranking and submits: what a freed worker waits).

--stopping: every hybrid decision records what the campaign feeds CostAwareStop (the GP's gain in
noise sd per experiment's price: benchmarks/product.py DecisionLog), then CostAwareStop is replayed
over them per threshold. The rule changes a run only by dispatching nothing after it fires, so the
stop point, the money saved and the regret given up (best of the experiments dispatched before the
stop vs all at the cap) are exact for every threshold from one set of runs. --stop-gain thresholds
are values of stopping.min_gain_sd_per_experiment (benchmarks/stopping.py calibrates its default).
The confirmation phase a stop is followed by is not counted here (benchmarks/stopping.py turns it off).

    python benchmarks/sample_efficiency.py --quick --problems hartmann6,fcnet-protein
    python benchmarks/sample_efficiency.py [--problems ...] [--methods ...] [--seeds 10] [--evals 100]
        [--workers 8] [--jobs 2] [--stopping [--stop-gain 0.02,0.04,0.08] [--patience 5]]
Results: benchmarks/results/sample_efficiency-<stamp>.json (every run) and .csv (median curves).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from backends.base import RunSpec  # noqa: E402
from benchmarks.problems import PROBLEMS, Problem, make_problem  # noqa: E402
from benchmarks.product import ProductRun, run_product  # noqa: E402
from benchmarks.simbackend import SimBackend  # noqa: E402
from hybrid.config import StoppingConfig  # noqa: E402
from hybrid.space import CategoricalParam, FloatParam, SearchSpace  # noqa: E402
from hybrid.stopping import CostAwareStop, StopSignal  # noqa: E402
from hybrid.targets import to_result  # noqa: E402
from hybrid.types import Candidate, Experiment, Objective  # noqa: E402

METHODS = ("hybrid", "hybrid-nogp", "tpe", "cmaes", "random", "gpsampler")
# each product method is `hybrid <these overrides>` (plus benchmarks.product.QUIET)
PRODUCT = {
    "hybrid": ("proposer=hybrid", "surrogate=gp"),
    "hybrid-nogp": ("proposer=hybrid", "surrogate=none"),
    **{s: ("proposer=optuna", f"proposer.sampler={s}", "surrogate=none") for s in ("tpe", "cmaes", "random")},
}
DEFAULT_PROBLEMS = ("hartmann6", "ackley10", "fcnet-protein", "fcnet-naval", "fcnet-parkinsons", "fcnet-slice")
OBJECTIVE = Objective("loss", "minimize")  # the simulated target prints "loss: <value>"
HOURLY_USD = 2.5  # simulated price of one worker-hour
RESULTS = ROOT / "benchmarks" / "results"


# ---- one run ---------------------------------------------------------------------------------
@dataclass
class Run:
    problem: str
    method: str
    seed: int
    regret: list[float]  # simple regret after k = 1, 2, ... finished evaluations
    decision_s: list[float]  # wall time of every dispatch decision
    propose_s: list[float]  # seconds per proposer call (product methods; empty otherwise)
    wall_s: float
    # for the stopping replay: (hybrid.stopping.StopSignal or None, finished, created) at every decision, and
    # (true regret, cost USD, end hour) of every experiment in creation order
    decisions: list[tuple[Sequence[float] | None, int, int]] = field(default_factory=list)
    experiments: list[tuple[float, float, float]] = field(default_factory=list)


@lru_cache(maxsize=8)
def _problem(name: str) -> Problem:
    return make_problem(name)


def _regret_curve(problem: Problem, finished: Sequence[tuple[dict[str, Any], bool]]) -> list[float]:
    """Simple regret after each finished evaluation (params, succeeded), in arrival order."""
    best, out = float("inf"), []
    for params, ok in finished:
        if ok:
            best = min(best, problem.true_value(params))
        out.append(best - problem.optimum)
    return out


def simulate(problem_name: str, method_name: str, seed: int, evals: int, n_workers: int) -> Run:
    """Run one async campaign of ``evals`` evaluations of ``method_name`` on the simulated fleet."""
    problem = _problem(problem_name)
    with tempfile.TemporaryDirectory(prefix="hybrid-bench-") as tmp:
        if method_name == "gpsampler":
            return _gpsampler_run(problem, seed, evals, n_workers, Path(tmp))
        if method_name not in PRODUCT:
            raise SystemExit(f"--methods: {method_name!r} is not one of {', '.join(METHODS)}")
        run = run_product(problem, PRODUCT[method_name], seed=seed, evals=evals, workers=n_workers, root=Path(tmp),
                          name=f"{method_name}-{problem.name}-s{seed}", hourly_usd=HOURLY_USD,
                          metric=OBJECTIVE.metric, proposer_yaml=os.environ.get("HYBRID_BENCH_HYBRID_YAML")
                          if method_name.startswith("hybrid") else None)
        return _product_result(problem, method_name, seed, run)


def _product_result(problem: Problem, method: str, seed: int, run: ProductRun) -> Run:
    """A finished campaign, read from its store, as one Run."""
    finished = [(dict(e.params), e.value(OBJECTIVE.metric) is not None) for e in run.finished()]
    out = Run(problem.name, method, seed, _regret_curve(problem, finished), run.backend.decision_s, run.propose_s,
              run.wall_s)
    if method == "hybrid":
        out.decisions = run.decisions
        out.experiments = [(problem.true_value(e.params) - problem.optimum, e.result.cost_usd if e.result else 0.0,
                            ((e.ended or run.backend.epoch) - run.backend.epoch) / 3600) for e in run.experiments]
    return out


class OptunaGP:
    """Optuna's own GPSampler: one study for the whole run, asked trials stay RUNNING until told."""

    def __init__(self, space: SearchSpace, seed: int) -> None:
        import optuna
        from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
        self.dists: dict[str, Any] = {}
        for p in space:
            if isinstance(p, CategoricalParam):
                self.dists[p.name] = CategoricalDistribution(p.choices)
            elif isinstance(p, FloatParam):
                self.dists[p.name] = FloatDistribution(p.low, p.high, log=p.log)
            else:
                self.dists[p.name] = IntDistribution(p.low, p.high, log=p.log and p.step == 1, step=p.step)
        self.study = optuna.create_study(sampler=optuna.samplers.GPSampler(seed=seed))

    def ask(self) -> tuple[int, dict[str, Any]]:
        trial = self.study.ask(self.dists)
        return trial.number, dict(trial.params)

    def tell(self, number: int, value: float | None) -> None:
        from optuna.trial import TrialState

        if value is None:
            self.study.tell(number, state=TrialState.FAIL)
        else:
            self.study.tell(number, value)


def _gpsampler_run(problem: Problem, seed: int, evals: int, n_workers: int, root: Path) -> Run:
    """GPSampler's ask/tell on the same simulated fleet: each freed worker gets a fresh ask."""
    t_start = time.perf_counter()
    peer = OptunaGP(problem.space, seed)
    backend = SimBackend(problem, n_workers, seed=seed, hourly_usd=HOURLY_USD, metric=OBJECTIVE.metric)
    trials: dict[str, tuple[int, dict[str, Any]]] = {}  # experiment id -> (trial number, params)
    finished: list[tuple[dict[str, Any], bool]] = []
    decision_s: list[float] = []
    while True:
        free = backend.free_workers()[: evals - len(trials)]
        if free:
            t0 = time.perf_counter()
            asked = [peer.ask() for _ in free]
            decision_s.append(time.perf_counter() - t0)
            for (number, params), worker in zip(asked, free, strict=True):
                exp = Experiment(f"e{len(trials) + 1:04d}", Candidate(params, "gpsampler", f"trial {number}"),
                                 worker.name, worker.hardware, 0, seq=len(trials) + 1)
                (root / exp.id).mkdir()
                backend.submit(exp, RunSpec("simulated", root / exp.id))
                trials[exp.id] = (number, params)
        if not backend.running():
            break
        for f in backend.poll():
            value = to_result(f, OBJECTIVE, f.worker.hardware, f.worker.hourly_usd).value(OBJECTIVE.metric)
            number, params = trials[f.experiment_id]
            peer.tell(number, value)
            finished.append((params, value is not None))
    return Run(problem.name, "gpsampler", seed, _regret_curve(problem, finished), decision_s, [],
               time.perf_counter() - t_start)


def stop_point(run: Run, rule: CostAwareStop) -> dict[str, Any]:
    """Replay ``rule`` over the run's decisions: where it stops, what that saves and gives up."""
    k = len(run.experiments)
    fired = False
    for signal, n_finished, n_created in run.decisions:
        if rule.observe(StopSignal(*signal) if signal is not None else None, n_finished):
            k, fired = max(n_created, 1), True
            break

    def outcome(exps: Sequence[tuple[float, float, float]]) -> tuple[float, float, float]:
        return min(r for r, _, _ in exps), sum(c for _, c, _ in exps), max(h for _, _, h in exps)

    (r_cap, usd_cap, h_cap), (r_stop, usd_stop, h_stop) = outcome(run.experiments), outcome(run.experiments[:k])
    return {"stopped": fired, "evals_stop": k, "evals_cap": len(run.experiments), "usd_stop": usd_stop,
            "usd_cap": usd_cap, "hours_stop": h_stop, "hours_cap": h_cap, "regret_stop": r_stop, "regret_cap": r_cap}


# ---- many runs, tables, files ----------------------------------------------------------------
def _job(args: tuple) -> Run:
    import torch

    torch.set_num_threads(1)  # --jobs processes share the cores
    return simulate(*args)


def run_all(problems: Sequence[str], methods: Sequence[str], seeds: int, evals: int, workers: int,
            jobs: int = 1) -> list[Run]:
    tasks = [(p, m, s, evals, workers) for p in problems for m in methods for s in range(seeds)]
    for p in problems:  # fail fast on a bad name or a missing package, and warm the data cache
        _problem(p)
    if "hybrid" in methods:
        import surrogate.gp  # noqa: F401 - imported once here, so every --jobs process runs the same code
    if jobs <= 1:
        return [simulate(*a) for a in tasks]
    with ProcessPoolExecutor(jobs) as pool:
        return list(pool.map(_job, tasks))


def curves(runs: Sequence[Run], evals: int) -> np.ndarray:
    """(seeds, evals) regrets; a run that ended early (space used up) keeps its last value."""
    return np.array([r.regret + [r.regret[-1]] * (evals - len(r.regret)) for r in runs])


def evals_to_reach(median: np.ndarray, target: float) -> int | None:
    hit = np.flatnonzero(median <= target + 1e-12)
    return int(hit[0]) + 1 if hit.size else None


def _fmt(x: float) -> str:
    return f"{x:.3g}" if abs(x) >= 1e-3 or x == 0 else f"{x:.1e}"


def table(problem: str, runs: Sequence[Run], evals: int) -> tuple[str, list[dict[str, Any]]]:
    """The printed table of one problem, and its median curves as CSV rows."""
    by_method: dict[str, list[Run]] = {}
    for r in runs:
        if r.problem == problem:
            by_method.setdefault(r.method, []).append(r)
    if not by_method:
        return f"== {problem}: no runs", []
    ref = "hybrid" if "hybrid" in by_method else next(iter(by_method))
    stats = {}
    for m, rs in by_method.items():
        c = curves(rs, evals)
        stats[m] = (np.median(c, 0), np.quantile(c, 0.25, 0), np.quantile(c, 0.75, 0), len(rs))
    target = float(stats[ref][0][-1])
    k_ref = evals_to_reach(stats[ref][0], target) or evals
    marks = sorted({k for k in (10, 20, 40, 70, 100, 150, 200) if k < evals} | {evals})
    head = f"{'method':<12}" + "".join(f"{'@' + str(k):>24}" for k in marks)
    head += f"{'to reach':>10}{'ratio':>8}{'s/decision':>12}{'p90':>8}"
    lines = [f"== {problem}: simple regret, median [q25, q75] over seeds; reference {ref} reaches its final "
             f"median {_fmt(target)} at {k_ref} evaluations", head]
    rows = []
    for m, (med, q25, q75, n) in stats.items():
        k = evals_to_reach(med, target)
        reach, ratio = (str(k), f"{k / k_ref:.2f}") if k else (f">{evals}", f">{evals / k_ref:.2f}")
        dec = [d for r in by_method[m] for d in r.decision_s]
        cells = "".join(" " + f"{_fmt(med[i - 1]) + ' [' + _fmt(q25[i - 1]) + ', ' + _fmt(q75[i - 1]) + ']':>23}"
                        for i in marks)
        lines.append(f"{m:<12}{cells}{reach:>10}{ratio:>8}{statistics.median(dec):>12.3f}"
                     f"{float(np.quantile(dec, 0.9)):>8.3f}")
        rows += [{"problem": problem, "method": m, "evals": i + 1, "median": med[i], "q25": q25[i],
                  "q75": q75[i], "seeds": n} for i in range(evals)]
    return "\n".join(lines), rows


def stop_table(problem: Problem, runs: Sequence[Run], stop_gains: Sequence[float], min_experiments: int,
               patience: int, window: int = StoppingConfig.window) -> tuple[str, list[dict[str, Any]]]:
    """Benchmark 4 for one problem: the hybrid's stop point per threshold (medians over seeds)."""
    hybrid = [r for r in runs if r.problem == problem.name and r.method == "hybrid"]
    if not hybrid:
        return "", []
    lines = [f"-- {problem.name}: cost-aware stop of hybrid (min_experiments {min_experiments}, patience {patience}, "
             f"${HOURLY_USD:g}/h per worker); medians over {len(hybrid)} seeds",
             f"{'stop-gain':>10}{'fired':>7}{'evals':>12}{'USD':>14}{'saved':>9}{'hours':>13}"
             f"{'regret stop':>13}{'at cap':>9}{'given up':>10}"]
    rows = []
    for thr in stop_gains:
        pts = [stop_point(r, CostAwareStop(min_experiments, thr, patience, window)) for r in hybrid]

        def med(key: str, pts: list[dict[str, Any]] = pts) -> float:
            return float(statistics.median(p[key] for p in pts))

        saved = statistics.median(p["usd_cap"] - p["usd_stop"] for p in pts)
        given_up = statistics.median(p["regret_stop"] - p["regret_cap"] for p in pts)
        lines.append(f"{thr:>10g}{sum(p['stopped'] for p in pts):>4}/{len(pts):<2}"
                     f"{med('evals_stop'):>6.0f}/{med('evals_cap'):<5.0f}{med('usd_stop'):>7.0f}/{med('usd_cap'):<6.0f}"
                     f"{saved:>9.0f}{med('hours_stop'):>6.1f}/{med('hours_cap'):<6.1f}{_fmt(med('regret_stop')):>13}"
                     f"{_fmt(med('regret_cap')):>9}{_fmt(given_up):>10}")
        rows += [{"problem": problem.name, "stop_gain": thr, "seed": r.seed, **p}
                 for r, p in zip(hybrid, pts, strict=True)]
    return "\n".join(lines), rows


def report(runs: Sequence[Run], problems: Sequence[str], evals: int, stop_gains: Sequence[float] = (),
           min_experiments: int = StoppingConfig.min_experiments,
           patience: int = StoppingConfig.patience) -> tuple[str, list[dict[str, Any]], list[dict[str, Any]]]:
    """The printed tables, the median-curve CSV rows and the stop-point rows."""
    texts, rows, stops = [], [], []
    for p in problems:
        problem = _problem(p)
        text, r = table(problem.name, runs, evals)
        texts.append(text)
        rows += r
        if stop_gains:
            text, r = stop_table(problem, runs, stop_gains, min_experiments, patience)
            texts.append(text)
            stops += r
    return "\n".join(t for t in texts if t), rows, stops


def timings(runs: Sequence[Run]) -> str:
    """Per method: seconds per decision (median, p90, max), the proposers' median share, seconds per run."""
    lines = ["seconds per decision on this machine: median / p90 / max (proposers' median part), median s per run"]
    for m in dict.fromkeys(r.method for r in runs):
        rs = [r for r in runs if r.method == m]
        dec, prop = [d for r in rs for d in r.decision_s], [d for r in rs for d in r.propose_s]
        part = f" ({statistics.median(prop):.3f})" if prop else ""
        if m == "hybrid":  # a GP that failed to fit (or to rank) silently measures the proposers' order
            n_gp = sum(g is not None for r in rs for g, _, _ in r.decisions)
            part += f", GP used in {n_gp}/{sum(len(r.decisions) for r in rs)} decisions"
        lines.append(f"  {m:<12}{statistics.median(dec):.3f} / {float(np.quantile(dec, 0.9)):.3f} / {max(dec):.3f}"
                     f"{part}, {statistics.median(r.wall_s for r in rs):.1f} s per run")
    return "\n".join(lines)


def save(runs: Sequence[Run], rows: Sequence[dict[str, Any]], stops: Sequence[dict[str, Any]],
         config: dict[str, Any], tag: str) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    stem = RESULTS / f"sample_efficiency-{tag}"
    with open(stem.with_suffix(".json"), "w") as f:
        json.dump({"config": config, "runs": [asdict(r) for r in runs], "stops": list(stops)}, f)
    with open(stem.with_suffix(".csv"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["problem", "method", "evals", "median", "q25", "q75", "seeds"])
        w.writeheader()
        w.writerows(rows)
    return stem


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--problems", default=",".join(DEFAULT_PROBLEMS), help=f"comma list of {', '.join(PROBLEMS)}")
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--seeds", type=int, default=10)
    ap.add_argument("--evals", type=int, default=100, help="evaluations per run (up to 200)")
    ap.add_argument("--workers", type=int, default=8)
    ap.add_argument("--jobs", type=int, default=1, help="runs in parallel processes")
    ap.add_argument("--quick", action="store_true", help="3 seeds, 40 evaluations")
    ap.add_argument("--hybrid-yaml", metavar="PATH",
                    help="an alternative to conf/proposer/hybrid.yaml for the hybrid methods (ablations)")
    ap.add_argument("--stopping", action="store_true", help="benchmark 4: where CostAwareStop would stop the hybrid")
    ap.add_argument("--min-experiments", type=int, default=StoppingConfig.min_experiments)
    ap.add_argument("--patience", type=int, default=StoppingConfig.patience)
    ap.add_argument("--stop-gain", default="0.02,0.04,0.08",
                    help="comma list of stopping.min_gain_sd_per_experiment values")
    ap.add_argument("--tag", default=time.strftime("%Y%m%d-%H%M%S"))
    ap.add_argument("--report", metavar="JSON", help="only print the tables of a saved run (e.g. other --stop-gain)")
    a = ap.parse_args(argv)
    if a.hybrid_yaml:  # read by make_method, in this process and the --jobs ones
        os.environ["HYBRID_BENCH_HYBRID_YAML"] = str(Path(a.hybrid_yaml).resolve())
    if a.quick:
        a.seeds, a.evals = 3, 40
    if not 1 <= a.evals <= 200:
        ap.error("--evals: between 1 and 200")
    problems, methods = a.problems.split(","), a.methods.split(",")
    for m in methods:
        if m not in METHODS:
            ap.error(f"--methods: {m!r} is not one of {', '.join(METHODS)}")
    stop_gains = [float(x) for x in a.stop_gain.split(",")] if a.stopping else []
    if a.stopping and "hybrid" not in methods:
        ap.error("--stopping: needs the hybrid method")
    t0 = time.perf_counter()
    if a.report:
        saved = json.loads(Path(a.report).read_text())
        runs = [Run(**r) for r in saved["runs"] if r["problem"] in problems and r["method"] in methods]
        text, _, _ = report(runs, problems, saved["config"]["evals"], stop_gains, a.min_experiments, a.patience)
        print(text + "\n" + timings(runs))
        return 0
    runs = run_all(problems, methods, a.seeds, a.evals, a.workers, a.jobs)
    text, rows, stops = report(runs, problems, a.evals, stop_gains, a.min_experiments, a.patience)
    print(text)
    print(timings(runs))
    stem = save(runs, rows, stops, vars(a), a.tag)
    print(f"{len(runs)} runs in {time.perf_counter() - t0:.0f} s; wrote {stem}.json and {stem}.csv")
    return 0


if __name__ == "__main__":
    sys.exit(main())
