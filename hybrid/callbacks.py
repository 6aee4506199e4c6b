"""Hydra callbacks (the CLI layer: the only place that imports Hydra).

``CompareCallback`` is registered in conf/config.yaml under ``hydra.callbacks``: when a multirun
ends, it compares the sweep's strategies (:func:`hybrid.reports.compare_sweep`) in its sweep dir.
"""

from __future__ import annotations

import sys
from typing import Any

from hydra.experimental.callback import Callback

from hybrid.reports.compare import compare_sweep
from hybrid.reports.compare_render import summary_text

__all__ = ["CompareCallback"]


class CompareCallback(Callback):
    """When a multirun ends, compare its strategies in the sweep dir. A failure is one printed line;
    it never changes how the sweep ends."""

    def __init__(self) -> None:
        self.sweep_dir: str | None = None

    def on_multirun_start(self, config: Any, **kwargs: Any) -> None:
        try:  # resolved once, at the start, as the launcher does (the default name holds ${now:...})
            self.sweep_dir = str(config.hydra.sweep.dir)
        except Exception:  # resolved again at the end
            self.sweep_dir = None
        else:
            print(f"sweep dir: {self.sweep_dir} (its strategies are compared at the end; again with "
                  f"`hybrid compare {self.sweep_dir}`)", flush=True)

    def on_multirun_end(self, config: Any, **kwargs: Any) -> None:
        try:
            comparison, paths = compare_sweep(self.sweep_dir or str(config.hydra.sweep.dir))
            print(summary_text(comparison, paths), flush=True)
        except Exception as e:  # the sweep's own outcome must not depend on its report
            msg = " ".join(str(e).split()) or type(e).__name__
            print(f"compare: skipped ({type(e).__name__}: {msg}); run `hybrid compare <sweep dir>` to retry",
                  file=sys.stderr, flush=True)
