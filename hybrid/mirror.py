"""The tracker mirror: MLflow (or any Tracker) is fed from a background thread, so a slow
tracking server never slows dispatch, and a result is marked mirrored in the store only once the
tracker took it (an unmirrored result is sent again on resume)."""

from __future__ import annotations

import queue
import threading
from typing import Any

from hybrid.store import Store
from hybrid.tracking import Tracker
from hybrid.types import Experiment


class TrackerMirror(threading.Thread):
    """Feeds finished experiments to the tracker off the dispatch path, then marks them mirrored."""

    def __init__(self, tracker: Tracker, store: Store) -> None:
        super().__init__(name="hybrid-mirror", daemon=True)
        self.tracker, self.store = tracker, store
        self.q: queue.Queue[tuple[Any, ...] | None] = queue.Queue()

    def run(self) -> None:
        while (item := self.q.get()) is not None:
            if isinstance(item[0], Experiment):
                exp, result = item
                # Trackers never raise: they warn and go on. An unmirrored result is retried on resume.
                if self.tracker.log(exp, result):
                    self.store.mark_mirrored(exp.id)
            elif item[0] == "metrics":  # one paid proposer call (LLM tokens, latency...), one step each
                log_metrics = getattr(self.tracker, "log_metrics", None)
                if log_metrics is not None:
                    log_metrics(item[1], item[2])
            else:
                self.tracker.update(item[1])  # type: ignore[arg-type]

    def stop(self) -> None:
        self.q.put(None)
        self.join()
