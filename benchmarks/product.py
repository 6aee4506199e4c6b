"""The product as the benchmarks run it: ``hybrid.assemble`` builds the campaign from Hydra
overrides exactly as ``hybrid <overrides>`` does, with one difference, the backend: an
in-process :class:`~benchmarks.simbackend.SimBackend` runs the simulated objective on a
virtual clock. ``campaign.run()`` is then the product's own loop (proposers, candidate pool,
GP ranker, store, stopping rules), and results are read back from the campaign's store.

    run = run_product(make_problem("hartmann6"), ["proposer=hybrid", "surrogate=gp"], seed=0, evals=40,
                      workers=8, root=tmp)
    run.experiments      # every experiment, from state.sqlite (virtual started/ended)

What a benchmark campaign leaves out: tracking (``tracking=none``), the live view and the
end-of-campaign findings (reports, not part of the optimization), any LLM spend
(``proposer.llm_share=0``) and the cost-aware stop (``stopping=budget``: a fixed budget, unless a
method asks for ``stopping=cost_aware``); the poll interval is 0 because the clock is virtual.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.problems import Problem
from benchmarks.simbackend import Duration, SimBackend
from hybrid.assemble import assemble, compose
from hybrid.campaign import Campaign
from hybrid.config import Config
from hybrid.space import CategoricalParam, FloatParam, SearchSpace
from hybrid.stopping import CostAwareStop, StopSignal
from hybrid.types import Experiment, ExperimentState, Worker

ROOT = Path(__file__).resolve().parent.parent
# what every benchmark campaign sets (module docstring); method overrides come after and may change them.
# stopping=budget: benchmarks compare methods at equal budgets (the cost-aware rule, the default,
# only watches through DecisionLog; benchmarks/stopping.py replays it)
QUIET = ("tracking=none", "campaign.progress=none", "campaign.findings=false", "campaign.poll_interval_s=0",
         "stopping=budget")


def space_params(space: SearchSpace) -> dict[str, dict[str, Any]]:
    """A SearchSpace as the ``space.params`` config that builds it again."""
    out: dict[str, dict[str, Any]] = {}
    for p in space:
        if isinstance(p, CategoricalParam):
            out[p.name] = {"type": "categorical", "choices": list(p.choices), "default": p.default}
        elif isinstance(p, FloatParam):
            out[p.name] = {"type": "float", "low": p.low, "high": p.high, "log": p.log, "default": p.default}
        else:
            out[p.name] = {"type": "int", "low": p.low, "high": p.high, "log": p.log, "step": p.step,
                           "default": p.default}
    return out


def product_config(space: SearchSpace, overrides: Sequence[str], *, seed: int, evals: int, target_dir: Path,
                   metric: str = "val_bpb", proposer_yaml: str | Path | None = None) -> Config:
    """The typed config of ``hybrid target=command <QUIET> <overrides>`` for a simulated objective
    over ``space``: ``evals`` experiments (baseline included), no LLM, no timeout (the simulated
    runs take hours of virtual time). ``proposer_yaml``: a proposer node of one's own (ablations)."""
    cfg = compose(["target=command", "target.command=simulated", f"target.workdir={target_dir}",
                   f"target.metric={metric}", "target.timeout_s=null", f"campaign.seed={seed}",
                   f"budget.max_experiments={evals}", *QUIET, *overrides])
    cfg.space.params = space_params(space)  # the problem's space, whatever the space group holds
    if proposer_yaml is not None:
        from omegaconf import OmegaConf

        node = OmegaConf.to_container(OmegaConf.load(proposer_yaml), resolve=True)
        assert isinstance(node, dict)
        node.pop("defaults", None)
        cfg.proposer = node
    if isinstance(cfg.proposer, dict) and "llm_share" in cfg.proposer:
        cfg.proposer["llm_share"] = 0  # a benchmark never spends on the API, key or not
    return cfg


class DecisionLog(CostAwareStop):
    """A cost-aware rule that never fires and records every decision the campaign feeds it:
    (``hybrid.stopping.StopSignal`` or None, finished, created). ``stop_point`` replays the real
    rule over them for any threshold (benchmarks/stopping.py, sample_efficiency.py --stopping)."""

    def __init__(self, created: Callable[[], int]) -> None:
        super().__init__(min_experiments=1, min_gain_sd_per_experiment=0.0, patience=1)
        self.created = created
        self.records: list[tuple[StopSignal | None, int, int]] = []

    def judge(self, decision: Any, n_finished: int, measured_high: float | None = None) -> str | None:
        self.records.append((StopSignal.from_decision(decision, measured_high), n_finished, self.created()))
        return None


@dataclass
class ProductRun:
    """One finished benchmark campaign."""

    campaign: Campaign
    backend: SimBackend
    experiments: list[Experiment]  # from the campaign's store, in creation order
    decisions: list[tuple[StopSignal | None, int, int]]  # DecisionLog.records
    propose_s: list[float] = field(default_factory=list)  # seconds per proposer call
    wall_s: float = 0.0

    def finished(self) -> list[Experiment]:
        """Finished experiments in the order their results arrived (virtual end, then creation)."""
        done = [e for e in self.experiments if e.state.is_finished()]
        return sorted(done, key=lambda e: (e.ended or 0.0, e.seq))


def run_product(problem: Problem, overrides: Sequence[str], *, seed: int, evals: int,
                workers: int | Sequence[Worker], root: Path, name: str | None = None,
                duration: Duration | None = None, slowdown: dict[str, float] | None = None,
                hourly_usd: float = 0.0, metric: str = "val_bpb",
                proposer_yaml: str | Path | None = None) -> ProductRun:
    """Assemble and run the product's campaign for ``problem`` on a simulated fleet, in ``root``."""
    t0 = time.perf_counter()
    target_dir = root / "target"  # what every experiment's snapshot copies: nothing
    target_dir.mkdir(parents=True, exist_ok=True)
    cfg = product_config(problem.space, overrides, seed=seed, evals=evals, target_dir=target_dir, metric=metric,
                         proposer_yaml=proposer_yaml)
    backend = SimBackend(problem, workers, seed=seed, duration=duration, slowdown=slowdown, metric=metric,
                         hourly_usd=hourly_usd)
    name = name or f"{problem.name}-s{seed}"
    campaign = assemble(cfg, name=name, campaign_dir=root / name, backend=backend)
    log = DecisionLog(lambda: len(campaign.exps))
    if campaign.stopping.cost is None:  # a configured stopping=cost_aware is left to do its job
        campaign.stopping.cost = log
    propose_s: list[float] = []
    _time_calls(campaign.proposer, "propose", propose_s)
    campaign.run()
    exps = campaign.experiments()
    if any(e.state in (ExperimentState.PENDING, ExperimentState.RUNNING) for e in exps):
        raise RuntimeError(f"{name}: the campaign ended with unfinished experiments ({campaign.stop_reason})")
    return ProductRun(campaign, backend, exps, log.records, propose_s, time.perf_counter() - t0)


def _time_calls(obj: Any, method: str, sink: list[float]) -> None:
    """Record the wall seconds of every call of ``obj.method`` (instrumentation, nothing else)."""
    inner = getattr(obj, method)

    def timed(*args: Any, **kwargs: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return inner(*args, **kwargs)
        finally:
            sink.append(time.perf_counter() - t0)

    setattr(obj, method, timed)
