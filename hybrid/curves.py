"""The progress contract: learning-curve points a target prints while it runs.

A target reports progress with lines ``progress: <fraction of its budget in [0, 1]> <name>: <value>
[<name>: <value> ...]``, e.g. ``progress: 0.30 train_loss: 3.2104``; its final results stay the
plain ``name: value`` lines. ``ProgressReader`` reads a job's output incrementally (a log that grows
while the job runs, read in chunks that may end mid-line) and keeps the points a pruning rule can
trust: fractions in [0, 1] and rising; names well formed; a NaN or infinite value is left out of
its point (the point stays, the value is noted). Everything it refuses is counted with a reason,
never raised: a target's output is not the orchestrator's to crash on.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

from hybrid.types import ProgressPoint

__all__ = ["ProgressPoint", "ProgressReader"]

_LINE = re.compile(r"^\s*progress:\s*(?P<fraction>\S+)(?P<rest>.*)$")
_PAIR = re.compile(r"([A-Za-z_][\w./-]*):\s*(\S+)")
MAX_LINE = 4096  # a longer line is not a progress line (and is not buffered whole)


@dataclass
class ProgressReader:
    """Incremental reader of one job's output; ``feed`` returns the new accepted points."""

    points: list[ProgressPoint] = field(default_factory=list)
    rejected: list[str] = field(default_factory=list)  # one reason per refused line or value
    _partial: str = ""

    def feed(self, text: str) -> list[ProgressPoint]:
        lines = (self._partial + text).split("\n")
        self._partial = lines.pop()[-MAX_LINE:]  # an unfinished last line waits for its end
        out = []
        for line in lines:
            point = self._parse(line.rstrip("\r"))
            if point is not None:
                self.points.append(point)
                out.append(point)
        return out

    def flush(self) -> list[ProgressPoint]:
        """The job ended: its unfinished last line, if any, is read as it is."""
        text, self._partial = self._partial, ""
        return self.feed(text + "\n") if text else []

    @property
    def last_fraction(self) -> float | None:
        return self.points[-1].fraction if self.points else None

    def _parse(self, line: str) -> ProgressPoint | None:
        m = _LINE.match(line)
        if m is None or len(line) > MAX_LINE:
            return None  # any other output of the target
        try:
            fraction = float(m["fraction"])
        except ValueError:
            return self._refuse(f"{line.strip()!r}: the fraction {m['fraction']!r} is not a number")
        if not 0.0 <= fraction <= 1.0:  # NaN fails this too
            return self._refuse(f"{line.strip()!r}: the fraction {m['fraction']} is outside [0, 1]")
        last = self.last_fraction
        if last is not None and fraction <= last:
            return self._refuse(f"{line.strip()!r}: fraction {fraction:g} does not rise (last {last:g})")
        rest = m["rest"].strip()
        pairs = _PAIR.findall(rest)
        if not pairs or _PAIR.sub("", rest).strip():
            return self._refuse(f"{line.strip()!r}: expected '<name>: <value>' pairs after the fraction")
        values: dict[str, float] = {}
        for name, raw in pairs:
            try:
                v = float(raw)
            except ValueError:
                self.rejected.append(f"{line.strip()!r}: {name} {raw!r} is not a number")
                continue
            if not math.isfinite(v):
                self.rejected.append(f"{line.strip()!r}: {name} is {raw}, left out")
                continue
            values[name] = v
        return ProgressPoint(fraction, values)

    def _refuse(self, reason: str) -> None:
        self.rejected.append(reason)
        return None
