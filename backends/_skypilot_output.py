"""A running SkyPilot job's log, mirrored into the experiment's own log file as it grows.

SkyPilot keeps a job's log on its cluster; the orchestrator sees it only by asking the API server
(``sky.tail_logs``), a round trip that returns the log's last N lines whole, not "what is new".
The backend asks at most once per ``progress_poll_s`` per running job, off the campaign's thread,
and ``OutputMirror`` appends the lines it had not seen yet to ``<workdir>/<log_name>``. That file
then grows like a local job's log: only appended to, never rewritten, so ``Backend.read_output``'s
default reads it by byte offset as for every other backend. When the job ends, its final log is
merged the same way.

Where the new lines start: a fetch that holds fewer lines than the tail asked for holds the whole
log (from SkyPilot's first streamed line), so the lines past the ones mirrored are new. A fetch
that lost its start is aligned on the last lines mirrored: the latest place they all occur, else
the fetch starting with the last few of them; if neither, more than a whole tail was printed since
the last fetch and all of it is new.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path

from backends._skypilot_tasks import clean_log

RECENT_LINES = 5  # mirrored lines remembered to find where a fetch that lost its start goes on
_READ_CHUNK = 1 << 16


def unseen_lines(lines: Sequence[str], seen: int, recent: Sequence[str], whole: bool) -> list[str]:
    """The lines of a fetched log not mirrored yet.

    ``lines``: the fetch's complete lines; ``seen``: how many lines the mirror holds; ``recent``:
    its last few; ``whole``: the fetch starts where the log starts (else it is a tail).
    """
    lines, recent = list(lines), list(recent)
    if whole:
        return lines[seen:]
    if not recent:
        return lines  # nothing mirrored yet
    k = len(recent)
    for end in range(len(lines), k - 1, -1):  # the mirror ends inside the tail
        if lines[end - k : end] == recent:
            return lines[end:]
    for j in range(min(k - 1, len(lines)), 0, -1):  # the tail starts inside the last lines mirrored
        if lines[:j] == recent[-j:]:
            return lines[j:]
    return lines  # more than a tail was printed since the mirror's end: all of it is new


def is_whole(raw: str, tail_lines: int) -> bool:
    """Whether a ``tail_logs(tail=tail_lines)`` answer holds the whole log: it printed fewer lines
    than it was allowed to (0: no limit)."""
    return tail_lines <= 0 or raw.count("\n") < tail_lines


class OutputMirror:
    """The mirror of one job's log at ``path``. Thread-safe: fetches land on a helper thread while
    the backend merges the final log on the campaign's."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._seen: int | None = None  # complete lines in the file; None: not counted yet
        self._recent: list[str] = []
        self._closed = False

    def add_fetch(self, raw: str, tail_lines: int) -> None:
        """A fetch of the running job's log (SkyPilot's raw text, asked with ``tail_lines``).

        Only whole lines are taken (an unfinished one may hold half of SkyPilot's prefix or of a
        colour code, which ``clean_log`` cannot strip yet), and blank lines at the end wait for
        the next line: the blank line the run script prints before its exit line is not part of
        the final log."""
        whole = is_whole(raw, tail_lines)
        text, _ = clean_log(raw[: raw.rfind("\n") + 1])
        self._add(text.split("\n")[:-1], "", whole, final=False)

    def add_final(self, log: str, whole: bool) -> None:
        """The job ended: its final (cleaned) log; nothing is added after this."""
        lines = log.split("\n")
        partial = lines.pop()
        self._add(lines, partial, whole, final=True)

    def _add(self, lines: list[str], partial: str, whole: bool, final: bool) -> None:
        with self._lock:
            if self._closed or not self._load():
                return
            assert self._seen is not None
            new = unseen_lines(lines, self._seen, self._recent, whole)
            if not final:
                while new and not new[-1].strip():
                    new.pop()
            text = "".join(line + "\n" for line in new) + (partial if final else "")
            try:
                if text:
                    with open(self.path, "a", encoding="utf-8", errors="replace") as f:
                        f.write(text)
            except OSError:
                return  # nothing counted as mirrored: the next fetch brings the same lines
            self._seen += len(new)
            self._recent = (self._recent + new)[-RECENT_LINES:]
            self._closed = final

    def _load(self) -> bool:
        """Count the lines already in the file: written by an earlier session of the campaign,
        which this one resumed."""
        if self._seen is not None:
            return True
        seen, tail = 0, b""
        try:
            with open(self.path, "rb") as f:
                while chunk := f.read(_READ_CHUNK):
                    seen += chunk.count(b"\n")
                    tail = (tail + chunk)[-_READ_CHUNK:]
        except FileNotFoundError:
            pass
        except OSError:
            return False
        complete = tail[: tail.rfind(b"\n") + 1].decode("utf-8", errors="replace").split("\n")[:-1]
        self._seen, self._recent = seen, complete[-RECENT_LINES:]
        return True
