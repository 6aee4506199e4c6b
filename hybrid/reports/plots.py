"""The campaign's plots (PNG, matplotlib's Agg canvas, no pyplot state): progress, effects, hardware,
learning curves.

Each ``plot_*`` function takes plain data (built by :mod:`hybrid.reports.findings`), writes one PNG and
returns True, or returns False (writing nothing) when the plot does not apply. Output is
byte-for-byte deterministic: fixed sizes and DPI, sorted labels, a seeded jitter and no
``Software`` metadata. matplotlib is imported inside the functions: importing this module is cheap.
Before it is, :func:`quiet_matplotlib_logs` silences its loggers (and those of fontTools and PIL,
which it drives): their INFO/DEBUG lines, such as "generated new fontManager", would otherwise end
up in the campaign's output, where Hydra's logging prints every INFO line.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from hybrid.history import fmt_value, running_best
from hybrid.noise import SIGNIFICANT_SIGMAS, significant
from hybrid.types import Objective

if TYPE_CHECKING:
    from matplotlib.artist import Artist
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = ["Bar", "CurveSeries", "HardwareSeries", "ProgressNoise", "ProgressPoint", "Slice", "new_bests",
           "plot_curves", "plot_effects", "plot_hardware", "plot_progress", "progress_figure", "quiet_matplotlib_logs"]

DPI = 100
_MARKERS = ("o", "s", "^", "D", "v", "P", "*", "h", "<", ">", "p", "d")
_GOOD, _BAD, _NEUTRAL = "#2a9d4b", "#c8553d", "#7f7f7f"
_PRUNED = "#e08a1e"  # orange: a pruned run's curve, apart from the grey finished ones and the green best
_CHATTY = ("matplotlib", "fontTools", "PIL")  # the libraries a plot drives and their loggers


def quiet_matplotlib_logs() -> None:
    """Only errors from matplotlib, fontTools and PIL (e.g. no "Matplotlib is building the font cache"
    warning, no font-search INFO lines). A level the user set on one of these loggers is kept. Call
    it before matplotlib is imported: the font cache is built, and logged, on its first import."""
    for name in _CHATTY:
        logger = logging.getLogger(name)
        if logger.level == logging.NOTSET:
            logger.setLevel(logging.ERROR)


@dataclass(frozen=True)
class ProgressPoint:
    """One finished experiment."""

    seq: int  # experiment number (creation order)
    hours: float | None  # when it finished, hours after the campaign started
    value: float | None  # the objective metric; None when it failed
    failed: bool
    hardware: str
    source: str


@dataclass(frozen=True)
class ProgressNoise:
    """The run-to-run noise and the recommendation, as the progress plot draws them."""

    sd: float | None  # the noise sd on the judged hardware (None: not measured)
    hardware: str | None  # that hardware
    recommended: float | None = None  # the recommendation's mean (None: no recommendation)
    recommended_sd: float | None = None  # the sd of its runs (None: one run)
    recommended_n: int = 0
    confirmed: bool = False


@dataclass(frozen=True)
class Bar:
    """One parameter's importance."""

    name: str
    size: float  # share of variance, or |rho|
    better_when_higher: bool | None  # colour: green True, red False, grey None (optimum inside, categorical)
    note: str  # written beside the bar, e.g. "higher worse", "best L"
    measure: str  # what ``size`` is, for the axis label


@dataclass(frozen=True)
class Slice:
    """The GP's prediction along one parameter, the others fixed at the best configuration."""

    param: str
    x: np.ndarray  # (m,) parameter values
    mean: np.ndarray  # (m,) predicted metric
    sd: np.ndarray  # (m,) posterior sd of the metric
    log: bool  # the parameter's scale
    at: float  # the best configuration's value
    hardware: str  # where the GP predicts
    obs_x: np.ndarray  # (k,) observed results on that hardware: parameter value
    obs_y: np.ndarray  # (k,) and metric
    other_x: np.ndarray  # (j,) observed on other hardware
    other_y: np.ndarray


@dataclass(frozen=True)
class HardwareSeries:
    label: str
    values: list[float]  # the metric of each successful result
    durations_s: list[float]  # of each finished experiment
    throughput: list[float]  # per successful result, when reported


@dataclass(frozen=True)
class CurveSeries:
    """One run's learning curve of the signal: (fraction, value) points, any order, maybe odd."""

    exp_id: str
    points: list[tuple[float, float]]
    kind: str  # "finished" | "best" | "pruned"


def _figure(width: float, height: float) -> Figure:
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=DPI, layout="constrained")


def _save(fig: Figure, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    fig.savefig(tmp, format="png", dpi=DPI, metadata={"Software": None})
    os.replace(tmp, path)


def _colors(labels: Sequence[str]) -> dict[str, Any]:
    from matplotlib import colormaps

    cmap = colormaps["tab10"]
    return {label: cmap(i % 10) for i, label in enumerate(sorted(labels))}


def _robust_limits(values: Sequence[float], baseline: float | None, objective: Objective) -> tuple[float, float]:
    """The best values and the bulk of the rest, not a diverged run 100x worse."""
    v = np.asarray(values, dtype=float) * objective.sign()  # as a loss: lower is better
    best, worst, median = v.min(), v.max(), float(np.median(v))
    bulk = worst if worst - best <= 4 * (median - best) else float(np.quantile(v, 0.9))
    good, bulk = best * objective.sign(), bulk * objective.sign()
    ends = [good, bulk] + ([baseline] if baseline is not None else [])
    lo, hi = float(min(ends)), float(max(ends))
    pad = (hi - lo) * 0.08 or max(abs(hi) * 0.01, 1e-9)
    return lo - pad, hi + pad


def _best_so_far(xs: Sequence[float], ys: Sequence[float], objective: Objective) -> tuple[list[float], list[float]]:
    return list(xs), [float(b) for b in running_best(list(ys), objective) if b is not None]


def new_bests(xs: Sequence[float], ys: Sequence[float], objective: Objective,
              sd: float | None) -> list[tuple[float, float, bool | None]]:
    """The results (x, y, in x order) that beat the best before them, each with whether its gain is
    beyond the noise (:func:`hybrid.noise.significant`; None: no sd known). The first is not one."""
    out: list[tuple[float, float, bool | None]] = []
    top: float | None = None
    for x, y in zip(xs, ys, strict=True):
        if top is not None and objective.better(y, top):
            out.append((x, y, significant(y - top, sd)))
        if top is None or objective.better(y, top):
            top = y
    return out


def _progress_panel(ax: Axes, strip: Axes | None, points: Sequence[ProgressPoint], xkey: str, objective: Objective,
                    baseline: float | None, colors: dict[str, Any], markers: dict[str, str],
                    limits: tuple[float, float], noise: ProgressNoise | None = None) -> None:
    def x_of(p: ProgressPoint) -> float:
        return float(getattr(p, xkey))

    pts = sorted((p for p in points if getattr(p, xkey) is not None), key=lambda p: (x_of(p), p.seq))
    ok = [(p, p.value) for p in pts if p.value is not None]
    for hw, src in sorted({(p.hardware, p.source) for p, _ in ok}):
        sel = [(x_of(p), v) for p, v in ok if p.hardware == hw and p.source == src]
        ax.scatter([x for x, _ in sel], [v for _, v in sel], s=22, color=colors[hw], marker=markers[src],
                   alpha=0.75, linewidths=0, zorder=3)
    if strip is not None:  # failures in their own strip above the results
        failed = [p for p in pts if p.value is None]
        strip.scatter([x_of(p) for p in failed], [0.0] * len(failed), marker="x", s=26,
                      color=[colors[p.hardware] for p in failed])
        strip.set_yticks([])
        strip.tick_params(labelbottom=False)
        strip.grid(True, axis="x", alpha=0.3)
    sd = noise.sd if noise is not None else None
    if ok:
        bx, by = _best_so_far([x_of(p) for p, _ in ok], [v for _, v in ok], objective)
        right = max(x_of(p) for p in pts)
        ax.step([*bx, right], [*by, by[-1]], where="post", color="black", linewidth=1.6, zorder=5)
        if sd:  # the band a result must leave to be an improvement beyond the noise
            band = SIGNIFICANT_SIGMAS * sd
            ax.fill_between([*bx, right], [y - band for y in [*by, by[-1]]], [y + band for y in [*by, by[-1]]],
                            step="post", color="black", alpha=0.1, linewidth=0, zorder=1)
        for x, y, beyond in new_bests([x_of(p) for p, _ in ok], [v for _, v in ok], objective, sd):
            hollow = beyond is False  # within noise: hollow; beyond it, or no sd known: filled
            ax.scatter([x], [y], s=120, marker="*", zorder=6, linewidths=1.2, edgecolors="black",
                       facecolors="none" if hollow else "black")
    if noise is not None and noise.recommended is not None:
        ax.axhline(noise.recommended, color=_GOOD, linestyle="-.", linewidth=1.4, zorder=4)
        if noise.recommended_sd:
            ax.axhspan(noise.recommended - noise.recommended_sd, noise.recommended + noise.recommended_sd,
                       color=_GOOD, alpha=0.15, linewidth=0, zorder=1)
    if baseline is not None:
        ax.axhline(baseline, color="#555555", linestyle="--", linewidth=1.0, zorder=2)
    ax.set_ylim(*limits)
    off = sum(1 for _, v in ok if not limits[0] <= v <= limits[1])
    if off:
        ax.text(0.01, 0.02, f"{off} result(s) off the chart", transform=ax.transAxes, fontsize=8, color="#555555")
    ax.grid(True, alpha=0.3)


def plot_progress(path: Path, points: Sequence[ProgressPoint], objective: Objective, baseline: float | None,
                  noise: ProgressNoise | None = None) -> bool:
    """Best-so-far against experiment number and against wall-clock hours; every result a dot
    (colour: hardware, marker: source), failures as x at the top edge, the baseline dashed. With
    ``noise``: a band of ±2 sd around the best so far, each new best a star, hollow when it beat the
    best before it by less than 2 sd (within noise), and the recommendation's mean ± sd in green."""
    fig = progress_figure(points, objective, baseline, noise)
    if fig is None:
        return False
    _save(fig, path)
    return True


def _noise_handles(noise: ProgressNoise | None) -> list[Artist]:
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    star = {"linestyle": "", "marker": "*", "markersize": 11, "markeredgecolor": "black"}
    if noise is None or noise.sd is None:
        handles: list[Artist] = [Line2D([], [], markerfacecolor="black", label="new best (noise not measured: not judged)",
                                        **star)]  # type: ignore[arg-type]
    else:
        k = f"{SIGNIFICANT_SIGMAS:g} sd"
        handles = [Patch(facecolor="black", alpha=0.1, label=f"best so far ± {k} (sd {fmt_value(noise.sd, 3)}"
                         + (f" on {noise.hardware})" if noise.hardware else ")")),
                   Line2D([], [], markerfacecolor="black", label=f"new best beyond noise (> {k})", **star),  # type: ignore[arg-type]
                   Line2D([], [], markerfacecolor="none", label=f"new best within noise (< {k})", **star)]  # type: ignore[arg-type]
    if noise is not None and noise.recommended is not None:
        sd = "" if noise.recommended_sd is None else f" ± {fmt_value(noise.recommended_sd, 3)}"
        runs = f"{noise.recommended_n} run{'s' * (noise.recommended_n != 1)}"
        handles.append(Line2D([], [], color=_GOOD, linestyle="-.", linewidth=1.4,
                              label=f"recommended: {fmt_value(noise.recommended)}{sd} ({runs}, "
                                    f"{'confirmed' if noise.confirmed else 'unconfirmed'})"))
    return handles


def progress_figure(points: Sequence[ProgressPoint], objective: Objective, baseline: float | None,
                    noise: ProgressNoise | None = None) -> Figure | None:
    """The figure :func:`plot_progress` writes (None: no points)."""
    quiet_matplotlib_logs()
    if not points:
        return None
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    hw = sorted({p.hardware for p in points})
    srcs = sorted({p.source for p in points})
    colors = _colors(hw)
    markers = {s: _MARKERS[i % len(_MARKERS)] for i, s in enumerate(srcs)}
    values = [p.value for p in points if p.value is not None]
    limits = _robust_limits(values, baseline, objective) if values else (0.0, 1.0)
    fig = _figure(12, 5.4)
    n_bad = len(points) - len(values)
    if n_bad:
        gs = fig.add_gridspec(2, 2, height_ratios=[1, 12])
        ax1, ax2 = fig.add_subplot(gs[1, 0]), fig.add_subplot(gs[1, 1])
        strips: list[Any] = [fig.add_subplot(gs[0, 0], sharex=ax1), fig.add_subplot(gs[0, 1], sharex=ax2)]
        strips[0].set_ylabel("failed", rotation=0, ha="right", va="center", fontsize=8)
    else:
        ax1, ax2 = fig.subplots(1, 2)
        strips = [None, None]
    ax2.sharey(ax1)
    _progress_panel(ax1, strips[0], points, "seq", objective, baseline, colors, markers, limits, noise)
    ax1.set_xlabel("experiment number")
    ax1.set_ylabel(f"{objective.metric} ({'lower' if objective.sign() > 0 else 'higher'} is better)")
    hours = [p.hours for p in points if p.hours is not None]
    if hours:
        scale, unit = (1.0, "hours") if max(hours) >= 2 else (60.0, "minutes")
        scaled = [replace(p, hours=None if p.hours is None else p.hours * scale) for p in points]
        _progress_panel(ax2, strips[1], scaled, "hours", objective, baseline, colors, markers, limits, noise)
        ax2.set_xlabel(f"{unit} since the campaign started")
    else:
        ax2.text(0.5, 0.5, "no finish times recorded", ha="center", va="center", transform=ax2.transAxes)
    fig.suptitle(f"Progress: {len(values)} results, {n_bad} failed")
    handles: list[Artist] = [Line2D([], [], color="black", linewidth=1.6, label="best so far")]
    if values:
        handles += _noise_handles(noise)
    if baseline is not None:
        handles.append(Line2D([], [], color="#555555", linestyle="--", label="baseline"))
    handles += [Patch(facecolor=colors[h], label=h) for h in hw]
    handles += [Line2D([], [], linestyle="", marker=markers[s], color="#444444", label=s) for s in srcs]
    if n_bad:
        handles.append(Line2D([], [], linestyle="", marker="x", color="#444444", label="failed"))
    fig.legend(handles=handles, loc="outside lower center", ncol=min(len(handles), 5), fontsize=8, frameon=False)
    return fig


def _bars(ax: Axes, bars: Sequence[Bar]) -> None:
    shown = list(reversed(bars[:12]))  # largest on top
    colors = [_NEUTRAL if b.better_when_higher is None else (_GOOD if b.better_when_higher else _BAD) for b in shown]
    y = np.arange(len(shown))
    ax.barh(y, [b.size for b in shown], color=colors)
    ax.set_yticks(y, [b.name for b in shown], fontsize=8)
    top = max((b.size for b in shown), default=1.0) or 1.0
    for i, b in enumerate(shown):
        ax.text(b.size + 0.02 * top, i, b.note, va="center", fontsize=7)
    ax.set_xlim(0, top * 1.45)
    ax.set_xlabel(shown[0].measure if shown else "")
    ax.set_title("main effects", fontsize=10)


def _slice(ax: Axes, s: Slice, metric: str) -> None:
    ax.fill_between(s.x, s.mean - 2 * s.sd, s.mean + 2 * s.sd, color="#4c72b0", alpha=0.2, linewidth=0)
    ax.plot(s.x, s.mean, color="#4c72b0", linewidth=1.5)
    if len(s.other_x):
        ax.scatter(s.other_x, s.other_y, s=10, color="#bbbbbb", linewidths=0)
    if len(s.obs_x):
        ax.scatter(s.obs_x, s.obs_y, s=12, color="#222222", linewidths=0)
    ax.axvline(s.at, color=_GOOD, linestyle=":", linewidth=1.2)
    if s.log:
        ax.set_xscale("log")
    lo, hi = float(np.min(s.mean - 2 * s.sd)), float(np.max(s.mean + 2 * s.sd))
    if len(s.obs_y) >= 5:  # the bulk of the observed results too (they vary in the other parameters)
        lo, hi = min(lo, float(np.quantile(s.obs_y, 0.1))), max(hi, float(np.quantile(s.obs_y, 0.9)))
    pad = (hi - lo) * 0.15 or max(abs(hi) * 0.01, 1e-9)
    ax.set_ylim(lo - pad, hi + pad)
    ax.set_xlabel(s.param)
    ax.set_ylabel(metric)
    ax.set_title(f"GP slice on {s.hardware} (others at best)", fontsize=9)
    ax.grid(True, alpha=0.3)


def plot_effects(path: Path, bars: Sequence[Bar], slices: Sequence[Slice], objective: Objective) -> bool:
    """Main-effect bars (green: higher is better, red: higher is worse, grey: an optimum inside the
    range or a categorical) beside the GP response slices (mean ± 2 sd, observed results as dots)."""
    quiet_matplotlib_logs()
    if not bars and not slices:
        return False
    panels = (1 if bars else 0) + len(slices)
    fig = _figure(4.2 * panels, 4.0)
    axes = np.atleast_1d(fig.subplots(1, panels))
    if bars:
        _bars(axes[0], bars)
    for ax, s in zip(axes[1 if bars else 0:], slices, strict=True):
        _slice(ax, s, objective.metric)
    _save(fig, path)
    return True


def plot_hardware(path: Path, series: Sequence[HardwareSeries], objective: Objective,
                  throughput_unit: str = "throughput") -> bool:
    """Per hardware label: the metric's distribution, and throughput (else duration). Needs 2+ labels."""
    quiet_matplotlib_logs()
    series = sorted(series, key=lambda s: s.label)
    if len(series) < 2:
        return False
    colors = _colors([s.label for s in series])
    fig = _figure(10, 4.2)
    ax1, ax2 = fig.subplots(1, 2)
    use_tput = any(s.throughput for s in series)
    for ax, key, label in ((ax1, "values", objective.metric),
                           (ax2, "throughput" if use_tput else "durations_s",
                            (throughput_unit or "throughput") if use_tput else "duration (s)")):
        data = [getattr(s, key) for s in series]
        pos = [i for i, d in enumerate(data) if d]
        if pos:
            ax.boxplot([data[i] for i in pos], positions=pos, widths=0.5, showfliers=False)
        rng = np.random.default_rng(0)
        for i, (s, d) in enumerate(zip(series, data, strict=True)):
            if d:
                ax.scatter(i + rng.uniform(-0.15, 0.15, len(d)), d, s=10, color=colors[s.label], alpha=0.6,
                           linewidths=0)
        ax.set_xticks(range(len(series)), [s.label for s in series], fontsize=8)
        ax.set_xlim(-0.6, len(series) - 0.4)
        ax.set_ylabel(label)
        ax.grid(True, axis="y", alpha=0.3)
    ax1.set_title(f"{objective.metric} by hardware", fontsize=10)
    ax2.set_title("throughput by hardware" if use_tput else "duration by hardware", fontsize=10)
    _save(fig, path)
    return True


def _clean(points: Sequence[tuple[Any, Any]]) -> tuple[np.ndarray, np.ndarray]:
    """Finite points with a fraction in [0, 1], sorted by fraction (a curve's odd points left out)."""
    ok = []
    for f, v in points:
        try:
            f, v = float(f), float(v)
        except (TypeError, ValueError):
            continue
        if np.isfinite(f) and np.isfinite(v) and 0.0 <= f <= 1.0:
            ok.append((f, v))
    ok.sort()
    return np.array([f for f, _ in ok], dtype=float), np.array([v for _, v in ok], dtype=float)


def _curve_limits(curves: Sequence[tuple[CurveSeries, np.ndarray, np.ndarray]]) -> tuple[float, float]:
    """The bulk of the curves and all of the best run's, not a diverged run's 1e6 (either way)."""
    values = np.concatenate([vals for _, _, vals in curves])
    q05, q95 = float(np.quantile(values, 0.05)), float(np.quantile(values, 0.95))
    spread = q95 - q05
    lo = float(values.min()) if values.min() >= q05 - 2 * spread else q05
    hi = float(values.max()) if values.max() <= q95 + 2 * spread else q95
    for s, _, vals in curves:
        if s.kind == "best":
            lo, hi = min(lo, float(vals.min())), max(hi, float(vals.max()))
    pad = (hi - lo) * 0.08 or max(abs(hi) * 0.01, 1e-9)
    return lo - pad, hi + pad


def plot_curves(path: Path, series: Sequence[CurveSeries], signal: str) -> bool:
    """The signal against the fraction of the budget: finished runs thin grey, the best run green,
    pruned runs orange ending with an x where they were stopped. Needs one curve with a point."""
    quiet_matplotlib_logs()
    curves = [(s, *_clean(s.points)) for s in sorted(series, key=lambda s: (s.kind == "best", s.exp_id))]
    curves = [c for c in curves if c[1].size]
    if not curves:
        return False
    from matplotlib.lines import Line2D

    fig = _figure(9, 5.0)
    ax = fig.subplots()
    style = {"finished": (_NEUTRAL, 0.8, 0.5, 2), "pruned": (_PRUNED, 1.2, 0.9, 3), "best": (_GOOD, 2.2, 1.0, 4)}
    counts = {k: 0 for k in style}
    for s, fr, vals in curves:
        color, width, alpha, z = style.get(s.kind, style["finished"])
        counts[s.kind if s.kind in style else "finished"] += 1
        ax.plot(fr, vals, color=color, linewidth=width, alpha=alpha, zorder=z)
        if s.kind == "pruned":
            ax.scatter([fr[-1]], [vals[-1]], marker="x", s=40, color=color, zorder=z + 1)
    ax.set_ylim(*_curve_limits(curves))
    ax.set_xlim(0.0, 1.0)
    ax.set_xlabel("fraction of the budget")
    ax.set_ylabel(signal)
    ax.grid(True, alpha=0.3)
    best = next((s.exp_id for s, _, _ in curves if s.kind == "best"), "")
    labels = {"finished": "finished runs", "best": f"best run {best}", "pruned": "pruned runs (x: where stopped)"}
    handles = [Line2D([], [], color=style[k][0], linewidth=style[k][1], marker="x" if k == "pruned" else None,
                      label=labels[k] if k == "best" else f"{labels[k]} ({n})") for k, n in counts.items() if n]
    ax.legend(handles=handles, loc="upper right", fontsize=8, frameon=False)
    ax.set_title(f"Learning curves: {signal}", fontsize=10)
    _save(fig, path)
    return True
