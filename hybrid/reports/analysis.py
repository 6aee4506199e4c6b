"""A campaign as a report reads it (``load_campaign``) and the analysis a report runs on it once (``analyze``).

``load_campaign`` reads the store through :func:`hybrid.reports.reader.read_campaign` (read-only:
the campaign may be running) and takes the space, the objective and the target hardware from the
stored config. ``analyze`` runs the statistics of :mod:`hybrid.reports.effects` and the GP response
slices, each part guarded: a part that fails is noted in ``Analysis.notes`` and the report goes on.
The per-hardware table, the improvements of the best and the failure patterns are computed here
too, when a section or a plot asks for them. "Best", the baseline, failure kinds, throughput and
value formatting are :mod:`hybrid.history`'s; the run-to-run noise, the recommendation and the rule
that a difference is "within noise" (below 2 sd) are :mod:`hybrid.noise`'s (``CampaignData.summary``
holds them, as summary.txt shows them).
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import cached_property, partial
from pathlib import Path
from typing import Any

import numpy as np

from hybrid import history, noise
from hybrid.errors import HybridError
from hybrid.history import clip, failure_of, fmt_value, running_best, throughput_by_hardware
from hybrid.reports.effects import (
    Anova,
    Correlation,
    Interaction,
    correlations,
    interactions,
    main_effects,
    paired_offsets,
    reference_level,
)
from hybrid.reports.plots import ProgressNoise, Slice
from hybrid.reports.reader import finite_number, read_campaign
from hybrid.reports.slices import GPFactory, gp_slices
from hybrid.reports.summary import Summary, summarize
from hybrid.space import CategoricalParam, FloatParam, IntParam, Param, SearchSpace
from hybrid.store import VariantRecord
from hybrid.types import Experiment, FailureKind, Objective

__all__ = [
    "Analysis", "CampaignData", "HardwareRow", "Improvement", "analyze", "failure_label", "failure_pattern",
    "finish_order", "guarded", "hardware_rows", "hypothesis_margins", "improvements", "load_campaign",
    "progress_noise", "repeated_configs",
]

_SLICE_PARAMS = 3  # GP slices along the most important numeric parameters


# ---- the campaign, as stored ----------------------------------------------------------------------
@dataclass
class CampaignData:
    """Everything a report reads from a campaign's store."""

    dir: Path
    name: str
    objective: Objective
    space: SearchSpace | None  # None: no parameters at all
    space_note: str  # "" or why the space was inferred from the experiments
    target_hardware: str | None
    exps: list[Experiment]  # every experiment, in creation order
    stop_reason: str | None = None
    status: str | None = None
    elapsed_s: float | None = None
    created: float | None = None  # when the campaign was first started (time.time())
    llm_usd: float = 0.0
    llm_calls: int = 0
    cost_stops: list[str] = field(default_factory=list)
    warm_start: list[dict[str, Any]] = field(default_factory=list)
    tracking: dict[str, Any] = field(default_factory=dict)
    parent_run_id: str | None = None
    variants: list[VariantRecord] = field(default_factory=list)  # code variants proposed, in order
    gp_noise: dict[str, float] = field(default_factory=dict)  # the GP's inferred noise sd per hardware, at the end
    gp_estimates: dict[str, float] = field(default_factory=dict)  # its posterior mean per experiment, at the end

    @cached_property
    def summary(self) -> Summary:
        """The campaign's summary (its recommendation, noise, best single run): summary.txt's."""
        return summarize(self.name, self.exps, self.objective, self.stop_reason or "", self.elapsed_s or 0.0,
                         self.target_hardware, self.llm_usd, self.gp_noise, self.gp_estimates or None)

    @cached_property
    def valid(self) -> list[Experiment]:
        """Experiments whose params fit the space (a resumed campaign's space may have changed)."""
        return [e for e in self.exps if self.space is not None and self.space.contains(e.params)]

    def successes(self) -> list[tuple[Experiment, float]]:
        return history.successes(self.valid, self.objective)

    def sd_on(self, hardware: str | None) -> float | None:
        """The run-to-run sd differences on ``hardware`` are judged by (:func:`hybrid.noise.noise_on`:
        measured there, else the GP's there, else the other labels' pooled); None: nothing known."""
        return noise.noise_on(self.summary.noise, hardware)

    def within_noise(self, difference: float, hardware: str | None) -> bool | None:
        """True when ``difference`` on ``hardware`` is below 2 sd (:func:`hybrid.noise.significant`);
        None when no sd is known."""
        beyond = noise.significant(difference, self.sd_on(hardware))
        return None if beyond is None else not beyond


def load_campaign(campaign_dir: Path, *, objective: Objective | None = None,
                  space: SearchSpace | None = None) -> CampaignData:
    """Read a campaign's store, read-only (the campaign may be running). ``objective``/``space``
    override what its stored config says (a campaign built in Python may store no config)."""
    record = read_campaign(campaign_dir)
    exps = record.experiments
    space_note = ""
    if space is None:
        try:
            space = SearchSpace.from_config((record.config.get("space") or {}).get("params") or {})
        except HybridError:
            space, space_note = _infer_space(exps), "the stored config has no search space; inferred from the experiments"
    camp = record.config.get("campaign") or {}
    warm = record.meta.get("warm_start") or []
    return CampaignData(
        dir=Path(campaign_dir), name=str(record.name or camp.get("name") or Path(campaign_dir).name),
        objective=objective or record.objective(), space=space, space_note=space_note,
        target_hardware=record.target_hardware, exps=exps, stop_reason=record.stop_reason, status=record.status,
        elapsed_s=record.active_s, created=record.created, llm_usd=record.proposer_usd,
        llm_calls=record.proposer_calls, cost_stops=[d for _, _, d in record.events_of("cost_stop")],
        warm_start=[w for w in warm if isinstance(w, dict)] if isinstance(warm, list) else [],
        tracking=dict(record.config.get("tracking") or {}), parent_run_id=record.meta.get("mlflow_parent_run_id"),
        variants=record.variants, gp_noise=_numbers(record.meta.get("gp_noise"), min_value=0.0),
        gp_estimates=_numbers(record.meta.get("gp_estimates")),
    )


def _numbers(stored: Any, min_value: float = -math.inf) -> dict[str, float]:
    """A stored {name: number} map, its non-numbers (and numbers below ``min_value``) left out."""
    if not isinstance(stored, dict):
        return {}
    return {str(k): v for k, raw in stored.items() if (v := finite_number(raw)) is not None and v >= min_value}


def _infer_space(exps: Sequence[Experiment]) -> SearchSpace | None:
    """A space spanning the observed values: numeric ranges, anything else categorical."""
    base = history.baseline(exps)
    names = sorted({k for e in exps for k in e.params})
    params: list[Param] = []
    for name in names:
        values = [e.params[name] for e in exps if name in e.params]
        default = base.params.get(name) if base else values[0]
        nums = [v for v in values if finite_number(v) is not None]
        if len(nums) == len(values) and min(nums) < max(nums):
            if all(isinstance(v, int) for v in nums):
                params.append(IntParam(name, int(min(nums)), int(max(nums)), default=default))
            else:
                params.append(FloatParam(name, float(min(nums)), float(max(nums)), default=default))
        else:
            choices = tuple(sorted({json.dumps(v, sort_keys=True) for v in values}))
            params.append(CategoricalParam(name, tuple(json.loads(c) for c in choices), default))
    return SearchSpace(params) if params else None


# ---- per hardware, per source, failures ------------------------------------------------------------
@dataclass(frozen=True)
class HardwareRow:
    label: str
    runs: int
    done: int
    failed: int
    median_duration_s: float | None
    usd_per_h: float | None
    throughput: float | None  # median, in throughput_unit
    offset: float | None  # metric offset vs the reference label
    offset_how: str


def hardware_rows(data: CampaignData, anova: Anova | str, ref: str | None) -> tuple[list[HardwareRow], str]:
    m = data.objective.metric
    paired = paired_offsets(data.space, data.successes(), ref) if data.space and ref else {}
    anova_offsets = anova.hardware_offsets if isinstance(anova, Anova) else {}
    by: dict[str, list[Experiment]] = {}
    for e in data.exps:
        by.setdefault(e.hardware, []).append(e)
    speed = throughput_by_hardware(data.exps, data.objective)  # median of the successful runs, per label
    rows, unit = [], ""
    for label, exps in sorted(by.items(), key=lambda kv: (-len(kv[1]), kv[0])):
        timed = [r for e in exps if (r := e.result) is not None and r.duration_s > 0]
        secs, usd = sum(r.duration_s for r in timed), sum(r.cost_usd for r in timed)
        unit = unit or (speed[label][1] if label in speed else "")
        if label == ref:
            offset, how = 0.0, "reference"
        elif label in paired:
            offset, how = paired[label][0], f"paired: {paired[label][1]} configs run on both"
        elif label in anova_offsets:
            offset, how = anova_offsets[label], "ANOVA hardware factor"
        else:
            offset, how = None, "no estimate"
        rows.append(HardwareRow(
            label, len(exps), sum(e.value(m) is not None for e in exps), sum(e.state.is_failure() for e in exps),
            float(np.median([r.duration_s for r in timed])) if timed else None,
            usd / secs * 3600 if secs > 0 else None,
            speed[label][0] if label in speed else None, offset, how))
    return rows, unit


@dataclass(frozen=True)
class Improvement:
    exp: Experiment
    value: float
    gain: float  # how much better than the best before it (> 0)
    rank: int  # 1-based position of this result in finish order
    within_noise: bool | None = None  # the gain is below 2 sd of the noise on its hardware (None: no sd known)


def finish_order(exps: Sequence[Experiment]) -> list[Experiment]:
    finished = [e for e in exps if e.result is not None]
    return sorted(finished, key=lambda e: (e.ended or math.inf, e.seq))


def improvements(exps: Sequence[Experiment], objective: Objective,
                 sd_on: Callable[[str], float | None] | None = None) -> list[Improvement]:
    """Each result (in finish order) that beat the best result before it; the first success is not one.
    ``sd_on`` (``CampaignData.sd_on``): the noise sd per hardware label, to mark the gains within noise."""
    order = finish_order(exps)
    values = [e.value(objective.metric) for e in order]
    after = running_best(values, objective)
    before = [None, *after[:-1]]  # the best before each result
    out = []
    for rank, (e, v, b, a) in enumerate(zip(order, values, before, after, strict=True), 1):
        if v is None or b is None or a == b:
            continue
        beyond = noise.significant(v - b, sd_on(e.hardware)) if sd_on is not None else None
        out.append(Improvement(e, v, abs(b - v), rank, None if beyond is None else not beyond))
    return out


def hypothesis_margins(exps: Sequence[Experiment], objective: Objective, source: str = "llm") -> dict[str, float]:
    """For each successful experiment of ``source`` that held (:func:`hybrid.history.hypothesis_outcomes`:
    a new best, or better than the baseline), by how much: over the best created before it for a
    new best, over the baseline otherwise. What findings compares with the noise."""
    base = history.baseline(exps)
    base_v = base.value(objective.metric) if base else None
    out: dict[str, float] = {}
    top: float | None = None
    for e in sorted(exps, key=lambda x: x.seq):  # the order hypothesis_outcomes judges them in
        v = e.value(objective.metric)
        if v is None:
            continue
        if e.source == source and top is not None:
            if objective.better(v, top):
                out[e.id] = abs(top - v)
            elif base_v is not None and objective.better(v, base_v):
                out[e.id] = abs(base_v - v)
        if top is None or objective.better(v, top):
            top = v
    return out


@dataclass(frozen=True)
class RepeatedConfig:
    """A configuration the campaign ran more than once on one hardware label: what the noise is measured on."""

    runs: noise.ConfigRuns | None  # its successful runs there (None: none succeeded)
    attempts: list[Experiment]  # every run of it there (failures too), in creation order


def repeated_configs(data: CampaignData) -> list[RepeatedConfig]:
    """The configurations with two or more runs on one label (this campaign's own), in the order of
    their first run; those where fewer than two succeeded too (a replicate that crashed)."""
    own = history.counted(history.own(data.exps))
    runs = {(c.hardware, noise.config_key(c.first)): c for c in noise.config_runs(own, data.objective)}
    attempts: dict[tuple[str, tuple[str | None, str]], list[Experiment]] = {}
    for e in own:
        if e.result is not None:
            attempts.setdefault((e.hardware, noise.config_key(e)), []).append(e)
    out = []
    for key, tried in attempts.items():
        if len(tried) > 1:
            out.append(RepeatedConfig(runs.get(key), tried))
    return out


def progress_noise(data: CampaignData) -> ProgressNoise:
    """What the progress plot draws of the noise: the sd on the judged hardware and the recommendation."""
    s = data.summary
    rec = s.recommendation
    hw = rec.hardware if rec is not None else history.judged_hardware(data.exps, data.objective, data.target_hardware)
    return ProgressNoise(data.sd_on(hw), hw, rec.mean if rec else None, rec.sd if rec else None, rec.n if rec else 0,
                         bool(rec and rec.confirmed))


def failure_label(e: Experiment) -> str:
    """The failure kind of a failed experiment as findings.md names it: oom, timeout, crash, no_metric, lost."""
    return str(failure_of(e) or FailureKind.CRASH)


def failure_pattern(space: SearchSpace, finished: Sequence[Experiment], kind: str) -> str | None:
    """One-parameter conditions that hold for every failure of ``kind``, combined greedily (most
    selective first; another only when it halves the successful runs still inside), where that
    kind is at least twice as frequent as overall. None without such a condition."""
    bad = {e.id for e in finished if e.state.is_failure() and failure_label(e) == kind}
    if len(bad) < 2:
        return None
    threshold = min(1.0, 2 * len(bad) / len(finished))
    conds: list[tuple[str, set[str]]] = []  # (condition, ids of the finished runs that meet it)
    for p in space:
        if isinstance(p, CategoricalParam):
            level = {e.id: p.validate(e.params[p.name]) for e in finished}
            failing = {level[i] for i in bad}
            if len(failing) < len(set(level.values())):
                shown = "/".join(str(c) for c in p.choices if c in failing)
                conds.append((f"{p.name}={shown}", {i for i, v in level.items() if v in failing}))
            continue
        value = {e.id: e.params[p.name] for e in finished}
        lo, hi = min(value[i] for i in bad), max(value[i] for i in bad)
        if lo > min(value.values()):
            conds.append((f"{p.name} ≥ {fmt_value(lo, 4)}", {i for i, v in value.items() if v >= lo}))
        if hi < max(value.values()):
            conds.append((f"{p.name} ≤ {fmt_value(hi, 4)}", {i for i, v in value.items() if v <= hi}))
    sets = [(i, text, ids) for i, (text, ids) in enumerate(conds)]
    sets = sorted((c for c in sets if len(bad) / len(c[2]) >= threshold), key=lambda c: (len(c[2]), c[0]))
    if not sets:
        return None
    chosen, inside = [sets[0][:2]], sets[0][2]
    for i, text, ids in sets[1:]:
        good_before, good_after = len(inside) - len(bad), len(inside & ids) - len(bad)
        if good_before > 0 and good_after <= good_before / 2:
            chosen.append((i, text))
            inside = inside & ids
    return (f"{'both' if len(bad) == 2 else f'all {len(bad)}'} {kind} failures had " + " and ".join(t for _, t in sorted(chosen))
            + f" ({len(bad)} of the {len(inside)} finished runs there failed this way)")


# ---- the analysis, once per report -----------------------------------------------------------------
@dataclass
class Analysis:
    rows: list[tuple[Experiment, float]]  # successful results whose params fit the space
    best: Experiment | None  # history.best: on the judged hardware (the target's when it has successes)
    baseline: Experiment | None
    hardware_ref: str | None  # reference label for offsets: the target, else the most common
    anova: Anova | str  # or why not
    correlations: list[Correlation] = field(default_factory=list)
    interactions: list[Interaction] = field(default_factory=list)
    n_pairs: int = 0
    slices: list[Slice] = field(default_factory=list)
    slice_note: str = ""
    notes: dict[str, str] = field(default_factory=dict)  # what failed, by part


def guarded(notes: dict[str, str], part: str, call: Callable[[], Any], default: Any) -> Any:
    """Run one part of the analysis; on any error note it and go on with ``default``."""
    try:
        return call()
    except Exception as err:
        notes[part] = f"{type(err).__name__}: {clip(str(err), 200)}"
        return default


def analyze(data: CampaignData, gp: GPFactory | None = None) -> Analysis:
    """The statistics of a report, each part guarded. ``gp``: the GP that draws the response slices
    (``surrogate.gp.GPSurrogate``, given by the caller: reports do not import the surrogate); None
    skips them."""
    obj, space = data.objective, data.space
    notes: dict[str, str] = {}
    best = history.best(data.exps, obj, data.target_hardware)
    rows = data.successes()
    counts = Counter(e.hardware for e, _ in rows)
    ref = reference_level(counts, data.target_hardware) if counts else None
    a = Analysis(rows, best, history.baseline(data.exps), ref, "no search space: no parameters to analyse")
    if space is None:
        return a
    anova = a.anova = guarded(notes, "main effects", partial(main_effects, space, obj, rows, ref), "the ANOVA failed")
    if isinstance(anova, Anova):
        a.interactions, a.n_pairs = guarded(notes, "interactions", partial(interactions, anova, obj), ([], 0))
        ranked = [e.name for e in anova.effects if e.kind == "numeric"]
    else:
        a.correlations = guarded(notes, "correlations", partial(correlations, space, obj, rows), [])
        ranked = [c.name for c in a.correlations if not isinstance(space.params[c.name], CategoricalParam)]
    if gp is None:
        a.slice_note = "skipped (the report was written without the GP)"
    elif best is not None and ranked and space.contains(best.params):
        a.slices, a.slice_note = guarded(notes, "GP slices", partial(gp_slices, gp, space, obj, data.target_hardware,
                                                                      data.valid, ranked[:_SLICE_PARAMS], best),
                                        ([], ""))
    a.notes = notes
    return a
