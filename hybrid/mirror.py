"""The tracker mirror: MLflow (or any Tracker) is fed from a background thread, so a slow
tracking server never slows dispatch, and a result is marked mirrored in the store only once the
tracker took it (an unmirrored result is sent again on resume).

What the campaign sends is one of three small messages: :class:`ResultMsg` (a finished
experiment), :class:`SummaryMsg` (the campaign's summary metrics, on the parent run) and
:class:`MetricsMsg` (one paid proposer call: LLM tokens, latency..., one step each).
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from hybrid.store import Store
from hybrid.tracking import Tracker
from hybrid.types import Experiment, Result


@dataclass(frozen=True)
class ResultMsg:
    exp: Experiment
    result: Result


@dataclass(frozen=True)
class SummaryMsg:
    metrics: Mapping[str, Any]


@dataclass(frozen=True)
class MetricsMsg:
    metrics: Mapping[str, float]
    step: int


Message = ResultMsg | SummaryMsg | MetricsMsg


class TrackerMirror(threading.Thread):
    """Feeds finished experiments to the tracker off the dispatch path, then marks them mirrored."""

    def __init__(self, tracker: Tracker, store: Store) -> None:
        super().__init__(name="hybrid-mirror", daemon=True)
        self.tracker, self.store = tracker, store
        self._q: queue.Queue[Message | None] = queue.Queue()

    def send(self, msg: Message) -> None:
        self._q.put(msg)

    def run(self) -> None:
        while (msg := self._q.get()) is not None:
            if isinstance(msg, ResultMsg):
                # Trackers never raise: they warn and go on. An unmirrored result is retried on resume.
                if not msg.exp.curve:  # its learning curve, as the store holds it (step metrics)
                    msg.exp.curve = self.store.progress(msg.exp.id).get(msg.exp.id, [])
                if self.tracker.log(msg.exp, msg.result):
                    self.store.mark_mirrored(msg.exp.id)
            elif isinstance(msg, MetricsMsg):
                self.tracker.log_metrics(msg.metrics, msg.step)
            else:
                self.tracker.update(msg.metrics)

    def stop(self) -> None:
        self._q.put(None)
        self.join()
