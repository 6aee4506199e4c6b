"""What a campaign learned, for the researcher who reads it in the morning: ``findings.md`` + ``plots/``.

``write_reports(campaign_dir)`` reads the campaign's own ``state.sqlite`` (its stored config gives
the space, the objective and the target hardware) and writes, in order: the best config vs the
baseline, the code variants (with code changes), progress, main effects, interactions, GP response
slices, hardware, proposer sources, failures, pruning (with the learning curves), spend and the LLM's
hypotheses; a code variant's ``variants/<id>.diff`` missing from the campaign dir is written again
from the store.
``hybrid report campaign.name=NAME`` regenerates them (``report_command``). Output is deterministic: no timestamps, sorted iteration, a seeded
single-thread GP, PNGs without metadata; writing twice gives byte-identical files.

The parts, in the order a report runs them:
- :mod:`hybrid.reports.analysis`: the campaign as stored (``load_campaign``, read-only, through
  :mod:`hybrid.reports.reader`) and the analysis run once per report (``analyze``);
- :mod:`hybrid.reports.effects`: its statistics (ANOVA main effects and interactions, rank
  correlations, paired hardware offsets); :mod:`hybrid.reports.slices`: the GP response slices;
- :mod:`hybrid.reports.render`: the text of findings.md, section by section (the code variants':
  :mod:`hybrid.reports.code_changes`);
- this module: the plots' data (drawn by :mod:`hybrid.reports.plots`), the files, and ``hybrid report``.

The GP (``surrogate.gp.GPSurrogate``) and the MLflow tracker (``hybrid.tracking.make_tracker``)
are handed in by the caller: the reports wing imports neither the surrogate nor the tracking.

A report never raises on the campaign's data: a section that cannot be computed says why.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Any, Protocol

from hybrid.errors import ConfigError, HybridError
from hybrid.history import throughput
from hybrid.reports.analysis import (
    Analysis,
    CampaignData,
    analyze,
    finish_order,
    guarded,
    hardware_rows,
    load_campaign,
    progress_noise,
)
from hybrid.reports.code_changes import write_variant_diffs
from hybrid.reports.effects import Anova, Effect
from hybrid.reports.hypotheses import write_hypotheses_md
from hybrid.reports.plots import Bar, HardwareSeries, ProgressPoint
from hybrid.reports.pruning import curve_series
from hybrid.reports.render import render
from hybrid.reports.slices import GPFactory
from hybrid.reports.summary import write_summary
from hybrid.space import CategoricalParam, SearchSpace
from hybrid.types import Experiment, ExperimentState, Objective

__all__ = ["CampaignData", "TrackerFactory", "load_campaign", "report_command", "write_reports"]

PLOTS_DIR = "plots"


# ---- entry points ----------------------------------------------------------------------------------
def write_plots(data: CampaignData, a: Analysis, plots_dir: Path) -> tuple[dict[str, Path], list[str]]:
    """Every plot that applies: ({file name: path}, notes on plots that failed). Never raises."""
    from hybrid.reports import plots

    plots_dir.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}
    notes: dict[str, str] = {}
    jobs: list[tuple[str, Callable[[Path], bool]]] = [
        ("progress.png", lambda path: plots.plot_progress(path, progress_points(data), data.objective,
                                                          _baseline_value(data, a), noise=progress_noise(data))),
        ("effects.png", lambda path: plots.plot_effects(path, effect_bars(data, a), a.slices, data.objective)),
        ("hardware.png", lambda path: plots.plot_hardware(path, hardware_series(data), data.objective,
                                                          hardware_rows(data, a.anova, a.hardware_ref)[1])),
        ("curves.png", lambda path: _plot_curves(path, data, a)),
    ]
    for name, job in jobs:
        path = plots_dir / name
        if guarded(notes, name, partial(job, path), False):
            written[name] = path
        elif path.exists():  # a plot that no longer applies must not outlive its report
            path.unlink()
    return written, [f"plot {k} failed ({v}); the report goes on without it" for k, v in notes.items()]


def _plot_curves(path: Path, data: CampaignData, a: Analysis) -> bool:
    from hybrid.reports import plots

    signal, series = curve_series(data.exps, a.best)
    return signal is not None and plots.plot_curves(path, series, signal)


def _baseline_value(data: CampaignData, a: Analysis) -> float | None:
    return a.baseline.value(data.objective.metric) if a.baseline else None


def progress_points(data: CampaignData) -> list[ProgressPoint]:
    start = data.created if data.created is not None else min(
        (e.started for e in data.exps if e.started is not None), default=None)
    out = []
    for e in finish_order(data.exps):
        if e.state is ExperimentState.PRUNED:
            continue  # not a failure: the learning curves (curves.png) show where it stopped
        hours = (e.ended - start) / 3600 if e.ended is not None and start is not None else None
        out.append(ProgressPoint(e.seq, hours, e.value(data.objective.metric),
                                 e.state is not ExperimentState.DONE or e.value(data.objective.metric) is None,
                                 e.hardware, e.source))
    return out


def effect_bars(data: CampaignData, a: Analysis) -> list[Bar]:
    if isinstance(a.anova, Anova):
        return [Bar(e.name, e.share * 100, e.better_when_higher, _bar_note(e), "share of variance, % (Type-II ANOVA)")
                for e in a.anova.effects]
    space = data.space
    assert space is not None
    bars = []
    for c in a.correlations:
        if not isinstance(space.params[c.name], CategoricalParam):
            better = data.objective.sign() * c.stat < 0
            bars.append(Bar(c.name, abs(c.stat), better, "higher better" if better else "higher worse",
                            "|Spearman rho| (too few results for an ANOVA)"))
    return bars


def _bar_note(e: Effect) -> str:
    if e.better_when_higher is not None:
        return "higher better" if e.better_when_higher else "higher worse"
    return e.words.split(" (")[0] if e.kind == "categorical" else "optimum inside"


def hardware_series(data: CampaignData) -> list[HardwareSeries]:
    m = data.objective.metric
    by: dict[str, list[Experiment]] = {}
    for e in data.exps:
        by.setdefault(e.hardware, []).append(e)
    out = []
    for label, exps in sorted(by.items()):
        rates = [t[0] for e in exps if e.value(m) is not None and (t := throughput(e.result.metrics))]  # type: ignore[union-attr]
        out.append(HardwareSeries(label, [v for e in exps if (v := e.value(m)) is not None],
                                  [e.result.duration_s for e in exps if e.result is not None and e.result.duration_s > 0],
                                  rates))
    return out


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


class Uploader(Protocol):
    def upload_artifacts(self, campaign_dir: Path, run_id: str, files: Sequence[Path]) -> None: ...


# ``hybrid.tracking.make_tracker``: the ``tracking`` config node -> a tracker that can upload files
TrackerFactory = Callable[[Mapping[str, Any]], Any]


def write_reports(campaign_dir: Path, *, elapsed_s: float | None = None, objective: Objective | None = None,
                  space: SearchSpace | None = None, gp: GPFactory | None = None) -> list[Path]:
    """Write ``findings.md`` and ``plots/*.png`` of the campaign in ``campaign_dir``; return the files
    written (findings.md first). Opens its own read-only store connection (the campaign may be running).

    ``elapsed_s``: the campaign's active time (default: the store's ``active_s``);
    ``objective``/``space``: override the stored config's (for campaigns built in Python);
    ``gp``: the GP of the response slices, ``surrogate.gp.GPSurrogate`` (the only part that takes
    seconds); None skips them.
    Never raises on the campaign's data: what cannot be computed is said in findings.md.
    """
    campaign_dir = Path(campaign_dir)
    path = campaign_dir / "findings.md"
    try:
        data = load_campaign(campaign_dir, objective=objective, space=space)
    except Exception as err:  # an unreadable store: say so where the reader looks
        _write_atomic(path, f"# Findings\n\nThe campaign store could not be read ({type(err).__name__}: {err}).\n")
        return [path]
    write_variant_diffs(campaign_dir, data.variants)  # the campaign writes them; a missing one again
    a = analyze(data, gp)
    plots, plot_notes = write_plots(data, a, campaign_dir / PLOTS_DIR)
    elapsed = elapsed_s if elapsed_s is not None else data.elapsed_s
    _write_atomic(path, render(data, a, elapsed, plots, plot_notes))
    return [path, *plots.values()]


def report_command(container: Mapping[str, Any], *, gp: GPFactory | None = None,
                   make_tracker: TrackerFactory | None = None) -> list[Path]:
    """``hybrid report <overrides>``: regenerate findings.md, the plots (and hypotheses.md with LLM
    experiments, ``variants/<id>.diff`` of the code variants) of ``campaign.dir``, print their paths
    (the diffs as one line), and upload them to the campaign's MLflow run when it was mirrored (with
    ``make_tracker``: ``hybrid.tracking.make_tracker``; the diffs under ``variants/``)."""
    campaign_dir = Path(str(container["campaign"]["dir"])).expanduser()
    if not (campaign_dir / "state.sqlite").is_file():
        raise ConfigError(f"campaign.name: no campaign at {campaign_dir} (no state.sqlite); give the name of a "
                          "campaign under runs/, or campaign.dir=PATH")
    hypotheses, diffs, summaries = [], [], []
    try:  # the LLM's hypotheses.md and the variants' diffs, first, as the campaign's end writes them:
        data = load_campaign(campaign_dir)  # findings.md points at hypotheses.md when it exists
        if write_hypotheses_md(campaign_dir / "hypotheses.md", data.exps, data.objective):
            hypotheses.append(campaign_dir / "hypotheses.md")
        diffs = write_variant_diffs(campaign_dir, data.variants)
        summaries = write_summary(campaign_dir, data.summary)  # summary.txt and summary.json, as at the end
    except HybridError:  # an unreadable store: findings.md says so
        pass
    paths = [*write_reports(campaign_dir, gp=gp), *hypotheses, *summaries]
    for p in paths:
        print(p, flush=True)
    if diffs:
        print(f"{campaign_dir / 'variants'}/ ({len(diffs)} diff{'s' * (len(diffs) != 1)} of code variants)", flush=True)
    paths += diffs
    if make_tracker is not None:
        _upload(campaign_dir, paths, make_tracker)
    return paths


def _upload(campaign_dir: Path, paths: Sequence[Path], make_tracker: TrackerFactory) -> None:
    """Best effort: one warning line on failure, never a traceback."""
    try:
        data = load_campaign(campaign_dir)
        if str(data.tracking.get("name", "")).lower() != "mlflow" or not data.parent_run_id:
            return
        tracker: Uploader = make_tracker(data.tracking)
        tracker.upload_artifacts(campaign_dir, data.parent_run_id, paths)
        print(f"uploaded to MLflow run {data.parent_run_id}", flush=True)
    except Exception as err:
        first = (str(err).strip().splitlines() or [""])[0][:300]
        print(f"warning: MLflow upload failed ({type(err).__name__}: {first}); the files above are written. "
              "Check tracking.uri, or ignore this with a campaign run with tracking=none.", file=sys.stderr,
              flush=True)
