from __future__ import annotations

import json
import math
import shlex
import sys
from pathlib import Path

import pytest

from backends.base import Finished, JobState, Worker
from hybrid import history
from hybrid.errors import ConfigError
from hybrid.store import Store
from hybrid.targets import TargetSpec, build_command, build_env, parse_metrics, to_result
from hybrid.types import Candidate, ExperimentState, FailureKind, Objective, Result

OBJ = Objective("val_bpb", "minimize")
W = Worker("w00", "h100", 3.0)


def _fin(log: str, state=JobState.EXITED, code: int | None = 0, seconds: float = 1200.0) -> Finished:
    return Finished("j", "e0001", state, code, log, 0.0, seconds, W)


def test_parse_metrics_last_wins_and_ignores_prose():
    log = "step 10 loss: 3.2 (running)\nval_bpb: 1.5\nnote: not a number\nval_bpb: 0.997900\npeak_vram_mb: 45060.2\n"
    assert parse_metrics(log) == {"val_bpb": 0.9979, "peak_vram_mb": 45060.2}


def test_parse_metrics_reads_nan_and_exponents():
    m = parse_metrics("val_bpb: nan\nlr: 1e-3\nx = -2.5E+2\n")
    assert math.isnan(m["val_bpb"]) and m["lr"] == 1e-3 and m["x"] == -250.0


def test_done_result_and_cost():
    r = to_result(_fin("val_bpb: 0.99\n"), OBJ, "h100", 3.0)
    assert r.state is ExperimentState.DONE and r.value("val_bpb") == 0.99
    assert r.cost_usd == pytest.approx(1.0)  # 20 minutes at $3/h


@pytest.mark.parametrize(
    ("fin", "state", "kind", "reason"),
    [
        (_fin("boom\n", code=1), ExperimentState.CRASHED, FailureKind.CRASH, "exit code 1"),
        (_fin("done\n"), ExperimentState.CRASHED, FailureKind.NO_METRIC, "no metric 'val_bpb' printed"),
        (_fin("val_bpb: nan\n"), ExperimentState.CRASHED, FailureKind.NO_METRIC, "val_bpb is nan"),
        (_fin("torch.OutOfMemoryError: CUDA out of memory\n", code=1), ExperimentState.CRASHED, FailureKind.OOM,
         "exit code 1 (out of memory)"),
        (_fin("done\nMemoryError\n"), ExperimentState.CRASHED, FailureKind.OOM, "no metric 'val_bpb' printed (out of memory)"),
        (_fin("", code=137), ExperimentState.CRASHED, FailureKind.OOM, "killed: SIGKILL"),
        (_fin("val_bpb: 1.0\n", state=JobState.TIMEOUT, code=None), ExperimentState.TIMEOUT, FailureKind.TIMEOUT,
         "timed out after 60s"),
        (_fin("", state=JobState.CANCELLED, code=None), ExperimentState.CANCELLED, FailureKind.CANCELLED, "cancelled"),
        (_fin("", state=JobState.LOST, code=None), ExperimentState.CRASHED, FailureKind.LOST, "orchestrator lost the job"),
    ],
)
def test_failures_are_classified_once_with_kind_and_reason(fin, state, kind, reason):
    r = to_result(fin, OBJ, "h100", 3.0, timeout_s=60)
    assert r.state is state and r.failure is kind and reason in r.reason
    assert r.value("val_bpb") is None


def test_a_success_has_no_failure_kind():
    r = to_result(_fin("val_bpb: 0.99\n"), OBJ, "h100", 0.0)
    assert r.state is ExperimentState.DONE and r.failure is None and r.reason == ""


def test_the_failure_kind_survives_the_store_and_a_reason_is_never_reread(tmp_path):
    """Readers get the kind from the store: a result whose reason says nothing about memory is still
    an OOM when it was classified as one, and a reason mentioning memory does not make one."""
    store = Store(tmp_path / "state.sqlite")
    store.claim("c", "val_bpb")
    a = store.create(Candidate({}, "sobol"), "w0", "h100", 1, tmp_path)
    b = store.create(Candidate({}, "sobol"), "w0", "h100", 1, tmp_path)
    store.record(Result(a.id, ExperimentState.CRASHED, {}, "h100", 1.0, 0.0, "", "exit code 1", FailureKind.OOM))
    store.record(Result(b.id, ExperimentState.CRASHED, {}, "h100", 1.0, 0.0, "", "out of memory? no", FailureKind.CRASH))
    ea, eb = store.experiments()
    assert (ea.result.failure, eb.result.failure) == (FailureKind.OOM, FailureKind.CRASH)
    assert history.is_oom(ea) and not history.is_oom(eb)


def test_log_tail_is_bounded():
    log = "\n".join(f"line {i}" for i in range(1000))
    r = to_result(_fin(log, code=1), OBJ, "cpu", 0.0)
    assert r.log_tail.splitlines()[-1] == "line 999" and len(r.log_tail.splitlines()) == 40


def test_build_command_appends_quoted_args():
    cmd = build_command("{python} train.py", {"lr": 0.01, "name": "a b'c", "flag": True}, "e0003", "h100")
    parts = shlex.split(cmd)
    assert parts == [sys.executable, "train.py", "lr=0.01", "name=a b'c", "flag=true"]


def test_build_command_placeholders_and_shell_braces_survive():
    cmd = build_command("X=${HOME} run {args} --id {experiment_id} --hw {hardware}", {"d": 4}, "e0001", "h200")
    assert cmd == "X=${HOME} run d=4 --id e0001 --hw h200"


def test_env_carries_id_hardware_and_params():
    env = build_env({"A": "1"}, "e0002", "h100", {"lr": 0.5})
    assert env["A"] == "1" and env["HYBRID_EXPERIMENT_ID"] == "e0002" and env["HYBRID_HARDWARE"] == "h100"
    assert json.loads(env["HYBRID_PARAMS"]) == {"lr": 0.5}


def test_target_spec_errors(tmp_path):
    ok = {"name": "t", "command": "python x.py", "workdir": str(tmp_path), "metric": "loss", "direction": "maximize"}
    spec = TargetSpec.from_config(ok)
    assert spec.objective == Objective("loss", "maximize") and spec.workdir == Path(tmp_path)
    with pytest.raises(ConfigError, match=r"target.command: missing"):
        TargetSpec.from_config({**ok, "command": "???"})
    with pytest.raises(ValueError):  # the config rejects it first, with its one line (tests/test_config.py)
        TargetSpec.from_config({**ok, "direction": "down"})
    with pytest.raises(ConfigError, match=r"target.workdir: .* is not a directory"):
        TargetSpec.from_config({**ok, "workdir": str(tmp_path / "nope")})
    with pytest.raises(ConfigError, match=r"target.timeout_s: expected a positive number"):
        TargetSpec.from_config({**ok, "timeout_s": -1})
