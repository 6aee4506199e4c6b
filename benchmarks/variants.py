"""Code variants (issue 14): the GP over (variant, params) against keep/discard hill-climbing.

A simulated training script whose code matters and interacts with its parameters. The target's
``train.py`` holds four code switches; code variants are real search/replace edits of it, checked
and applied by the product (``target.editable=[train.py]``), and each simulated job reads the
switches from its own snapshot, so what runs is what the variant's diff says:

    ACT = "relu2"      gelu moves the learning-rate optimum (0.02 -> 0.07) and is 0.012 better there,
                       but at lr 0.02 it is 0.006 worse than relu2: tried at the incumbent's settings, it loses
    NORM = "rms"       layer: neutral (+0.0003, far below the noise)
    SOFTCAP = 15.0     0.0: breaks the run (NaN loss)
    SCHEDULE = "cosine"  wsd: 0.007 better stacked on gelu, 0.004 worse on relu2

Parameters: lr (log 1e-3..0.2), warmup (0..0.3), wd (0..0.2). Observation noise sd 0.002.
A scripted stand-in for the LLM offers the four changes in that fixed order, each on the code of
the best result so far (as autoresearch stacks changes), and offers a change again on a new base.

Methods (every one the product's own campaign loop on the simulated fleet, async, 4 workers):
  product    the scripted variants (owed the LLM's default share of every wave, 0.3) + the
             classical parameter proposers (TPE, local), spread over the codes worth exploring,
             ranked by the GP over (variant, params)
  nogp       the same proposals, surrogate=none (the proposers' order)
  greedy     keep/discard hill-climbing as the reference agent does: every experiment is ONE
             change to the best so far (the next code change, else one parameter moved), kept
             when it is better
Reported per method (>= 10 seeds, median [q25, q75]): experiments and GPU-hours until the TRUE
value of a result is within ``--tol`` of the optimum (gelu + wsd at its lr),
and the true value reached at the budget.

    python benchmarks/variants.py [--seeds 10] [--evals 80] [--workers 4] [--jobs 2] [--tol 0.003]
Results: benchmarks/results/variants-<tag>.json (every run: true values, GPU-hours, code per result).
"""

from __future__ import annotations

import argparse
import ast
import json
import math
import re
import statistics
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from backends.base import JobHandle, RunSpec, Worker  # noqa: E402
from benchmarks.problems import Problem  # noqa: E402
from benchmarks.product import product_config  # noqa: E402
from benchmarks.simbackend import SimBackend, lognormal_duration  # noqa: E402
from hybrid import history  # noqa: E402
from hybrid.assemble import assemble  # noqa: E402
from hybrid.proposers.base import Proposer  # noqa: E402
from hybrid.proposers.hybrid import HybridProposer  # noqa: E402
from hybrid.space import SearchSpace  # noqa: E402
from hybrid.types import Candidate, Edit, Experiment, Objective  # noqa: E402
from hybrid.variants import VariantChecker, VariantRejected, make_variant, spread  # noqa: E402

TRAIN_PY = '''"""A simulated training script: its code switches are what code variants change."""
ACT = "relu2"
NORM = "rms"
SOFTCAP = 15.0
SCHEDULE = "cosine"
'''
DEFAULT_CODE = {"ACT": "relu2", "NORM": "rms", "SOFTCAP": 15.0, "SCHEDULE": "cosine"}
# the scripted LLM's changes, in the order it offers them
CHANGES: tuple[tuple[str, str, str, str], ...] = (
    ("layer norm instead of RMS norm", "NORM", '"rms"', '"layer"'),
    ("no logit softcap", "SOFTCAP", "15.0", "0.0"),
    ("GeLU instead of squared ReLU", "ACT", '"relu2"', '"gelu"'),
    ("warmup-stable-decay schedule", "SCHEDULE", '"cosine"', '"wsd"'),
)
NOISE = 0.002
SPACE = SearchSpace.from_config({
    "lr": {"type": "float", "low": 1e-3, "high": 0.2, "log": True, "default": 0.02},
    "warmup": {"type": "float", "low": 0.0, "high": 0.3, "default": 0.05},
    "wd": {"type": "float", "low": 0.0, "high": 0.2, "default": 0.0},
})
OBJ = Objective("val_bpb", "minimize")
METHODS = ("product", "nogp", "greedy")
RESULTS = ROOT / "benchmarks" / "results"
HOURLY_USD = 2.5
LLM_SHARE = 0.3  # the product's default proposer.llm_share


def code_of(text: str) -> dict[str, Any]:
    """The switches a train.py sets (``NAME = literal`` lines)."""
    code = dict(DEFAULT_CODE)
    for name, value in re.findall(r"^([A-Z]+) = (.+)$", text, flags=re.M):
        code[name] = ast.literal_eval(value)
    return code


def true_value(params: Mapping[str, Any], code: Mapping[str, Any]) -> float:
    if float(code["SOFTCAP"]) <= 0:
        return math.nan  # the run diverges
    gelu = code["ACT"] == "gelu"
    lr_opt = 0.07 if gelu else 0.02
    v = 1.0 + 0.06 * (math.log10(params["lr"]) - math.log10(lr_opt)) ** 2
    v += 0.25 * (params["warmup"] - 0.08) ** 2 + 0.02 * (params["wd"] - 0.1) ** 2
    v -= 0.012 if gelu else 0.0
    if code["SCHEDULE"] == "wsd":
        v += -0.007 if gelu else 0.004
    if code["NORM"] == "layer":
        v += 0.0003
    return v


OPTIMUM = true_value({"lr": 0.07, "warmup": 0.08, "wd": 0.1}, {**DEFAULT_CODE, "ACT": "gelu", "SCHEDULE": "wsd"})


class CodeProblem(Problem):
    """The objective as the simulated jobs see it: params plus the code read from the snapshot."""

    name = "variants"
    space = SPACE

    def evaluate(self, params: Mapping[str, Any], rng: np.random.Generator, used: list[int] | None = None) -> float:
        v = self.true_value(params)
        return v if math.isnan(v) else v + NOISE * float(rng.standard_normal())

    def true_value(self, params: Mapping[str, Any]) -> float:
        return true_value(params, params.get("__code__", DEFAULT_CODE))

    @property
    def optimum(self) -> float:
        return OPTIMUM

    @property
    def noise_sd(self) -> float:
        return NOISE


class CodeSimBackend(SimBackend):
    """SimBackend whose jobs read the code switches from their own snapshot's train.py."""

    def _start(self, exp: Experiment, spec: RunSpec, worker: Worker) -> JobHandle:
        code = code_of((spec.workdir / "train.py").read_text())
        seen = replace(exp, candidate=replace(exp.candidate, params={**exp.params, "__code__": code}))
        return super()._start(seen, spec, worker)


# ---- the scripted LLM and the reference agent ------------------------------------------------------
class _Script:
    """Offers the fixed changes in order, each on the current base; again on a new base."""

    def __init__(self) -> None:
        self.offered: set[tuple[int, str | None]] = set()

    def next(self, checker: VariantChecker) -> tuple[str, str] | None:
        """(variant id, hypothesis) of the next change that checks, or None when none is left."""
        base = checker.base()
        for i, (hypothesis, name, old, new) in enumerate(CHANGES):
            if (i, base) in self.offered:
                continue
            self.offered.add((i, base))
            v = make_variant([Edit("train.py", f"{name} = {old}", f"{name} = {new}")], hypothesis, base)
            try:
                return checker.check(v, "llm").variant.id, hypothesis
            except VariantRejected:
                continue  # e.g. already in the base: the search text is gone
        return None


class ScriptedCoder(Proposer):
    """The product's proposals: one scripted code change per call (run at the best settings so far),
    the rest from the classical proposers, spread over the codes worth exploring."""

    name = "coder"

    def __init__(self, space: SearchSpace, objective: Objective, seed: int = 0, **_: Any) -> None:
        super().__init__(space, objective, seed)
        self.inner = HybridProposer(space, objective, seed, sources={"tpe": 0.5, "local": 0.5})
        self.checker: VariantChecker | None = None
        self.script = _Script()
        self.pending: list[Candidate] = []

    def use_variants(self, checker: VariantChecker) -> None:
        self.checker = checker

    @property
    def wave_shares(self) -> dict[str, float]:
        return {"llm": LLM_SHARE}  # as proposer.llm_share gives the real LLM its share of every wave

    def propose(self, history_: Sequence[Experiment], n: int) -> list[Candidate]:
        # an offered change stays offered until it has run (as the LLM proposer's queue keeps them)
        ran = {(e.variant, self.space.key(e.params)) for e in history_}
        self.pending = [c for c in self.pending if (c.variant, self.space.key(c.params)) not in ran]
        if not self.pending and self.checker is not None and (change := self.script.next(self.checker)) is not None:
            best = history.best(list(history_), self.objective)
            params = dict(best.params) if best else self.space.defaults()
            self.pending.append(Candidate(params, "llm", change[1], change[0]))
        out = list(self.pending)
        classical = self.inner.propose(history_, max(0, n - len(out)))
        codes = self.checker.explore() if self.checker is not None else [None]
        return out + spread(classical, codes)


class GreedyAgent(Proposer):
    """Keep/discard hill-climbing: each experiment is one change to the best so far."""

    name = "greedy"
    # one parameter moved by a step drawn around these (a factor on lr's log scale, a shift otherwise)
    STEPS = {"lr": 0.4, "warmup": 0.04, "wd": 0.04}

    def __init__(self, space: SearchSpace, objective: Objective, seed: int = 0, **_: Any) -> None:
        super().__init__(space, objective, seed)
        self.checker: VariantChecker | None = None
        self.script = _Script()
        self.rng = np.random.default_rng(seed)

    def use_variants(self, checker: VariantChecker) -> None:
        self.checker = checker

    def propose(self, history_: Sequence[Experiment], n: int) -> list[Candidate]:
        best = history.best(list(history_), self.objective)
        params = dict(best.params) if best else self.space.defaults()
        code = best.variant if best else None
        out: list[Candidate] = []
        for _ in range(n * 3):
            if len(out) >= n:
                break
            if self.checker is not None and (change := self.script.next(self.checker)) is not None:
                out.append(Candidate(params, "llm", change[1], change[0]))
                continue
            name = str(self.rng.choice(list(self.STEPS)))
            p = self.space.params[name]
            step = float(self.rng.normal(0.0, self.STEPS[name]))
            value = params[name] * math.exp(step) if name == "lr" else params[name] + step
            moved = {**params, name: min(max(value, p.low), p.high)}
            out.append(Candidate(moved, "greedy", f"{name} {'up' if step > 0 else 'down'}", code))
        return out


# ---- running ---------------------------------------------------------------------------------------
@dataclass
class Run:
    method: str
    seed: int
    true: list[float]  # true value of each finished experiment, in the order results arrived (nan: crashed)
    hours: list[float]  # GPU-hours spent when each result arrived (cumulative)
    variants: list[str]  # the code (its switches) of each finished experiment
    wall_s: float


def simulate(method: str, seed: int, evals: int, workers: int) -> Run:
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        target_dir = root / "target"
        target_dir.mkdir()
        (target_dir / "train.py").write_text(TRAIN_PY)
        surrogate = "surrogate=none" if method != "product" else "surrogate=gp"
        cfg = product_config(SPACE, [surrogate, "target.editable=[train.py]"], seed=seed, evals=evals,
                             target_dir=target_dir)
        cls = GreedyAgent if method == "greedy" else ScriptedCoder
        cfg.proposer = {"_target_": f"benchmarks.variants.{cls.__name__}", "name": cls.name}
        backend = CodeSimBackend(CodeProblem(), workers, seed=seed, duration=lognormal_duration(300.0, 0.3),
                                 hourly_usd=HOURLY_USD)
        campaign = assemble(cfg, name=f"{method}-s{seed}", campaign_dir=root / "c", backend=backend)
        campaign.run()
        done = sorted((e for e in campaign.experiments() if e.result is not None), key=lambda e: (e.ended, e.seq))
        true, hours, codes, spent = [], [], [], 0.0
        for e in done:
            code = code_of((Path(e.workdir) / "train.py").read_text())
            true.append(true_value(e.params, code))
            spent += (e.result.duration_s if e.result else 0.0) / 3600.0
            hours.append(spent)
            codes.append(",".join(f"{k}={v}" for k, v in code.items() if DEFAULT_CODE[k] != v) or "unchanged")
    return Run(method, seed, true, hours, codes, time.perf_counter() - t0)


def reached(run: Run, tol: float) -> tuple[int | None, float | None]:
    """(experiments, GPU-hours) until the first result whose TRUE value is within ``tol`` of the
    optimum (noise never flatters a method)."""
    for i, v in enumerate(run.true):
        if not math.isnan(v) and v - OPTIMUM <= tol:
            return i + 1, run.hours[i]
    return None, None


def _job(args: tuple) -> Run:
    return simulate(*args)


def _q(xs: Sequence[float]) -> str:
    if not xs:
        return "-"
    q = np.percentile(xs, [25, 50, 75])
    return f"{q[1]:.4g} [{q[0]:.4g}, {q[2]:.4g}]"


def report(runs: Sequence[Run], evals: int, tol: float) -> tuple[str, list[dict[str, Any]]]:
    lines = [f"variants: optimum {OPTIMUM:.4f} (gelu + wsd at lr 0.07), tolerance {tol}, budget {evals} "
             f"experiments, {len({r.seed for r in runs})} seeds",
             f"{'method':<8} {'reached':>8} {'experiments to reach':>26} {'GPU-hours to reach':>26} "
             f"{'regret at budget':>28}"]
    rows = []
    by = {m: [r for r in runs if r.method == m] for m in METHODS}
    med = {}
    for m, rs in by.items():
        if not rs:
            continue
        hits = [reached(r, tol) for r in rs]
        n_exp = [h[0] if h[0] is not None else evals for h in hits]  # a miss counts as the whole budget
        n_hours = [h[1] if h[1] is not None else r.hours[-1] for h, r in zip(hits, rs, strict=True)]
        final = [min((v for v in r.true if not math.isnan(v)), default=math.inf) - OPTIMUM for r in rs]
        med[m] = statistics.median(n_exp)
        rows.append({"method": m, "reached": sum(h[0] is not None for h in hits), "runs": len(rs),
                     "experiments": n_exp, "gpu_hours": n_hours, "final_regret": final})
        lines.append(f"{m:<8} {sum(h[0] is not None for h in hits):>4}/{len(rs):<3} {_q(n_exp):>26} "
                     f"{_q(n_hours):>26} {_q(final):>28}")
    if "product" in med:
        for m in ("greedy", "nogp"):
            if m in med:
                lines.append(f"{m} / product, median experiments to reach: {med[m] / med['product']:.2f}x")
    return "\n".join(lines), rows


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, default=10)
    ap.add_argument("--evals", type=int, default=80)
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--tol", type=float, default=0.003)
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--tag", default=time.strftime("%Y%m%d-%H%M%S"))
    a = ap.parse_args(argv)
    methods = [m for m in a.methods.split(",") if m]
    jobs = [(m, s, a.evals, a.workers) for m in methods for s in range(a.seeds)]
    t0 = time.perf_counter()
    if a.jobs > 1:
        with ProcessPoolExecutor(a.jobs) as pool:
            runs = list(pool.map(_job, jobs))
    else:
        runs = [_job(j) for j in jobs]
    text, rows = report(runs, a.evals, a.tol)
    print(text)
    out = RESULTS / f"variants-{a.tag}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"config": vars(a), "optimum": OPTIMUM, "rows": rows,
                               "runs": [asdict(r) for r in runs]}, indent=1))
    print(f"{len(runs)} runs in {time.perf_counter() - t0:.0f} s; wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
