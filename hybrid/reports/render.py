"""findings.md as text: one function per section, from a :class:`CampaignData` and its :class:`Analysis`.

The sections on what was found are here (Headline, Progress, Noise, effects, interactions, slices,
Hardware); those on how the campaign ran are in :mod:`hybrid.reports.render_run`, Code changes in
:mod:`hybrid.reports.code_changes`.

``render`` puts the sections in order; a section that raises says so in its place and the others
are still written. Plots are only linked here (``plots`` names the PNGs that were written).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from hybrid.history import (
    best_on,
    changed_params,
    fmt_value,
    judged_hardware,
    successes,
)
from hybrid.noise import (
    MIN_RUNS,
    REPLICATE_SOURCES,
    SIGNIFICANT_SIGMAS,
    ConfigRuns,
    Noise,
    Recommendation,
    config_key,
)
from hybrid.reports.analysis import (
    Analysis,
    CampaignData,
    guarded,
    hardware_rows,
    improvements,
    repeated_configs,
)
from hybrid.reports.code_changes import code_changes, section_code_changes
from hybrid.reports.effects import Anova
from hybrid.reports.render_run import (
    section_failures,
    section_hypotheses,
    section_pruning,
    section_sources,
    section_spend,
)
from hybrid.reports.summary import variant_diff_path
from hybrid.reports.words import TIMES, cell, duration, p_value, plural
from hybrid.space import CategoricalParam, IntParam, SearchSpace
from hybrid.types import Experiment, ExperimentState

__all__ = ["render"]

_TOP_INTERACTIONS = 5


# ---- findings.md -----------------------------------------------------------------------------------
def _best_line(label: str, best: Experiment, base: Experiment | None, data: CampaignData,
               note: str = "") -> list[str]:
    """The best result and how it compares with the baseline's."""
    m, obj = data.objective.metric, data.objective
    v, base_v = best.value(m), base.value(m) if base else None
    assert v is not None
    where = " (the target hardware)" if best.hardware == data.target_hardware else ""
    code = f" with code variant {best.variant} ({variant_diff_path(best.variant)})" if best.variant else ""
    head = f"- **{label} {m} {v:.6g}** by {best.id} [{best.source}]{code} on {best.hardware}{where}"
    if base is None or base_v is None:
        return [head + f" (no baseline result to compare with).{note}"]
    if best is base:
        return [head + f": the baseline itself; no experiment beat it.{note}"]
    diff = obj.sign() * (base_v - v)
    pct = f" ({abs(diff) / abs(base_v) * 100:.2f}%)" if base_v else ""
    verdict = "better" if diff > 0 else "worse" if diff < 0 else "no different"
    out = [head + f": {abs(diff):.4g}{pct} {verdict} than the baseline {base_v:.6g} ({base.id} on {base.hardware}).{note}"]
    if best.hardware != base.hardware:
        out.append(f"  They ran on different hardware: see Hardware for the offset of {best.hardware} vs "
                   f"{base.hardware}, which is part of this difference.")
    return out


def _mean_sd(c: ConfigRuns) -> str:
    """``1.01008 ± 6.9e-05 (2 runs: e0001, e0003)``."""
    sd = "" if c.sd is None else f" ± {fmt_value(c.sd, 3)}"
    return f"{fmt_value(c.mean)}{sd} ({plural(c.n, 'run')}: {', '.join(c.ids)})"


def _noise_words(data: CampaignData, difference: float, hardware: str | None) -> str:
    """``, within noise (less than 2 sd = 0.00085)`` or ``, beyond the noise (...)``; "" with no sd known."""
    within = data.within_noise(difference, hardware)
    if within is None:
        return ""
    band = fmt_value(SIGNIFICANT_SIGMAS * data.sd_on(hardware), 3)  # type: ignore[operator]
    k = f"{SIGNIFICANT_SIGMAS:g} sd = {band}"
    return f", within noise (less than {k})" if within else f", beyond the noise (more than {k})"


def _recommended_lines(data: CampaignData, rec: Recommendation) -> list[str]:
    """The recommendation (mean ± sd of its runs), confirmed or not and why, against the baseline's mean."""
    m, obj = data.objective.metric, data.objective
    runs, base = rec.runs, data.summary.baseline_runs
    where = " (the target hardware)" if rec.hardware == data.target_hardware else ""
    code = f" with code variant {runs.variant} ({variant_diff_path(runs.variant)})" if runs.variant else ""
    status = f", confirmed (at least {MIN_RUNS} runs there)" if rec.confirmed else ""
    head = (f"- **Recommended: {m} {rec.estimate()}** by {', '.join(runs.ids)} [{runs.first.source}]{code} "
            f"on {rec.hardware}{where}{status}")
    if base is None:
        out = [head + " (no baseline result to compare with)."]
    elif config_key(base.first) == config_key(runs.first) and base.hardware == runs.hardware:
        out = [head + ": the baseline configuration itself; no configuration beat it."]
    else:
        diff = obj.sign() * (base.mean - rec.mean)
        pct = f" ({abs(diff) / abs(base.mean) * 100:.2f}%)" if base.mean else ""
        verdict = "better" if diff > 0 else "worse" if diff < 0 else "no different"
        out = [head + f": {abs(diff):.4g}{pct} {verdict} than the baseline {_mean_sd(base)} on {base.hardware}"
               + _noise_words(data, diff, rec.hardware) + "."]
        if base.hardware != rec.hardware:
            out.append(f"  They ran on different hardware: see Hardware for the offset of {rec.hardware} vs "
                       f"{base.hardware}, which is part of this difference.")
    if rec.note:
        out.append(f"  {'Note' if rec.confirmed else 'Why unconfirmed'}: {rec.note}.")
    return out


def section_headline(data: CampaignData, a: Analysis) -> list[str]:
    overall = best_on(data.exps, data.objective, None)  # on any hardware
    rec = data.summary.recommendation
    if overall is None or a.best is None or rec is None:
        return ["No successful experiment yet: nothing to compare with the baseline."]
    base = a.baseline
    out = _recommended_lines(data, rec)
    one_of = " It is one of the recommended configuration's runs." if a.best.id in rec.runs.ids else ""
    out += _best_line("Best single run", a.best, base, data, one_of)
    if overall is not a.best:
        out += _best_line("Best single run on any hardware", overall, base, data)
    if data.target_hardware and a.best.hardware != data.target_hardware:
        out.append(f"- No successful result on the target hardware {data.target_hardware} yet.")
    out += ["- The best single run is the luckiest of many noisy runs and flatters its configuration (the winner's "
            "curse); the recommendation is the best mean of a configuration run more than once (unless one that ran "
            "once beats it by more than the noise), see Noise."]
    recommended = rec.runs.params
    diff = changed_params(recommended, base.params) if base else {}
    single = (changed_params(a.best.params, base.params) if base and config_key(a.best) != config_key(rec.runs.first)
              else None)
    if diff or single:
        names = list(dict.fromkeys([*diff, *(single or {})]))
        extra = f" and the best single run ({a.best.id})" if single is not None else ""
        out += ["", f"What the recommended configuration ({rec.runs.first.id}){extra} changed from the baseline:", "",
                "| parameter | baseline | recommended |" + (" best single run |" if single is not None else ""),
                "|---|---|---|" + ("---|" if single is not None else "")]
        for k in names:
            row = (f"| {cell(k)} | {cell(fmt_value(base.params.get(k), 4))} | "  # type: ignore[union-attr]
                   f"{cell(fmt_value(recommended.get(k), 4))} |")
            if single is not None:
                row += f" {cell(fmt_value(a.best.params.get(k), 4))} |"
            out.append(row)
    return out


_REPEATED_ROWS = 20  # the table of configurations run more than once


def _noise_line(n: Noise) -> str:
    gp = "" if n.gp_sd is None else f"; the GP's estimate {fmt_value(n.gp_sd, 3)}"
    if n.sd is None:
        return f"- {n.hardware}: not measured (no configuration succeeded twice there){gp}."
    if n.sd == 0:
        return (f"- {n.hardware}: sd 0: every repeated configuration gave the same value ({n.dof} dof from "
                f"{plural(n.n_configs, 'configuration')}){gp}.")
    return (f"- {n.hardware}: sd {fmt_value(n.sd, 3)}, 95% interval [{fmt_value(n.low, 3)}, {fmt_value(n.high, 3)}], "
            f"{n.dof} dof from {plural(n.n_configs, 'configuration')} run more than once{gp}.")


def section_noise(data: CampaignData, a: Analysis) -> list[str]:
    """The run-to-run noise per hardware, the rule "within noise" and the runs the campaign repeated."""
    s, m = data.summary, data.objective.metric
    if not s.noise:
        return ["No successful experiment yet: no noise to estimate."]
    out = [f"Run-to-run sd of {m} per hardware, pooled over every configuration (same params, same code) that "
           "succeeded more than once there:", ""]
    out += [_noise_line(n) for _, n in sorted(s.noise.items())]
    measured = any(n.sd is not None for n in s.noise.values())
    gp = any(n.gp_sd is not None for n in s.noise.values())
    k = f"{SIGNIFICANT_SIGMAS:g} sd"
    if measured or gp:
        how = ("the measured sd of its hardware, else the GP's estimate there, else the pooled sd of the other "
               "labels" if measured else "the GP's estimate of the noise (nothing measured)")
        out += ["", f"A difference smaller than {k} ({how}) is marked *within noise* in this report: "
                "it is no evidence that one configuration is better than the other."]
    else:
        out += ["", "No difference in this report is judged against the noise: no configuration succeeded twice on "
                "one hardware, so there is nothing to measure it with."]
    repeated = repeated_configs(data)
    sources = Counter(e.source for r in repeated for e in r.attempts if e.source in REPLICATE_SOURCES)
    if sources:
        out += ["", f"The campaign re-ran configurations itself: {plural(sources.get('replicate', 0), 'replicate')} "
                "(to measure the noise: the baseline again early on, an incumbent that won by little) and "
                f"{plural(sources.get('confirm', 0), 'confirmation')} (the top configurations again where \"best\" "
                "is judged, to confirm the recommendation)."]
    if repeated:
        out += ["", "| configuration (first run) | hardware | runs | mean ± sd |", "|---|---|---|---|"]
        for r in repeated[:_REPEATED_ROWS]:
            runs = ", ".join(f"{e.id} [{e.source}]" + ("" if e.value(m) is not None else f" {e.state.name.lower()}")
                             for e in r.attempts)
            value = "no success" if r.runs is None else (
                fmt_value(r.runs.mean) + ("" if r.runs.sd is None else f" ± {fmt_value(r.runs.sd, 3)}")
                + f" (n {r.runs.n})")
            out.append(f"| {r.attempts[0].id} | {cell(r.attempts[0].hardware)} | {cell(runs)} | {value} |")
        if len(repeated) > _REPEATED_ROWS:
            out.append(f"And {len(repeated) - _REPEATED_ROWS} more.")
    else:
        out += ["", "No configuration ran more than once."]
    return out


_IMPROVEMENT_ROWS = 15  # the new-best list of Progress: the last ones


def _when(data: CampaignData, e: Experiment) -> str:
    if data.created is None or not e.ended:
        return ""
    return f", {duration(e.ended - data.created)} after the start"


def section_progress(data: CampaignData, a: Analysis, elapsed_s: float | None, plots: Mapping[str, Path]) -> list[str]:
    exps = data.exps
    n_done = sum(e.value(data.objective.metric) is not None for e in exps)
    n_failed = sum(e.state.is_failure() for e in exps)
    n_cancelled = sum(e.state is ExperimentState.CANCELLED for e in exps)
    n_running = sum(e.result is None for e in exps)
    n_pruned = sum(e.state is ExperimentState.PRUNED for e in exps)
    pruned = f"{n_pruned} pruned, " if n_pruned else ""
    out = [f"- {plural(len(exps), 'experiment')}: {n_done} done, {n_failed} failed, {pruned}{n_cancelled} "
           f"cancelled, {n_running} not finished; campaign time {duration(elapsed_s)}."]
    imps = improvements(exps, data.objective, data.sd_on)
    if imps:
        last = imps[-1]
        out.append(f"- The best so far improved {len(imps)} times (results in finish order); the last improvement "
                   f"was {last.exp.id}, result #{last.rank} in finish order{_when(data, last.exp)}.")
        if any(i.within_noise is not None for i in imps):
            within = sum(bool(i.within_noise) for i in imps)
            beyond = [i for i in imps if i.within_noise is False]
            tail = (f"; the last beyond the noise was {beyond[-1].exp.id}, result #{beyond[-1].rank}"
                    f"{_when(data, beyond[-1].exp)}" if beyond else "; none was beyond the noise")
            out.append(f"- {within} of the {len(imps)} improvements {'was' if within == 1 else 'were'} *within noise* (smaller than "
                       f"{SIGNIFICANT_SIGMAS:g} sd of the noise on their hardware, see Noise){tail}.")
        shown = imps[-_IMPROVEMENT_ROWS:]
        more = f" (the last {len(shown)} of {len(imps)})" if len(shown) < len(imps) else ""
        out += ["", f"New bests{more}:", "",
                f"| result # | experiment | source | hardware | {data.objective.metric} | better by | noise |",
                "|---|---|---|---|---|---|---|"]
        for i in shown:
            mark = {None: "", True: "within noise", False: "beyond noise"}[i.within_noise]
            out.append(f"| {i.rank} | {i.exp.id} | {cell(i.exp.source)} | {cell(i.exp.hardware)} | "
                       f"{fmt_value(i.value)} | {i.gain:.4g} | {mark} |")
    elif n_done:
        out.append("- No result improved on the first successful one.")
    for w in data.warm_start:
        skipped = f"; {w['skipped']} outside this space, not used" if w.get("skipped") else ""
        out.append(f"- Warm-started with {w.get('n', '?')} results of campaign {w.get('name', '?')} "
                   f"({w.get('dir', '?')}) as prior data{skipped}; they are not counted in this report.")
    if "progress.png" in plots:
        out += ["", "![progress](plots/progress.png)"]
    return out


def _spread_rule(data: CampaignData, a: Analysis) -> str:
    sd = data.sd_on(a.hardware_ref)
    if sd is None:
        return ""
    return (f"; *within noise*: less than {SIGNIFICANT_SIGMAS:g} sd of the run-to-run noise "
            f"({fmt_value(SIGNIFICANT_SIGMAS * sd, 3)}), no evidence that the parameter matters")


def _spread(data: CampaignData, a: Analysis, spread: float | None) -> str:
    if spread is None:
        return "n/a"
    within = data.within_noise(spread, a.hardware_ref)
    return f"{spread:.3g}" + (" (within noise)" if within else "")


def section_effects(data: CampaignData, a: Analysis, plots: Mapping[str, Path]) -> list[str]:
    m = data.objective.metric
    if isinstance(a.anova, Anova):
        an = a.anova
        hw = " the hardware label as a factor," if an.hardware is not None else ""
        out = [f"Method: ANOVA by least squares on the {an.n} successful experiments: each numeric parameter as a "
               "linear + quadratic term of its [0, 1] search-space encoding (log scale where the parameter is log), "
               f"categoricals one-hot against a reference level,{hw} {an.n_columns} columns with the intercept. "
               f"Importance = Type-II sum of squares (refit without the parameter) as a share of the variance of "
               f"{m}; F test against the residual. R² = {an.r2:.3f}, residual sd {an.resid_sd:.3g}. Spread: how far "
               f"the parameter's fitted effect moves {m} over its observed values (across its levels for a "
               f"categorical){_spread_rule(data, a)}.", "",
               "| parameter | share of variance | F | p | spread | direction |", "|---|---|---|---|---|---|"]
        out += [f"| {cell(e.name)} | {e.share * 100:.1f}% | {e.F:.3g} | {p_value(e.p)} | {_spread(data, a, e.spread)} | "
                f"{cell(e.words)} |" for e in an.effects]
        if sum(e.share for e in an.effects) < 0.5 * an.r2:
            out += ["", "The shares add up to much less than R²: the parameters were varied together (e.g. a "
                    "proposer concentrating on one region), so much of the explained variance cannot be "
                    "attributed to one parameter alone."]
        if an.constant:
            out += ["", "Not varied among the successful results: " + ", ".join(an.constant) + "."]
    else:
        out = [f"{a.anova[0].upper()}{a.anova[1:]}."]
        if a.correlations:
            out += ["", "Fallback: per-parameter rank statistics (Spearman correlation with the encoded value for "
                    "numeric parameters, Kruskal-Wallis across levels for categoricals), one parameter at a time:",
                    "", "| parameter | statistic | p | direction |", "|---|---|---|---|"]
            for c in a.correlations:
                stat = (f"H = {c.stat:.3g}" if isinstance(data.space.params[c.name], CategoricalParam)  # type: ignore[union-attr]
                        else f"rho = {c.stat:+.2f}")
                out.append(f"| {cell(c.name)} | {stat} | {p_value(c.p)} | {cell(c.words)} |")
    if "effects.png" in plots:
        out += ["", "![effects](plots/effects.png)"]
    return out


def section_interactions(data: CampaignData, a: Analysis) -> list[str]:
    if not isinstance(a.anova, Anova):
        return ["Needs the main-effects ANOVA (above), which could not be computed."]
    if not a.interactions:
        return ["No pair of varied parameters could be tested (too few results or parameters)."]
    out = [f"Method: each pair of parameters added, alone, to the main-effects model (numeric{TIMES}numeric: product "
           f"of the centred encodings; numeric{TIMES}categorical: a slope per level; categorical{TIMES}categorical: "
           f"cell "
           f"indicators); extra share of variance, F and p. {a.n_pairs} pairs tested; p-values are not corrected "
           f"for that (Bonferroni threshold {0.05 / a.n_pairs:.2g}).", "",
           "| pair | extra share | F | p | reading |", "|---|---|---|---|---|"]
    out += [f"| {cell(i.a)} {TIMES} {cell(i.b)} | {i.share * 100:.1f}% | {i.F:.3g} | {p_value(i.p)} | {cell(i.words)} |"
            for i in a.interactions[:_TOP_INTERACTIONS]]
    return out


def section_slices(data: CampaignData, a: Analysis) -> list[str]:
    if not a.slices:
        why = a.notes.get("GP slices") or a.slice_note or "no numeric parameter to slice"
        return [f"No GP slices: {why}."]
    obj, m = data.objective, data.objective.metric
    out = [f"GP posterior mean ± 2 sd of {m} along each of the most important numeric parameters, the others fixed "
           f"at {a.best.id}'s configuration, predicted on {a.slices[0].hardware} ({a.slice_note}).", ""]  # type: ignore[union-attr]
    for s in a.slices:
        k = int(np.argmin(obj.sign() * s.mean))
        word = "argmin" if obj.direction == "minimize" else "argmax"
        out.append(f"- {s.param}: GP {word} at {s.param}={fmt_value(_as_param(data.space, s.param, s.x[k]), 4)} "
                   f"(predicted {m} {s.mean[k]:.6g} ± {2 * s.sd[k]:.2g}); the best config has "
                   f"{s.param}={fmt_value(_as_param(data.space, s.param, s.at), 4)}.")
    return out


def _as_param(space: SearchSpace | None, name: str, x: float) -> Any:
    p = space.params[name] if space else None
    return round(x) if isinstance(p, IntParam) else float(x)


def section_hardware(data: CampaignData, a: Analysis, plots: Mapping[str, Path]) -> list[str]:
    rows, unit = hardware_rows(data, a.anova, a.hardware_ref)
    if not rows:
        return ["No experiments."]
    m = data.objective.metric
    out = [f"Offsets are {m}(label) - {m}({a.hardware_ref}): paired over configurations run on both labels where "
           "there are any, else the ANOVA's hardware coefficient.", ""] if a.hardware_ref and len(rows) > 1 else []
    out += [f"| hardware | runs | done | failed | median duration | $/h | {unit or 'throughput'} | offset | how |",
           "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        usd = "n/a" if r.usd_per_h is None else f"{r.usd_per_h:.2f}"
        tput = "n/a" if r.throughput is None else f"{r.throughput:.4g}"
        off = "n/a" if r.offset is None else ("0" if r.offset_how == "reference" else f"{r.offset:+.4g}")
        out.append(f"| {cell(r.label)} | {r.runs} | {r.done} | {r.failed} | {duration(r.median_duration_s)} | "
                   f"{usd} | {tput} | {off} | {r.offset_how} |")
    if len(rows) == 1:
        out += ["", "One hardware label: no comparison."]
    elif isinstance(a.anova, Anova) and a.anova.hardware_effect is not None:
        h = a.anova.hardware_effect
        out += ["", f"In the ANOVA the hardware label explains {h.share * 100:.1f}% of the variance of {m} "
                f"(F = {h.F:.3g}, p {p_value(h.p)}), with the parameters held fixed."]
    if "hardware.png" in plots:
        out += ["", "![hardware](plots/hardware.png)"]
    return out


def _judged(data: CampaignData) -> str:
    """Where "best" is judged (history.judged_hardware), when it is not simply the only hardware."""
    if data.target_hardware:
        return f", judged on {data.target_hardware}"
    labels = {e.hardware for e, _ in successes(data.exps, data.objective)}
    if len(labels) < 2:
        return ""
    return (f", judged on {judged_hardware(data.exps, data.objective)} (the hardware with the most successful "
            "results; set campaign.target_hardware to choose)")


def render(data: CampaignData, a: Analysis, elapsed_s: float | None, plots: Mapping[str, Path],
           plot_notes: Sequence[str]) -> str:
    obj = data.objective
    head = [f"# Findings: campaign {data.name}", "",
            f"Objective: {obj.metric} ({obj.direction}){_judged(data)}"
            + f". Stop reason: {data.stop_reason or 'not stopped yet'}."]
    if data.space_note:
        head.append(f"Note: {data.space_note}.")
    if data.space is not None and len(a.rows) < sum(e.value(obj.metric) is not None for e in data.exps):
        head.append("Note: some results do not fit the stored search space (changed on resume?) and are left out "
                    "of the statistics.")
    head += [f"Note: {n}." for n in plot_notes]
    sections: list[tuple[str, Callable[[], list[str] | None]]] = [
        ("Headline", lambda: section_headline(data, a)),
        ("Code changes", lambda: section_code_changes(
            code_changes(data.exps, data.variants, obj, data.target_hardware, a.best), obj)),
        ("Progress", lambda: section_progress(data, a, elapsed_s, plots)),
        ("Noise", lambda: section_noise(data, a)),
        ("What mattered: main effects", lambda: section_effects(data, a, plots)),
        ("Interactions", lambda: section_interactions(data, a)),
        ("Response slices (GP)", lambda: section_slices(data, a)),
        ("Hardware", lambda: section_hardware(data, a, plots)),
        ("Sources", lambda: section_sources(data, a)),
        ("Failures", lambda: section_failures(data, a)),
        ("Pruning", lambda: section_pruning(data, a, plots)),
        ("Spend", lambda: section_spend(data, a)),
        ("LLM hypotheses", lambda: section_hypotheses(data, a)),
    ]
    out = head
    for title, build in sections:
        notes: dict[str, str] = {}
        body = guarded(notes, title, build, None)
        if body is None and not notes:
            continue  # a section that does not apply (no LLM experiments)
        out += ["", f"## {title}", ""]
        out += body if body is not None else [f"(could not compute this section: {notes[title]})"]
    for part, note in a.notes.items():
        if part != "GP slices":
            out += ["", f"Note: {part} could not be computed ({note})."]
    return "\n".join(out) + "\n"
