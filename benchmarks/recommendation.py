"""The winner's curse under noise: the campaign's recommendation against its best single observation.

Every campaign runs the product as the CLI composes it (``proposer=hybrid surrogate=gp``, its
defaults ``campaign.replicates=1`` and ``campaign.confirm_top_k=3``) on a simulated fleet, and
writes its ``summary.json``; this script reads the recommendation (best mean among configurations
confirmed by >= 2 runs on the judged hardware) and the best single observation from it, and scores
both on the problem's TRUE (noiseless) value: simple regret = true value - optimum.

The problems are noisy on purpose: the noise sd is at least half the typical late-phase gain
(the median improvement of the observed running best over the second half of the budget, printed
per problem as ``late gain``), the regime of the reference run's last phases (gains of ~0.001
against a seed spread of ~0.002):

- ``hartmann6-noisy``: Hartmann6 with Gaussian noise sd 0.1 (the sample-efficiency harness uses 0.05);
- ``ackley10``: Ackley10 with noise sd 0.5 (as in the sample-efficiency harness);
- ``fcnet-parkinsons`` and ``fcnet-protein``: recorded training seeds of real MLPs (each
  observation one of 4 seeds drawn at random; the true value is their mean).

Arm ``noconfirm`` (``campaign.replicates=0 campaign.confirm_top_k=0``, same budget) is there to
show what the confirmation costs the exploration: its best single observation's true value at the
same number of experiments.

Reported per problem (median [q25, q75] over seeds): regret of the recommendation, of the best
single observation (same campaigns), of noconfirm's best single observation; how often the
recommendation is better / the same configuration / worse than the best single observation; the
confirming and replicate runs spent.

Also per problem: how optimistic each answer's reported value is (its true value minus the value
reported: the best single run's value, the recommendation's mean): the winner's curse in numbers.

Usage: .venv/bin/python benchmarks/recommendation.py [--seeds 10] [--evals 60] [--workers 4] [--jobs 1]
       .venv/bin/python benchmarks/recommendation.py --report benchmarks/results/recommendation-<tag>.json ...
Results: benchmarks/results/recommendation-<tag>.json
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.problems import Problem, ackley10, hartmann6, make_problem  # noqa: E402
from benchmarks.product import run_product  # noqa: E402
from hybrid.store import Store  # noqa: E402

PROBLEMS = ("hartmann6-noisy", "ackley10", "fcnet-parkinsons", "fcnet-protein")
ARMS = {"product": ("proposer=hybrid", "surrogate=gp"),
        "noconfirm": ("proposer=hybrid", "surrogate=gp", "campaign.replicates=0", "campaign.confirm_top_k=0")}
HOURLY_USD = 2.5
RESULTS = ROOT / "benchmarks" / "results"


def problem(name: str) -> Problem:
    if name == "hartmann6-noisy":
        p = hartmann6(noise_std=0.1)
        p.name = "hartmann6-noisy"
        return p
    if name == "ackley10":
        return ackley10()
    return make_problem(name)


@dataclass
class Outcome:
    problem: str
    arm: str
    seed: int
    best_single_regret: float  # the best single observation's configuration, scored on its true value
    recommended_regret: float | None  # the recommendation's (product arm)
    confirmed: bool | None
    same_config: bool | None  # the recommendation is the best single observation's configuration
    n_confirm: int
    n_replicate: int
    late_gain: float | None  # median improvement of the observed running best over the budget's second half
    noise_sd: float | None  # the campaign's measured noise sd (summary.json)
    wall_s: float
    gp_best_regret: float | None = None  # the config of the lowest GP posterior mean over every run (a diagnostic)
    mean_best_regret: float | None = None  # the config of the lowest mean over its runs, any n (a diagnostic)
    gp_confirmed_regret: float | None = None  # among the confirmed configs, the lowest GP posterior mean (a diagnostic)
    # the winner's curse: how much better than its true value the campaign reports its answer
    # (true value - reported value, minimized: > 0 is optimistic): the best single run's value, the
    # recommendation's mean over its runs
    best_single_optimism: float | None = None
    recommended_optimism: float | None = None


def late_gain(values: Sequence[float | None]) -> float | None:
    """The median of the running best's improvements over the second half of the runs (in order)."""
    best, gains = float("inf"), []
    for i, v in enumerate(values):
        if v is None:
            continue
        if v < best:
            if i >= len(values) // 2 and best < float("inf"):
                gains.append(best - v)
            best = v
    return float(np.median(gains)) if gains else None


def run_one(args: tuple[str, str, int, int, int]) -> Outcome:
    name, arm, seed, evals, workers = args
    p = problem(name)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="hybrid-rec-") as tmp:
        run = run_product(p, ARMS[arm], seed=seed, evals=evals, workers=workers, root=Path(tmp),
                          name=f"{arm}-{name}-s{seed}", hourly_usd=HOURLY_USD, metric="loss")
        camp = Path(tmp) / f"{arm}-{name}-s{seed}"
        summary = json.loads((camp / "summary.json").read_text())
        store = Store.open_read_only(camp / "state.sqlite")
        estimates = store.get_meta("gp_estimates") or {}
    exps = run.experiments
    by_id = {e.id: e for e in exps}
    best = by_id[summary["best_observed"]["experiment_id"]]
    rec = summary["recommended"]
    rec_regret = None if rec is None else p.true_value(rec["params"]) - p.optimum
    noise = next(iter(summary["noise"].values()), {}) if summary["noise"] else {}
    return Outcome(
        problem=name, arm=arm, seed=seed, best_single_regret=p.true_value(best.params) - p.optimum,
        recommended_regret=rec_regret if arm == "product" else None,
        confirmed=rec["confirmed"] if arm == "product" and rec else None,
        same_config=(best.id in rec["experiment_ids"]) if arm == "product" and rec else None,
        n_confirm=sum(e.source == "confirm" for e in exps), n_replicate=sum(e.source == "replicate" for e in exps),
        late_gain=late_gain([e.value("loss") for e in sorted(exps, key=lambda e: e.seq)]),
        noise_sd=noise.get("sd"), wall_s=time.perf_counter() - t0,
        gp_best_regret=(p.true_value(by_id[min(estimates, key=estimates.get)].params) - p.optimum) if estimates else None,
        mean_best_regret=_mean_best(p, exps),
        gp_confirmed_regret=_gp_confirmed(p, exps, estimates),
        best_single_optimism=p.true_value(best.params) - summary["best_observed"]["value"],
        recommended_optimism=(p.true_value(rec["params"]) - rec["mean"]) if arm == "product" and rec else None,
    )


def _gp_confirmed(p: Problem, exps: Sequence[Any], estimates: dict[str, float]) -> float | None:
    from hybrid import noise
    from hybrid.types import Objective

    runs = [c for c in noise.config_runs(exps, Objective("loss", "minimize")) if c.n >= 2
            and noise.estimate_of(c, estimates) is not None]
    if not runs:
        return None
    return p.true_value(min(runs, key=lambda c: noise.estimate_of(c, estimates)).params) - p.optimum


def _mean_best(p: Problem, exps: Sequence[Any]) -> float | None:
    from hybrid import noise
    from hybrid.types import Objective

    runs = noise.config_runs(exps, Objective("loss", "minimize"))
    return (p.true_value(min(runs, key=lambda c: c.mean).params) - p.optimum) if runs else None


def _q(xs: Sequence[float]) -> str:
    if not xs:
        return "-"
    q1, med, q3 = np.percentile(xs, [25, 50, 75])
    return f"{med:.4g} [{q1:.4g}, {q3:.4g}]"


def report(outcomes: Sequence[Outcome], problems: Sequence[str], evals: int, seeds: int) -> str:
    lines = [f"the recommendation vs the best single observation, {seeds} seeds, {evals} experiments each; "
             "regret = true value - optimum, median [q25, q75], lower is better", ""]
    head = ("problem", "noise sd", "late gain", "recommended", "best single", "noconfirm best", "rec better/same/worse",
            "confirmed", "confirm+replicate runs", "optimism: recommended", "optimism: best single",
            "GP-best (diag.)", "best mean (diag.)", "GP among confirmed (diag.)")
    lines.append("| " + " | ".join(head) + " |")
    lines.append("|" + "---|" * len(head))
    for name in problems:
        prod = [o for o in outcomes if o.problem == name and o.arm == "product"]
        noc = [o for o in outcomes if o.problem == name and o.arm == "noconfirm"]
        if not prod:
            continue
        rec = [o.recommended_regret for o in prod if o.recommended_regret is not None]
        single = [o.best_single_regret for o in prod]
        better = sum(1 for o in prod if o.recommended_regret is not None and o.recommended_regret < o.best_single_regret - 1e-12)
        worse = sum(1 for o in prod if o.recommended_regret is not None and o.recommended_regret > o.best_single_regret + 1e-12)
        same = len(prod) - better - worse
        sds = [o.noise_sd for o in prod if o.noise_sd is not None]
        gains = [o.late_gain for o in prod + noc if o.late_gain is not None]
        lines.append("| " + " | ".join([
            name, f"{np.median(sds):.3g}" if sds else "-", f"{np.median(gains):.3g}" if gains else "-",
            _q(rec), _q(single), _q([o.best_single_regret for o in noc]), f"{better}/{same}/{worse}",
            f"{sum(1 for o in prod if o.confirmed)}/{len(prod)}",
            f"{np.median([o.n_confirm for o in prod]):g}+{np.median([o.n_replicate for o in prod]):g}",
            _q([o.recommended_optimism for o in prod if o.recommended_optimism is not None]),
            _q([o.best_single_optimism for o in prod if o.best_single_optimism is not None]),
            _q([o.gp_best_regret for o in prod if o.gp_best_regret is not None]),
            _q([o.mean_best_regret for o in prod if o.mean_best_regret is not None]),
            _q([o.gp_confirmed_regret for o in prod if o.gp_confirmed_regret is not None]),
        ]) + " |")
    lines += ["", "optimism: the answer's true value minus the value the campaign reports for it (> 0: it looks "
              "better than it is; the best single run's is the winner's curse)"]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--problems", nargs="+", default=list(PROBLEMS))
    ap.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS))
    ap.add_argument("--seeds", type=int, default=10)
    ap.add_argument("--first-seed", type=int, default=0)
    ap.add_argument("--evals", type=int, default=60)
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--jobs", type=int, default=1)
    ap.add_argument("--tag", default=time.strftime("%Y%m%d-%H%M%S"))
    ap.add_argument("--report", metavar="JSON", nargs="+", help="only print the table of saved files, together")
    a = ap.parse_args(argv)
    if a.report:
        fields = set(Outcome.__dataclass_fields__)
        saved = [Outcome(**{k: v for k, v in o.items() if k in fields}) for path in a.report
                 for o in json.loads(Path(path).read_text())["outcomes"]]
        problems = list(dict.fromkeys(o.problem for o in saved))
        print(report(saved, problems, a.evals, len({(o.seed) for o in saved})))
        return 0
    for name in a.problems:
        problem(name)  # a bad name fails before any run
    jobs = [(name, arm, seed, a.evals, a.workers) for name in a.problems for seed in
            range(a.first_seed, a.first_seed + a.seeds) for arm in a.arms]
    t0 = time.perf_counter()
    if a.jobs > 1:
        with ProcessPoolExecutor(a.jobs) as pool:
            outcomes = list(pool.map(run_one, jobs))
    else:
        outcomes = [run_one(j) for j in jobs]
    text = report(outcomes, a.problems, a.evals, a.seeds)
    print(text)
    print(f"\n{len(jobs)} campaigns in {time.perf_counter() - t0:.0f} s")
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"recommendation-{a.tag}.json"
    out.write_text(json.dumps({"args": vars(a), "outcomes": [asdict(o) for o in outcomes]}, indent=1))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
