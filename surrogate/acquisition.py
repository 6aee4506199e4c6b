"""Ranking a finite candidate pool into a wave of (candidate, worker) assignments.

``surrogate=none`` uses :class:`InOrderRanker`: the proposer's own order decides, which is the
classical behaviour (Optuna, Sobol...) and the baseline the GP ranker is measured against.
``surrogate=gp`` uses :class:`GPRanker`: a GP (surrogate/gp.py) scores every candidate by
qLogNoisyExpectedImprovement with the running experiments pending, times P(feasible)
(surrogate/feasibility.py), per predicted dollar, and picks the wave by sequential greedy choice.
A candidate is (code variant, params): the GP and the feasibility model see the variant, so a
pool that mixes variants and parameter proposals is ranked as one.
"""

from __future__ import annotations

import math
import time
import warnings
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from hybrid.history import is_prior
from hybrid.space import SearchSpace
from hybrid.types import Candidate, Experiment, Objective, Worker

__all__ = ["GPRanker", "InOrderRanker", "RankDecision", "Ranker", "WaveChoice", "select_wave", "validation_picks"]


class Ranker(ABC):
    """Chooses which candidates run next, and where.

    ``last_decision``: what the last ``rank`` call decided (the model's expected gain per USD, read by
    the cost-aware stopping rule); None before the first call and for rankers without a model.
    """

    last_decision: RankDecision | None = None

    def set_wave_shares(self, shares: Mapping[str, float]) -> None:  # noqa: B027 - optional hook
        """Sources owed a share of the experiments (``proposer.llm_share``: ``{"llm": 0.3}``). A ranker
        that orders a larger pool gives each its share of every wave; the default ignores them."""

    def set_variant_parents(self, parents: Mapping[str, str | None]) -> None:  # noqa: B027 - optional hook
        """Every code variant the campaign knows: id -> the id it is stacked on (None: on the unchanged
        code), the whole mapping each time (it replaces the last). A ranker with a model lets a
        stacked variant share its parent's part of it; ids it was not told of count as built on the
        unchanged code. The default ignores it."""

    @abstractmethod
    def pool_size(self, n_free: int) -> int:
        """How many candidates to ask the proposers for when ``n_free`` workers are free."""

    @abstractmethod
    def rank(
        self,
        pool: Sequence[Candidate],
        history: Sequence[Experiment],
        pending: Sequence[Experiment],
        workers: Sequence[Worker],
    ) -> list[tuple[Candidate, Worker]]:
        """Pick at most ``len(workers)`` candidates from ``pool`` and assign each a worker.

        ``history``: every experiment so far (finished ones carry results); ``pending``: those
        still running, whose outcomes are unknown but must not be chosen again.
        """


class InOrderRanker(Ranker):
    """No model: the first candidates go to the free workers in order (after the validations of
    ``validate_top_k``, when a target hardware is set: see :func:`validation_picks`)."""

    def __init__(self, space: SearchSpace | None = None, objective: Objective | None = None, seed: int = 0,
                 target_hardware: str | None = None, validate_top_k: int = 0, name: str = "none") -> None:
        self.space, self.objective, self.target_hardware = space, objective, target_hardware
        self.validate_top_k = int(validate_top_k)
        if self.validate_top_k and (space is None or objective is None):
            raise ValueError("InOrderRanker: validate_top_k needs the space and the objective")
        self.name = name

    def pool_size(self, n_free: int) -> int:
        return n_free

    def rank(self, pool, history, pending, workers):
        picks, workers = [], list(workers)
        if self.validate_top_k and self.space is not None and self.objective is not None:
            picks, workers = validation_picks(self.space, self.objective, self.validate_top_k, history, pending,
                                              workers, self.target_hardware)
        return picks + list(zip(pool, workers, strict=False))


def validation_picks(space: SearchSpace, objective: Objective, k: int, history: Sequence[Experiment],
                     pending: Sequence[Experiment], workers: Sequence[Worker],
                     target: str | None) -> tuple[list[tuple[Candidate, Worker]], list[Worker]]:
    """The screening/validation workflow: the ``k`` best configs seen on other hardware that have
    not run (and are not running) on the ``target`` hardware yet go to its free workers first.

    Returns the validation picks and the workers left for the pool.
    """
    free_target = [w for w in workers if target is not None and w.hardware == target]
    if k <= 0 or not free_target:
        return [], list(workers)

    def key(e: Experiment) -> tuple:  # a config is its params and its code
        return space.key(e.params), e.variant

    on_target = {key(e) for e in [*history, *pending] if e.hardware == target}
    metric, sign = objective.metric, objective.sign()
    done = [(e, e.value(metric)) for e in history if e.hardware != target]
    ranked = sorted(((e, v) for e, v in done if v is not None), key=lambda ev: sign * ev[1])
    top, seen = [], set()
    for e, v in ranked:
        if key(e) not in seen:
            seen.add(key(e))
            top.append((e, v))
        if len(top) == k:
            break
    todo = [(e, v) for e, v in top if key(e) not in on_target]
    picks = []
    for (e, v), w in zip(todo, free_target, strict=False):
        why = f"validate {e.id} ({metric}={v:.6g} on {e.hardware}) on {target}"
        picks.append((Candidate(dict(e.params), "validate", why, variant=e.variant), w))
    used = {w.name for _, w in picks}
    return picks, [w for w in workers if w.name not in used]


# ---- the GP ranker ---------------------------------------------------------------------------
# torch/botorch are imported inside the functions below: `import hybrid` and `hybrid --help`
# must stay instant, and campaign.py imports this module for InOrderRanker.


@dataclass(frozen=True)
class RankDecision:
    """What the last ``rank`` call decided; the cost-aware stopping rule reads it.

    ``best_*`` describe the best (candidate, worker) pair by expected gain per dollar before any
    of the wave was chosen (only the running experiments pending): ``best_acq`` is its expected
    improvement of the metric (metric units, >= 0), ``best_gain_per_usd`` = best_acq x
    P(feasible) / predicted cost (cost taken as 1 when every free worker is free of charge).
    ``noise_sd`` and ``typical_cost_usd`` put that figure on a scale that holds across problems
    (hybrid/stopping.py: the gain, in noise sd, that the price of a typical experiment buys).
    """

    n_observations: int  # successful results the model saw
    fitted: bool  # False: too few successes or a failed fit; the pool order was used
    best_acq: float = 0.0
    best_cost_usd: float = 0.0
    best_gain_per_usd: float = 0.0
    # the GP's inferred run-to-run noise sd on the target hardware (metric units; 0: not fitted)
    noise_sd: float = 0.0
    # median predicted cost of running a pool candidate on a free worker, over the pairs the
    # ranking may choose (USD; 0 when every free worker is free of charge)
    typical_cost_usd: float = 0.0
    # the GP's estimate of the best configuration run so far (its largest posterior mean over the
    # observed configs, on the target hardware), maximized: -value when minimizing (metric units)
    incumbent_mean: float = 0.0
    fit_seconds: float = 0.0
    rank_seconds: float = 0.0


@dataclass(frozen=True)
class WaveChoice:
    """The result of :func:`select_wave`: ``picks`` are (choice position, worker position) in
    the order chosen; ``log_ei`` the incremental qLogNEI of each pick when it was chosen (Monte
    Carlo); ``analytic_log_ei`` (m,) every choice's analytic log EI over the best baseline mean:
    exact where Monte Carlo cannot resolve small values, the figure the stopping rule needs."""

    picks: list[tuple[int, int]]
    log_ei: list[float]
    analytic_log_ei: np.ndarray


def select_wave(
    mean: Any,
    covar: Any,
    baseline: Sequence[int],
    pending: Sequence[int],
    choices: Sequence[int],
    log_feasible: np.ndarray,
    log_cost: np.ndarray,
    gain_first: Sequence[bool] | None = None,
    min_log_feasible: float = -math.inf,
    n_samples: int = 128,
    seed: int = 0,
    shortlist: int | None = None,
    reserved: Sequence[tuple[Sequence[int], int]] = (),
) -> WaveChoice:
    """Sequential greedy wave over a finite set of points with a fixed joint Gaussian posterior.

    mean: ``N``-dim tensor, covar: ``N x N`` tensor, the latent objective (maximized) at N points;
    baseline / pending / choices: indices into those N points (observed configs, running
    experiments, candidates). log_feasible, log_cost: ``m x W`` arrays (m = len(choices),
    W workers): log P(feasible) and log cost divisor of running choice i on worker w.
    Each step scores every (choice, worker) left by qLogNEI(choice | pending + picks so far)
    + log_feasible - log_cost and takes the best pair; workers flagged in ``gain_first`` pick
    before the others and ignore cost (the target hardware validates the most promising).
    Pairs with log_feasible < min_log_feasible are never chosen.

    Incremental EI only shrinks as points join the pending set, so later picks come from the
    first step's leaders: steps 2..q score only the ``shortlist`` best choices of step 1
    (default max(4 W, 32)), which bounds the work of a large pool.

    ``reserved``: (choice positions, k) pairs, e.g. a source's candidates and the slots of the
    wave it is owed: until k of those positions are picked, each step chooses among the owed
    positions only (still by score, so the best of them, on the best worker). A reservation none
    of whose choices any worker can run is dropped.

    The result depends on the arguments only: BoTorch draws the samples that prune qLogNEI's
    baseline from torch's global generator, so they are drawn here from one seeded by ``seed``
    (the caller's generator is left as it was). Otherwise what ran before in the process decided
    near-ties, and two campaigns of one seed parted after a few dozen experiments.
    """
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return _select_wave(mean, covar, baseline, pending, choices, log_feasible, log_cost, gain_first,
                            min_log_feasible, n_samples, seed, shortlist, reserved)


def _select_wave(mean: Any, covar: Any, baseline: Sequence[int], pending: Sequence[int], choices: Sequence[int],
                 log_feasible: np.ndarray, log_cost: np.ndarray, gain_first: Sequence[bool] | None,
                 min_log_feasible: float, n_samples: int, seed: int, shortlist: int | None,
                 reserved: Sequence[tuple[Sequence[int], int]]) -> WaveChoice:
    import torch
    from botorch.acquisition.analytic import LogExpectedImprovement
    from botorch.acquisition.logei import qLogNoisyExpectedImprovement
    from botorch.sampling.normal import SobolQMCNormalSampler

    from surrogate.gp import DTYPE, JointGaussianModel

    def points(idx: Sequence[int]) -> torch.Tensor:  # len(idx) x 1 index inputs
        return torch.tensor(list(idx), dtype=DTYPE).reshape(-1, 1)

    m, W = len(choices), log_feasible.shape[1]
    gain_first = [False] * W if gain_first is None else list(gain_first)
    model = JointGaussianModel(mean, covar)
    sampler = SobolQMCNormalSampler(sample_shape=torch.Size([n_samples]), seed=seed)
    acq = qLogNoisyExpectedImprovement(model, points(baseline), sampler=sampler,
                                       X_pending=points(pending) if pending else None,
                                       cache_root=False, prune_baseline=True, incremental=True)
    best_f = model.mean[list(baseline)].max()
    with torch.no_grad():
        analytic = LogExpectedImprovement(model, best_f)(points(choices).unsqueeze(-2)).numpy()
    left_c, left_w = list(range(m)), list(range(W))
    picks: list[tuple[int, int]] = []
    log_eis: list[float] = []
    keep = max(4 * W, 32) if shortlist is None else shortlist
    owed = [(set(pos), int(k)) for pos, k in reserved if k > 0 and len(pos)]
    while left_c and left_w:
        with torch.no_grad():
            lei = acq(points([choices[c] for c in left_c]).unsqueeze(-2)).numpy()  # (len(left_c),)
        if not picks and len(left_c) > keep:
            best_pair = lei + np.max(np.where(log_feasible >= min_log_feasible, log_feasible - log_cost, -np.inf), 1)
            top = set(np.argsort(-best_pair, kind="stable")[:keep].tolist())
            top |= {i for i, c in enumerate(left_c) if any(c in pos for pos, _ in owed)}  # keep the reserved
            top = np.array(sorted(top))
            left_c, lei = [left_c[i] for i in top], lei[top]
        phase = [w for w in left_w if gain_first[w]] or left_w
        cost = np.zeros((len(left_c), len(phase))) if gain_first[phase[0]] else log_cost[np.ix_(left_c, phase)]
        feas = log_feasible[np.ix_(left_c, phase)]
        score = np.where(feas >= min_log_feasible, lei[:, None] + feas - cost, -np.inf)
        due = [pos for pos, k in owed if sum(c in pos for c, _ in picks) < k]
        if due:
            mask = np.array([any(c in pos for pos in due) for c in left_c])
            if np.isfinite(score[mask]).any():
                score = np.where(mask[:, None], score, -np.inf)
            else:  # nothing reserved that these workers can run: the reservation lapses
                owed = [(pos, k) for pos, k in owed if pos not in due]
        if not np.isfinite(score).any():  # nothing these workers can run: they stay idle
            left_w = [w for w in left_w if w not in phase]
            continue
        i, j = np.unravel_index(int(np.argmax(score)), score.shape)
        c, w = left_c.pop(int(i)), phase[int(j)]
        left_w.remove(w)
        picks.append((c, w))
        log_eis.append(float(lei[i]))
        acq.set_X_pending(points([*pending, *(choices[p] for p, _ in picks)]))
    return WaveChoice(picks, log_eis, analytic)


class GPRanker(Ranker):
    """Ranks the pool with a GP (qLogNEI, pending-aware), P(feasible) and cost; assigns hardware.

    Args:
        space, objective, seed: from the campaign.
        target_hardware: where "best" is judged (default: the most frequent hardware label
            among successes).
        pool_size: candidates asked from the proposers at each decision.
        refit_every: full hyperparameter refit every this many new successes.
        validate_top_k: re-run the k best configs seen on other hardware on the target hardware,
            when a target-hardware worker is free (0: never).
        min_observations: below this many successes, keep the proposers' order.
        worker_memory_mb: hardware label -> usable accelerator memory (MB), for OOM avoidance.
        min_feasibility: never assign a candidate to a worker where P(feasible) is below this.
        n_samples: quasi-Monte Carlo samples of qLogNEI.
        threads: torch intra-op threads while ranking (None: leave torch's setting).
        name: the config node's short name.
    """

    def __init__(self, space: SearchSpace, objective: Objective, seed: int = 0, target_hardware: str | None = None,
                 pool_size: int = 256, refit_every: int = 10, validate_top_k: int = 0, min_observations: int = 3,
                 worker_memory_mb: Mapping[str, float] | None = None, min_feasibility: float = 0.02,
                 n_samples: int = 128, threads: int | None = 1, hardware: str = "task", name: str = "gp") -> None:
        if not isinstance(objective, Objective):  # hydra.utils.instantiate turns a dataclass kwarg into a DictConfig
            objective = Objective(str(objective.metric), objective.direction)
        self.space, self.objective, self.seed = space, objective, seed
        self.target_hardware = target_hardware
        self._pool_size = int(pool_size)
        self.refit_every = int(refit_every)
        self.validate_top_k = int(validate_top_k)
        self.min_observations = max(int(min_observations), 1)
        self.worker_memory_mb = dict(worker_memory_mb or {})
        self.min_feasibility = float(min_feasibility)
        self.n_samples = int(n_samples)
        self.threads = threads
        if hardware not in ("task", "noise"):
            from hybrid.errors import ConfigError

            raise ConfigError(f"surrogate.hardware: {hardware!r} is not task or noise")
        self.hardware = hardware
        self.name = name
        # source -> share of the experiments it is owed (the campaign sets this from the
        # proposer, e.g. {"llm": 0.3}): its best candidates fill that share of each wave
        self.wave_shares: dict[str, float] = {}
        self.variant_parents: dict[str, str | None] = {}  # see set_variant_parents
        self.last_decision = None
        self._gp: Any = None  # surrogate.gp.GPSurrogate, built on first use (imports torch)

    def set_wave_shares(self, shares: Mapping[str, float]) -> None:
        self.wave_shares = dict(shares)

    def set_variant_parents(self, parents: Mapping[str, str | None]) -> None:
        self.variant_parents = dict(parents)

    def pool_size(self, n_free: int) -> int:
        return max(self._pool_size, n_free)

    def rank(self, pool, history, pending, workers):
        t0 = time.perf_counter()
        pool, workers = list(pool), list(workers)
        n_obs = sum(1 for e in history if e.value(self.objective.metric) is not None)
        wave = None
        if n_obs >= self.min_observations and workers:
            from surrogate.gp import GPSurrogate, torch_threads

            if self._gp is None:
                self._gp = GPSurrogate(self.space, self.objective, self.target_hardware, self.refit_every,
                                       self.min_observations, seed=self.seed, hardware=self.hardware)
            with torch_threads(self.threads):
                wave = self._rank_gp(pool, history, pending, workers, t0)
        if wave is None:  # too few successes, or the fit/ranking failed: the proposers' order...
            self.last_decision = RankDecision(n_obs, False, rank_seconds=time.perf_counter() - t0)
            # ...after the candidates a wave share is owed (the LLM's share holds before any model too)
            owed = [i for mine, k in self._reserved(pool, history, len(workers)) for i in mine[:k]]
            rest = [c for i, c in enumerate(pool) if i not in set(owed)]
            return list(zip([pool[i] for i in owed] + rest, workers, strict=False))
        return wave

    # ---- internals ----------------------------------------------------------------------------
    def _rank_gp(self, pool: list[Candidate], history: Sequence[Experiment], pending: Sequence[Experiment],
                 workers: list[Worker], t0: float) -> list[tuple[Candidate, Worker]] | None:
        from surrogate.lineage import Lineage

        self._gp.lineage = Lineage(self.variant_parents)
        # every variant the ranking will ask about gets a level, tried or not; None: the fit failed (it warned)
        fit = self._gp.update(history, [c.variant for c in pool] + [e.variant for e in pending])
        if fit is None:
            return None
        try:
            wave, decision = self._rank_with(fit, pool, history, pending, workers)
        except Exception as err:  # a numerical failure must not stop the campaign
            warnings.warn(f"GP ranking failed ({type(err).__name__}: {err}); using the proposers' order "
                          "for this decision", RuntimeWarning, stacklevel=3)
            return None
        self.last_decision = replace(decision, fit_seconds=fit.fit_seconds,
                                     rank_seconds=time.perf_counter() - t0 - fit.fit_seconds)
        return wave

    def _reserved(self, pool: Sequence[Candidate], history: Sequence[Experiment],
                  n_free: int) -> list[tuple[list[int], int]]:
        """(pool positions of a source, slots it is owed in this wave) per ``wave_shares``: enough
        that the source's share of all experiments (these included) reaches its target. Only this
        campaign's own experiments count: warm-start priors (hybrid/warm_start.py) are not its runs."""
        own = [e for e in history if not is_prior(e)]
        out = []
        for src, share in self.wave_shares.items():
            mine = [i for i, c in enumerate(pool) if c.source == src]
            if not mine or share <= 0:
                continue
            had = sum(1 for e in own if e.source == src)
            owed = math.floor(share * (len(own) + n_free) + 0.5) - had
            if owed > 0:
                out.append((mine, min(owed, n_free, len(mine))))
        return out

    def _rank_with(self, fit: Any, pool: list[Candidate], history: Sequence[Experiment],
                   pending: Sequence[Experiment], workers: list[Worker]) -> tuple[list, RankDecision]:
        import torch

        from surrogate.feasibility import (
            DurationModel,
            MemoryModel,
            VariantSuccessModel,
            feasibility_data,
            lineage_columns,
        )
        from surrogate.gp import plausible_best

        enc = self._gp.encoder
        # assignment follows the configured target even before it has results of its own (the
        # model then predicts on the most frequent hardware: fit.target_hardware)
        target = self.target_hardware or fit.target_hardware
        validations, workers = validation_picks(self.space, self.objective, self.validate_top_k, history, pending,
                                                workers, target)
        if not pool or not workers:  # nothing to score: no stopping signal from this decision
            return validations, RankDecision(fit.n_observations, False)
        # feasibility and cost, per (candidate, worker)
        d = feasibility_data(history, enc.encode_many)
        known_oom = np.array([h is not None and h in self.worker_memory_mb for h in d["oom_hardware"]], bool)
        crash = ~known_oom  # a known OOM is the memory model's evidence, not a crash
        variants, tree = [c.variant for c in pool], self._gp.lineage
        cls = VariantSuccessModel(tree, seed=self.seed).fit(d["X"][crash], d["success"][crash],
                                                            [v for v, c in zip(d["variant"], crash, strict=True) if c],
                                                            d["evidence"][crash])
        Xc = enc.encode_many([c.params for c in pool])
        Xm, Xmc = d["X"], Xc  # memory: an offset per edit once variants are about (a wider model needs more)
        if any(v is not None for v in [*d["variant"], *variants]):
            levels = tree.levels([*d["variant"], *variants])
            Xm = np.hstack([Xm, lineage_columns(d["variant"], levels, tree)])
            Xmc = np.hstack([Xmc, lineage_columns(variants, levels, tree)])
        mem = MemoryModel(self.worker_memory_mb).fit(Xm, d["peak_mb"], d["oom_hardware"])
        ok = d["success"] if d["success"].any() else np.ones(len(d["success"]), bool)
        dur = DurationModel().fit(d["X"][ok], d["duration_s"][ok], [h for h, o in zip(d["hardware"], ok, strict=True) if o])
        hardware = sorted({w.hardware for w in workers})
        p_ok = cls.p_success(Xc, variants)
        feas_hw = {h: p_ok * mem.p_fits(Xmc, h) for h in hardware}
        secs_hw = {h: dur.predict_s(Xc, h) for h in hardware}
        feasible = np.stack([feas_hw[w.hardware] for w in workers], axis=1)  # m x W
        cost_usd = np.stack([w.hourly_usd * secs_hw[w.hardware] / 3600.0 for w in workers], axis=1)
        paid = any(w.hourly_usd > 0 for w in workers)
        divisor = np.maximum(cost_usd, 1e-9) if paid else np.ones_like(cost_usd)
        # one joint posterior, on the target hardware, over the best observed configs + pending
        # (+ validations) + pool; the baseline keeps the observed configs that may be the best
        X_screen = fit.screen()
        running = [*pending, *(c for c, _ in validations)]  # their fantasies run with their own code
        X_pend = fit.inputs([e.params for e in running], [e.variant for e in running])
        mean, covar = fit.joint(np.vstack([X_screen, X_pend, fit.inputs([c.params for c in pool], variants)]))
        ns = len(X_screen)
        incumbent = float(mean[:ns].max())
        base = plausible_best(mean[:ns].numpy(), covar.diagonal()[:ns].numpy())
        keep = torch.as_tensor(np.concatenate([base, np.arange(ns, len(mean))]))
        mean, covar = mean[keep], covar[keep][:, keep]
        nb, npd = len(base), len(X_pend)
        mixed = target in hardware and len(hardware) > 1
        choice = select_wave(
            mean, covar, range(nb), range(nb, nb + npd), range(nb + npd, nb + npd + len(pool)),
            np.log(np.maximum(feasible, 1e-300)), np.log(divisor),
            gain_first=[mixed and w.hardware == target for w in workers],
            min_log_feasible=math.log(max(self.min_feasibility, 1e-300)), n_samples=self.n_samples, seed=self.seed,
            reserved=self._reserved(pool, history, len(workers)))
        # the stopping signal: the best pair per dollar before any pick
        per_usd = choice.analytic_log_ei[:, None] + np.log(np.maximum(feasible, 1e-300)) - np.log(divisor)
        bi, bw = np.unravel_index(int(np.argmax(per_usd)), per_usd.shape)
        best_ei = float(np.exp(choice.analytic_log_ei[bi]))
        allowed = feasible >= self.min_feasibility
        typical = float(np.median(cost_usd[allowed] if allowed.any() else cost_usd)) if paid else 0.0
        decision = RankDecision(fit.n_observations, True, best_acq=best_ei, best_cost_usd=float(cost_usd[bi, bw]),
                                best_gain_per_usd=float(np.exp(per_usd[bi, bw])), noise_sd=fit.noise_sd(),
                                typical_cost_usd=typical, incumbent_mean=incumbent)
        wave = list(validations)
        for (c, w), lei in zip(choice.picks, choice.log_ei, strict=True):
            ei = math.exp(choice.analytic_log_ei[c])
            note = (f"[gp: EI={ei:.3g} qNEI={math.exp(lei):.3g} P(ok)={feasible[c, w]:.2f} "
                    f"cost=${cost_usd[c, w]:.3g} EI/$={ei * feasible[c, w] / divisor[c, w]:.3g} "
                    f"on {workers[w].hardware}]")
            cand = pool[c]
            wave.append((replace(cand, rationale=f"{cand.rationale} {note}".strip()), workers[w]))
        return wave, decision
