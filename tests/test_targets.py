from __future__ import annotations

import json
import math
import shlex
import sys
from pathlib import Path

import pytest

from backends.base import Finished, JobState, Worker
from hybrid.errors import ConfigError
from hybrid.targets import TargetSpec, build_command, build_env, parse_metrics, to_result
from hybrid.types import ExperimentState, Objective

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
    ("fin", "state", "reason"),
    [
        (_fin("boom\n", code=1), ExperimentState.CRASHED, "exit code 1"),
        (_fin("done\n"), ExperimentState.CRASHED, "no metric 'val_bpb' printed"),
        (_fin("val_bpb: nan\n"), ExperimentState.CRASHED, "val_bpb is nan"),
        (_fin("torch.OutOfMemoryError: CUDA out of memory\n", code=1), ExperimentState.CRASHED, "exit code 1 (out of memory)"),
        (_fin("", code=137), ExperimentState.CRASHED, "killed: SIGKILL"),
        (_fin("val_bpb: 1.0\n", state=JobState.TIMEOUT, code=None), ExperimentState.TIMEOUT, "timed out after 60s"),
        (_fin("", state=JobState.CANCELLED, code=None), ExperimentState.CANCELLED, "cancelled"),
        (_fin("", state=JobState.LOST, code=None), ExperimentState.CRASHED, "orchestrator lost the job"),
    ],
)
def test_failures_are_classified_with_reason(fin, state, reason):
    r = to_result(fin, OBJ, "h100", 3.0, timeout_s=60)
    assert r.state is state and reason in r.reason
    assert r.value("val_bpb") is None


def test_oom_is_flagged_for_the_surrogate():
    r = to_result(_fin("CUDA out of memory\n", code=1), OBJ, "h100", 0.0)
    assert r.metrics["oom"] == 1.0


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
    with pytest.raises(ConfigError, match=r"target.direction: 'down' is not minimize or maximize"):
        TargetSpec.from_config({**ok, "direction": "down"})
    with pytest.raises(ConfigError, match=r"target.workdir: .* is not a directory"):
        TargetSpec.from_config({**ok, "workdir": str(tmp_path / "nope")})
    with pytest.raises(ConfigError, match=r"target.timeout_s: expected a positive number"):
        TargetSpec.from_config({**ok, "timeout_s": -1})
