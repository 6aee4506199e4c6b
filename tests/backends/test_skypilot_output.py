"""The SkyPilot backend's log fetches failing or hanging for a while (issue 15), offline.

A SkyPilot job's log reaches the orchestrator only through the API server (``sky.tail_logs``):
these run the backend against ``FakeSky`` whose fetches fail or hang, and check what the
campaign sees: ``read_output`` answers at once with nothing new, ``poll`` goes on, and once the
fetches work again every line comes exactly once. The same faults with the real SDK and API
server: ``TestSkyPilotE2E`` (``pytest -m skypilot_e2e``), through ``suite_output``.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

from backends.base import JobState
from tests.backends.fake_skypilot import FakeSky
from tests.backends.suite import wait_until
from tests.backends.test_skypilot import Follow, make_backend, needs_sky, started, submit


def final_fetches(fake: FakeSky) -> int:
    """Fetches of the ended job's final log so far."""
    return sum(1 for _, status in fake.log_fetches if status == "SUCCEEDED")


@needs_sky
def test_an_ended_jobs_log_that_cannot_be_fetched_for_a_while_is_fetched_again_before_its_end_is_reported(
    tmp_path: Path,
) -> None:
    """Was: the first failed fetch of the final log made it the end's log: the lines printed since
    the last fetch of the running log (the final metric among them) were lost, and the result
    crashed without its metric."""
    fake = FakeSky()
    backend = make_backend(fake, progress_poll_s=0.01)
    submit(backend, tmp_path, "e0001")
    started(backend, tmp_path, "e0001")
    follow = Follow(backend)
    fake.write("e0001", "progress: 0.1 train_loss: 3.0")
    follow.until([0.1], "the first point")
    fake.logs_fail = True
    fake.write("e0001", "progress: 0.5 train_loss: 2.5")
    fake.end("e0001", "SUCCEEDED", "val_bpb: 0.99", exit_code=0)
    wait_until(lambda: follow.fractions() == [0.1] and final_fetches(fake) >= 3, 5, "failed fetches of the final log")
    assert follow.ended == [] and backend.running() != []  # ended, not reported without its log yet
    fake.logs_fail = False
    f = follow.to_the_end()
    expected = "progress: 0.1 train_loss: 3.0\nprogress: 0.5 train_loss: 2.5\nval_bpb: 0.99\n"
    assert (f.state, f.exit_code, f.log) == (JobState.EXITED, 0, expected)
    assert [p.fraction for p in follow.reader.points] == [0.1, 0.5]
    assert (tmp_path / "exps" / "e0001" / "run.log").read_text() == expected  # each line once


@needs_sky
def test_a_final_log_that_cannot_be_fetched_at_all_is_given_up_after_a_while(tmp_path: Path) -> None:
    fake = FakeSky()
    backend = make_backend(fake, progress_poll_s=0.01)
    backend.final_log_retry_s = 0.3  # type: ignore[attr-defined]
    submit(backend, tmp_path, "e0001")
    started(backend, tmp_path, "e0001")
    follow = Follow(backend)
    fake.write("e0001", "progress: 0.1 train_loss: 3.0")
    follow.until([0.1], "the first point")
    fake.logs_fail = True
    fake.end("e0001", "SUCCEEDED", "val_bpb: 0.99", exit_code=0)
    began = time.monotonic()
    f = follow.to_the_end()
    assert time.monotonic() - began >= 0.3 and final_fetches(fake) >= 2
    assert (f.state, f.exit_code) == (JobState.EXITED, 0)  # SkyPilot's status still says how it ended
    assert f.log.startswith("(the log could not be fetched for 0.3 s: logs of job 1 on cluster demo-w01")
    log = (tmp_path / "exps" / "e0001" / "run.log").read_text()
    assert log.startswith("progress: 0.1 train_loss: 3.0\n(the log could not be fetched for 0.3 s"), log


@needs_sky
def test_log_fetches_that_hang_block_neither_read_output_nor_poll(tmp_path: Path) -> None:
    """A fetch that hangs (an API server or a cluster that does not answer for a while): of the
    running log, then of the final one on the status thread."""
    fake = FakeSky()
    backend = make_backend(fake, progress_poll_s=0.01)
    submit(backend, tmp_path, "e0001")
    started(backend, tmp_path, "e0001")
    follow = Follow(backend)
    fake.write("e0001", "progress: 0.1 train_loss: 3.0")
    follow.until([0.1], "the first point")
    fake.logs_gate = threading.Event()
    fake.write("e0001", "progress: 0.5 train_loss: 2.5")
    wait_until(lambda: follow.fractions() is not None and len(fake.log_fetches) >= 2, 5, "a fetch to hang")
    fake.end("e0001", "SUCCEEDED", "val_bpb: 0.99", exit_code=0)
    until = time.monotonic() + 0.5
    while time.monotonic() < until:
        began = time.monotonic()
        assert follow.fractions() == [0.1]
        assert time.monotonic() - began < 0.1, "poll or read_output waited for a fetch"
    assert follow.ended == []
    fake.logs_gate.set()
    f = follow.to_the_end()
    assert (f.state, f.exit_code) == (JobState.EXITED, 0)
    assert [p.fraction for p in follow.reader.points] == [0.1, 0.5] and follow.reader.rejected == []
    expected = "progress: 0.1 train_loss: 3.0\nprogress: 0.5 train_loss: 2.5\nval_bpb: 0.99\n"
    assert (tmp_path / "exps" / "e0001" / "run.log").read_text() == expected
