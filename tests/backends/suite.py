"""The backend conformance suite: every backend passes the same user-visible checks.

Subclass it once per backend (``class TestLocal(BackendSuite)``) and fill in the hooks:
``make_backend`` (required), ``job_has_ended`` (required), and, for backends that are slow
to start jobs or that run them elsewhere, the timing attributes, ``release`` and
``process_alive``. The suite only uses the public Backend contract.
"""

from __future__ import annotations

import abc
import contextlib
import json
import os
import random
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import psutil
import pytest

from backends.base import Backend, Finished, JobHandle, JobState, RunSpec
from backends.workdir import snapshot
from hybrid.curves import ProgressReader
from hybrid.errors import BackendError
from hybrid.types import Candidate, Experiment

# Holds a job until the test creates `release` in its workdir (60 s at most, then it goes on).
GATE = "touch started; i=0; until [ -e release ] || [ $i -ge 1200 ]; do sleep 0.05; i=$((i+1)); done"
# Records the shell's and a background child's pids, then sleeps: for process-tree checks.
TREE = "sleep 30 & echo $! > child.pid; echo $$ > shell.pid; touch started; sleep 30"
# A Python target reporting progress with plain print() (no flush: the backend must see to it that
# its output is not held in a buffer): a point, a wait until the test creates `release` (which it
# takes away again), another point, another wait, then the final metric.
PROGRESS = """
import os, time
def wait_for_release():
    for _ in range(1200):
        if os.path.exists('release'):
            os.remove('release')
            return
        time.sleep(0.05)
open('started', 'w').close()
print('progress: 0.1 train_loss: 3.0')
wait_for_release()
print('progress: 0.5 train_loss: 2.5')
wait_for_release()
print('val_bpb: 0.99')
"""


# Detached grandchildren for process-tree checks: each leaves the job's process group and session,
# writes its new process group's id to `ready` in the job's directory and ends as `sleep MARKER`
# (MARKER also in the command line of the python ones).
DETACHED: dict[str, str | None] = {
    # setsid(1), as a user's command would use it
    "setsid": None,
    # a daemon's double fork: the sleeper's parent exits, so it is nobody's child in the tree
    "double_fork": """
import os, sys
os.setsid()
if os.fork() == 0:
    if os.fork() == 0:
        open('ready', 'w').write(str(os.getpgid(0)))
        os.execvp('sleep', ['sleep', sys.argv[1]])
    os._exit(0)
os.wait()
""",
    # answers SIGTERM by starting a new detached sleeper: one that no earlier listing could see
    "respawn_on_term": """
import os, signal, sys, time
os.setsid()
def respawn(*_):
    if os.fork() == 0:
        os.setsid()
        os.execvp('sleep', ['sleep', sys.argv[1]])
    os._exit(0)
signal.signal(signal.SIGTERM, respawn)
open('ready', 'w').write(str(os.getpgid(0)))
time.sleep(300)
""",
    # forks and exits over and over for 5 s, then sleeps: a process that exits while the tree is
    # being listed must not hide the child it forked just before
    "relay": """
import os, sys, time
os.setsid()
open('ready', 'w').write(str(os.getpgid(0)))
end = time.monotonic() + 5
while time.monotonic() < end:
    if os.fork():
        os._exit(0)
os.execvp('sleep', ['sleep', sys.argv[1]])
""",
}


class Detached:
    """One kind of DETACHED grandchild of a test job, found by its marker (a sleep length no
    other process uses) and by the process groups it was seen in: a listing can miss a relay
    between two hops, a check of its group cannot. Used as a context manager, it kills whatever
    is left of it at the end, even if the backend failed to."""

    def __init__(self, kind: str) -> None:
        if DETACHED[kind] is None and shutil.which("setsid") is None:
            pytest.skip("no setsid(1) here")
        self.kind = kind
        self.marker = str(random.randint(3_000_000, 3_999_999))
        self.groups: set[int] = set()

    def __enter__(self) -> Detached:
        return self

    def __exit__(self, *exc: object) -> None:
        self.kill()

    @property
    def start(self) -> str:
        """A shell snippet, ending in ``&``, that starts it."""
        code = DETACHED[self.kind]
        if code is None:
            return f"setsid /bin/sh -c 'echo $$ > ready; exec sleep {self.marker}' &"
        return f"{shlex.quote(sys.executable)} -c {shlex.quote(code)} {self.marker} &"

    def wait_ready(self, workdir: Path, timeout_s: float = 10.0) -> None:
        ready = workdir / "ready"
        wait_until(lambda: ready.exists() and ready.read_text().strip().isdigit(), timeout_s,
                   f"the {self.kind} grandchild to start")
        self.groups.add(int(ready.read_text()))

    def alive(self) -> list[str]:
        """What is left of it: its processes and groups, as text for an assertion message."""
        left = []
        for proc in psutil.process_iter(["cmdline", "status"]):
            if self.marker in (proc.info["cmdline"] or []) and proc.info["status"] != psutil.STATUS_ZOMBIE:
                with contextlib.suppress(psutil.Error):
                    self.groups.add(os.getpgid(proc.pid))
                left.append(f"pid {proc.pid}: {shlex.join(proc.info['cmdline'])}")
        for pgid in sorted(self.groups):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pgid, 0)
                left.append(f"process group {pgid}")
        return left

    def assert_gone(self, after: str, timeout_s: float = 10.0) -> None:
        deadline = time.monotonic() + timeout_s
        while (left := self.alive()) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not left, f"still alive {timeout_s:g} s after {after}: {left}"

    def kill(self) -> None:
        deadline = time.monotonic() + 15
        while self.alive() and time.monotonic() < deadline:
            for pgid in self.groups:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(pgid, signal.SIGKILL)
            for proc in psutil.process_iter(["cmdline"]):
                if self.marker in (proc.info["cmdline"] or []):
                    with contextlib.suppress(psutil.Error):
                        proc.kill()
            time.sleep(0.02)


def make_experiment(workdir: Path, worker: str, exp_id: str | None = None, **params: Any) -> Experiment:
    """An Experiment as the campaign creates it: with a workdir and params.json inside."""
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "params.json").write_text(json.dumps(params))
    return Experiment(
        id=exp_id or workdir.name,
        candidate=Candidate(params=params, source="test"),
        worker=worker,
        hardware="test",
        wave=0,
        started=time.time(),
        workdir=str(workdir),
    )


def wait_until(predicate: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(0.02)


class BackendSuite(abc.ABC):
    """Conformance tests for a Backend. Not collected itself (no ``Test`` prefix)."""

    job_timeout_s: float = 30.0  # how long a short job may take from submit to poll()
    output_timeout_s: float = 30.0  # how long a line a running job printed may take to reach read_output
    kill_timeout_s: float = 1.0  # RunSpec.timeout_s of the timeout test
    supports_recover: bool = True  # recover(exp) finds a job whose id never reached the store
    inherits_environment: bool = True  # jobs get the orchestrator's environment (less its credentials)

    # ---- hooks -----------------------------------------------------------------------------
    @abc.abstractmethod
    def make_backend(self, tmp_path: Path, n_workers: int) -> Backend:
        """A fresh backend instance with ``n_workers`` workers. Called again with the same
        arguments to play "the orchestrator restarted": names must be stable."""
        ...

    @abc.abstractmethod
    def job_has_ended(self, job_id: str, exp: Experiment) -> bool:
        """True once the job has ended on the backend side (without polling a backend)."""
        ...

    def release(self, workdir: Path) -> None:
        """Let a job running GATE go on."""
        (workdir / "release").touch()

    def process_alive(self, pid: int) -> bool:
        """Whether a process of a job is still alive (a zombie counts as dead)."""
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            return False
        return stat.rsplit(")", 1)[-1].split()[0] not in ("Z", "X")

    # ---- fixtures and helpers ------------------------------------------------------------------
    @pytest.fixture
    def new_backend(self, tmp_path: Path) -> Iterator[Callable[[int], Backend]]:
        """Make backends; at the end every job still known to one is cancelled."""
        made: list[Backend] = []

        def make(n_workers: int = 2) -> Backend:
            made.append(self.make_backend(tmp_path, n_workers))
            return made[-1]

        yield make
        for b in made:
            b.cancel_all()
            b.close()

    @pytest.fixture
    def backend(self, new_backend: Callable[[int], Backend]) -> Backend:
        return new_backend(2)

    def job(
        self,
        backend: Backend,
        tmp_path: Path,
        name: str,
        command: str,
        worker: int = 0,
        env: Mapping[str, str] | None = None,
        timeout_s: float | None = 60.0,  # a safety net: no test job outlives a failed test long
        workdir: Path | None = None,
        **params: Any,
    ) -> tuple[Experiment, RunSpec]:
        workdir = workdir or tmp_path / "exps" / name
        exp = make_experiment(workdir, backend.workers()[worker].name, name, **params)
        return exp, RunSpec(command=command, workdir=workdir, env=dict(env or {}), timeout_s=timeout_s)

    def finish(self, backend: Backend, n: int = 1) -> list[Finished]:
        """Poll until ``n`` jobs have been reported; check nothing is reported twice."""
        out: list[Finished] = []
        deadline = time.monotonic() + self.job_timeout_s
        while len(out) < n and time.monotonic() < deadline:
            out.extend(backend.poll())
            time.sleep(0.02)
        assert len(out) == n, f"expected {n} finished jobs within {self.job_timeout_s} s, got {out}"
        assert backend.poll() == []
        return out

    def started(self, spec: RunSpec) -> None:
        wait_until(lambda: (spec.workdir / "started").exists(), self.job_timeout_s, "the job to start")

    def read_to_end(self, backend: Backend, handle: JobHandle, offset: int) -> tuple[str, int]:
        """After the job ended: ``read_output`` until it has nothing more."""
        out = ""
        while True:
            text, offset = backend.read_output(handle, offset)
            if not text:
                return out, offset
            out += text

    def assert_tree_gone(self, workdir: Path) -> None:
        for name in ("shell.pid", "child.pid"):
            pid = int((workdir / name).read_text())
            # The kill is recorded before the job is reported, but allow the kernel a moment.
            wait_until(lambda pid=pid: not self.process_alive(pid), 2.0, f"{name} {pid} to die")

    # ---- the tests ----------------------------------------------------------------------------
    def test_job_runs_to_completion(self, backend: Backend, tmp_path: Path) -> None:
        exp, spec = self.job(backend, tmp_path, "ok", "echo 'val_bpb: 0.9979'; echo 'num_steps: 12'")
        handle = backend.submit(exp, spec)
        assert handle.experiment_id == exp.id and handle.worker.name == exp.worker
        [f] = self.finish(backend)
        assert (f.job_id, f.experiment_id, f.state, f.exit_code) == (
            handle.job_id,
            exp.id,
            JobState.EXITED,
            0,
        )
        assert "val_bpb: 0.9979" in f.log and "num_steps: 12" in f.log
        assert f.worker.name == exp.worker and f.ended >= f.started
        assert backend.running() == []

    def test_crash_reports_exit_code(self, backend: Backend, tmp_path: Path) -> None:
        exp, spec = self.job(backend, tmp_path, "crash", "echo 'Traceback: boom' >&2; exit 1")
        backend.submit(exp, spec)
        [f] = self.finish(backend)
        assert (f.state, f.exit_code) == (JobState.EXITED, 1)
        assert "boom" in f.log  # stderr is in the log too

    def test_timeout_kills_the_whole_tree(self, backend: Backend, tmp_path: Path) -> None:
        exp, spec = self.job(backend, tmp_path, "slow", TREE, timeout_s=self.kill_timeout_s)
        backend.submit(exp, spec)
        [f] = self.finish(backend)
        assert (f.state, f.exit_code) == (JobState.TIMEOUT, None)
        assert f.duration_s < 25
        self.assert_tree_gone(spec.workdir)

    def test_cancel_stops_the_whole_tree(self, backend: Backend, tmp_path: Path) -> None:
        exp, spec = self.job(backend, tmp_path, "cancelled", TREE)
        handle = backend.submit(exp, spec)
        self.started(spec)
        backend.cancel(handle.job_id)
        [f] = self.finish(backend)
        assert (f.state, f.exit_code) == (JobState.CANCELLED, None)
        self.assert_tree_gone(spec.workdir)
        assert len(backend.free_workers()) == len(backend.workers())
        backend.cancel("no-such-job")  # unknown ids are ignored

    def test_each_experiment_sees_its_own_snapshot(self, backend: Backend, tmp_path: Path) -> None:
        src = tmp_path / "target"
        src.mkdir()
        (src / "value.txt").write_text("one")
        first = snapshot(src, tmp_path / "exps" / "first")
        (src / "value.txt").write_text("two")  # the researcher edits code mid-campaign
        second = snapshot(src, tmp_path / "exps" / "second")
        cmd = GATE + '; echo "value=$(cat value.txt)"'
        jobs = [
            self.job(backend, tmp_path, d.name, cmd, worker=i, workdir=d)
            for i, d in enumerate((first, second))
        ]
        for exp, spec in jobs:
            backend.submit(exp, spec)
        (src / "value.txt").write_text("three")  # edited again while they run
        for _, spec in jobs:
            self.release(spec.workdir)
        logs = {f.experiment_id: f.log for f in self.finish(backend, 2)}
        assert "value=one" in logs["first"] and "value=two" in logs["second"]

    def test_env_and_params_reach_the_command(self, backend: Backend, tmp_path: Path) -> None:
        env = {"HYBRID_EXPERIMENT_ID": "exp-7", "MY_SETTING": "hello world"}
        cmd = 'echo "id=$HYBRID_EXPERIMENT_ID"; echo "setting=$MY_SETTING"; echo; cat params.json'
        exp, spec = self.job(backend, tmp_path, "env", cmd, env=env, lr=0.01, depth=4)
        backend.submit(exp, spec)
        [f] = self.finish(backend)
        assert f.exit_code == 0, f.log
        assert "id=exp-7" in f.log and "setting=hello world" in f.log
        assert json.loads(f.log.rsplit("\n\n", 1)[-1]) == {"lr": 0.01, "depth": 4}

    def test_the_orchestrators_credentials_never_reach_the_job(
        self, backend: Backend, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        # the LLM proposer's and MLflow's credentials, in the orchestrator's environment
        for name in ("ANTHROPIC_API_KEY", "ANTHROPIC_AUTH_TOKEN", "MLFLOW_TRACKING_PASSWORD"):
            monkeypatch.setenv(name, f"orchestrator-{name.lower()}")
        monkeypatch.setenv("HF_TOKEN", "hf-inherited-by-training")  # a training credential: it passes
        cmd = "env | sort; echo; echo end"
        exp, spec = self.job(backend, tmp_path, "creds", cmd, env={"WANDB_API_KEY": "wandb-from-target-env"})
        backend.submit(exp, spec)
        [f] = self.finish(backend)
        assert f.exit_code == 0 and "end" in f.log, f.log
        assert "orchestrator-" not in f.log and "ANTHROPIC_" not in f.log and "MLFLOW_TRACKING_" not in f.log
        assert "WANDB_API_KEY=wandb-from-target-env" in f.log  # what target.env names always reaches it
        if self.inherits_environment:
            assert "HF_TOKEN=hf-inherited-by-training" in f.log

    def test_awkward_workdir_path(self, backend: Backend, tmp_path: Path) -> None:
        workdir = tmp_path / "with space" / "a'; echo INJECTED; '$(x)"
        exp, spec = self.job(backend, tmp_path, "quoted", "echo 'val_bpb: 1.5'", workdir=workdir)
        backend.submit(exp, spec)
        [f] = self.finish(backend)
        assert f.exit_code == 0 and "val_bpb: 1.5" in f.log and "INJECTED" not in f.log

    def test_free_workers_shrink_and_recover(self, backend: Backend, tmp_path: Path) -> None:
        everyone = backend.workers()
        assert backend.free_workers() == everyone
        a_exp, a = self.job(backend, tmp_path, "a", GATE, worker=0)
        backend.submit(a_exp, a)
        assert backend.free_workers() == everyone[1:]
        b_exp, b = self.job(backend, tmp_path, "b", GATE, worker=1)
        backend.submit(b_exp, b)
        assert backend.free_workers() == []
        self.release(a.workdir)
        self.finish(backend, 1)
        assert backend.free_workers() == everyone[:1]
        self.release(b.workdir)
        self.finish(backend, 1)
        assert backend.free_workers() == everyone

    def test_submit_to_a_busy_worker_is_refused(self, backend: Backend, tmp_path: Path) -> None:
        exp, spec = self.job(backend, tmp_path, "busy", GATE, worker=0)
        backend.submit(exp, spec)
        again, again_spec = self.job(backend, tmp_path, "again", "true", worker=0)
        with pytest.raises(BackendError, match="busy"):
            backend.submit(again, again_spec)
        again.worker = "no-such-worker"
        with pytest.raises(BackendError, match="no worker named"):
            backend.submit(again, again_spec)
        self.release(spec.workdir)
        assert [f.experiment_id for f in self.finish(backend)] == ["busy"]

    def test_a_new_instance_reattaches_a_running_job(
        self, new_backend: Callable[[int], Backend], tmp_path: Path
    ) -> None:
        first = new_backend(1)
        exp, spec = self.job(first, tmp_path, "survivor", GATE + "; echo 'val_bpb: 0.97'")
        handle = first.submit(exp, spec)
        self.started(spec)
        first.detach()  # the orchestrator goes away, the job does not
        first.close()
        second = new_backend(1)
        attached = second.attach(handle.job_id, exp)
        assert attached is not None and attached.job_id == handle.job_id
        assert second.free_workers() == []
        self.release(spec.workdir)
        [f] = self.finish(second)
        assert (f.state, f.exit_code, f.experiment_id) == (JobState.EXITED, 0, exp.id)
        assert "val_bpb: 0.97" in f.log

    def test_a_job_that_ended_unwatched_is_reported_once(
        self, new_backend: Callable[[int], Backend], tmp_path: Path
    ) -> None:
        first = new_backend(1)
        exp, spec = self.job(first, tmp_path, "unwatched", "echo 'val_bpb: 0.95'; exit 3")
        handle = first.submit(exp, spec)
        first.detach()
        first.close()
        wait_until(lambda: self.job_has_ended(handle.job_id, exp), self.job_timeout_s, "the job to end")
        second = new_backend(1)
        assert second.attach(handle.job_id, exp) is not None
        [f] = self.finish(second)
        assert (f.state, f.exit_code) == (JobState.EXITED, 3) and "val_bpb: 0.95" in f.log

    def test_recover_finds_a_job_whose_id_was_never_stored(
        self, new_backend: Callable[[int], Backend], tmp_path: Path
    ) -> None:
        if not self.supports_recover:
            pytest.skip("this backend cannot find jobs without their id")
        first = new_backend(1)
        exp, spec = self.job(first, tmp_path, "unrecorded", GATE + "; echo 'val_bpb: 0.99'")
        handle = first.submit(exp, spec)
        self.started(spec)
        first.detach()
        first.close()
        second = new_backend(1)
        never_submitted, _ = self.job(second, tmp_path, "never", "true")
        assert second.recover(never_submitted) is None
        recovered = second.recover(exp)
        assert recovered is not None and recovered.job_id == handle.job_id
        self.release(spec.workdir)
        [f] = self.finish(second)
        assert (f.job_id, f.state, f.exit_code) == (handle.job_id, JobState.EXITED, 0)

    def test_close_leaves_unrelated_processes_alone(self, backend: Backend, tmp_path: Path) -> None:
        # Outlives the job however slowly the backend starts it (a fixed 30 s did not on SkyPilot).
        unrelated = subprocess.Popen(["sleep", str(int(self.job_timeout_s) + 60)], start_new_session=True)
        try:
            exp, spec = self.job(backend, tmp_path, "done", "echo 'val_bpb: 1.0'")
            backend.submit(exp, spec)
            self.finish(backend)
            backend.cancel_all()
            backend.close()
            assert unrelated.poll() is None and self.process_alive(unrelated.pid)
        finally:
            unrelated.kill()
            unrelated.wait()

    def test_cancel_all_and_close_leave_other_campaigns_jobs_alone(
        self, new_backend: Callable[[int], Backend], tmp_path: Path
    ) -> None:
        ours, theirs = new_backend(1), new_backend(1)  # two campaigns on the same workers
        their_exp, their_spec = self.job(theirs, tmp_path, "theirs", GATE + "; echo 'val_bpb: 0.5'")
        theirs.submit(their_exp, their_spec)
        our_exp, our_spec = self.job(ours, tmp_path, "ours", TREE)
        ours.submit(our_exp, our_spec)
        self.started(our_spec)
        self.started(their_spec)
        ours.cancel_all()
        [f] = self.finish(ours)
        assert (f.experiment_id, f.state) == ("ours", JobState.CANCELLED)
        ours.close()
        self.assert_tree_gone(our_spec.workdir)
        self.release(their_spec.workdir)
        [g] = self.finish(theirs)
        assert (g.experiment_id, g.state, g.exit_code) == ("theirs", JobState.EXITED, 0)
        assert "val_bpb: 0.5" in g.log

    def test_handles_are_plain_data(self, backend: Backend, tmp_path: Path) -> None:
        exp, spec = self.job(backend, tmp_path, "plain", "true")
        handle = backend.submit(exp, spec)
        assert isinstance(handle, JobHandle) and isinstance(handle.job_id, str) and handle.job_id
        assert os.path.samefile(handle.workdir, spec.workdir)
        self.finish(backend)

    # ---- following a running job's output (progress) ------------------------------------------
    def test_progress_is_read_while_the_job_runs_and_each_point_once(
        self, backend: Backend, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.delenv("PYTHONUNBUFFERED", raising=False)  # not inherited from the orchestrator
        command = f"{shlex.quote(sys.executable)} -c {shlex.quote(PROGRESS)}"
        exp, spec = self.job(backend, tmp_path, "progress", command)
        handle = backend.submit(exp, spec)
        reader, offset, ended = ProgressReader(), 0, []

        def points_read() -> list[float]:
            nonlocal offset
            ended.extend(backend.poll())
            text, offset = backend.read_output(handle, offset)
            reader.feed(text)
            return [p.fraction for p in reader.points]

        wait_until(lambda: points_read() == [0.1], self.output_timeout_s, "the first progress point")
        assert ended == []  # seen while the job runs: it waits for the test to go on
        self.release(spec.workdir)
        wait_until(lambda: points_read() == [0.1, 0.5], self.output_timeout_s, "the second progress point")
        assert ended == []
        self.release(spec.workdir)
        ended += self.finish(backend)
        [f] = ended
        assert (f.state, f.exit_code) == (JobState.EXITED, 0), f.log
        rest, _ = self.read_to_end(backend, handle, offset)
        reader.feed(rest)
        reader.flush()
        assert [(p.fraction, p.values) for p in reader.points] == [(0.1, {"train_loss": 3.0}), (0.5, {"train_loss": 2.5})]
        assert reader.rejected == []
        assert "val_bpb: 0.99" in rest

    def test_a_character_the_job_has_written_half_of_is_read_whole(self, backend: Backend, tmp_path: Path) -> None:
        # 'é' is c3 a9 in UTF-8: the job writes c3, waits, then a9.
        exp, spec = self.job(backend, tmp_path, "utf8", "printf 'caf\\303'; " + GATE + "; printf '\\251 \u2713\\n'")
        handle = backend.submit(exp, spec)
        self.started(spec)
        first, offset = backend.read_output(handle, 0)
        assert "\ufffd" not in first and "caf\u00e9".startswith(first), first  # nothing of the cut character
        self.release(spec.workdir)
        self.finish(backend)
        rest, _ = self.read_to_end(backend, handle, offset)
        assert first + rest == "caf\u00e9 \u2713\n", (first, rest)

    def test_a_log_file_in_the_targets_code_is_not_taken_for_the_jobs_output(
        self, backend: Backend, tmp_path: Path
    ) -> None:
        src = tmp_path / "target"
        src.mkdir()
        (src / "run.log").write_text("progress: 0.9 train_loss: 1.0\nval_bpb: 0.5\n")  # the user's own run
        workdir = snapshot(src, tmp_path / "exps" / "fresh")
        exp, spec = self.job(backend, tmp_path, "fresh", "echo 'progress: 0.1 train_loss: 3.0'; exit 1", workdir=workdir)
        handle = backend.submit(exp, spec)
        [f] = self.finish(backend)
        assert (f.state, f.exit_code) == (JobState.EXITED, 1)
        assert "val_bpb" not in f.log and "progress: 0.9" not in f.log
        text, _ = self.read_to_end(backend, handle, 0)
        # (SkyPilot on Slurm adds lines of srun's and its own after a failed job)
        assert text.startswith("progress: 0.1 train_loss: 3.0\n") and "val_bpb" not in text, text

    def test_read_output_never_raises_and_cuts_no_character(self, backend: Backend, tmp_path: Path) -> None:
        workdir = tmp_path / "not-yet"
        handle = JobHandle("no-such-job", "not-yet", backend.workers()[0], time.time(), workdir)
        assert backend.read_output(handle, 0) == ("", 0)  # the log does not exist yet
        assert backend.read_output(handle, 7) == ("", 7)
        (workdir / "run.log").mkdir(parents=True)  # there, but unreadable as a file
        assert backend.read_output(handle, 3) == ("", 3)
        (workdir / "run.log").rmdir()
        log = workdir / "run.log"
        log.write_bytes(b"caf\xc3")  # a job in the middle of writing 'é'
        assert backend.read_output(handle, 0) == ("caf", 3)
        with open(log, "ab") as f:
            f.write(b"\xa9 \xe2\x9c")  # ... and of the 3-byte check mark
        assert backend.read_output(handle, 3) == ("\u00e9 ", 6)
        with open(log, "ab") as f:
            f.write(b"\x93\n")
        assert backend.read_output(handle, 6) == ("\u2713\n", 10)
        assert backend.read_output(handle, 10) == ("", 10)
        # A bounded read that ends inside a character leaves it whole for the next one.
        log.write_text("progress: 0.25 note: \u00e9\u00e9\U0001f600\u2713\n", encoding="utf-8")
        backend.output_chunk_bytes = 5
        text, offset, reads = "", 0, 0
        while True:
            part, offset = backend.read_output(handle, offset)
            if not part:
                break
            assert "\ufffd" not in part
            text, reads = text + part, reads + 1
        assert text == log.read_text(encoding="utf-8") and reads > 5

