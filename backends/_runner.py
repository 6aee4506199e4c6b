"""The job runner: a tiny supervisor the local backend starts once per job.

    python -m backends._runner --workdir DIR [--log run.log] [--timeout S] [--grace S] -- COMMAND

(The local backend starts it through a tiny ``-c`` bootstrap that pins the import location.)
It runs in its own session (the backend starts it with ``start_new_session=True``), so it
outlives the orchestrator: a ``kill -9`` of the campaign leaves jobs running, and a resumed
campaign re-attaches them through the files this runner writes in ``DIR/.hybrid/``:

- ``job.json``: runner pid/pgid and start mark (so pid reuse is detected), the job's process
  group and its leader's start mark, the wall-clock start, the log name, and the value of
  ``HYBRID_JOB_MARK`` in the job's environment (by which the backend finds the job's processes
  that left its group, should the runner itself be killed).
- ``exit.json``: how the job ended, written last: ``{state: exited|timeout|cancelled,
  exit_code, signal, ended, reason}``. Its presence means "the job and its process tree are gone".

The command runs with ``/bin/sh -c`` in DIR, in its own process group, stdout+stderr appended to
DIR/LOG. On timeout, or when the runner receives SIGTERM/SIGINT (cancel), the job's whole process
group and every other descendant of the runner (one that left the group with ``setsid``) get
SIGTERM, then SIGKILL after the grace period; when the command exits by itself, whatever it left
behind gets the same. The descendants are listed again at every step until none is left (not
even a zombie), so one that starts a new detached process in answer to SIGTERM dies too. On
Linux the runner also makes itself a child subreaper, so processes the job orphans are
reparented to it, reaped and killed with the rest, which keeps "is the tree gone?" exact even
where PID 1 does not reap. macOS has no subreaper:
there an orphan that also left the job's process group escapes the kill.

Process identity and trees come from psutil (Linux and macOS alike; nothing reads /proc here);
otherwise only the standard library is used, so the runner starts fast. It runs on the
orchestrator's own interpreter, which has psutil.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psutil

STATE_DIR = ".hybrid"
JOB_FILE = "job.json"
EXIT_FILE = "exit.json"
RUNNER_LOG = "runner.log"
# Every process the job starts inherits this variable (the job's id): the backend finds by it the
# ones that left the job's process group when the runner is gone and cannot kill them itself.
MARK_ENV = "HYBRID_JOB_MARK"
DEFAULT_GRACE_S = 3.0
_PR_SET_CHILD_SUBREAPER = 36
# Two reads of one process's start mark agree to within float noise; two processes that share a
# pid (a recycled one) started at least a Linux clock tick (10 ms) apart. Half a tick separates them.
SAME_START_S = 0.005
# Job ids and job.json files written before psutil held the start in clock ticks since boot.
_LEGACY_TICK_S = 1.0 / os.sysconf("SC_CLK_TCK")
_GONE = (psutil.STATUS_ZOMBIE, psutil.STATUS_DEAD)


# ---- process identity, shared with backends.local ----------------------------------------------
def start_mark(pid: int) -> float | None:
    """When process ``pid`` started, in seconds since boot (ms precision), or None if absent.

    Since boot, not since the epoch: psutil's ``create_time()`` is the epoch time derived from
    the boot time, which moves when the wall clock is adjusted (NTP), so two reads of one
    process could differ by a second across a resume; the difference to ``boot_time()`` does
    not on Linux, where it is the kernel's own start time in clock ticks.
    """
    if pid <= 0:
        return None
    try:
        proc = psutil.Process(pid)
        for _ in range(3):  # the boot time must not move between the two reads
            boot = psutil.boot_time()
            created = proc.create_time()
            if psutil.boot_time() == boot:
                break
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return None
    return round(created - boot, 3)


def parse_mark(value: object) -> float | None:
    """A start mark as job ids and job.json hold it: a float of seconds since boot, or (files
    and ids from before psutil) an integer of clock ticks since boot."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int) or (isinstance(value, str) and value.isdigit()):
        return int(value) * _LEGACY_TICK_S
    if isinstance(value, float):
        return value
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return None
    return None


def same_start(a: float | None, b: float | None) -> bool:
    return a is not None and b is not None and abs(a - b) < SAME_START_S


def is_running(pid: int, mark: float | None) -> bool:
    """True when ``pid`` is the same process as the one that started at ``mark`` and has not
    exited (a zombie counts as exited)."""
    if not same_start(start_mark(pid), mark):
        return False
    try:
        return psutil.Process(pid).status() not in _GONE
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return False


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    """Readers see the old file or the whole new one, never half of it."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=1))
    os.replace(tmp, path)


def read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def exit_code_of(returncode: int) -> tuple[int, int | None]:
    """Popen's returncode as a shell would show it: -N (killed by signal N) -> (128+N, N)."""
    if returncode < 0:
        return 128 - returncode, -returncode
    return returncode, None


# ---- the runner ---------------------------------------------------------------------------------
class _Runner:
    def __init__(self, workdir: Path, log_name: str, command: str, timeout_s: float | None, grace_s: float):
        self.workdir = workdir
        self.state_dir = workdir / STATE_DIR
        self.log_name = log_name
        self.command = command
        self.timeout_s = timeout_s
        self.grace_s = grace_s
        self.cancelled = False
        self.child: subprocess.Popen[bytes] | None = None
        self.child_returncode: int | None = None
        self.job: dict[str, Any] = {}
        self._wakeup = -1  # read end of the signal wakeup pipe

    def _on_signal(self, signum: int, frame: object) -> None:
        if signum != signal.SIGCHLD:
            self.cancelled = True

    def run(self) -> int:
        self._listen_for_signals()
        _become_subreaper()
        me = os.getpid()
        mine = start_mark(me)
        mark = f"{me}@{mine if mine is not None else 0.0:.3f}"  # backends.local's job id
        self.job = {
            "runner_pid": me,
            "runner_pgid": os.getpgid(0),
            "runner_start": mine,
            "mark": mark,
            "child_pid": None,
            "child_pgid": None,
            "child_start": None,
            "started": time.time(),
            "command": self.command,
            "log_name": self.log_name,
            "timeout_s": self.timeout_s,
        }
        write_json_atomic(self.state_dir / JOB_FILE, self.job)
        if self.cancelled:  # cancelled before the job even started
            return self._finish("cancelled")
        try:
            with open(self.workdir / self.log_name, "ab") as log:
                self.child = subprocess.Popen(
                    ["/bin/sh", "-c", self.command],
                    cwd=self.workdir,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env={**os.environ, MARK_ENV: mark},
                    process_group=0,  # its own group: a timeout or cancel kills the whole tree
                )
        except OSError as e:
            with open(self.workdir / self.log_name, "ab") as log:
                log.write(f"hybrid runner: could not start /bin/sh: {e}\n".encode())
            return self._finish("exited", exit_code=127, reason=f"could not start /bin/sh: {e}")
        pid = self.child.pid
        self.job.update(child_pid=pid, child_pgid=pid, child_start=start_mark(pid))
        write_json_atomic(self.state_dir / JOB_FILE, self.job)
        state = self._supervise()
        self._kill_tree()  # timeout/cancel: the whole tree; exit: whatever it left behind
        if state == "exited":
            assert self.child_returncode is not None
            code, sig = exit_code_of(self.child_returncode)
            reason = f"killed by signal {_signal_name(sig)}" if sig else ""
            return self._finish("exited", exit_code=code, signal_number=sig, reason=reason)
        if state == "timeout":
            return self._finish("timeout", reason=f"killed after the {self.timeout_s:g} s timeout")
        return self._finish("cancelled", reason="cancelled")

    def _listen_for_signals(self) -> None:
        """SIGTERM/SIGINT mean cancel; those and SIGCHLD also wake ``_wait`` at once.

        A wakeup pipe rather than ``sigtimedwait``, which macOS lacks: the C-level handler
        writes a byte for every signal that has a Python handler, so a signal that arrives
        between a check and the wait is never missed.
        """
        read_end, write_end = os.pipe()
        os.set_blocking(read_end, False)
        os.set_blocking(write_end, False)
        signal.set_wakeup_fd(write_end, warn_on_full_buffer=False)
        self._wakeup = read_end
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGCHLD):
            signal.signal(sig, self._on_signal)

    def _wait(self, timeout_s: float) -> None:
        """Sleep up to ``timeout_s``, less if a signal arrives."""
        select.select([self._wakeup], [], [], max(0.0, timeout_s))
        while True:  # drain; a signal after this leaves its byte for the next wait
            try:
                if not os.read(self._wakeup, 512):
                    return
            except BlockingIOError:
                return

    def _supervise(self) -> str:
        """Wait until the command exits, times out or is cancelled; return which."""
        deadline = None if self.timeout_s is None else time.monotonic() + self.timeout_s
        while True:
            self._reap()
            if self.child_returncode is not None:
                return "exited"
            if self.cancelled:
                return "cancelled"
            wait = 0.5
            if deadline is not None:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return "timeout"
                wait = min(wait, remaining)
            self._wait(wait)

    def _reap(self) -> None:
        """Collect every exited child: the command itself and orphans reparented to us."""
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            if self.child is not None and pid == self.child.pid:
                self.child_returncode = os.waitstatus_to_exitcode(status)
                self.child.returncode = self.child_returncode  # keep Popen from waiting again

    def _kill_tree(self) -> None:
        """SIGTERM the job's process group and every other live descendant of ours, SIGKILL what
        is left after the grace period, wait till gone.

        Descendants are listed afresh at every step, not once per signal: a process that answers
        SIGTERM by starting a new detached one (or a daemon that forks just then) gets its signal
        too, and the tree is gone only when no descendant is left at all."""
        if self.child is None:
            return
        pgid = self.child.pid
        for sig, patience in ((signal.SIGTERM, self.grace_s), (signal.SIGKILL, 2.0)):
            sent: set[psutil.Process] = set()  # a process gets each signal once (psutil: pid + start)
            group_sent = False
            deadline = time.monotonic() + patience
            while True:
                self._reap()
                tree = _descendants()
                strays = [p for p in tree if _alive(p)]  # e.g. a `setsid` daemon: not in the job's group
                group = group_alive(pgid)
                if not group and not tree:
                    # Not even a zombie: a process that exited while the tree was being listed
                    # (after forking one the listing missed) leaves a zombie, so we list again.
                    return
                if group and not group_sent:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(pgid, sig)
                    group_sent = sig == signal.SIGTERM  # SIGKILL: again for members forked since
                for proc in strays:
                    if proc not in sent:
                        sent.add(proc)
                        with contextlib.suppress(psutil.Error):
                            proc.send_signal(sig)  # psutil checks the pid still names that process
                if time.monotonic() >= deadline:
                    break
                self._wait(0.02)

    def _finish(
        self, state: str, exit_code: int | None = None, signal_number: int | None = None, reason: str = ""
    ) -> int:
        write_json_atomic(
            self.state_dir / EXIT_FILE,
            {
                "state": state,
                "exit_code": exit_code,
                "signal": signal_number,
                "started": self.job.get("started"),
                "ended": time.time(),
                "reason": reason,
            },
        )
        return 0


def _alive(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() not in _GONE
    except psutil.Error:
        return False


def _descendants() -> list[psutil.Process]:
    """Every process below the runner, zombies included (on Linux that includes orphans
    reparented to it)."""
    try:
        return psutil.Process().children(recursive=True)
    except psutil.Error:
        return []


def _signal_name(sig: int | None) -> str:
    try:
        return signal.Signals(sig).name if sig is not None else "?"
    except ValueError:
        return str(sig)


def _become_subreaper() -> None:
    """Orphans of the job get reparented to us (prctl, Linux >= 3.4). Other systems (macOS)
    have no such call: there orphans go to launchd and only the process group reaches them."""
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    except (OSError, AttributeError):
        pass


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m backends._runner", description=__doc__.split("\n")[0])
    parser.add_argument("--workdir", required=True, type=Path)
    parser.add_argument("--log", default="run.log", help="log file name inside the workdir")
    parser.add_argument("--timeout", type=float, default=None, help="seconds; none by default")
    parser.add_argument("--grace", type=float, default=DEFAULT_GRACE_S, help="SIGTERM -> SIGKILL delay")
    parser.add_argument("command", help="shell command line, after --")
    args = parser.parse_args(argv)
    workdir = args.workdir.resolve()
    (workdir / STATE_DIR).mkdir(exist_ok=True)
    timeout = args.timeout if args.timeout and args.timeout > 0 else None
    return _Runner(workdir, args.log, args.command, timeout, args.grace).run()


if __name__ == "__main__":
    sys.exit(main())
