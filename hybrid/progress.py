"""What the user sees while a campaign runs: a live rich view on a terminal, log lines elsewhere."""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from hybrid.config import ProgressMode
from hybrid.history import fmt_params, fmt_value, improvement_pct
from hybrid.types import Experiment, ExperimentState, Objective, Result


@dataclass
class View:
    """A snapshot of the campaign for display."""

    name: str
    objective: Objective
    workers: Sequence[tuple[str, str]]  # (name, hardware)
    running: dict[str, Experiment] = field(default_factory=dict)  # worker name -> experiment
    best: Experiment | None = None
    baseline: float | None = None
    n_created: int = 0
    n_done: int = 0
    n_failed: int = 0
    spend_usd: float = 0.0
    elapsed_s: float = 0.0
    stopping: str | None = None
    recommended: str | None = None  # the confirmed recommendation so far: "1.0032 ± 0.001 (2 runs: e0010, e0012)"


def _fmt(v: float | None) -> str:
    return "-" if v is None else fmt_value(v)


def improvement(best: float | None, baseline: float | None, objective: Objective) -> str:
    pct = improvement_pct(best, baseline, objective)
    return "" if pct is None else f" ({pct:+.2f}% vs baseline {fmt_value(baseline)})"


class Progress:
    """``mode``: auto | rich | plain | none."""

    def __init__(self, mode: str = "auto", console: Any = None) -> None:
        mode = ProgressMode(mode)  # checked with the config (hybrid.config); this keeps a direct caller honest
        if mode is ProgressMode.auto:
            mode = ProgressMode.rich if sys.stdout.isatty() else ProgressMode.plain
        self.mode = mode
        self._console = console  # a rich Console (tests); None: the terminal
        self._live = None
        self._last_refresh = 0.0

    # ---- lifecycle ---------------------------------------------------------------------------
    def start(self, view: View) -> None:
        if self.mode == "rich":
            from rich.live import Live

            self._live = Live(self._render(view), console=self._console, auto_refresh=False, transient=False)
            self._live.start()

    def stop(self, view: View | None = None) -> None:
        if self._live is not None:
            if view is not None:
                self._live.update(self._render(view), refresh=True)
            self._live.stop()
            self._live = None

    # ---- events ------------------------------------------------------------------------------
    def message(self, text: str) -> None:
        if self.mode == "none":
            return
        if self._live is not None:
            self._live.console.print(text)
        else:
            print(f"[{time.strftime('%H:%M:%S')}] {text}", flush=True)

    def submitted(self, exp: Experiment) -> None:
        if self.mode == "plain":
            params = fmt_params(exp.params, digits=4) if exp.params else ""
            self.message(f"{exp.id} -> {exp.worker} ({exp.hardware}) [{exp.source}] {params}")

    def finished(self, exp: Experiment, result: Result, view: View) -> None:
        metric = view.objective.metric
        value = result.value(metric)
        if result.state is ExperimentState.DONE:
            what = f"{metric}={_fmt(value)}"
        elif result.state is ExperimentState.PRUNED:
            what = result.reason  # "pruned at 40% of its budget ...": stopped early, not a failure
        else:
            what = f"{result.state.name} ({result.reason})"
        best = view.best.value(metric) if view.best else None
        self.message(
            f"{exp.id} {what} in {result.duration_s:.1f}s on {exp.worker} | best {_fmt(best)}"
            f"{' (' + view.best.id + ')' if view.best else ''}"
            f"{' | recommended ' + view.recommended if view.recommended else ''} | done {view.n_done} failed {view.n_failed}"
        )

    def tick(self, view: View, force: bool = False) -> None:
        if self._live is None:
            return
        now = time.monotonic()
        if force or now - self._last_refresh >= 0.25:
            self._live.update(self._render(view), refresh=True)
            self._last_refresh = now

    # ---- rendering ---------------------------------------------------------------------------
    def _render(self, view: View):
        from rich.console import Group
        from rich.table import Table
        from rich.text import Text

        metric = view.objective.metric
        best = view.best.value(metric) if view.best else None
        head = Text.assemble(
            (f"campaign {view.name}", "bold"),
            f"  best {metric} {_fmt(best)}{improvement(best, view.baseline, view.objective)}",
            f"  {'(' + view.best.id + ')' if view.best else ''}",
            f"  recommended {view.recommended}\n" if view.recommended else "\n",
            f"experiments {view.n_created} created, {view.n_done} done, {view.n_failed} failed"
            f"   spend ${view.spend_usd:.2f}   elapsed {view.elapsed_s / 60:.1f} min",
        )
        if view.stopping:
            wait = " (waiting for running experiments)" if view.running else ""
            head.append(f"\nstopping: {view.stopping}{wait}", style="yellow")
        table = Table(box=None, pad_edge=False)
        for col in ("worker", "hardware", "state", "experiment", "source", "elapsed"):
            table.add_column(col)
        now = time.time()
        for name, hardware in view.workers:
            exp = view.running.get(name)
            if exp is None:
                table.add_row(name, hardware, Text("idle", style="dim"), "", "", "")
            else:
                elapsed = f"{now - exp.started:.0f}s" if exp.started else ""
                table.add_row(name, hardware, Text("running", style="green"), exp.id, exp.source, elapsed)
        return Group(head, table)
