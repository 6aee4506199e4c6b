"""The Slurm backend.

On a real cluster (CI starts one with .ci/slurm/start.sh): the shared conformance suite, faults
(a job scancelled behind our back, bad partitions/GRES, a controller that does not answer), resume
of queued jobs, and whole campaigns through the CLI. Without a cluster these skip, unless
HYBRID_REQUIRE_SLURM=1 (set by .ci/run), which turns the skip into a failure.

Everywhere: the batch script against a golden file and run by bash itself under an awkward path,
and the parsers and the state mapping on output recorded from Slurm 22.05.
"""

from __future__ import annotations

import functools
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from backends import _slurm as S
from backends.base import Backend, Finished, JobState, RunSpec, Worker
from backends.slurm import SlurmBackend
from hybrid.errors import BackendError, ConfigError
from hybrid.store import Store
from hybrid.targets import to_result
from hybrid.types import Candidate, Experiment, ExperimentState, FailureKind, Objective
from tests.backends.suite import (
    DETACHED,
    GATE,
    TREE,
    Detached,
    make_experiment,
    wait_until,
)
from tests.backends.suite_output import OutputFaultSuite

GOLDEN = Path(__file__).parent / "golden"
AWKWARD = "with space/a'; echo INJECTED; '$(x) 100%j"


# ---- is there a cluster? --------------------------------------------------------------------------
@functools.cache
def _cluster_problem() -> str | None:
    if shutil.which("sbatch") is None or shutil.which("sinfo") is None:
        return "sbatch/sinfo are not on PATH"
    try:
        p = subprocess.run(["sinfo", "-h", "-o", "%P|%G"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"sinfo: {e}"
    return f"sinfo: {p.stderr.strip()}" if p.returncode != 0 else None


@functools.cache
def _cluster_gres() -> str:
    p = subprocess.run(["sinfo", "-h", "-o", "%G"], capture_output=True, text=True, timeout=20)
    return p.stdout


@pytest.fixture
def slurm() -> None:
    problem = _cluster_problem()
    if problem:
        message = f"no Slurm cluster answers here ({problem}); start one with: sudo .ci/slurm/start.sh"
        if os.environ.get("HYBRID_REQUIRE_SLURM") == "1":
            pytest.fail(f"HYBRID_REQUIRE_SLURM=1 but {message}")
        pytest.skip(message)


def typed_gpus() -> None:
    """Skip unless the cluster offers the CI cluster's typed fake GPUs (conf/fleet/local_slurm.yaml)."""
    if "gpu:h100" not in _cluster_gres() or "gpu:h200" not in _cluster_gres():
        pytest.skip("this cluster has no gpu:h100 and gpu:h200 GRES (.ci/slurm/start.sh makes them)")


def prefix(tmp_path: Path) -> str:
    return "pytest-" + re.sub(r"[^\w.-]", "_", tmp_path.name)


def squeue(*args: str) -> list[list[str]]:
    p = subprocess.run(["squeue", "-h", "--states=all", *args], capture_output=True, text=True, timeout=30)
    return [line.split("|") for line in p.stdout.splitlines() if line.strip()]


def jobs_of(workdir_root: Path) -> list[list[str]]:
    """[job id, name, state] of every job Slurm still knows that ran under ``workdir_root``."""
    root = os.path.realpath(workdir_root)
    return [row[:3] for row in squeue("-o", "%i|%j|%T|%Z") if os.path.realpath(row[3]).startswith(root)]


# ---- the conformance suite, for real ----------------------------------------------------------------
class TestSlurm(OutputFaultSuite):
    job_timeout_s = 60.0

    @pytest.fixture(autouse=True)
    def _cluster(self, slurm: None) -> None:
        pass

    def make_backend(self, tmp_path: Path, n_workers: int) -> Backend:
        return SlurmBackend(max_jobs=n_workers, poll_interval_s=0.2, job_prefix=prefix(tmp_path))

    def job_has_ended(self, job_id: str, exp: Experiment) -> bool:
        rows = squeue("-j", job_id, "-o", "%T")
        gone = not rows or rows[0][0] not in S.ACTIVE_STATES
        return gone and (Path(exp.workdir) / S.STATE_DIR / S.EXIT_FILE).exists()

    # ---- Slurm only ---------------------------------------------------------------------------------
    def test_a_job_scancelled_behind_our_back_crashes_with_a_reason(self, backend: Backend, tmp_path: Path) -> None:
        exp, spec = self.job(backend, tmp_path, "victim", TREE)
        handle = backend.submit(exp, spec)
        self.started(spec)
        subprocess.run(["scancel", handle.job_id], check=True, timeout=30)  # someone else's scancel
        [f] = self.finish(backend)
        assert (f.state, f.exit_code) == (JobState.LOST, None)
        assert f"Slurm job {handle.job_id} was cancelled outside the campaign" in f.reason
        # slurmstepd's own words: in the reason, not in the middle of the job's output
        assert "; Slurm: slurmstepd" in f.reason and f"*** JOB {handle.job_id} ON" in f.reason, f.reason
        assert "slurmstepd" not in f.log, f.log
        self.assert_tree_gone(spec.workdir)
        result = to_result(f, Objective("val_bpb", "minimize"), "cpu", 0.0)
        assert result.state is ExperimentState.CRASHED and "outside the campaign" in result.reason
        assert len(backend.free_workers()) == len(backend.workers())  # the campaign goes on

    @pytest.mark.parametrize("how", ["end", "timeout", "cancel", "scancel"])
    @pytest.mark.parametrize("detached", ["setsid", "double_fork"])
    def test_a_detached_grandchild_dies_with_the_job(self, backend: Backend, tmp_path: Path, detached: str,
                                                      how: str) -> None:
        """Was: Slurm (proctrack/linuxproc, as in CI) lost track of a process reparented to init
        and left it running after the job's end, timeout and cancel alike."""
        with Detached(detached) as grandchild:
            then = "echo done" if how == "end" else "sleep 60"
            command = f"{grandchild.start} until [ -s ready ]; do sleep 0.02; done; {then}"
            exp, spec = self.job(backend, tmp_path, f"{detached}-{how}", command,
                                 timeout_s=3.0 if how == "timeout" else 60.0)
            handle = backend.submit(exp, spec)
            grandchild.wait_ready(spec.workdir, self.job_timeout_s)
            if how == "cancel":
                backend.cancel(handle.job_id)
            elif how == "scancel":
                subprocess.run(["scancel", handle.job_id], check=True, timeout=30)  # someone else's
            [f] = self.finish(backend)
            expected = {"end": JobState.EXITED, "timeout": JobState.TIMEOUT, "cancel": JobState.CANCELLED,
                        "scancel": JobState.LOST}[how]
            assert f.state is expected, f
            grandchild.assert_gone(f"the job's {how}")

    def test_a_queued_job_is_reattached_not_resubmitted(self, tmp_path: Path) -> None:
        held = SlurmBackend(max_jobs=1, poll_interval_s=0.2, job_prefix=prefix(tmp_path), sbatch_args=["--hold"])
        exp, spec = self.job(held, tmp_path, "queued", "echo 'val_bpb: 0.93'")
        handle = held.submit(exp, spec)
        held.detach()  # the orchestrator goes away while the job is still queued
        del held
        assert squeue("-j", handle.job_id, "-o", "%T") == [["PENDING"]]
        # the job id never reached the store: recover finds it by its name in the queue
        for name in (S.SUBMIT_FILE, S.JOB_FILE):
            (spec.workdir / S.STATE_DIR / name).unlink(missing_ok=True)
        again = self.make_backend(tmp_path, 1)
        try:
            recovered = again.recover(exp)
            assert recovered is not None and recovered.job_id == handle.job_id
            assert again.free_workers() == []
            subprocess.run(["scontrol", "release", handle.job_id], check=True, timeout=30)
            [f] = self.finish(again)
            assert (f.job_id, f.state, f.exit_code) == (handle.job_id, JobState.EXITED, 0)
            assert "val_bpb: 0.93" in f.log
            assert [row[0] for row in jobs_of(tmp_path)] == [handle.job_id]  # one job, never resubmitted
        finally:
            again.cancel_all()

    def test_jobs_get_the_fleets_typed_gpus(self, tmp_path: Path) -> None:
        typed_gpus()
        backend = SlurmBackend(fleet=[{"hardware": "h200", "count": 1, "hourly_usd": 3.5}], poll_interval_s=0.2,
                               job_prefix=prefix(tmp_path))
        try:
            assert backend.workers() == [Worker("h200-0", "h200", 3.5)]
            exp, spec = self.job(backend, tmp_path, "gpu", 'echo "cuda=$CUDA_VISIBLE_DEVICES worker=$HYBRID_WORKER"')
            handle = backend.submit(exp, spec)
            [f] = self.finish(backend)
            assert f.exit_code == 0 and re.search(r"cuda=\d+ worker=h200-0", f.log), f.log
            shown = subprocess.run(["scontrol", "show", "job", handle.job_id], capture_output=True, text=True).stdout
            assert "gpu:h200:1" in shown
        finally:
            backend.cancel_all()

    def test_queue_time_is_not_run_time(self, backend: Backend, tmp_path: Path) -> None:
        exp, spec = self.job(backend, tmp_path, "timed", "sleep 1")
        backend.submit(exp, spec)
        [f] = self.finish(backend)
        started = json.loads((spec.workdir / S.STATE_DIR / S.JOB_FILE).read_text())["started"]
        assert f.started == pytest.approx(started) and 0.9 < f.duration_s < 10


# ---- faults at construction ----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"partition": "nope"}, r"^backend\.partition: 'nope' is not a partition of this cluster \(partitions: "),
        ({"hardware": "a100"}, r"^backend\.gres: 'gpu:a100:1' is not offered by partition \w+"),
        ({"fleet": [{"hardware": "cpu"}, {"hardware": "h100", "partition": "gpuq"}]},
         r"^backend\.fleet\[1\]\.partition: 'gpuq' is not a partition"),
        ({"hardware": "cpu", "sbatch_args": ["--constraint=no-such-feature"]}, r"^backend: Slurm rejects these job options"),
    ],
)
def test_bad_partitions_and_gres_are_config_errors_before_any_submit(
    slurm: None, tmp_path: Path, kwargs: dict, message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        SlurmBackend(job_prefix=prefix(tmp_path), **kwargs)
    # nothing was submitted (others may use the cluster meanwhile: look only for this test's jobs)
    assert [row for row in squeue("-o", "%j") if row[0].startswith(prefix(tmp_path))] == []


def test_a_controller_that_does_not_answer_is_a_clear_error(slurm: None, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    dead_controller(tmp_path, monkeypatch)
    with pytest.raises(BackendError, match=r"^backend=slurm: the Slurm controller does not answer \(.*scontrol ping"):
        SlurmBackend()


def test_while_the_controller_is_away_recorded_ends_are_reported_and_the_rest_waits(
    slurm: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    backend = SlurmBackend(max_jobs=2, poll_interval_s=0.0, unreachable_timeout_s=3.0, job_prefix=prefix(tmp_path))
    try:
        ended = make_experiment(tmp_path / "exps" / "ended", "cpu-0", "ended")
        backend.submit(ended, RunSpec("echo 'val_bpb: 1.2'; exit 3", Path(ended.workdir), timeout_s=60))
        waiting = make_experiment(tmp_path / "exps" / "waiting", "cpu-1", "waiting")
        handle = backend.submit(waiting, RunSpec(GATE, Path(waiting.workdir), timeout_s=60))
        wait_until(lambda: (Path(ended.workdir) / S.STATE_DIR / S.EXIT_FILE).exists(), 60, "the first job to end")
        wait_until(lambda: (Path(waiting.workdir) / "started").exists(), 60, "the second job to start")
        dead_controller(tmp_path, monkeypatch)
        [f] = backend.poll()  # from the script's record alone
        assert (f.experiment_id, f.state, f.exit_code) == ("ended", JobState.EXITED, 3)
        assert backend.poll() == [] and [h.job_id for h in backend.running()] == [handle.job_id]
        time.sleep(3.5)
        with pytest.raises(BackendError, match=r"^the Slurm controller has not answered for \d+ s; the jobs are left"):
            backend.poll()
    finally:
        monkeypatch.undo()
        backend.cancel_all()


@pytest.mark.parametrize("accounting", ["sacct", "off"])
def test_a_batch_script_that_dies_early_is_lost_with_slurms_exit_code(
    slurm: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, accounting: str
) -> None:
    if accounting == "off":  # sacct then says "Slurm accounting storage is disabled": scontrol answers
        conf = slurm_conf()
        text = re.sub(r"(?m)^AccountingStorage\w*=.*$", "", conf.read_text())
        (tmp_path / "no-accounting.conf").write_text(text + "\nAccountingStorageType=accounting_storage/none\n")
        monkeypatch.setenv("SLURM_CONF", str(tmp_path / "no-accounting.conf"))
    backend = SlurmBackend(max_jobs=1, poll_interval_s=0.2, job_prefix=prefix(tmp_path), setup=["exit 7"])
    exp = make_experiment(tmp_path / "exps" / "early", "cpu-0", "early")
    handle = backend.submit(exp, RunSpec("echo 'val_bpb: 1.0'", Path(exp.workdir), timeout_s=60))
    [f] = backend.wait(60)
    assert (f.state, f.exit_code) == (JobState.LOST, None)
    assert f"Slurm job {handle.job_id} ended FAILED (exit code 7:0) before its batch script recorded" in f.reason


def slurm_conf() -> Path:
    conf = Path(os.environ.get("SLURM_CONF", "/etc/slurm/slurm.conf"))
    if not conf.is_file():
        pytest.skip(f"no readable {conf} to derive a changed config from")
    return conf


def dead_controller(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Point the Slurm commands of this process at a controller that is not there."""
    text = re.sub(r"(?m)^SlurmctldPort=.*$", "", slurm_conf().read_text())
    dead = tmp_path / "dead-slurm.conf"
    dead.write_text(text + "\nSlurmctldPort=1\nMessageTimeout=2\nTCPTimeout=1\n")
    monkeypatch.setenv("SLURM_CONF", str(dead))


@pytest.fixture
def no_slurm_on_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))


def test_missing_slurm_commands_are_a_clear_error(no_slurm_on_path: None) -> None:
    with pytest.raises(BackendError, match=r"^backend=slurm: sbatch, squeue, scancel, sinfo not found on PATH"):
        SlurmBackend()


def test_without_sbatch_the_cli_starts_nothing(tmp_path: Path) -> None:
    env = {**os.environ, "PATH": str(tmp_path)}
    p = subprocess.run([sys.executable, "-m", "hybrid", "target=example", "surrogate=none", "backend=slurm", "campaign.progress=plain"], cwd=tmp_path,
                       env=env, capture_output=True, text=True, timeout=120)
    assert p.returncode == 2, p.stderr
    assert re.fullmatch(r"BackendError: backend=slurm: sbatch, .* not found on PATH; .*\n", p.stderr), p.stderr
    assert not list(tmp_path.rglob("state.sqlite"))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"max_jobs": 0}, r"^backend\.max_jobs: expected at least 1"),
        ({"fleet": "big"}, r"^backend\.fleet: expected a list"),
        ({"fleet": [{"hardware": "h100", "cnt": 2}]}, r"^backend\.fleet\[0\]\.cnt: unknown key; did you mean count\?"),
        ({"fleet": [{"hardware": "h100", "count": 0}]}, r"^backend\.fleet\[0\]\.count: expected a number"),
        ({"fleet": [{"hardware": "h100", "hourly_usd": "cheap"}]}, r"^backend\.fleet\[0\]\.hourly_usd: expected a price"),
        ({"fleet": [{"hardware": "h100"}, {"hardware": "h100"}]}, r"^backend\.fleet\[1\]\.name: workers named h100-N"),
        ({"time_limit": "soon"}, r"^backend\.time_limit: 'soon' is not a Slurm time limit"),
        ({"partition": "a b"}, r"^backend: 'a b' is not a valid Slurm partition"),
    ],
)
def test_config_errors_name_the_field(fake_slurm_tools: None, kwargs: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        SlurmBackend(validate=False, **kwargs)


# ---- the batch script (no cluster needed) ----------------------------------------------------------------
@pytest.fixture
def fake_slurm_tools(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Slurm commands that fail: the backend is only built here, never asked to run anything."""
    fake = tmp_path / "fake-slurm"
    fake.mkdir()
    for tool in ("sbatch", "squeue", "scancel", "sinfo"):
        (fake / tool).write_text("#!/bin/sh\necho 'not a real Slurm' >&2\nexit 1\n")
        (fake / tool).chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake}{os.pathsep}{os.environ['PATH']}")


def render(workdir: Path, command: str, timeout_s: float | None = 900.0, **kwargs) -> tuple[SlurmBackend, str]:
    backend = SlurmBackend(validate=False, job_prefix="example-sobol-s0", **kwargs)
    worker = backend.workers()[0]
    exp = Experiment("e0007", Candidate({"lr": 0.01}, "test"), worker.name, worker.hardware, 1, workdir=str(workdir))
    spec = RunSpec(command, workdir, {"HYBRID_EXPERIMENT_ID": "e0007", "HYBRID_PARAMS": '{"lr": 0.01, "name": "it\'s"}'},
                   timeout_s=timeout_s)
    argv = backend.sbatch_argv(workdir, workdir / S.STATE_DIR / S.SCRIPT_FILE)
    return backend, backend.batch_script(exp, spec, worker, argv)


def test_batch_script_matches_the_golden_file(fake_slurm_tools: None) -> None:
    workdir = Path("/campaigns") / AWKWARD / "experiments" / "e0007"
    _, script = render(workdir, "{python} train.py lr=0.01 'name=it'\"'\"'s'".replace("{python}", "/venv/bin/python"),
                       fleet=[{"hardware": "h100", "count": 2, "hourly_usd": 2.5, "partition": "gpu"}],
                       account="proj-42", setup=["module load cuda/12.4"])
    golden = GOLDEN / "slurm_job.sbatch"
    if os.environ.get("UPDATE_GOLDEN") == "1":
        golden.write_text(script)
    assert script == golden.read_text(), "batch script changed: check it, then UPDATE_GOLDEN=1 pytest ..."


def test_time_limit_is_the_timeout_plus_a_margin_or_explicit(fake_slurm_tools: None, tmp_path: Path) -> None:
    assert "#SBATCH --time=20\n" in render(tmp_path, "true", 900.0)[1]  # (900 + 300 s) in minutes
    assert "#SBATCH --time=2\n" in render(tmp_path, "true", 61.0, time_margin_s=0)[1]  # rounded up
    assert "#SBATCH --time=02:00:00\n" in render(tmp_path, "true", 900.0, time_limit="02:00:00")[1]
    assert "--time" not in render(tmp_path, "true", None)[1]  # no timeout: the partition's default


def test_gres_follows_the_hardware_label(fake_slurm_tools: None, tmp_path: Path) -> None:
    fleet = [{"hardware": "cpu", "count": 1}, {"hardware": "h100", "count": 1},
             {"hardware": "a100", "count": 1, "gres": "gpu:a100-80g:1"}, {"hardware": "t4", "gres": None}]
    backend = SlurmBackend(validate=False, fleet=fleet)
    exp = Experiment("e1", Candidate({}, "test"), "x", "x", 1, workdir=str(tmp_path))
    spec = RunSpec("true", tmp_path)
    gres = [re.findall(r"--gres=(\S+)", backend.batch_script(exp, spec, w, ["sbatch"])) for w in backend.workers()]
    assert gres == [[], ["gpu:h100:1"], ["gpu:a100-80g:1"], []]
    assert [w.name for w in backend.workers()] == ["cpu-0", "h100-0", "a100-0", "t4-0"]


def test_backend_slurm_with_a_fleet_is_built_from_the_hydra_config(fake_slurm_tools: None) -> None:
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    from hybrid.cli import ROOT, _register

    _register()
    with initialize_config_dir(str(ROOT / "conf"), version_base=None):
        cfg = compose("config", overrides=["target=example", "backend=slurm", "fleet=reference", "backend.validate=false"])
    backend = instantiate(cfg.backend)
    assert isinstance(backend, SlurmBackend) and backend.job_prefix == "example-hybrid-s0"
    workers = backend.workers()
    assert [w.name for w in workers] == [f"h100-{i}" for i in range(13)] + [f"h200-{i}" for i in range(3)]
    assert {(w.hardware, w.hourly_usd) for w in workers} == {("h100", 2.5), ("h200", 3.5)}
    with initialize_config_dir(str(ROOT / "conf"), version_base=None):
        cfg = compose("config", overrides=["backend=slurm", "backend.validate=false", "backend.max_jobs=3"])
    assert [w.name for w in instantiate(cfg.backend).workers()] == ["cpu-0", "cpu-1", "cpu-2"]


def run_script(tmp_path: Path, command: str, timeout_s: float | None = 30.0,
               on_start: Callable[[subprocess.Popen], None] | None = None) -> tuple[Path, dict, str]:
    """Render the batch script for an awkward workdir and run it with bash, as Slurm would.
    Returns the workdir, exit.json and the job's log (the script writes it; its own stdout, which
    Slurm sends to .hybrid/slurm.out, gets nothing)."""
    workdir = tmp_path / AWKWARD
    workdir.mkdir(parents=True)
    _, script = render(workdir, command, timeout_s)
    (workdir / S.STATE_DIR).mkdir()
    path = workdir / S.STATE_DIR / S.SCRIPT_FILE
    path.write_text(script)
    proc = subprocess.Popen(["bash", str(path)], cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)
    if on_start is not None:
        on_start(proc)
    out, _ = proc.communicate(timeout=60)
    assert out == "", out
    return workdir, json.loads((workdir / S.STATE_DIR / S.EXIT_FILE).read_text()), (workdir / "run.log").read_text()


def process_gone(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[-1].split()[0] in ("Z", "X")


def assert_tree_gone(workdir: Path) -> None:
    for name in ("shell.pid", "child.pid"):
        pid = int((workdir / name).read_text())
        wait_until(lambda pid=pid: process_gone(pid), 5.0, f"{name} {pid} to die")


def test_the_script_records_the_exit_code_and_delivers_the_environment(fake_slurm_tools: None, tmp_path: Path) -> None:
    cmd = 'echo "id=$HYBRID_EXPERIMENT_ID params=$HYBRID_PARAMS pwd=$(pwd)"; exit 3'
    workdir, record, out = run_script(tmp_path, cmd)
    assert (record["state"], record["exit_code"]) == ("exited", 3)
    assert record["ended"] >= record["started"]
    assert f"id=e0007 params={{\"lr\": 0.01, \"name\": \"it's\"}} pwd={workdir}" in out
    assert "INJECTED" not in out.splitlines()  # the path was never run as code


def test_the_scripts_timer_kills_the_whole_tree(fake_slurm_tools: None, tmp_path: Path) -> None:
    workdir, record, out = run_script(tmp_path, TREE, timeout_s=0.5)
    assert (record["state"], record["exit_code"]) == ("timeout", None)
    assert_tree_gone(workdir)
    assert record["ended"] - record["started"] < 10 and "Killed" not in out


def test_a_signalled_script_stops_the_tree_and_says_so(fake_slurm_tools: None, tmp_path: Path) -> None:
    def term_when_started(proc: subprocess.Popen) -> None:
        wait_until(lambda: (tmp_path / AWKWARD / "started").exists(), 10, "the command to start")
        os.kill(proc.pid, signal.SIGTERM)  # what scancel and Slurm's time limit do first

    workdir, record, _ = run_script(tmp_path, TREE, on_start=term_when_started)
    assert (record["state"], record["exit_code"]) == ("signalled", None)
    assert_tree_gone(workdir)


@pytest.fixture
def grandchild(request: pytest.FixtureRequest) -> Iterator[Detached]:
    with Detached(request.param) as it:
        yield it


@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="the script lists processes in /proc (Linux)")
@pytest.mark.parametrize("how", ["end", "timeout", "signalled"])
# Not the relay: a process that forks and exits every millisecond is never there when bash lists
# /proc, so only a cgroup (Slurm's proctrack/cgroup) or the local runner's subreaper catches it.
@pytest.mark.parametrize("grandchild", [kind for kind in DETACHED if kind != "relay"], indirect=True)
def test_the_script_kills_a_detached_grandchild(fake_slurm_tools: None, tmp_path: Path, grandchild: Detached,
                                                 how: str) -> None:
    """A process that left the command's session is found by the mark in its environment: at the
    command's end, its timeout and a signal (scancel) alike, even one that answers SIGTERM by
    starting another."""
    ready = tmp_path / AWKWARD / "ready"

    def term_when_ready(proc: subprocess.Popen) -> None:
        grandchild.wait_ready(ready.parent)
        os.kill(proc.pid, signal.SIGTERM)

    then = "echo done" if how == "end" else "sleep 60"
    command = f"{grandchild.start} until [ -s ready ]; do sleep 0.02; done; {then}"
    _, record, out = run_script(tmp_path, command, timeout_s=3.0 if how == "timeout" else 60.0,
                                on_start=term_when_ready if how == "signalled" else None)
    grandchild.wait_ready(ready.parent, 0)  # it really started before the end
    assert record["state"] == {"end": "exited", "timeout": "timeout", "signalled": "signalled"}[how], out
    grandchild.assert_gone(f"the script's {how}")


# ---- Slurm's answers, as recorded from Slurm 22.05 -------------------------------------------------------
SQUEUE = """\
7|RUNNING|None|/runs/c/experiments/e0001
8|PENDING|Resources|/runs/c/experiments/e0002
3|PENDING|BeginTime|(null)
1|FAILED|NonZeroExitCode|/tmp/sl
28|CANCELLED|None|/tmp/sl
5|TIMEOUT|TimeLimit|/tmp/sl
9|COMPLETED|None|/tmp/sl/odd dir/a'; echo INJ; '$(x) 100%j
"""
SACCT = """\
1|FAILED|3:0|/tmp/sl
2|CANCELLED by 0|0:0|/tmp/sl
4|NODE_FAIL|0:0|/tmp/sl
5|TIMEOUT|0:0|/tmp/sl
9|COMPLETED|0:0|/tmp/sl/odd dir/a'; echo INJ; '$(x) 100%j
10|FAILED|0:53|/tmp/sl/b\\s 5%j
"""
SCONTROL = """\
JobId=28 JobName=wrap
   UserId=root(0) GroupId=root(0) MCS_label=N/A
   Priority=4294901732 Nice=0 Account=root QOS=normal
   JobState=CANCELLED Reason=None Dependency=(null)
   Requeue=1 Restarts=0 BatchFlag=1 Reboot=0 ExitCode=0:15
   RunTime=00:00:01 TimeLimit=365-00:00:00 TimeMin=N/A
   Partition=debug AllocNode:Sid=localhost:10588
   NodeList=vm
   TRES=cpu=1,node=1,billing=1
   WorkDir=/tmp/sl/with space/x=1
   StdErr=/dev/null
   StdIn=/dev/null
   StdOut=/dev/null
   Power=
"""


def test_parse_squeue() -> None:
    jobs = S.parse_squeue(SQUEUE)
    assert [(j.job_id, j.state, j.active) for j in jobs.values()] == [
        ("7", "RUNNING", True), ("8", "PENDING", True), ("3", "PENDING", True), ("1", "FAILED", False),
        ("28", "CANCELLED", False), ("5", "TIMEOUT", False), ("9", "COMPLETED", False)]
    assert (jobs["8"].reason, jobs["3"].workdir, jobs["1"].reason) == ("Resources", None, "NonZeroExitCode")
    assert jobs["9"].workdir == "/tmp/sl/odd dir/a'; echo INJ; '$(x) 100%j"


def test_parse_sacct() -> None:
    jobs = S.parse_sacct(SACCT)
    assert [(j.state, j.detail, j.exit_code, j.signal) for j in jobs.values()] == [
        ("FAILED", "FAILED", 3, 0), ("CANCELLED", "CANCELLED by 0", 0, 0), ("NODE_FAIL", "NODE_FAIL", 0, 0),
        ("TIMEOUT", "TIMEOUT", 0, 0), ("COMPLETED", "COMPLETED", 0, 0), ("FAILED", "FAILED", 0, 53)]
    assert jobs["10"].workdir == "/tmp/sl/b\\s 5%j"


def test_parse_scontrol() -> None:
    job = S.parse_scontrol(SCONTROL)
    assert job == S.SlurmJob("28", "CANCELLED", "CANCELLED", None, 0, 15, "/tmp/sl/with space/x=1")
    assert S.parse_scontrol("slurm_load_jobs error: Invalid job id specified") is None


@pytest.mark.parametrize(
    ("text", "parsed"),
    [
        ("gpu:h100:2(S:0-1),gpu:h200:1", [("gpu", "h100", 2), ("gpu", "h200", 1)]),
        ("gpu:4", [("gpu", None, 4)]),
        ("gpu", [("gpu", None, 1)]),
        ("gpu:a100", [("gpu", "a100", 1)]),
        ("(null)", []),
        ("", []),
    ],
)
def test_parse_gres(text: str, parsed: list) -> None:
    assert S.parse_gres(text) == parsed


def test_gres_offered() -> None:
    offered = S.parse_gres("gpu:h100:2(S:0-1),gpu:h200:1")
    assert S.gres_offered(("gpu", "h100", 2), offered) and S.gres_offered(("gpu", None, 1), offered)
    assert not S.gres_offered(("gpu", "h200", 2), offered) and not S.gres_offered(("gpu", "a100", 1), offered)


def job(state: str, code: int | None = 0, sig: int | None = 0) -> S.SlurmJob:
    return S.SlurmJob("42", state.split()[0], state, "", code, sig, "/w")


EXITED_0 = {"state": "exited", "exit_code": 0}
EXITED_3 = {"state": "exited", "exit_code": 3}
SIGNALLED = {"state": "signalled", "exit_code": None}


@pytest.mark.parametrize(
    ("slurm_job", "record", "ours", "state", "code", "reason"),
    [
        (job("COMPLETED"), EXITED_0, False, JobState.EXITED, 0, "^$"),
        (job("FAILED", 3), EXITED_3, False, JobState.EXITED, 3, "^exit code 3$"),
        (job("CANCELLED"), SIGNALLED, True, JobState.CANCELLED, None, "^cancelled$"),
        (job("CANCELLED by 1000"), SIGNALLED, False, JobState.LOST, None,
         r"^Slurm job 42 was cancelled outside the campaign \(CANCELLED by 1000\): scancel by someone else"),
        (job("CANCELLED by 0"), None, True, JobState.CANCELLED, None, "^cancelled$"),  # cancelled while queued
        (job("TIMEOUT"), SIGNALLED, False, JobState.TIMEOUT, None, "^killed by Slurm at the job's time limit"),
        (job("FAILED", 124), {"state": "timeout", "exit_code": None}, False, JobState.TIMEOUT, None,
         "^killed after the timeout$"),
        (job("NODE_FAIL"), None, False, JobState.LOST, None, "^Slurm job 42 ended NODE_FAIL: its node failed$"),
        (job("PREEMPTED"), SIGNALLED, False, JobState.LOST, None, "preempted by a higher-priority job"),
        (job("OUT_OF_MEMORY", 0, 9), {"state": "exited", "exit_code": 137}, False, JobState.EXITED, 137,
         "^out of memory: Slurm job 42 exceeded its memory limit"),
        (job("FAILED", 0, 53), None, False, JobState.LOST, None,
         r"ended FAILED \(exit code 0:53\) before its batch script recorded how the command ended"),
        (None, SIGNALLED, False, JobState.LOST, None, "stopped by a signal outside the campaign"),
        (None, EXITED_3, False, JobState.EXITED, 3, "^exit code 3$"),  # Slurm forgot it; the record did not
    ],
)
def test_state_mapping(slurm_job: S.SlurmJob | None, record: dict | None, ours: bool, state: JobState,
                       code: int | None, reason: str) -> None:
    outcome = S.classify(slurm_job, record, ours)
    assert outcome is not None
    assert (outcome.state, outcome.exit_code) == (state, code)
    assert re.search(reason, outcome.reason), outcome.reason


def test_nothing_known_is_no_verdict_yet() -> None:
    assert S.classify(None, None, False) is None


def test_out_of_memory_reaches_the_result() -> None:
    outcome = S.classify(job("OUT_OF_MEMORY", 0, 9), {"state": "exited", "exit_code": 137}, False)
    assert outcome is not None
    finished = Finished("42", "e1", outcome.state, outcome.exit_code, "step 10\n" + outcome.note + "\n", 0.0, 60.0,
                        Worker("h100-0", "h100", 2.5), outcome.reason)
    result = to_result(finished, Objective("val_bpb", "minimize"), "h100", 2.5)
    assert result.state is ExperimentState.CRASHED and "out of memory" in result.reason
    assert result.failure is FailureKind.OOM


# ---- whole campaigns through the CLI -----------------------------------------------------------------------
FAST = ["target=example", "surrogate=none", "target.env.EXAMPLE_SECONDS=0.3", "campaign.progress=plain", "campaign.poll_interval_s=0.05",
        "proposer=sobol", "budget.max_experiments=6"]


def hybrid(args: list[str], cwd: Path, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "hybrid", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout)


def mlflow_shape(root: Path) -> tuple:
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{root / 'runs' / 'mlflow.db'}")
    [exp] = [e for e in client.search_experiments() if e.name != "Default"]
    runs = client.search_runs([exp.experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(parents) == 1
    child_keys = {(frozenset(r.data.params), frozenset(r.data.metrics),
                   frozenset(k for k in r.data.tags if not k.startswith("mlflow."))) for r in children}
    parent_params = {k for k in parents[0].data.params if k.split(".")[0] not in ("backend", "fleet")}
    # (a recommendation's sd exists only once it ran twice, the noise per hardware once measured there: the data's)
    parent_metrics = {k for k in parents[0].data.metrics if not (k.startswith("noise_sd_") or k.endswith("_sd"))}
    return len(children), child_keys, frozenset(parent_metrics), frozenset(parent_params)


def test_a_campaign_with_backend_slurm_looks_like_a_local_one(slurm: None, tmp_path: Path) -> None:
    typed_gpus()
    (tmp_path / "slurm").mkdir()
    (tmp_path / "local").mkdir()
    p = hybrid([*FAST, "backend=slurm", "fleet=local_slurm", "backend.poll_interval_s=0.2"], tmp_path / "slurm")
    assert p.returncode == 0, p.stdout + p.stderr
    workers = "backend.workers=[{name:h100-0,hardware:h100,hourly_usd:2.5},{name:h100-1,hardware:h100," \
              "hourly_usd:2.5},{name:h200-0,hardware:h200,hourly_usd:3.5}]"
    q = hybrid([*FAST, workers], tmp_path / "local")
    assert q.returncode == 0, q.stdout + q.stderr
    tsv = {k: (tmp_path / k / "runs" / "example-sobol-s0" / "results.tsv").read_text().splitlines()
           for k in ("slurm", "local")}
    assert tsv["slurm"][0] == tsv["local"][0] and len(tsv["slurm"]) == len(tsv["local"]) == 7
    rows = [line.split("\t") for line in tsv["slurm"][1:]]
    assert {r[2] for r in rows} == {"done"} and {r[5] for r in rows} == {"h100", "h200"}
    assert all(float(r[6]) > 0 for r in rows)  # cost from the fleet's $/h and the real run time
    on_slurm, on_local = mlflow_shape(tmp_path / "slurm"), mlflow_shape(tmp_path / "local")
    assert on_slurm == on_local, [(a, b, set(a) ^ set(b)) if isinstance(a, frozenset | set) else (a, b)
                                  for a, b in zip(on_slurm, on_local, strict=True) if a != b]
    # one Slurm job per experiment, named <campaign>-<experiment id>
    # (the campaign may end while Slurm still completes the last jobs)
    wait_until(lambda: not any(state in S.ACTIVE_STATES for *_, state in jobs_of(tmp_path / "slurm")), 30,
               "Slurm to complete the jobs")
    jobs = jobs_of(tmp_path / "slurm")
    assert sorted(name for _, name, _ in jobs) == [f"example-sobol-s0-e000{i}" for i in range(1, 7)]
    assert {state for _, _, state in jobs} == {"COMPLETED"}


def test_kill_minus_9_then_resume_reattaches_slurm_jobs(slurm: None, tmp_path: Path) -> None:
    args = [*FAST, "backend=slurm", "backend.max_jobs=3", "backend.poll_interval_s=0.2", "tracking=none",
            "target.env.EXAMPLE_SECONDS=8"]
    campaign = tmp_path / "runs" / "example-sobol-s0"
    log = tmp_path / "first-run.log"
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "hybrid", *args], cwd=tmp_path, stdout=out,
                                stderr=subprocess.STDOUT)

    def running() -> set[str]:
        store = Store(campaign / "state.sqlite")
        try:
            return {e.job_id for e in store.experiments() if e.state is ExperimentState.RUNNING and e.job_id}
        finally:
            store.close()

    def active_jobs() -> set[str]:
        return {row[0] for row in jobs_of(tmp_path) if row[2] in S.ACTIVE_STATES}

    try:
        wait_until(lambda: len(active_jobs()) == 3 or proc.poll() is not None, 180, "three Slurm jobs")
        assert proc.poll() is None, log.read_text()
        wait_until(lambda: len(running()) == 3, 30, "the store to hold three running jobs")
    finally:
        proc.kill()  # kill -9 the orchestrator: the jobs stay on Slurm
        proc.wait()
    orphans = running()
    assert len(orphans) == 3 and active_jobs() <= orphans, log.read_text()
    p = hybrid(args, tmp_path)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "3 running jobs re-attached" in p.stdout
    store = Store(campaign / "state.sqlite")
    exps = store.experiments()
    store.close()
    assert [e.state for e in exps] == [ExperimentState.DONE] * 6, [(e.id, e.result and e.result.reason) for e in exps]
    # every experiment ran as exactly one Slurm job: the re-attached ones were not resubmitted
    assert sorted(row[0] for row in jobs_of(tmp_path)) == sorted(e.job_id for e in exps)
    assert orphans <= {e.job_id for e in exps}
