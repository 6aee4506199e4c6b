"""Worker utilization of a simulated 16-GPU fleet: async vs sync dispatch.

A fleet like the reference run (13 workers labelled h100, 3 labelled h200) runs a cheap
command target that sleeps a scaled training time (2-4 s, h200 20% faster, standing in for
~5-minute runs; ``--time-scale`` scales it) and prints val_bpb. The campaign is the product's own
(``hybrid.assemble`` from ``hybrid target=command backend=local backend.workers=[...16...]
proposer=<--proposer> surrogate=<--surrogate>``): real local processes, the real loop, store and
proposers; only the training is simulated.

Reported per mode:
  utilization      busy worker-seconds / (workers x campaign wall time); busy = submit -> exit
  steady           the same until the last experiment is dispatched (excludes the final drain,
                   when the budget is spent and nothing is left to give to a freed worker)
  exp/h (scaled)   experiments per hour at this utilization if one experiment took 5 minutes
  decision latency worker freed (its job exited) -> next experiment submitted on it: median, p95

The reference LLM agent reached ~56% scaling efficiency on 16 GPUs (GPUs idle while it thought).

    python benchmarks/fleet.py [--experiments 96] [--proposer sobol|optuna|hybrid]  (default sobol) [--modes async,sync]
        [--surrogate none|gp] [--time-scale 1.0]
Results: benchmarks/results/fleet-<stamp>.json (one row per mode).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import textwrap
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.product import QUIET  # noqa: E402
from hybrid.assemble import assemble, compose  # noqa: E402

TARGET = textwrap.dedent(
    """
    import json, os, time
    p = json.load(open("params.json"))
    speed = 0.8 if os.environ["HYBRID_HARDWARE"] == "h200" else 1.0
    time.sleep((2.0 + 2.0 * p["x"]) * speed * float(os.environ.get("SLEEP_SCALE", "1")))
    print(f"val_bpb: {1.0 + (p['x'] - 0.3) ** 2 + 0.01 * p['y']:.6f}")
    """
)
SPACE = {"x": {"type": "float", "low": 0.0, "high": 1.0, "default": 0.5},
         "y": {"type": "float", "low": 0.0, "high": 1.0, "default": 0.5}}
REFERENCE_UTILIZATION = 0.56
RESULTS = ROOT / "benchmarks" / "results"


def fleet() -> list[dict]:
    workers = [{"name": f"h100-{i:02d}", "hardware": "h100", "hourly_usd": 2.5} for i in range(13)]
    workers += [{"name": f"h200-{i}", "hardware": "h200", "hourly_usd": 3.5} for i in range(3)]
    return workers


def overrides(mode: str, n_experiments: int, proposer: str, surrogate: str, target_dir: Path) -> list[str]:
    """``hybrid <these>``: the sleep target on the 16 local workers of fleet()."""
    workers = ",".join(f"{{name:{w['name']},hardware:{w['hardware']},hourly_usd:{w['hourly_usd']}}}" for w in fleet())
    return ["target=command", "target.command='{python} sleep_target.py'", f"target.workdir={target_dir}",
            "target.timeout_s=60", "backend=local", f"backend.workers=[{workers}]", f"proposer={proposer}",
            f"surrogate={surrogate}", f"budget.max_experiments={n_experiments}", f"campaign.mode={mode}",
            "campaign.seed=0", *QUIET, "campaign.poll_interval_s=0.05"]


def run(mode: str, n_experiments: int, proposer: str, workdir: Path, surrogate: str = "none",
        time_scale: float = 1.0) -> dict:
    target_dir = workdir / "target"
    target_dir.mkdir(exist_ok=True)
    (target_dir / "sleep_target.py").write_text(TARGET)
    cfg = compose(overrides(mode, n_experiments, proposer, surrogate, target_dir))
    cfg.space.params = dict(SPACE)
    cfg.target.env["SLEEP_SCALE"] = repr(time_scale)
    if isinstance(cfg.proposer, dict) and "llm_share" in cfg.proposer:
        cfg.proposer["llm_share"] = 0  # a benchmark never spends on the API
    campaign = assemble(cfg, name=f"fleet-{mode}", campaign_dir=workdir / f"fleet-{mode}")
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
        # (a budget within one wave dispatches everything at once: no steady state to measure)
        "steady_utilization": steady_busy / (n_workers * (last_submit - start)) if last_submit > start else 1.0,
        # a worker busy a fraction u of the time completes u x 12 five-minute experiments per hour
        "exp_per_h_scaled": n_workers * (busy / (n_workers * wall)) * 3600.0 / 300.0,
        "latency_median_s": statistics.median(idle) if idle else float("nan"),
        "latency_p95_s": idle[int(0.95 * (len(idle) - 1))] if idle else float("nan"),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--experiments", type=int, default=96)
    # sobol by default: its configs do not depend on results, so both modes run the same experiments
    ap.add_argument("--proposer", default="sobol", choices=["sobol", "optuna", "hybrid"])
    ap.add_argument("--modes", default="async,sync")
    ap.add_argument("--surrogate", default="none", choices=["none", "gp"],
                    help="the ranker (none: the proposer's order, which keeps both modes' experiments alike)")
    ap.add_argument("--time-scale", type=float, default=1.0, help="multiplies the simulated training time")
    ap.add_argument("--tag", default=time.strftime("%Y%m%d-%H%M%S"))
    args = ap.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory(prefix="hybrid-fleet-") as tmp:
        for mode in args.modes.split(","):
            print(f"running {mode}: {args.experiments} experiments on 16 workers ({args.proposer})...", flush=True)
            rows.append(run(mode, args.experiments, args.proposer, Path(tmp), args.surrogate, args.time_scale))
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
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"fleet-{args.tag}.json"
    out.write_text(json.dumps({"args": vars(args), "rows": rows}, indent=1) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
