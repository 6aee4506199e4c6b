"""The job runner: a tiny supervisor the local backend starts once per job.

    python -m backends._runner --workdir DIR [--log run.log] [--timeout S] [--grace S] -- COMMAND

(The local backend starts it through a tiny ``-c`` bootstrap that pins the import location.)
It runs in its own session (the backend starts it with ``start_new_session=True``), so it
outlives the orchestrator: a ``kill -9`` of the campaign leaves jobs running, and a resumed
campaign re-attaches them through the files this runner writes in ``DIR/.hybrid/``:

- ``job.json``: runner pid/pgid and /proc start time (so pid reuse is detected), the job's
  process group, the wall-clock start, the log name.
- ``exit.json``: how the job ended, written last: ``{state: exited|timeout|cancelled,
  exit_code, signal, ended, reason}``. Its presence means "the job and its process tree are gone".

The command runs with ``/bin/sh -c`` in DIR, in its own process group, stdout+stderr appended to
DIR/LOG. On timeout, or when the runner receives SIGTERM/SIGINT (cancel), the job's whole process
group gets SIGTERM, then SIGKILL after the grace period. The runner also makes itself a child
subreaper, so processes the job orphans are reparented to it and reaped, which keeps "is the
tree gone?" exact even where PID 1 does not reap.

Only the standard library is used here: the runner must start fast and cannot break when the
target's environment differs from the orchestrator's.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

STATE_DIR = ".hybrid"
JOB_FILE = "job.json"
EXIT_FILE = "exit.json"
RUNNER_LOG = "runner.log"
DEFAULT_GRACE_S = 3.0
_PR_SET_CHILD_SUBREAPER = 36


# ---- helpers shared with backends.local (stdlib only) ------------------------------------------
def proc_info(pid: int) -> tuple[str, int] | None:
    """(state letter, start time in clock ticks since boot) of a process, or None if absent."""
    try:
        data = Path(f"/proc/{pid}/stat").read_bytes()
    except (OSError, ValueError):
        return None
    # The command name (field 2) may hold spaces and parens: split after its last ")".
    fields = data.rsplit(b")", 1)[-1].split()
    try:
        return fields[0].decode(), int(fields[19])  # field 3 = state, field 22 = starttime
    except (IndexError, ValueError):
        return None


def proc_start_ticks(pid: int) -> int | None:
    info = proc_info(pid)
    return None if info is None else info[1]


def is_running(pid: int, start_ticks: int | None) -> bool:
    """True when ``pid`` is the same process as the one started at ``start_ticks`` and has not
    exited (a zombie counts as exited)."""
    info = proc_info(pid)
    return info is not None and info[1] == start_ticks and info[0] not in ("Z", "X")


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

    def _on_signal(self, signum: int, frame: object) -> None:
        self.cancelled = True

    def run(self) -> int:
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        _become_subreaper()
        me = os.getpid()
        self.job = {
            "runner_pid": me,
            "runner_pgid": os.getpgid(0),
            "runner_start": proc_start_ticks(me),
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
                    process_group=0,  # its own group: a timeout or cancel kills the whole tree
                )
        except OSError as e:
            with open(self.workdir / self.log_name, "ab") as log:
                log.write(f"hybrid runner: could not start /bin/sh: {e}\n".encode())
            return self._finish("exited", exit_code=127, reason=f"could not start /bin/sh: {e}")
        pid = self.child.pid
        self.job.update(child_pid=pid, child_pgid=pid, child_start=proc_start_ticks(pid))
        write_json_atomic(self.state_dir / JOB_FILE, self.job)
        state = self._supervise()
        self._kill_group()  # timeout/cancel: the whole tree; exit: whatever it left behind
        if state == "exited":
            assert self.child_returncode is not None
            code, sig = exit_code_of(self.child_returncode)
            reason = f"killed by signal {_signal_name(sig)}" if sig else ""
            return self._finish("exited", exit_code=code, signal_number=sig, reason=reason)
        if state == "timeout":
            return self._finish("timeout", reason=f"killed after the {self.timeout_s:g} s timeout")
        return self._finish("cancelled", reason="cancelled")

    def _supervise(self) -> str:
        """Wait until the command exits, times out or is cancelled; return which."""
        waitset = {signal.SIGCHLD, signal.SIGTERM, signal.SIGINT}
        # From here on, signals are taken synchronously with sigtimedwait (no polling latency).
        # A signal that came earlier was already seen by _on_signal.
        signal.pthread_sigmask(signal.SIG_BLOCK, waitset)
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
            info = signal.sigtimedwait(waitset, wait)
            if info is not None and info.si_signo != signal.SIGCHLD:
                self.cancelled = True

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

    def _kill_group(self) -> None:
        """SIGTERM the job's process group, SIGKILL it after the grace period, wait till gone."""
        if self.child is None:
            return
        pgid = self.child.pid
        waitset = {signal.SIGCHLD, signal.SIGTERM, signal.SIGINT}
        signal.pthread_sigmask(signal.SIG_BLOCK, waitset)
        for sig, patience in ((signal.SIGTERM, self.grace_s), (signal.SIGKILL, 2.0)):
            self._reap()
            if not group_alive(pgid):
                return
            try:
                os.killpg(pgid, sig)
            except ProcessLookupError:
                return
            deadline = time.monotonic() + patience
            while time.monotonic() < deadline:
                self._reap()
                if not group_alive(pgid):
                    return
                signal.sigtimedwait(waitset, 0.02)

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


def _signal_name(sig: int | None) -> str:
    try:
        return signal.Signals(sig).name if sig is not None else "?"
    except ValueError:
        return str(sig)


def _become_subreaper() -> None:
    """Orphans of the job get reparented to us (Linux >= 3.4); elsewhere this is a no-op."""
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
