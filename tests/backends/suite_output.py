"""Conformance checks of following a job's output through faults (issue 15), for every backend.

``OutputFaultSuite`` is ``BackendSuite`` plus the two faults a campaign that prunes on learning
curves meets; a backend's test class subclasses it instead of ``BackendSuite``:

- the job's log cannot be read for a while (a shared file system lagging behind the node that
  runs the job, the file appearing late; for SkyPilot, the log fetch from its API server
  failing): ``read_output`` answers ``("", offset)`` at once and never raises, ``poll`` goes on
  as if nothing happened, and once the log can be read again every line comes exactly once, in
  order;
- the job is cancelled while it prints its final ``name: value`` lines: it ends CANCELLED, is
  reported once, and its output holds the complete lines it wrote, the half line it was in the
  middle of (if any) left unterminated, with nothing of anybody else's glued to it.

Hooks: ``log_unreadable`` makes the first fault (default: the log in the workdir is moved away
while the job's open file goes on growing there; ``not_a_file`` puts a directory in its place, an
unreadable path even for root, whom no permission stops); ``job_dir`` is the directory the job
runs in (where it leaves its marker files).
"""

from __future__ import annotations

import contextlib
import shlex
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from backends.base import Backend, Finished, JobHandle, JobState, RunSpec
from hybrid.types import Experiment
from tests.backends.suite import BackendSuite, wait_until

# Progress points 0.1-0.3; a wait for `release`; 0.4-0.6 and the marker `wrote`; a wait for
# `release` again; 0.7-0.9 and the final metric.
STAGED = """
import os, time
def wait_for_release():
    for _ in range(1200):
        if os.path.exists('release'):
            os.remove('release')
            return
        time.sleep(0.05)
def points(first, last):
    for i in range(first, last + 1):
        print(f'progress: 0.{i} train_loss: {10 - i}.25')
open('started', 'w').close()
points(1, 3)
wait_for_release()
points(4, 6)
open('wrote', 'w').close()
wait_for_release()
points(7, 9)
print('val_bpb: 0.75')
"""
STAGED_LINES = [f"progress: 0.{i} train_loss: {10 - i}.25\n" for i in range(1, 10)] + ["val_bpb: 0.75\n"]

# Progress points, then 1000 final `name: value` lines, each written in two halves with a pause in
# the middle of the line (os.write: no buffer between the job and its log). A cancel lands, most
# likely, in the middle of a line.
FINAL_LINES = """
import os, time
for i in range(1, 4):
    os.write(1, f'progress: 0.{i} train_loss: {10 - i}.5\\n'.encode())
open('started', 'w').close()
for i in range(1000):
    os.write(1, f'metric_{i:04d}: {i}'.encode())
    time.sleep(0.03)
    os.write(1, f'.{i % 10}5\\n'.encode())
    time.sleep(0.002)
"""
FINAL_TEXT = "".join(f"progress: 0.{i} train_loss: {10 - i}.5\n" for i in range(1, 4)) + "".join(
    f"metric_{i:04d}: {i}.{i % 10}5\n" for i in range(1000))


class Follower:
    """Follows a job the way the campaign does: ``poll``, then ``read_output`` from the offset the
    last read returned. Every read is timed: none may take longer than ``bound_s``."""

    def __init__(self, backend: Backend, handle: JobHandle, bound_s: float) -> None:
        self.backend, self.handle, self.bound_s = backend, handle, bound_s
        self.text, self.offset, self.reads = "", 0, 0
        self.ended: list[Finished] = []

    def read(self) -> str:
        self.ended.extend(self.backend.poll())
        began = time.monotonic()
        text, offset = self.backend.read_output(self.handle, self.offset)
        took = time.monotonic() - began
        assert took < self.bound_s, f"read_output took {took:.2f} s (bound {self.bound_s} s)"
        assert offset == self.offset + len(text.encode()), (self.offset, text, offset)
        self.text, self.offset, self.reads = self.text + text, offset, self.reads + 1
        return text

    def lines(self, n: int, timeout_s: float, what: str) -> None:
        wait_until(lambda: self.read() is not None and self.text.count("\n") >= n, timeout_s, what)

    def to_the_end(self) -> None:
        while self.read():
            pass


class OutputFaultSuite(BackendSuite):
    """``BackendSuite`` plus the output faults. Not collected itself (no ``Test`` prefix)."""

    read_bound_s: float = 1.0  # the longest one read_output may take, on a busy machine
    unreadable_s: float = 0.5  # how long a fault lasts at least (reads keep coming meanwhile)
    cancel_adds_lines: bool = False  # after a cancelled job's output come lines of the backend's own

    # ---- hooks -----------------------------------------------------------------------------
    @contextlib.contextmanager
    def log_unreadable(self, backend: Backend, handle: JobHandle, fault: str) -> Iterator[None]:
        """While inside: the job's log cannot be read. ``missing``: the file is not there (a
        shared file system that shows it late); ``not_a_file``: what is there is not readable
        as a file. The job's open file goes on growing where it was moved, and comes back."""
        log = handle.workdir / handle.log_name
        aside = log.with_name(log.name + ".lagging")
        log.rename(aside)
        if fault == "not_a_file":
            log.mkdir()
        try:
            yield
        finally:
            if fault == "not_a_file":
                log.rmdir()
            aside.rename(log)

    def job_dir(self, workdir: Path) -> Path:
        """Where the job runs: its marker files appear there."""
        return workdir

    # ---- helpers ---------------------------------------------------------------------------
    def python_job(self, backend: Backend, tmp_path: Path, name: str, code: str) -> tuple[Experiment, RunSpec]:
        """``code`` run by this Python. ``name``: unique per test (remote workdirs outlive tests)."""
        return self.job(backend, tmp_path, name, f"{shlex.quote(sys.executable)} -c {shlex.quote(code)}")

    def assert_unreadable_for_a_while(self, follower: Follower, job_running: bool) -> None:
        """Reads (and polls) for ``unreadable_s``: nothing comes, the offset stays."""
        offset, text = follower.offset, follower.text
        until = time.monotonic() + self.unreadable_s
        while time.monotonic() < until or follower.reads < 3:
            assert follower.read() == ""
            time.sleep(0.02)
        assert (follower.offset, follower.text) == (offset, text)
        if job_running:
            assert follower.ended == [], "the fault changed what poll says"

    # ---- fault 1: a log that cannot be read for a while ----------------------------------------------
    @pytest.mark.parametrize("fault", ["missing", "not_a_file"])
    def test_a_log_that_cannot_be_read_for_a_while_loses_and_repeats_no_line(
        self, backend: Backend, tmp_path: Path, fault: str
    ) -> None:
        exp, spec = self.python_job(backend, tmp_path, f"lagging-{fault}", STAGED)
        handle = backend.submit(exp, spec)
        follower = Follower(backend, handle, self.read_bound_s)
        follower.lines(3, self.output_timeout_s, "the first three points")
        assert follower.text == "".join(STAGED_LINES[:3]) and follower.ended == []
        with self.log_unreadable(backend, handle, fault):
            self.release(spec.workdir)  # the job prints three more lines meanwhile
            wrote = self.job_dir(spec.workdir) / "wrote"
            wait_until(lambda: follower.read() == "" and wrote.exists(), self.job_timeout_s, "the next lines")
            self.assert_unreadable_for_a_while(follower, job_running=True)
        follower.lines(6, self.output_timeout_s, "the lines printed while the log could not be read")
        assert follower.text == "".join(STAGED_LINES[:6]) and follower.ended == []
        self.release(spec.workdir)
        wait_until(lambda: follower.read() is not None and bool(follower.ended), self.job_timeout_s, "the end")
        follower.to_the_end()
        [f] = follower.ended
        assert (f.state, f.exit_code) == (JobState.EXITED, 0), f
        assert backend.poll() == []
        assert follower.text == "".join(STAGED_LINES) and f.log == follower.text

    @pytest.mark.parametrize("fault", ["missing", "not_a_file"])
    def test_a_job_that_ends_while_its_log_cannot_be_read_is_reported_and_its_lines_come_after(
        self, backend: Backend, tmp_path: Path, fault: str
    ) -> None:
        """The end is reported as usual (Finished.log: what could be read then, maybe nothing);
        the lines read_output could not give yet come once the log can be read."""
        exp, spec = self.python_job(backend, tmp_path, f"ends-lagging-{fault}", STAGED)
        handle = backend.submit(exp, spec)
        follower = Follower(backend, handle, self.read_bound_s)
        follower.lines(3, self.output_timeout_s, "the first three points")
        with self.log_unreadable(backend, handle, fault):
            self.release(spec.workdir)
            wait_until(lambda: (self.job_dir(spec.workdir) / "wrote").exists(), self.job_timeout_s, "the next lines")
            self.release(spec.workdir)
            wait_until(lambda: self.job_has_ended(handle.job_id, exp), self.job_timeout_s, "the job to end")
            self.assert_unreadable_for_a_while(follower, job_running=False)  # poll must not raise either
        wait_until(lambda: follower.read() is not None and bool(follower.ended), self.job_timeout_s, "the end")
        follower.to_the_end()
        [f] = follower.ended
        assert (f.state, f.exit_code) == (JobState.EXITED, 0), f
        assert backend.poll() == []
        assert follower.text == "".join(STAGED_LINES)
        assert f.log in ("", follower.text), f.log

    # ---- fault 2: a run killed while it writes its final lines ----------------------------------------
    def test_a_job_cancelled_while_it_prints_its_final_lines_keeps_the_complete_ones(
        self, backend: Backend, tmp_path: Path
    ) -> None:
        exp, spec = self.python_job(backend, tmp_path, "killed-at-the-end", FINAL_LINES)
        handle = backend.submit(exp, spec)
        follower = Follower(backend, handle, self.read_bound_s)
        follower.lines(8, self.output_timeout_s, "the job to print its first final lines")
        assert follower.ended == []
        seen = follower.text
        backend.cancel(handle.job_id)
        [f] = self.finish(backend)  # reported once
        assert (f.job_id, f.state, f.exit_code) == (handle.job_id, JobState.CANCELLED, None), f
        follower.to_the_end()
        text = follower.text
        assert text.startswith(seen) and len(text) < len(FINAL_TEXT), "not cut short by the cancel"
        for output in (text, f.log):
            assert_whole_lines_then_maybe_half_of_one(output)
        if not self.cancel_adds_lines:  # only the job's own bytes, in order
            assert FINAL_TEXT.startswith(text), text[-300:]
            assert f.log == text, (f.log[-300:], text[-300:])


def assert_whole_lines_then_maybe_half_of_one(output: str) -> None:
    """The lines of FINAL_LINES's job in ``output`` are its first lines, each whole, in order; only
    the last piece of ``output``, with no newline after it, may be half of the next one."""
    expected = FINAL_TEXT.split("\n")
    pieces = output.split("\n")
    ours = [i for i, piece in enumerate(pieces) if piece.startswith(("progress: ", "metric_"))]
    got = [pieces[i] for i in ours]
    half = ours and ours[-1] == len(pieces) - 1 and got[-1] != expected[len(got) - 1]
    whole = got[:-1] if half else got
    assert whole == expected[: len(whole)], [a for a, b in zip(whole, expected, strict=False) if a != b][:3]
    if half:
        assert expected[len(got) - 1].startswith(got[-1]), got[-1]
