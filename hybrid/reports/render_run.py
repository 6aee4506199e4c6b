"""findings.md's sections on how the campaign ran: where experiments came from (Sources), what
failed (Failures), what was stopped early (Pruning), what it cost (Spend) and which LLM hypotheses
held. :func:`hybrid.reports.render.render` puts them in order after the sections on what was found.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Mapping
from pathlib import Path

from hybrid.history import best_on, clip, counted, failure_regions, hypothesis_outcomes
from hybrid.noise import SIGNIFICANT_SIGMAS
from hybrid.reports.analysis import (
    Analysis,
    CampaignData,
    failure_label,
    failure_pattern,
    hypothesis_margins,
    improvements,
)
from hybrid.reports.pruning import full_run_words, pruning_report
from hybrid.reports.words import TIMES, cell, duration, plural
from hybrid.types import Experiment, ExperimentState

__all__ = ["section_failures", "section_hypotheses", "section_pruning", "section_sources", "section_spend"]


def section_sources(data: CampaignData, a: Analysis) -> list[str]:
    imps = improvements(data.exps, data.objective, data.sd_on)
    overall = best_on(data.exps, data.objective, None)  # on any hardware
    by: dict[str, list[Experiment]] = {}
    for e in data.exps:
        by.setdefault(e.source, []).append(e)
    m = data.objective.metric
    out = [f"Improvements: results that beat the best {m} before them, in finish order.", "",
           "| source | experiments | done | failed | improvements | total improvement |", "|---|---|---|---|---|---|"]
    for src, exps in sorted(by.items(), key=lambda kv: (-len(kv[1]), kv[0])):
        mine = [i for i in imps if i.exp.source == src]
        within = sum(bool(i.within_noise) for i in mine)
        count = f"{len(mine)}" + (f" ({within} within noise)" if within else "")
        out.append(f"| {cell(src)} | {len(exps)} | {sum(e.value(m) is not None for e in exps)} | "
                   f"{sum(e.state.is_failure() for e in exps)} | {count} | {sum(i.gain for i in mine):.4g} |")
    rec = data.summary.recommendation
    if overall is not None:
        first = rec.runs.first if rec is not None else overall
        also = ("" if first is overall else
                f"; the recommended configuration was first run by {first.id}, from {first.source}")
        out += ["", f"The best single run ({overall.id}) came from {overall.source}{also}."]
    return out


def section_failures(data: CampaignData, a: Analysis) -> list[str]:
    finished = [e for e in data.exps if e.result is not None]
    lost = [e for e in finished if e.requeued]
    kept = counted(finished)
    kinds = Counter(failure_label(e) for e in kept if e.state.is_failure())
    cancelled = sum(e.state is ExperimentState.CANCELLED for e in kept)
    if not kinds and not cancelled and not lost:
        return ["No failures."]
    parts = [f"{k} {v}" for k, v in sorted(kinds.items(), key=lambda kv: (-kv[1], kv[0]))]
    parts += [f"cancelled {cancelled}"] * bool(cancelled) + [f"lost by the orchestrator and re-run {len(lost)}"] * bool(lost)
    out = ["- Counts: " + ", ".join(parts) + "."]
    reasons = Counter(_reason(e) for e in kept if e.state.is_failure())
    if reasons:
        out.append("- Reasons: " + "; ".join(f"\"{r}\" {TIMES}{n}" for r, n in
                                             sorted(reasons.items(), key=lambda kv: (-kv[1], kv[0]))[:5]) + ".")
    valid = [e for e in kept if data.space is not None and data.space.contains(e.params)
             and e.state is not ExperimentState.CANCELLED]
    if data.space is not None and valid:
        patterns = [p for kind in sorted(kinds) if (p := failure_pattern(data.space, valid, kind))]
        out += [f"- Pattern: {p}." for p in patterns]
        regions = failure_regions(data.space, valid)
        if regions and not patterns:
            out += ["- Where failures concentrate (a third of a numeric range or one choice, at least twice the "
                    "overall failure rate):"] + [f"  - {r}" for r in regions]
    return out


def _reason(e: Experiment) -> str:
    text = (e.result.reason if e.result else "").strip()
    return clip(text.splitlines()[0], 100) if text else e.state.name.lower()


_PRUNED_ROWS = 20  # the reasons table: the first pruned runs (results.tsv has every reason)


def section_pruning(data: CampaignData, a: Analysis, plots: Mapping[str, Path]) -> list[str]:
    r = pruning_report(data.exps)
    if not r.with_curves:
        return ["The target reports no progress (no `progress: <fraction> <name>: <value>` lines in any run's "
                "output), so pruning did not apply."]
    curves = ["", "![learning curves](plots/curves.png)"] if "curves.png" in plots else []
    if not r.pruned:
        return [f"No run was pruned; {r.with_curves} of {plural(len(r.finished), 'finished run')} reported "
                f"learning curves ({r.signal}).", *curves]
    hw = r.by_hardware()
    per = (" (" + ", ".join(f"{label} {n} of {m}" for label, (n, m) in hw.items()) + ")") if len(hw) > 1 else ""
    unknown = sum(p.saved_s is None for p in r.pruned)
    out = [f"- Pruned: {len(r.pruned)} of {plural(len(r.finished), 'finished run')}{per}; "
           f"{r.with_curves} reported learning curves ({r.signal}).",
           f"- GPU time used by the pruned runs: {duration(r.used_s)} (${r.used_usd:.2f}).",
           f"- GPU time saved, an estimate: {duration(r.saved_s)} (about ${r.saved_usd:.2f}). Per pruned run: the "
           "median duration of the DONE runs on its hardware minus its own duration, floored at 0 (what a full "
           "run there usually takes, less what it took)"
           + (f"; {plural(unknown, 'pruned run')} without a DONE run on its hardware not counted." if unknown
              else "."),
           "", f"| experiment | pruned at | last {cell(r.signal)} | reason |", "|---|---|---|---|"]
    for p in r.pruned[:_PRUNED_ROWS]:
        at = "n/a" if p.fraction is None else f"{p.fraction:.0%}"
        last = "n/a" if p.last_value is None else f"{p.last_value:.4g}"
        out.append(f"| {p.exp.id} | {at} | {last} | {cell(clip(p.reason, 300))} |")
    if len(r.pruned) > _PRUNED_ROWS:
        out += ["", f"And {len(r.pruned) - _PRUNED_ROWS} more (every reason: results.tsv)."]
    reruns = [full_run_words(p, a.best, data.objective) for p in r.pruned if p.full_run is not None]
    if reruns:
        out += ["", "Pruned configurations that later ran in full (same params, same code variant):", ""]
        out += [f"- {w}" for w in reruns]
    return out + curves


def section_spend(data: CampaignData, a: Analysis) -> list[str]:
    gpu = sum(e.result.cost_usd for e in data.exps if e.result is not None)
    total = gpu + data.llm_usd
    imps = improvements(data.exps, data.objective, data.sd_on)
    n_imp = len(imps)
    n_beyond = sum(i.within_noise is False for i in imps)
    beyond = (f"; ${total / n_beyond:.2f} per improvement beyond the noise ({n_beyond})" if n_beyond else
              "; none beyond the noise") if any(i.within_noise is not None for i in imps) else ""
    out = [f"- Workers: ${gpu:.2f}; LLM: ${data.llm_usd:.2f} ({plural(data.llm_calls, 'call')}); total ${total:.2f}.",
           f"- Cost per improvement of the best: ${total / n_imp:.2f} ({n_imp} improvements){beyond}." if n_imp else
           "- No improvement of the best: no cost per improvement.",
           f"- Stopped: {data.stop_reason or 'not stopped yet (running, or killed)'}"
           + (f" (status {data.status})." if data.status else ".")]
    for text in data.cost_stops:
        saved = re.search(r"about \$([\d.,]+) of the budget left unspent", text)
        tail = f"; estimated savings ${saved.group(1)}" if saved else ""
        out.append(f"- The cost-aware stopping rule fired: {clip(text, 400)}{tail}.")
    return out


def section_hypotheses(data: CampaignData, a: Analysis) -> list[str] | None:
    done = [o for o in hypothesis_outcomes(data.exps, data.objective) if o.outcome != "running"]
    if not any(e.source == "llm" for e in data.exps):
        return None
    if not done:
        return ["No LLM-proposed experiment has finished."]
    held = sorted((o for o in done if o.improved), key=lambda o: (data.objective.sign() * (o.value or 0), o.experiment_id))
    failed = [o for o in done if not o.improved]
    full = " Full list: hypotheses.md." if (data.dir / "hypotheses.md").exists() else ""
    hardware = {e.id: e.hardware for e in data.exps}
    margins = hypothesis_margins(data.exps, data.objective)
    within = {o.experiment_id: data.within_noise(margins[o.experiment_id], hardware.get(o.experiment_id))
              for o in held if o.experiment_id in margins}
    n_within = sum(bool(w) for w in within.values())
    noisy = (f", {n_within} of them by less than {SIGNIFICANT_SIGMAS:g} sd (within noise)"
             if any(w is not None for w in within.values()) else "")
    out = [f"{len(held)} of {len(done)} finished LLM hypotheses held (a new best, or better than the baseline){noisy}; "
           f"{len(failed)} did not.{full}"]
    for title, group in (("Held", held), ("Did not hold", failed)):
        if group:
            out += ["", f"{title}:"]
            out += [f"- {o.experiment_id} ({o.outcome}{', ' + o.detail if o.detail else ''}"
                    f"{', within noise' if within.get(o.experiment_id) else ''}): "
                    f"{clip(o.hypothesis, 200) or '(no hypothesis given)'}" for o in group[:5]]
    return out
