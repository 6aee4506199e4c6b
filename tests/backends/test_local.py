"""The local backend: the shared suite, plus worker configuration, GPUs and orchestrator death."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import psutil
import pytest
from omegaconf import OmegaConf

import backends.local
from backends.base import Backend, JobState, RunSpec, Worker
from backends.local import LocalBackend
from hybrid.errors import ConfigError
from hybrid.types import Experiment
from tests.backends.suite import GATE, TREE, make_experiment, wait_until
from tests.backends.suite_output import OutputFaultSuite


class TestLocal(OutputFaultSuite):
    job_timeout_s = 15.0

    def make_backend(self, tmp_path: Path, n_workers: int) -> Backend:
        return LocalBackend(workers=n_workers)

    def job_has_ended(self, job_id: str, exp: Experiment) -> bool:
        pid = int(job_id.split("@")[0])
        return (Path(exp.workdir) / ".hybrid" / "exit.json").exists() and not self.process_alive(pid)

    def process_alive(self, pid: int) -> bool:
        # psutil rather than the suite's /proc reading: these tests also run on macOS.
        try:
            return psutil.Process(pid).status() not in (psutil.STATUS_ZOMBIE, psutil.STATUS_DEAD)
        except psutil.Error:
            return False

    # ---- local-only behaviour -------------------------------------------------------------------
    def test_job_survives_the_orchestrator_being_killed(self, tmp_path: Path) -> None:
        workdir = tmp_path / "exps" / "e1"
        exp = make_experiment(workdir, "w00", "e1")
        orchestrator = textwrap.dedent(
            """
            import sys, time
            from pathlib import Path
            from backends.base import RunSpec
            from backends.local import LocalBackend
            from hybrid.types import Candidate, Experiment
            workdir = Path(sys.argv[1])
            exp = Experiment(id="e1", candidate=Candidate({}, "test"), worker="w00", hardware="cpu",
                             wave=0, workdir=str(workdir))
            handle = LocalBackend(workers=1).submit(exp, RunSpec(sys.argv[2], workdir, timeout_s=60))
            print(handle.job_id, flush=True)
            time.sleep(60)
            """
        )
        cmd = GATE + "; echo 'val_bpb: 0.5'"
        proc = subprocess.Popen(
            [sys.executable, "-c", orchestrator, str(workdir), cmd], stdout=subprocess.PIPE, text=True
        )
        assert proc.stdout is not None
        job_id = proc.stdout.readline().strip()
        wait_until(lambda: (workdir / "started").exists(), 10, "the job to start")
        proc.kill()  # kill -9 the orchestrator
        proc.wait()
        proc.stdout.close()
        backend = LocalBackend(workers=1)
        try:
            assert backend.attach(job_id, exp) is not None
            self.release(workdir)
            [f] = self.finish(backend)
            assert (f.state, f.exit_code) == (JobState.EXITED, 0) and "val_bpb: 0.5" in f.log
        finally:
            backend.cancel_all()

    def test_a_killed_runner_is_reported_lost_and_its_job_stopped(
        self, backend: Backend, tmp_path: Path
    ) -> None:
        exp, spec = self.job(backend, tmp_path, "orphan", TREE)
        handle = backend.submit(exp, spec)
        self.started(spec)
        os.kill(int(handle.job_id.split("@")[0]), signal.SIGKILL)
        [f] = self.finish(backend)
        assert (f.state, f.exit_code) == (JobState.LOST, None)
        assert "disappeared" in f.reason
        self.assert_tree_gone(spec.workdir)

    def test_cancel_kills_a_job_that_ignores_sigterm(
        self, backend: Backend, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setattr(backends.local, "KILL_GRACE_S", 0.3)
        exp, spec = self.job(backend, tmp_path, "stubborn", "trap '' TERM; " + TREE)
        handle = backend.submit(exp, spec)
        self.started(spec)
        t0 = time.monotonic()
        backend.cancel(handle.job_id)
        assert time.monotonic() - t0 < 2.0
        [f] = self.finish(backend)
        assert f.state is JobState.CANCELLED
        self.assert_tree_gone(spec.workdir)

    def test_processes_a_job_leaves_behind_are_stopped(self, backend: Backend, tmp_path: Path) -> None:
        cmd = "sleep 30 & echo $! > child.pid; echo $$ > shell.pid; echo 'val_bpb: 1.1'"
        exp, spec = self.job(backend, tmp_path, "leaver", cmd)
        backend.submit(exp, spec)
        [f] = self.finish(backend)
        assert (f.state, f.exit_code) == (JobState.EXITED, 0)
        self.assert_tree_gone(spec.workdir)

    def test_attach_of_an_unknown_job_returns_none(self, backend: Backend, tmp_path: Path) -> None:
        exp = make_experiment(tmp_path / "exps" / "ghost", "w00")
        assert backend.attach("999999999@1", exp) is None
        assert backend.attach("slurm-12345", exp) is None
        assert backend.free_workers() == backend.workers()

    def test_custom_log_name(self, backend: Backend, tmp_path: Path) -> None:
        exp = make_experiment(tmp_path / "exps" / "log", "w00")
        backend.submit(exp, RunSpec("echo 'val_bpb: 2.0'", Path(exp.workdir), log_name="train.log"))
        [f] = self.finish(backend)
        assert "val_bpb: 2.0" in f.log
        assert "val_bpb: 2.0" in (Path(exp.workdir) / "train.log").read_text()


# ---- worker configuration -----------------------------------------------------------------------------
def test_a_number_makes_identical_workers() -> None:
    assert LocalBackend(workers=3, hardware="epyc", hourly_usd=0.5).workers() == [
        Worker("w00", "epyc", 0.5),
        Worker("w01", "epyc", 0.5),
        Worker("w02", "epyc", 0.5),
    ]


def test_a_list_names_each_worker() -> None:
    workers = OmegaConf.create(  # as Hydra passes it
        [{"name": "big", "hardware": "h100", "hourly_usd": 2.5, "gpus": [0, 1]}, {"name": "small"}]
    )
    assert LocalBackend(workers=workers, hourly_usd=0.1).workers() == [
        Worker("big", "h100", 2.5, (0, 1)),
        Worker("small", "cpu", 0.1, ()),
    ]


def test_built_from_its_hydra_config() -> None:
    from hydra.utils import instantiate

    from hybrid.config import LocalBackendConfig

    backend = instantiate(OmegaConf.structured(LocalBackendConfig(workers=3, hourly_usd=1.0)))
    assert isinstance(backend, LocalBackend)
    assert [w.name for w in backend.workers()] == ["w00", "w01", "w02"]


@pytest.mark.parametrize(
    ("kwargs", "field", "hint"),
    [
        ({"workers": 0}, "backend.workers", "at least 1"),
        ({"workers": "many"}, "backend.workers", "backend.workers=4"),
        ({"workers": []}, "backend.workers", "non-empty"),
        ({"workers": ["gpu0"]}, "backend.workers[0]", "mapping"),
        (
            {"workers": [{"name": "a"}, {"name": "b", "hourly_usd": "cheap"}]},
            "backend.workers[1].hourly_usd",
            "2.5",
        ),
        ({"workers": [{"name": "a", "gpu": [0]}]}, "backend.workers[0].gpu", "did you mean gpus"),
        ({"workers": [{"name": "a"}, {"name": "a"}]}, "backend.workers[1].name", "unique"),
        ({"workers": [{"name": "a", "gpus": [-1]}]}, "backend.workers[0].gpus", "[0, 1]"),
        ({"workers": [{"name": "a", "hardware": ""}]}, "backend.workers[0].hardware", "h100"),
        ({"hourly_usd": -1.0}, "backend.hourly_usd", ">= 0"),
        ({"hardware": ""}, "backend.hardware", "h100"),
        ({"gpus": ["x"]}, "backend.gpus", "[0, 1]"),
        ({"gpus": [0, 0]}, "backend.gpus", "once"),
        ({"gpus": [0], "workers": [{"name": "a"}]}, "backend.gpus", "not both"),
    ],
)
def test_config_errors_name_the_field(kwargs: dict[str, Any], field: str, hint: str, no_gpus: None) -> None:
    with pytest.raises(ConfigError) as err:
        LocalBackend(**kwargs)
    assert str(err.value).startswith(field + ":") and hint in str(err.value)


# ---- GPUs ---------------------------------------------------------------------------------------------
@pytest.fixture
def no_gpus(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A PATH on which nvidia-smi does not exist (the rest of PATH still works)."""
    fake = tmp_path / "fakebin"
    fake.mkdir()
    (fake / "nvidia-smi").write_text("#!/bin/sh\necho 'NVIDIA-SMI has failed' >&2; exit 9\n")
    (fake / "nvidia-smi").chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake}{os.pathsep}{os.environ['PATH']}")


def fake_gpus(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, *names: str) -> None:
    fake = tmp_path / "fakebin"
    fake.mkdir(exist_ok=True)
    lines = "".join(f"{i}, {n}\\n" for i, n in enumerate(names))
    (fake / "nvidia-smi").write_text(f"#!/bin/sh\nprintf '{lines}'\n")
    (fake / "nvidia-smi").chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake}{os.pathsep}{os.environ['PATH']}")


def test_gpus_auto_without_a_gpu_is_a_config_error(no_gpus: None) -> None:
    with pytest.raises(ConfigError, match=r"^backend.gpus=auto: no NVIDIA GPU found.*backend.workers=N"):
        LocalBackend(gpus="auto")


def test_gpus_auto_makes_one_worker_per_gpu(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake_gpus(tmp_path, monkeypatch, "NVIDIA H100 80GB HBM3", "NVIDIA H200")
    assert LocalBackend(gpus="auto", hourly_usd=3.0).workers() == [
        Worker("gpu0", "h100", 3.0, (0,)),
        Worker("gpu1", "h200", 3.0, (1,)),
    ]
    assert {w.hardware for w in LocalBackend(gpus="auto", hardware="h100-sxm").workers()} == {"h100-sxm"}


@pytest.mark.parametrize(
    ("gpu_name", "label"),
    [
        ("NVIDIA A100-SXM4-80GB", "a100"),
        ("Tesla V100-SXM2-16GB", "v100"),
        ("NVIDIA GeForce RTX 4090", "rtx4090"),
        ("NVIDIA L40S", "l40s"),
        ("NVIDIA RTX A6000", "a6000"),
        ("Some Accelerator", "gpu"),
    ],
)
def test_hardware_label_from_the_gpu_name(
    gpu_name: str, label: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_gpus(tmp_path, monkeypatch, gpu_name)
    assert [w.hardware for w in LocalBackend(gpus="auto").workers()] == [label]


def test_gpu_workers_see_only_their_gpus(tmp_path: Path, no_gpus: None) -> None:
    backend = LocalBackend(gpus=[0, 3])
    assert [(w.name, w.hardware, w.gpus) for w in backend.workers()] == [
        ("gpu0", "gpu", (0,)),
        ("gpu3", "gpu", (3,)),
    ]
    exp = make_experiment(tmp_path / "exps" / "g", "gpu3")
    cmd = 'echo "cuda=$CUDA_VISIBLE_DEVICES worker=$HYBRID_WORKER"'
    # A CUDA_VISIBLE_DEVICES from the target's env must not put two jobs on one GPU.
    backend.submit(exp, RunSpec(cmd, Path(exp.workdir), env={"CUDA_VISIBLE_DEVICES": "0,1,2,3"}))
    [f] = backend.wait(15)
    assert "cuda=3 worker=gpu3" in f.log
