"""Worker utilization of a simulated 16-GPU fleet: async vs sync dispatch.

A fleet like the reference run (13 workers labelled h100, 3 labelled h200) runs a cheap
command target that sleeps a scaled training time (2-4 s, h200 20% faster, standing in for
~5-minute runs) and prints val_bpb. Real local processes, the real campaign loop, store and
proposers; only the training is simulated.

Reported per mode:
  utilization      busy worker-seconds / (workers x campaign wall time); busy = submit -> exit
  steady           the same until the last experiment is dispatched (excludes the final drain,
                   when the budget is spent and nothing is left to give to a freed worker)
  exp/h (scaled)   experiments per hour at this utilization if one experiment took 5 minutes
  decision latency worker freed (its job exited) -> next experiment submitted on it: median, p95

The reference LLM agent reached ~56% scaling efficiency on 16 GPUs (GPUs idle while it thought).

    python benchmarks/fleet.py [--experiments 96] [--proposer sobol|optuna|hybrid]  (default sobol) [--modes async,sync]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import textwrap
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from backends.local import LocalBackend  # noqa: E402
from hybrid.campaign import Campaign  # noqa: E402
from hybrid.space import SearchSpace  # noqa: E402
from hybrid.stopping import Budget  # noqa: E402
from hybrid.targets import TargetSpec  # noqa: E402

TARGET = textwrap.dedent(
    """
    import json, os, time
    p = json.load(open("params.json"))
    speed = 0.8 if os.environ["HYBRID_HARDWARE"] == "h200" else 1.0
    time.sleep((2.0 + 2.0 * p["x"]) * speed)
    print(f"val_bpb: {1.0 + (p['x'] - 0.3) ** 2 + 0.01 * p['y']:.6f}")
    """
)
SPACE = {"x": {"type": "float", "low": 0.0, "high": 1.0, "default": 0.5},
         "y": {"type": "float", "low": 0.0, "high": 1.0, "default": 0.5}}
REFERENCE_UTILIZATION = 0.56


def fleet() -> list[dict]:
    workers = [{"name": f"h100-{i:02d}", "hardware": "h100", "hourly_usd": 2.5} for i in range(13)]
    workers += [{"name": f"h200-{i}", "hardware": "h200", "hourly_usd": 3.5} for i in range(3)]
    return workers


def make_proposer(kind: str, space: SearchSpace, objective, seed: int):
    if kind == "sobol":
        from hybrid.proposers.sobol import SobolProposer

        return SobolProposer(space, objective, seed=seed)
    if kind == "optuna":
        from hybrid.proposers.optuna import OptunaProposer

        return OptunaProposer(space, objective, seed=seed)
    from hybrid.proposers.hybrid import HybridProposer

    return HybridProposer(space, objective, seed=seed)


def run(mode: str, n_experiments: int, proposer: str, workdir: Path) -> dict:
    target_dir = workdir / "target"
    target_dir.mkdir(exist_ok=True)
    (target_dir / "sleep_target.py").write_text(TARGET)
    space = SearchSpace.from_config(SPACE)
    target = TargetSpec.from_config({"name": "sleep", "command": "{python} sleep_target.py",
                                     "workdir": str(target_dir), "timeout_s": 60})
    campaign = Campaign(
        name=f"fleet-{mode}", dir=workdir / f"fleet-{mode}", space=space, target=target,
        backend=LocalBackend(workers=fleet()), proposer=make_proposer(proposer, space, target.objective, 0),
        budget=Budget(max_experiments=n_experiments), mode=mode, poll_interval_s=0.05,
    )
    t0 = time.time()
    campaign.run()
    wall_total = time.time() - t0
    exps = campaign.experiments()
    start = min(e.started for e in exps)
    end = max(e.ended for e in exps)
    wall = end - start
    busy = sum(e.ended - e.started for e in exps)
    # Steady state: until the budget's last experiment is dispatched. After that the fleet drains
    # (no work is left to give), which any finite campaign pays once, whatever its dispatcher.
    last_submit = max(e.started for e in exps)
    steady_busy = sum(max(0.0, min(e.ended, last_submit) - e.started) for e in exps)
    idle = sorted(e.idle_before_s for e in exps if e.wave > 1 and e.idle_before_s is not None)
    n_workers = len(fleet())
    return {
        "mode": mode,
        "experiments": len(exps),
        "wall_s": wall,
        "orchestrator_s": wall_total,
        "utilization": busy / (n_workers * wall),
        "steady_utilization": steady_busy / (n_workers * (last_submit - start)),
        # a worker busy a fraction u of the time completes u x 12 five-minute experiments per hour
        "exp_per_h_scaled": n_workers * (busy / (n_workers * wall)) * 3600.0 / 300.0,
        "latency_median_s": statistics.median(idle) if idle else float("nan"),
        "latency_p95_s": idle[int(0.95 * (len(idle) - 1))] if idle else float("nan"),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--experiments", type=int, default=96)
    # sobol by default: its configs do not depend on results, so both modes run the same experiments
    ap.add_argument("--proposer", default="sobol", choices=["sobol", "optuna", "hybrid"])
    ap.add_argument("--modes", default="async,sync")
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="hybrid-fleet-") as tmp:
        for mode in args.modes.split(","):
            print(f"running {mode}: {args.experiments} experiments on 16 workers ({args.proposer})...", flush=True)
            rows.append(run(mode, args.experiments, args.proposer, Path(tmp)))
    print()
    print(f"{'mode':6} {'exps':>5} {'wall s':>7} {'util':>6} {'steady':>7} {'vs ref 56%':>10} "
          f"{'exp/h (5-min runs)':>18} {'latency med':>11} {'p95':>6}")
    for r in rows:
        print(f"{r['mode']:6} {r['experiments']:5d} {r['wall_s']:7.1f} {r['utilization']:6.1%} "
              f"{r['steady_utilization']:7.1%} "
              f"{r['utilization'] / REFERENCE_UTILIZATION:9.2f}x {r['exp_per_h_scaled']:18.0f} "
              f"{r['latency_median_s']:10.3f}s {r['latency_p95_s']:5.3f}s")
    if len(rows) == 2:
        print(f"\nasync/sync throughput (same experiments, wall time): {rows[1]['wall_s'] / rows[0]['wall_s']:.2f}x; "
              f"ideal for 16 workers at 5 min: {16 * 12} exp/h; reference agent: ~90 exp/h")


if __name__ == "__main__":
    main()
