"""Run-to-run noise and the campaign's recommendation, decided once and read by everyone.

- ``noise_by_hardware``: the run-to-run sd per hardware label, pooled over every configuration
  (same code, same params) that succeeded at least twice there, with a 95 % interval (chi-square
  on the pooled degrees of freedom). Replicates are what the campaign schedules itself (the
  baseline again early on, an incumbent that won by little, the confirmation of the top configs).
  ``noise_at_best``: the same, pooled over the best replicated configurations only: the noise the
  cost-aware stop (hybrid/stopping.py) judges further gains in, where the noise varies across the space.
- ``recommend``: the campaign's answer. Not the luckiest single run (the lowest of hundreds of
  noisy runs is biased low: the winner's curse) but the configuration (params and code variant)
  with the best mean on the judged hardware (``history.judged_hardware``) among those that ran
  there at least ``MIN_RUNS`` times: *confirmed* (unless a configuration that ran once beats it
  by more than ``PLAUSIBLE_SIGMAS`` noise sd: a real gain, not luck, recommended unconfirmed). The GP's posterior mean at it
  (``surrogate/estimates.py``), when the campaign has a GP, is shown beside it; it does not rank:
  on tabular problems the GP ranked worse than the runs' own means (benchmarks/recommendation.py). Without such a configuration the best mean of
  any (a single run, then) is recommended and marked unconfirmed, with the reason.
- ``to_confirm``: the top configurations on the judged hardware that could still be the best and
  lack runs to be confirmed: what the confirmation phase (hybrid/confirming.py) re-runs.
- ``significant``: whether a difference is beyond the noise (``SIGNIFICANT_SIGMAS`` x sd), the
  rule findings.md, the progress plot and the LLM prompt apply.

Only this campaign's own successes count (warm-start priors ran elsewhere, under other noise).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from hybrid import history
from hybrid.types import Experiment, ExperimentState, Objective

__all__ = [
    "MIN_RUNS", "SIGNIFICANT_SIGMAS", "ConfigRuns", "Estimates", "Noise", "Recommendation", "config_key", "config_runs",
    "estimate_of",
    "noise_at_best", "noise_by_hardware", "noise_on", "recommend", "significant", "to_confirm",
]

MIN_RUNS = 2  # runs on the judged hardware that make a recommendation "confirmed"
SIGNIFICANT_SIGMAS = 2.0  # a difference below this many sd is within the noise
PLAUSIBLE_SIGMAS = 2 * math.sqrt(2)  # a config this many sd behind the best (two sd of a difference) is not confirmed
BEST_K = 5  # noise_at_best: the replicated configurations the noise at the best ones is pooled over
REGIME_RATIO = 10.0  # noise_at_best: a config whose sd is this many times its peers' median is in another regime
REPLICATE_SOURCES = ("replicate", "confirm")  # sources of the runs the campaign repeats itself


def config_key(e: Experiment) -> tuple[str | None, str]:
    """What makes two runs the same configuration: the code variant and the params (exactly as
    the campaign copied them into a replicate)."""
    return e.variant, repr(sorted((k, repr(v)) for k, v in e.params.items()))


@dataclass(frozen=True)
class ConfigRuns:
    """One configuration's successful runs on one hardware label, in creation order."""

    hardware: str
    experiments: tuple[Experiment, ...]
    values: tuple[float, ...]

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def mean(self) -> float:
        return statistics.fmean(self.values)

    @property
    def sd(self) -> float | None:
        """The sample sd of its runs (None with one run)."""
        return statistics.stdev(self.values) if self.n > 1 else None

    @property
    def first(self) -> Experiment:
        return self.experiments[0]

    @property
    def params(self) -> dict[str, Any]:
        return dict(self.first.params)

    @property
    def variant(self) -> str | None:
        return self.first.variant

    @property
    def ids(self) -> tuple[str, ...]:
        return tuple(e.id for e in self.experiments)


def config_runs(exps: Sequence[Experiment], objective: Objective, hardware: str | None = None) -> list[ConfigRuns]:
    """Every configuration's successful runs per hardware label (only ``hardware`` when given),
    in the order of their first run. Only this campaign's own experiments."""
    groups: dict[tuple[str, tuple[str | None, str]], list[tuple[Experiment, float]]] = {}
    for e, v in history.successes(history.own(exps), objective):
        if hardware is None or e.hardware == hardware:
            groups.setdefault((e.hardware, config_key(e)), []).append((e, v))
    return [ConfigRuns(hw, tuple(e for e, _ in runs), tuple(v for _, v in runs)) for (hw, _), runs in groups.items()]


# ---- noise ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Noise:
    """The run-to-run noise on one hardware label. ``sd`` None: no configuration succeeded twice
    there (nothing measured); 0: every replicate gave the same value."""

    hardware: str
    sd: float | None
    dof: int  # degrees of freedom of the pooled sd: sum over replicated configs of (runs - 1)
    n_configs: int  # configurations that succeeded at least twice
    low: float | None = None  # 95 % interval of the sd
    high: float | None = None
    gp_sd: float | None = None  # the GP's inferred noise sd there, when the campaign has one

    def text(self, fmt: Any = history.fmt_value) -> str:
        """``0.0021 [0.0014, 0.0043] (9 dof from 4 configs)``, or why it is not known."""
        if self.sd is None:
            return "not measured (no configuration succeeded twice here)"
        if self.sd == 0:
            return f"0 (every replicate gave the same value; {self.dof} dof from {self.n_configs} configs)"
        return f"{fmt(self.sd, 3)} [{fmt(self.low, 3)}, {fmt(self.high, 3)}] ({self.dof} dof from {self.n_configs} configs)"

    def as_dict(self) -> dict[str, Any]:
        return {"hardware": self.hardware, "sd": self.sd, "interval_95": [self.low, self.high] if self.sd is not None else None,
                "dof": self.dof, "n_configs": self.n_configs, "gp_sd": self.gp_sd}


def _interval(sd: float, dof: int) -> tuple[float, float]:
    """The 95 % interval of a pooled sd with ``dof`` degrees of freedom (normal runs)."""
    from scipy.stats import chi2  # scipy comes with botorch; imported here: `import hybrid` stays light

    if sd == 0:
        return 0.0, 0.0
    return sd * math.sqrt(dof / chi2.ppf(0.975, dof)), sd * math.sqrt(dof / chi2.ppf(0.025, dof))


def _pooled(hw: str, configs: Sequence[ConfigRuns], gp: float | None = None) -> Noise:
    """The sd pooled over the configurations among ``configs`` that succeeded at least twice."""
    reps = [c for c in configs if c.n > 1]
    dof = sum(c.n - 1 for c in reps)
    if not dof:
        return Noise(hw, None, 0, 0, gp_sd=gp)
    ss = sum(sum((x - c.mean) ** 2 for x in c.values) for c in reps)
    sd = math.sqrt(ss / dof)
    low, high = _interval(sd, dof)
    return Noise(hw, sd, dof, len(reps), low, high, gp)


def noise_by_hardware(exps: Sequence[Experiment], objective: Objective,
                      gp_sd: Mapping[str, float] | None = None) -> dict[str, Noise]:
    """The run-to-run noise on every hardware label that has a success (module docstring)."""
    by_hw: dict[str, list[ConfigRuns]] = {}
    for c in config_runs(exps, objective):
        by_hw.setdefault(c.hardware, []).append(c)
    return {hw: _pooled(hw, configs, (gp_sd or {}).get(hw)) for hw, configs in by_hw.items()}


def noise_at_best(exps: Sequence[Experiment], objective: Objective, hardware: str, k: int = BEST_K) -> Noise:
    """The run-to-run noise where the answer lies: pooled over the ``k`` configurations with the
    best means among those that succeeded at least twice on ``hardware``. Where the noise differs
    across the space (a diverging region is noisy, a well-tuned one quiet: FCNet's seed sd varies
    100-fold) the baseline's replicates say little about the differences between the best
    configurations, which are what more experiments would still change; where it does not, this is
    :func:`noise_by_hardware`'s figure with fewer degrees of freedom (a wider interval).

    Among three or more of them, one whose sd is over ``REGIME_RATIO`` times their median is left
    out: it runs in another noise regime (on FCNet a diverging configuration that still ranks among
    the few replicated ones, 100-3000 x the others' sd) and a pooled variance would be its alone."""
    reps = _ranked([c for c in config_runs(exps, objective, hardware) if c.n > 1], objective)[:k]
    if len(reps) >= 3:
        sds = [statistics.stdev(c.values) for c in reps]
        typical = statistics.median(sds)
        if typical > 0:
            reps = [c for c, sd in zip(reps, sds, strict=True) if sd <= REGIME_RATIO * typical]
    return _pooled(hardware, reps)


def noise_on(noise: Mapping[str, Noise], hardware: str | None) -> float | None:
    """The sd to judge differences on ``hardware`` by: measured there, else the GP's there, else
    the pooled measurement of the other labels (None: nothing known)."""
    here = noise.get(hardware) if hardware is not None else None
    if here is not None and here.sd is not None:
        return here.sd
    if here is not None and here.gp_sd is not None:
        return here.gp_sd
    measured = [n for n in noise.values() if n.sd is not None and n.dof]
    if not measured:
        return None
    return math.sqrt(sum(n.sd ** 2 * n.dof for n in measured) / sum(n.dof for n in measured))  # type: ignore[operator]


def significant(difference: float, sd: float | None) -> bool | None:
    """Whether a difference of two single runs' values is beyond the noise (None: no sd known)."""
    if sd is None:
        return None
    return abs(difference) > SIGNIFICANT_SIGMAS * sd


def held(best: float | None, base: float | None, sd: float | None, objective: Objective) -> str:
    """Whether a change whose best is ``best`` held against its base's best: "yes", "no", "within
    noise" (not :func:`significant` with the run-to-run ``sd``, when it is known), "" (nothing to
    compare). The rule behind findings' "held" and the code the next changes build on."""
    if best is None or base is None:
        return ""
    if significant(best - base, sd) is False:
        return "within noise"
    return "yes" if objective.better(best, base) else "no"


# ---- the recommendation -------------------------------------------------------------------------
@dataclass(frozen=True)
class Recommendation:
    """The campaign's answer (module docstring)."""

    runs: ConfigRuns
    confirmed: bool
    note: str = ""  # why it is unconfirmed, or what else a reader should know
    ranked: tuple[ConfigRuns, ...] = field(default=(), repr=False)  # every config on its hardware, best first
    model_mean: float | None = None  # the GP's posterior mean at it, when the ranking used the GP

    @property
    def hardware(self) -> str:
        return self.runs.hardware

    @property
    def mean(self) -> float:
        return self.runs.mean

    @property
    def sd(self) -> float | None:
        return self.runs.sd

    @property
    def n(self) -> int:
        return self.runs.n

    def estimate(self, fmt: Any = history.fmt_value) -> str:
        """``2.3741 ± 0.0021 (3 runs)``; ``2.3741 (1 run, unconfirmed)``."""
        if self.n == 1:
            return f"{fmt(self.mean)} (1 run, unconfirmed)"
        sd = "" if self.sd is None else f" ± {fmt(self.sd, 3)}"
        return f"{fmt(self.mean)}{sd} ({self.n} runs{'' if self.confirmed else ', unconfirmed'})"

    def as_dict(self, objective: Objective) -> dict[str, Any]:
        return {"experiment_ids": list(self.runs.ids), "params": self.runs.params, "variant": self.runs.variant,
                "hardware": self.hardware, "metric": objective.metric, "mean": self.mean, "sd": self.sd, "n": self.n,
                "confirmed": self.confirmed, "gp_mean": self.model_mean, "note": self.note}


Estimates = Mapping[str, float]  # experiment id -> the GP's posterior mean at its config (surrogate/estimates.py)


def estimate_of(c: ConfigRuns, estimates: Estimates | None) -> float | None:
    """The model's estimate of a configuration (its runs share it), None when not given."""
    if not estimates:
        return None
    values = [estimates[i] for i in c.ids if i in estimates]
    return statistics.fmean(values) if values else None


def _ranked(configs: Sequence[ConfigRuns], objective: Objective) -> list[ConfigRuns]:
    """Best mean of its runs first; a tie goes to the configuration with more runs, then the earliest."""
    order = {c.first.seq: i for i, c in enumerate(configs)}
    return sorted(configs, key=lambda c: (objective.sign() * c.mean, -c.n, order[c.first.seq]))


def recommend(exps: Sequence[Experiment], objective: Objective, target_hardware: str | None = None,
              min_runs: int = MIN_RUNS, estimates: Estimates | None = None) -> Recommendation | None:
    """The recommended configuration (module docstring); None without any success. ``estimates``:
    the GP's posterior means (surrogate/estimates.py), shown beside the recommendation's own mean."""
    hw = history.judged_hardware(history.own(exps), objective, target_hardware)
    if hw is None:
        return None
    ranked = _ranked(config_runs(exps, objective, hw), objective)
    confirmed = [c for c in ranked if c.n >= min_runs]
    if confirmed:
        top, fmt = confirmed[0], history.fmt_value
        note = ""
        if ranked[0] is not top:
            best = ranked[0]
            sd = noise_on(noise_by_hardware(exps, objective), hw)
            margin = abs(top.mean - best.mean)
            if sd is not None and margin > PLAUSIBLE_SIGMAS * sd:  # clearly better, not a lucky draw
                note = (f"{best.first.id} beats the best confirmed config ({', '.join(top.ids)}: {fmt(top.mean)}) "
                        f"by {fmt(margin, 3)}, more than {PLAUSIBLE_SIGMAS:.2g} noise sd ({fmt(sd, 3)}), but ran "
                        f"{best.n} time{'s' * (best.n != 1)}: run it again to confirm it")
                return Recommendation(best, False, note, tuple(ranked), estimate_of(best, estimates))
            note = (f"{len(ranked) - len(confirmed)} configs ran once on {hw}; the best of them "
                    f"({best.first.id}: {fmt(best.mean)}) is not confirmed, within noise of the recommendation")
        return Recommendation(top, True, note, tuple(ranked), estimate_of(top, estimates))
    if target_hardware is not None and hw != target_hardware:
        note = f"no success on the target hardware {target_hardware} yet: judged on {hw}"
    else:
        note = f"no configuration ran {min_runs} times on {hw}: the best estimate is a single run"
    return Recommendation(ranked[0], False, note, tuple(ranked), estimate_of(ranked[0], estimates))


def to_confirm(exps: Sequence[Experiment], objective: Objective, target_hardware: str | None, top_k: int,
               min_runs: int = MIN_RUNS) -> list[tuple[ConfigRuns, int]]:
    """The ``top_k`` best configurations (by the mean of their runs) on the judged hardware that could
    still be the best (within ``PLAUSIBLE_SIGMAS`` x the noise sd of the first, when it is known),
    each with the number of runs it still lacks to be confirmed, counting the ones running or
    queued now (only those lacking any). Runs that crashed, were pruned or cancelled do not count:
    the config is run again."""
    if top_k <= 0:
        return []
    hw = history.judged_hardware(history.own(exps), objective, target_hardware)
    if hw is None:
        return []
    ranked = _ranked(config_runs(exps, objective, hw), objective)
    sd = noise_on(noise_by_hardware(exps, objective), hw)
    top = [c for c in ranked[:top_k] if sd is None or abs(c.mean - ranked[0].mean) <= PLAUSIBLE_SIGMAS * sd]
    pending: dict[tuple[str | None, str], int] = {}
    for e in history.own(exps):
        if e.hardware == hw and e.state in (ExperimentState.PENDING, ExperimentState.RUNNING):
            pending[config_key(e)] = pending.get(config_key(e), 0) + 1
    out = []
    for c in top:
        lacking = min_runs - c.n - pending.get(config_key(c.first), 0)
        if lacking > 0:
            out.append((c, lacking))
    return out
