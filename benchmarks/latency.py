"""Decision latency of ``surrogate=gp``: a worker frees up -> the wave is chosen.

A 6-d mixed space (3 floats, one log float, an int, a 3-way categorical) with a synthetic noisy
objective, 3% crashes and a peak-memory metric. For each history size n the ranker is warmed up
with one decision on the first n results, then ``--decisions`` consecutive decisions follow as
the campaign would make them: between two decisions ``--arrivals`` new results arrive (so full
hyperparameter refits happen every ``refit_every`` new results, cheap updates in between), and
every decision ranks a fresh pool of ``--pool`` candidates for ``--q`` free workers with ``--q``
experiments still running (pending).

The proposer, the candidate pool and the ranker are the product's own, assembled by
``hybrid.assemble`` from ``hybrid proposer=hybrid surrogate=gp surrogate.pool_size=<--pool>
'surrogate.worker_memory_mb={h100: 80000}'`` (the campaign itself is not run: its history is made
up here, n results at once).
``--pool-from hybrid`` (default): the pool is ``proposer=hybrid`` (conf/proposer/hybrid.yaml: TPE,
local perturbations, Sobol, grid) as the campaign makes it: its CandidatePool generates it on a
background thread right after the previous wave is dispatched, while results are awaited. Timed
per decision, as the campaign's dispatch path runs it: take the prepared pool (less what was
tried or started since), rank (GP fit/condition + qLogNEI wave) -- in wall-clock and in process
CPU seconds. Reported beside it: how long the pool took to generate
off the path ("pool gen"), and what a decision would cost with the pool made on the path
("cold" = pool gen + decision, what ``campaign.prefetch_pool=false`` gives).
``--pool-from random``: uniform random pools (the ranker alone).

    python benchmarks/latency.py [--sizes 100,300,1000,2000] [--decisions 12] [--pool 256] [--q 16]
Results: benchmarks/results/latency-<stamp>.json (one row per history size).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from backends.base import Worker  # noqa: E402
from benchmarks.product import product_config  # noqa: E402
from hybrid.assemble import assemble  # noqa: E402
from hybrid.campaign import Campaign  # noqa: E402
from hybrid.space import SearchSpace  # noqa: E402
from hybrid.types import Candidate, Experiment, ExperimentState, Objective, Result  # noqa: E402

SPACE = SearchSpace.from_config({
    "lr": {"type": "float", "low": 1e-4, "high": 1e-1, "log": True},
    "warmup": {"type": "float", "low": 0.0, "high": 0.3},
    "wd": {"type": "float", "low": 0.0, "high": 0.2},
    "beta2": {"type": "float", "low": 0.9, "high": 0.999},
    "depth": {"type": "int", "low": 4, "high": 12, "step": 2},
    "window": {"type": "categorical", "choices": ["L", "SL", "SSSL"]},
})
OBJECTIVE = Objective("val_bpb", "minimize")
RESULTS = ROOT / "benchmarks" / "results"


def simulate(params: dict, rng: np.random.Generator) -> tuple[ExperimentState, dict[str, float]]:
    u = SPACE.encode(params)
    if u[0] > 0.95 and rng.random() < 0.7:  # learning rates near the top diverge
        return ExperimentState.CRASHED, {}
    bpb = 1.0 + 0.3 * (u[0] - 0.6) ** 2 + 0.1 * (u[1] - 0.2) ** 2 + 0.05 * u[2] + 0.02 * (u[3] - 0.7) ** 2
    bpb += -0.03 * u[4] + {"L": 0.02, "SL": 0.0, "SSSL": 0.01}[params["window"]] + 0.003 * rng.standard_normal()
    return ExperimentState.DONE, {"val_bpb": bpb, "peak_vram_mb": 20000.0 * (1 + params["depth"] / 4)}


def random_params(rng: np.random.Generator) -> dict:
    return SPACE.validate(SPACE.decode(rng.random(len(SPACE))))


def finished(seq: int, params: dict, rng: np.random.Generator) -> Experiment:
    state, metrics = simulate(params, rng)
    exp = Experiment(f"e{seq:05d}", Candidate(params, "sobol"), "w0", "h100", wave=seq, state=state, seq=seq)
    exp.result = Result(exp.id, state, metrics, "h100", duration_s=300.0 + 10 * rng.random(), cost_usd=0.2,
                        reason="" if state is ExperimentState.DONE else "exit code 1")
    return exp


def running(seq: int, params: dict) -> Experiment:
    return Experiment(f"e{seq:05d}", Candidate(params, "sobol"), "w1", "h100", wave=seq,
                      state=ExperimentState.RUNNING, seq=seq)


def product(seed: int, pool_size: int, root: Path) -> Campaign:
    """The campaign ``hybrid proposer=hybrid surrogate=gp`` would run over SPACE (not run here):
    its proposer, CandidatePool and GPRanker are what is timed."""
    cfg = product_config(SPACE, ["proposer=hybrid", "surrogate=gp", f"surrogate.pool_size={pool_size}",
                                 "surrogate.worker_memory_mb={h100: 80000}"], seed=seed, evals=1, target_dir=root)
    return assemble(cfg, name="latency", campaign_dir=root / "latency")


def bench(n: int, decisions: int, arrivals: int, pool_size: int, q: int, seed: int, pool_from: str) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="hybrid-latency-") as tmp:
        return _bench(product(seed, pool_size, Path(tmp)), n, decisions, arrivals, pool_size, q, seed, pool_from)


def _bench(campaign: Campaign, n: int, decisions: int, arrivals: int, pool_size: int, q: int, seed: int,
           pool_from: str) -> dict[str, float]:
    rng = np.random.default_rng(seed)
    history = [finished(i + 1, random_params(rng), rng) for i in range(n)]
    ranker = campaign.ranker
    workers = [Worker(f"w{i}", "h100", 2.5) for i in range(q)]
    pool = campaign.pool if pool_from == "hybrid" else None
    prefetch = pool.prefetcher if pool is not None else None
    assert pool is None or prefetch is not None, "surrogate=gp prefetches its pool (campaign.prefetch_pool)"
    pending: list[Experiment] = [running(len(history) + 1 + i, random_params(rng)) for i in range(q)]

    def decide() -> tuple[float, float, float]:
        """One decision for q free workers; returns (wall s, CPU s, off-path pool generation s)."""
        nonlocal pending
        gen = 0.0
        if prefetch is not None:
            prefetch.wait()  # the pool was made while the campaign waited for these results
            gen = prefetch.last_seconds
        everything = history + pending
        t0, c0 = time.perf_counter(), time.process_time()
        if pool is not None:  # the campaign's own: the prepared pool, less what was tried or started since
            cands = pool.take(everything, ranker.pool_size(q), q, [])
        else:
            cands = [Candidate(random_params(rng), "sobol") for _ in range(pool_size)]
        wave = ranker.rank(cands, everything, pending, workers)
        dt, dc = time.perf_counter() - t0, time.process_time() - c0
        assert len(wave) == q and ranker.last_decision is not None and ranker.last_decision.fitted
        # the wave starts; the oldest running experiments are the ones that finish next
        pending = pending[len(wave):] + [running(len(everything) + 1 + i, dict(c.params))
                                         for i, (c, _) in enumerate(wave)]
        if pool is not None:
            pool.prepare(history + pending, ranker.pool_size(1))
        return dt, dc, gen

    decide()  # warm-up: the first, cold fit (and first pool) is paid once per campaign
    times, cpu, fits, ranks, gens = [], [], [], [], []
    for _ in range(decisions):
        for _ in range(arrivals):  # the oldest running experiments finish, new results arrive
            done = pending.pop(0) if pending else None
            params = dict(done.params) if done is not None else random_params(rng)
            history.append(finished(len(history) + 1, params, rng))
        dt, dc, gen = decide()
        times.append(dt)
        cpu.append(dc)
        gens.append(gen)
        fits.append(ranker.last_decision.fit_seconds)
        ranks.append(ranker.last_decision.rank_seconds)
    if pool is not None:
        pool.close()
    times.sort()
    cpu.sort()
    p90 = min(len(times) - 1, int(0.9 * len(times)))
    cold = sorted(t + g for t, g in zip(times, gens, strict=True))
    return {"median": statistics.median(times), "p90": times[p90], "max": times[-1],
            "cpu_median": statistics.median(cpu), "cpu_p90": cpu[p90],
            "fit_median": statistics.median(fits), "rank_median": statistics.median(ranks),
            "gen_median": statistics.median(gens), "cold_median": statistics.median(cold)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="100,300,1000,2000")
    ap.add_argument("--decisions", type=int, default=12)
    ap.add_argument("--arrivals", type=int, default=4, help="results arriving between two decisions")
    ap.add_argument("--pool", type=int, default=256)
    ap.add_argument("--q", type=int, default=16)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--pool-from", choices=("hybrid", "random"), default="hybrid")
    ap.add_argument("--tag", default=time.strftime("%Y%m%d-%H%M%S"))
    args = ap.parse_args(argv)
    import torch

    print(f"pool={args.pool} from {args.pool_from} q={args.q} pending={args.q} arrivals/decision={args.arrivals} "
          f"decisions={args.decisions} GP threads=1 (GPRanker.threads) of {torch.get_num_threads()}")
    print("wall-clock seconds per decision (free worker -> wave chosen); cpu = process CPU seconds; "
          "pool gen = off-path pool generation; cold = pool gen + decision")
    print(f"{'n':>6} {'median':>7} {'p90':>6} {'max':>6} {'cpu med':>8} {'cpu p90':>8} {'fit med':>8} "
          f"{'rank med':>9} {'pool gen':>9} {'cold med':>9}")
    rows: list[dict[str, Any]] = []
    for n in (int(s) for s in args.sizes.split(",")):
        r = bench(n, args.decisions, args.arrivals, args.pool, args.q, args.seed, args.pool_from)
        rows.append({"n": n, **r})
        print(f"{n:>6} {r['median']:>7.3f} {r['p90']:>6.3f} {r['max']:>6.3f} {r['cpu_median']:>8.3f} "
              f"{r['cpu_p90']:>8.3f} {r['fit_median']:>8.3f} {r['rank_median']:>9.3f} {r['gen_median']:>9.3f} "
              f"{r['cold_median']:>9.3f}", flush=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"latency-{args.tag}.json"
    out.write_text(json.dumps({"args": vars(args), "rows": rows}, indent=1) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
