"""The local backend's process identity and trees come from psutil, never from /proc.

macOS laptops have no /proc, so nothing of the backend or its job runner may read it; psutil is
the one source (on Linux psutil itself reads /proc, which is allowed). Also: job ids written
before psutil still re-attach, a recycled pid is not taken for our runner, and a process that
left the job's process group (``setsid``) is still killed with the tree, whether the job ends,
times out or is cancelled, and however it detached (a double fork, a new detached process
started in answer to SIGTERM, a chain of forks racing the runner's listing of the tree).
"""

from __future__ import annotations

import os
import shlex
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psutil
import pytest

import backends.local
from backends.base import JobState, RunSpec
from backends.local import LocalBackend
from tests.backends.suite import (
    DETACHED,
    GATE,
    TREE,
    Detached,
    make_experiment,
    wait_until,
)

_WATCHED = ("open", "os.listdir", "os.scandir")  # audit events of reading a file or a directory
_proc_reads: list[str] | None = None  # while recording: /proc paths read outside psutil


def _is_proc(path: object) -> bool:
    try:
        text = os.fsdecode(path)  # type: ignore[arg-type]
    except TypeError:  # a file descriptor
        return False
    return text == "/proc" or text.startswith("/proc/")


def _audit(event: str, args: tuple[Any, ...]) -> None:
    if _proc_reads is None or event not in _WATCHED or not args or not _is_proc(args[0]):
        return
    frame = sys._getframe(1)
    while frame is not None:
        if str(frame.f_globals.get("__name__", "")).split(".")[0] == "psutil":
            return  # psutil is allowed its /proc (that is how it works on Linux)
        frame = frame.f_back
    _proc_reads.append(os.fsdecode(args[0]))


_hook_installed = False


@contextmanager
def proc_reads_recorded() -> Iterator[list[str]]:
    """Record every /proc path this process reads outside psutil (an audit hook cannot be
    removed, so it is installed once and only records inside this block)."""
    global _proc_reads, _hook_installed
    if not _hook_installed:
        sys.addaudithook(_audit)
        _hook_installed = True
    _proc_reads = []
    try:
        yield _proc_reads
    finally:
        _proc_reads = None


# The same check inside the job runner: a violation goes to its stderr, i.e. .hybrid/runner.log.
_RUNNER_WATCH = """
import os, sys
def _audit(event, args):
    if event not in ("open", "os.listdir", "os.scandir") or not args or isinstance(args[0], int):
        return
    path = os.fsdecode(args[0])
    if path != "/proc" and not path.startswith("/proc/"):
        return
    frame = sys._getframe(1)
    while frame is not None:
        if str(frame.f_globals.get("__name__", "")).split(".")[0] == "psutil":
            return
        frame = frame.f_back
    os.write(2, ("runner read /proc outside psutil: " + path + "\\n").encode())
sys.addaudithook(_audit)
"""


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() not in (psutil.STATUS_ZOMBIE, psutil.STATUS_DEAD)
    except psutil.Error:
        return False


def finish(backend: LocalBackend, n: int = 1, timeout_s: float = 15.0) -> list[Any]:
    out: list[Any] = []
    deadline = time.monotonic() + timeout_s
    while len(out) < n and time.monotonic() < deadline:
        out.extend(backend.poll())
        time.sleep(0.02)
    assert len(out) == n, f"expected {n} finished jobs within {timeout_s} s, got {out}"
    return out


def tree_gone(workdir: Path, *names: str) -> None:
    for name in names:
        pid = int((workdir / name).read_text())
        wait_until(lambda pid=pid: not alive(pid), 2.0, f"{name} {pid} to die")


def test_the_audit_hook_sees_a_proc_read() -> None:
    """The check below can fail: a /proc read from our own code is recorded."""
    if not Path("/proc/self/stat").exists():
        pytest.skip("no /proc on this system")
    with proc_reads_recorded() as reads:
        Path("/proc/self/stat").read_bytes()
        psutil.Process().create_time()  # psutil's own reads are not ours
    assert reads == ["/proc/self/stat"]


def test_submit_poll_cancel_timeout_and_resume_never_read_proc(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(backends.local, "_BOOTSTRAP", _RUNNER_WATCH + backends.local._BOOTSTRAP)
    monkeypatch.setattr(backends.local, "KILL_GRACE_S", 0.3)
    exps = tmp_path / "exps"
    with proc_reads_recorded() as reads:
        backend = LocalBackend(workers=2)
        try:
            done = make_experiment(exps / "done", "w00")
            backend.submit(done, RunSpec("echo 'val_bpb: 0.9'", Path(done.workdir), timeout_s=30))
            [f] = finish(backend)
            assert (f.state, f.exit_code) == (JobState.EXITED, 0) and "val_bpb: 0.9" in f.log

            cancelled = make_experiment(exps / "cancelled", "w00")
            handle = backend.submit(cancelled, RunSpec(TREE, Path(cancelled.workdir), timeout_s=30))
            wait_until(lambda: (Path(cancelled.workdir) / "started").exists(), 10, "the job to start")
            backend.cancel(handle.job_id)
            [f] = finish(backend)
            assert f.state is JobState.CANCELLED
            tree_gone(Path(cancelled.workdir), "shell.pid", "child.pid")

            slow = make_experiment(exps / "slow", "w00")
            backend.submit(slow, RunSpec(TREE, Path(slow.workdir), timeout_s=0.5))
            [f] = finish(backend)
            assert f.state is JobState.TIMEOUT
            tree_gone(Path(slow.workdir), "shell.pid", "child.pid")

            # Resume: a new backend re-attaches by job id, once even without a recorded workdir
            # (then the workdir comes from the runner's command line).
            survivor = make_experiment(exps / "survivor", "w00")
            handle = backend.submit(survivor, RunSpec(GATE + "; echo 'val_bpb: 0.8'", Path(survivor.workdir)))
            wait_until(lambda: (Path(survivor.workdir) / "started").exists(), 10, "the job to start")
            backend.detach()
            again = LocalBackend(workers=2)
            survivor.workdir = ""
            attached = again.attach(handle.job_id, survivor)
            assert attached is not None and attached.workdir == Path(handle.workdir)
            (handle.workdir / "release").touch()
            [f] = finish(again)
            assert (f.state, f.exit_code) == (JobState.EXITED, 0) and "val_bpb: 0.8" in f.log
        finally:
            backend.cancel_all()
    assert reads == []
    for runner_log in exps.glob("*/.hybrid/runner.log"):
        assert "/proc" not in runner_log.read_text(), runner_log


def test_a_process_that_left_the_job_group_is_killed_with_the_tree(tmp_path: Path) -> None:
    escape = "import os, time; os.setsid(); open('escaped.pid', 'w').write(str(os.getpid())); time.sleep(30)"
    cmd = f"{shlex.quote(sys.executable)} -c {shlex.quote(escape)} & " + TREE
    exp = make_experiment(tmp_path / "exps" / "escaper", "w00")
    backend = LocalBackend(workers=1)
    try:
        backend.submit(exp, RunSpec(cmd, Path(exp.workdir), timeout_s=4.0))  # time to start python
        workdir = Path(exp.workdir)
        for name in ("escaped.pid", "shell.pid"):
            wait_until(lambda name=name: (workdir / name).exists(), 10, f"{name} to be written")
        escaped = int((workdir / "escaped.pid").read_text())
        assert os.getpgid(escaped) != int((workdir / "shell.pid").read_text())  # really outside the group
        [f] = finish(backend)
        assert f.state is JobState.TIMEOUT
        tree_gone(workdir, "shell.pid", "child.pid", "escaped.pid")
    finally:
        backend.cancel_all()


@pytest.fixture
def grandchild(request: pytest.FixtureRequest) -> Iterator[Detached]:
    """The DETACHED grandchild named by the test's ``kind`` parameter; killed at the end."""
    with Detached(request.param) as it:
        yield it


@pytest.mark.parametrize("how", ["end", "timeout", "cancel"])
@pytest.mark.parametrize("grandchild", list(DETACHED), indirect=True)
def test_a_detached_grandchild_dies_with_the_job(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, grandchild: Detached, how: str
) -> None:
    """The README promises a job's whole tree is killed: a grandchild in a session of its own
    is no exception, when the command ends, times out or is cancelled."""
    wait_ready = "until [ -s ready ]; do sleep 0.02; done"
    command = f"{grandchild.start} {wait_ready}; " + ("echo done" if how == "end" else "sleep 60")
    monkeypatch.setattr(backends.local, "KILL_GRACE_S", 1.0)
    exp = make_experiment(tmp_path / "exps" / f"{grandchild.kind}-{how}", "w00")
    workdir = Path(exp.workdir)
    backend = LocalBackend(workers=1)
    try:
        handle = backend.submit(exp, RunSpec(command, workdir, timeout_s=3.0 if how == "timeout" else 60))
        grandchild.wait_ready(workdir)
        if how == "cancel":
            backend.cancel(handle.job_id)
        [f] = finish(backend)
        assert f.state is {"end": JobState.EXITED, "timeout": JobState.TIMEOUT, "cancel": JobState.CANCELLED}[how]
        grandchild.assert_gone(f"the job's {how}")
    finally:
        backend.cancel_all()


@pytest.mark.parametrize("grandchild", ["double_fork", "respawn_on_term"], indirect=True)
def test_a_detached_grandchild_dies_when_the_runner_itself_was_killed(tmp_path: Path, grandchild: Detached) -> None:
    """The runner killed from outside (the OOM killer, a kill -9): the job is lost, and the
    backend kills its processes, those that left the job's group too (by their mark)."""
    exp = make_experiment(tmp_path / "exps" / f"orphaned-{grandchild.kind}", "w00")
    workdir = Path(exp.workdir)
    backend = LocalBackend(workers=1)
    try:
        command = f"{grandchild.start} sleep 60"
        handle = backend.submit(exp, RunSpec(command, workdir, timeout_s=60))
        grandchild.wait_ready(workdir)
        psutil.Process(int(handle.job_id.split("@")[0])).kill()
        [f] = finish(backend)
        assert f.state is JobState.LOST and "disappeared" in f.reason
        grandchild.assert_gone("the runner was killed")
    finally:
        backend.cancel_all()


def test_a_recycled_pid_is_not_our_runner(tmp_path: Path) -> None:
    """A live process whose start does not match the job id is someone else's."""
    unrelated = psutil.Process()  # this test process: alive, but no runner of ours
    mark = backends.local.start_mark(unrelated.pid)
    assert mark is not None
    exp = make_experiment(tmp_path / "exps" / "ghost", "w00")
    backend = LocalBackend(workers=1)
    assert backend.attach(f"{unrelated.pid}@{mark + 0.01:.3f}", exp) is None  # one clock tick later
    assert backend.attach(f"{unrelated.pid}@{mark:.3f}", exp) is not None  # the check is real
    backend.detach()


def _ticks(pid: int) -> int:
    """A process's start in clock ticks since boot, read as the code before psutil did."""
    stat = Path(f"/proc/{pid}/stat").read_bytes()
    return int(stat.rsplit(b")", 1)[-1].split()[19])


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="old job ids only exist on Linux")
def test_job_ids_and_files_from_before_psutil_still_reattach(tmp_path: Path) -> None:
    exp = make_experiment(tmp_path / "exps" / "old", "w00")
    workdir = Path(exp.workdir)
    first = LocalBackend(workers=1)
    handle = first.submit(exp, RunSpec(GATE + "; echo 'val_bpb: 0.7'", workdir, timeout_s=60))
    wait_until(lambda: (workdir / "started").exists(), 10, "the job to start")
    first.detach()
    # Rewrite job.json as the runner before psutil wrote it: starts in clock ticks since boot.
    job_file = workdir / ".hybrid" / "job.json"
    job = backends.local.read_json(job_file)
    assert job is not None
    pid = int(handle.job_id.split("@")[0])
    job["runner_start"], job["child_start"] = _ticks(pid), _ticks(job["child_pid"])
    backends.local.write_json_atomic(job_file, job)
    old_id = f"{pid}@{job['runner_start']}"

    second = LocalBackend(workers=1)
    try:
        assert second.attach(f"{pid}@{job['runner_start'] + 1}", exp) is None  # another start: not ours
        attached = second.attach(old_id, exp)
        assert attached is not None and attached.job_id == old_id
        recovered = LocalBackend(workers=1).recover(exp)
        assert recovered is not None and recovered.job_id == old_id
        (workdir / "release").touch()
        [f] = finish(second)
        assert (f.job_id, f.state, f.exit_code) == (old_id, JobState.EXITED, 0)
        assert "val_bpb: 0.7" in f.log
    finally:
        second.cancel_all()
