"""A campaign as its store holds it (``load_campaign``) and the analysis a report runs on it once (``analyze``).

``load_campaign`` opens the store read-only (the campaign may be running) and takes the space, the
objective and the target hardware from the stored config. ``analyze`` runs the statistics of
:mod:`hybrid.effects` and the GP response slices, each part guarded: a part that fails is noted in
``Analysis.notes`` and the report goes on. The per-hardware table, the improvements of the best and
the failure patterns are computed here too, when a section or a plot asks for them.
"""

from __future__ import annotations

import json
import math
import warnings
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property, partial
from pathlib import Path
from typing import Any, Literal

import numpy as np

from hybrid.effects import (
    Anova,
    Correlation,
    Interaction,
    correlations,
    interactions,
    main_effects,
    paired_offsets,
    reference_level,
)
from hybrid.errors import HybridError
from hybrid.plots import Slice
from hybrid.proposers.llm_context import clip, failure_kind, fmt_value
from hybrid.report import baseline_experiment, best_experiment
from hybrid.space import CategoricalParam, FloatParam, IntParam, Param, SearchSpace
from hybrid.store import Store
from hybrid.types import Experiment, Objective

__all__ = [
    "Analysis", "CampaignData", "HardwareRow", "Improvement", "analyze", "failure_pattern", "finish_order",
    "gp_slices", "guarded", "hardware_rows", "improvements", "load_campaign", "throughput_of",
]

_SLICE_PARAMS = 3
_GP_FIT_POINTS, _GP_MAX_POINTS = 200, 400  # the slices' GP: hyperparameters fitted on, predictions conditioned on


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

    @cached_property
    def valid(self) -> list[Experiment]:
        """Experiments whose params fit the space (a resumed campaign's space may have changed)."""
        return [e for e in self.exps if self.space is not None and self.space.contains(e.params)]

    def successes(self) -> list[tuple[Experiment, float]]:
        m = self.objective.metric
        return [(e, v) for e in self.valid if (v := e.value(m)) is not None]


def load_campaign(campaign_dir: Path, *, objective: Objective | None = None,
                  space: SearchSpace | None = None) -> CampaignData:
    """Read a campaign's store, read-only (the campaign may be running). ``objective``/``space``
    override what its stored config says (a campaign built in Python may store no config)."""
    store = Store.open_read_only(Path(campaign_dir) / "state.sqlite")
    try:
        config = store.get_meta("config") or {}
        exps = store.experiments()
        calls = [_json_dict(d) for _, _, d in store.events("proposer_call")]
        meta = {k: store.get_meta(k) for k in ("campaign", "metric", "stop_reason", "status", "active_s", "created",
                                               "warm_start", "mlflow_parent_run_id")}
        cost_stops = [d for _, _, d in store.events("cost_stop")]
    finally:
        store.close()
    target = config.get("target") or {}
    if objective is None:
        direction: Literal["minimize", "maximize"] = "maximize" if target.get("direction") == "maximize" else "minimize"
        objective = Objective(str(target.get("metric") or meta["metric"] or "val_bpb"), direction)
    space_note = ""
    if space is None:
        try:
            space = SearchSpace.from_config((config.get("space") or {}).get("params") or {})
        except HybridError:
            space, space_note = _infer_space(exps), "the stored config has no search space; inferred from the experiments"
    camp = config.get("campaign") or {}
    return CampaignData(
        dir=Path(campaign_dir), name=str(meta["campaign"] or camp.get("name") or Path(campaign_dir).name),
        objective=objective, space=space, space_note=space_note, target_hardware=camp.get("target_hardware"),
        exps=exps, stop_reason=meta["stop_reason"], status=meta["status"],
        elapsed_s=_number(meta["active_s"]), created=_number(meta["created"]),
        llm_usd=sum(_number(c.get("cost_usd")) or 0.0 for c in calls), llm_calls=len(calls),
        cost_stops=cost_stops, warm_start=[w for w in meta["warm_start"] or [] if isinstance(w, dict)],
        tracking=dict(config.get("tracking") or {}), parent_run_id=meta["mlflow_parent_run_id"],
    )


def _json_dict(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _number(x: Any) -> float | None:
    if isinstance(x, bool) or not isinstance(x, int | float) or not math.isfinite(x):
        return None
    return float(x)


def _infer_space(exps: Sequence[Experiment]) -> SearchSpace | None:
    """A space spanning the observed values: numeric ranges, anything else categorical."""
    base = baseline_experiment(exps)
    names = sorted({k for e in exps for k in e.params})
    params: list[Param] = []
    for name in names:
        values = [e.params[name] for e in exps if name in e.params]
        default = base.params.get(name) if base else values[0]
        nums = [v for v in values if _number(v) is not None]
        if len(nums) == len(values) and min(nums) < max(nums):
            if all(isinstance(v, int) for v in nums):
                params.append(IntParam(name, int(min(nums)), int(max(nums)), default=default))
            else:
                params.append(FloatParam(name, float(min(nums)), float(max(nums)), default=default))
        else:
            choices = tuple(sorted({json.dumps(v, sort_keys=True) for v in values}))
            params.append(CategoricalParam(name, tuple(json.loads(c) for c in choices), default))
    return SearchSpace(params) if params else None


# ---- GP response slices ----------------------------------------------------------------------------
def _slice_grid(p: Param, n: int = 61) -> list[Any]:
    if isinstance(p, IntParam):
        values = p.values()
        if len(values) <= n:
            return list(values)
    return sorted({p.decode(u) for u in np.linspace(0.0, 1.0, n)})


def gp_slices(data: CampaignData, names: Sequence[str], at: Experiment) -> tuple[list[Slice], str]:
    """Posterior mean ± 2 sd of the objective along each named numeric parameter, the others fixed
    at ``at``'s config, on the target (else most common) hardware. (slices, note)"""
    import torch

    from surrogate.gp import GPSurrogate

    space, obj = data.space, data.objective
    assert space is not None
    gp = GPSurrogate(space, obj, data.target_hardware, min_observations=5, max_fit=_GP_FIT_POINTS,
                     max_train=_GP_MAX_POINTS, fit_maxiter=40, seed=0, threads=1)
    with torch.random.fork_rng(devices=[]), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.manual_seed(0)
        fitted = gp.update(data.valid)
    if fitted is None:
        why = next((str(w.message) for w in caught if "GP fit failed" in str(w.message)), "")
        return [], why or f"the GP needs at least {gp.min_observations} successful results"
    obs = data.successes()
    slices = []
    for name in names:
        p = space.params[name]
        xs = _slice_grid(p)
        mean, var = fitted.marginal(gp.encoder.encode_many([{**at.params, name: x} for x in xs]))
        on_hw = [(e.params[name], v) for e, v in obs if e.hardware == fitted.target_hardware]
        off_hw = [(e.params[name], v) for e, v in obs if e.hardware != fitted.target_hardware]
        slices.append(Slice(name, np.array(xs, dtype=float), -obj.sign() * mean, np.sqrt(var),
                            bool(getattr(p, "log", False)), float(at.params[name]), fitted.target_hardware,
                            np.array([x for x, _ in on_hw], dtype=float), np.array([v for _, v in on_hw]),
                            np.array([x for x, _ in off_hw], dtype=float), np.array([v for _, v in off_hw])))
    used = min(fitted.n_observations, _GP_MAX_POINTS)
    return slices, (f"GP on {used} of the {fitted.n_observations} successful results, hyperparameters fitted on "
                    f"{min(used, _GP_FIT_POINTS)}")


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


def throughput_of(metrics: Mapping[str, float]) -> tuple[float, str] | None:
    for key, unit in (("tok_per_sec", "tok/s"), ("steps_per_s", "steps/s")):
        if _number(metrics.get(key)):
            return float(metrics[key]), unit
    steps, secs = _number(metrics.get("num_steps")), _number(metrics.get("training_seconds"))
    return (steps / secs, "steps/s") if steps and secs else None


def hardware_rows(data: CampaignData, anova: Anova | str, ref: str | None) -> tuple[list[HardwareRow], str]:
    m = data.objective.metric
    paired = paired_offsets(data.space, data.successes(), ref) if data.space and ref else {}
    anova_offsets = anova.hardware_offsets if isinstance(anova, Anova) else {}
    by: dict[str, list[Experiment]] = {}
    for e in data.exps:
        by.setdefault(e.hardware, []).append(e)
    rows, unit = [], ""
    for label, exps in sorted(by.items(), key=lambda kv: (-len(kv[1]), kv[0])):
        timed = [r for e in exps if (r := e.result) is not None and r.duration_s > 0]
        secs, usd = sum(r.duration_s for r in timed), sum(r.cost_usd for r in timed)
        rates = [t for e in exps if e.result and e.value(m) is not None and (t := throughput_of(e.result.metrics))]
        unit = unit or (rates[0][1] if rates else "")
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
            float(np.median([r for r, _ in rates])) if rates else None, offset, how))
    return rows, unit


@dataclass(frozen=True)
class Improvement:
    exp: Experiment
    value: float
    gain: float  # how much better than the best before it (> 0)
    rank: int  # 1-based position of this result in finish order


def finish_order(exps: Sequence[Experiment]) -> list[Experiment]:
    finished = [e for e in exps if e.result is not None]
    return sorted(finished, key=lambda e: (e.extra.get("_ended") or math.inf, e.seq))


def improvements(exps: Sequence[Experiment], objective: Objective) -> list[Improvement]:
    """Each result (in finish order) that beat the best result before it; the first success is not one."""
    out, best = [], None
    for rank, e in enumerate(finish_order(exps), 1):
        v = e.value(objective.metric)
        if v is None:
            continue
        if best is not None and objective.better(v, best):
            out.append(Improvement(e, v, abs(best - v), rank))
        if best is None or objective.better(v, best):
            best = v
    return out


def failure_pattern(space: SearchSpace, finished: Sequence[Experiment], kind: str) -> str | None:
    """One-parameter conditions that hold for every failure of ``kind``, combined greedily (most
    selective first; another only when it halves the successful runs still inside), where that
    kind is at least twice as frequent as overall. None without such a condition."""
    bad = {e.id for e in finished if e.state.is_failure() and failure_kind(e) == kind}
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
            conds.append((f"{p.name} ≥ {fmt_value(lo)}", {i for i, v in value.items() if v >= lo}))
        if hi < max(value.values()):
            conds.append((f"{p.name} ≤ {fmt_value(hi)}", {i for i, v in value.items() if v <= hi}))
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
    best: Experiment | None  # on the target hardware when it has successes, else overall
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


def analyze(data: CampaignData, gp: bool = True) -> Analysis:
    obj, space = data.objective, data.space
    notes: dict[str, str] = {}
    best = best_experiment(data.exps, obj, data.target_hardware) or best_experiment(data.exps, obj)
    rows = data.successes()
    counts = Counter(e.hardware for e, _ in rows)
    ref = reference_level(counts, data.target_hardware) if counts else None
    a = Analysis(rows, best, baseline_experiment(data.exps), ref, "no search space: no parameters to analyse")
    if space is None:
        return a
    anova = a.anova = guarded(notes, "main effects", partial(main_effects, space, obj, rows, ref), "the ANOVA failed")
    if isinstance(anova, Anova):
        a.interactions, a.n_pairs = guarded(notes, "interactions", partial(interactions, anova, obj), ([], 0))
        ranked = [e.name for e in anova.effects if e.kind == "numeric"]
    else:
        a.correlations = guarded(notes, "correlations", partial(correlations, space, obj, rows), [])
        ranked = [c.name for c in a.correlations if not isinstance(space.params[c.name], CategoricalParam)]
    if not gp:
        a.slice_note = "skipped (the report was written without the GP)"
    elif best is not None and ranked and space.contains(best.params):
        a.slices, a.slice_note = guarded(notes, "GP slices", partial(gp_slices, data, ranked[:_SLICE_PARAMS], best),
                                        ([], ""))
    a.notes = notes
    return a
