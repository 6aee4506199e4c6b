"""model.train: config, the time-budgeted loop on a real tiny model, the final block, failures."""

from __future__ import annotations

import math
import re
import subprocess
import sys
from pathlib import Path

import pytest

from hybrid.targets import parse_metrics
from model.errors import ConfigError
from model.train import format_results, load_config, lr_multiplier, train

ROOT = Path(__file__).resolve().parents[2]
BLOCK_KEYS = ["val_bpb", "training_seconds", "total_seconds", "peak_vram_mb", "mfu_percent", "total_tokens_M",
              "num_steps", "num_params_M", "depth"]


def tiny_args(data_cfg: dict) -> list[str]:
    """The gpt_tiny preset shrunk to a couple of seconds, on the session's small dataset."""
    return ["preset=gpt_tiny", "depth=2", "aspect_ratio=32", "seq_len=64", "device_batch_size=8",
            "total_batch_size=512", "eval_tokens=2048", "eval_batch_size=8", "warmup_steps_uncounted=2",
            "log_every=1", *(f"data.{k}={v}" for k, v in data_cfg.items())]


def run_cli(args: list[str], timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "model.train", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout)


def test_presets_and_overrides():
    tiny = load_config(["preset=gpt_tiny", "depth=3", "optim.matrix_lr=0.05"])
    assert (tiny.depth, tiny.seq_len, tiny.optim.matrix_lr, tiny.data["vocab_size"]) == (3, 256, 0.05, 2048)
    ref = load_config(["preset=gpt_h100"])
    assert (ref.depth, ref.aspect_ratio, ref.head_dim, ref.seq_len) == (8, 64, 128, 2048)
    assert (ref.total_batch_size, ref.device_batch_size, ref.time_budget_s, ref.data["vocab_size"]) == (2**19, 128, 300, 8192)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["dpeth=8"], r"dpeth: unknown key; known: .*depth"),
        (["optim.matrx_lr=0.1"], r"optim.matrx_lr: unknown key"),
        (["depth=abc"], r"depth: "),
        (["preset=huge"], r"preset: 'huge' is not one of auto, .*gpt_tiny"),
        (["total_batch_size=1000"], r"total_batch_size: 1000 is not a multiple of device_batch_size x seq_len"),
        (["window_pattern=SXL"], r"window_pattern: 'SXL' must be made of S and L"),
        (["optim.warmdown_ratio=1.5"], r"optim.warmdown_ratio: 1.5 must be within \[0, 1\]"),
    ],
)
def test_bad_keys_are_config_errors(args, message):
    with pytest.raises(ConfigError, match=message):
        load_config(args)


def test_bad_key_on_the_cli_is_one_line_exit_2():
    p = run_cli(["dpeth=8"], timeout=60)
    assert p.returncode == 2
    lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("ConfigError: dpeth: unknown key") and "Traceback" not in p.stderr


def test_lr_schedule_follows_budget_progress():
    assert lr_multiplier(0.0, 0.1, 0.5, 0.0) == 0.0
    assert lr_multiplier(0.05, 0.1, 0.5, 0.0) == pytest.approx(0.5)
    assert lr_multiplier(0.3, 0.1, 0.5, 0.0) == 1.0
    assert lr_multiplier(0.75, 0.1, 0.5, 0.0) == pytest.approx(0.5)
    assert lr_multiplier(1.0, 0.1, 0.5, 0.1) == pytest.approx(0.1)
    assert lr_multiplier(0.9, 0.0, 0.0, 0.0) == 1.0


def test_tiny_model_trains_on_cpu_and_loss_falls(prepared_data_cfg):
    logs: list[str] = []
    cfg = load_config([*tiny_args(prepared_data_cfg), "time_budget_s=4", "optim.matrix_lr=0.05"])
    m = train(cfg, log=logs.append)
    losses = [float(x) for x in re.findall(r"loss (\d+\.\d+)", "\n".join(logs))]
    assert len(losses) >= 5 and losses[-1] < losses[0] - 0.5, losses
    assert m["training_seconds"] >= 4.0 and m["num_steps"] > cfg.warmup_steps_uncounted
    assert 0 < m["val_bpb"] < 10 and m["num_params_M"] > 0 and m["mfu_percent"] == 0.0  # no known peak on a CPU


def test_the_final_block_parses_with_the_campaign_parser():
    m = {"val_bpb": 0.9979, "training_seconds": 300.1, "total_seconds": 325.9, "peak_vram_mb": 45060.2,
         "mfu_percent": 39.8, "total_tokens_M": 499.6, "num_steps": 953.0, "num_params_M": 50.3, "depth": 8.0}
    block = format_results(m)
    assert [ln.split(":")[0] for ln in block.splitlines()[1:]] == BLOCK_KEYS
    assert parse_metrics("step 1 | loss 3.2\n" + block) == pytest.approx(m, rel=1e-3)


def test_cli_prints_progress_and_the_block(prepared_data_cfg):
    p = run_cli([*tiny_args(prepared_data_cfg), "time_budget_s=2"])
    assert p.returncode == 0, p.stdout + p.stderr
    assert "step 00001 | loss" in p.stdout
    metrics = parse_metrics(p.stdout)
    assert set(BLOCK_KEYS) <= set(metrics) and metrics["depth"] == 2
    # the progress contract: "progress: <fraction> train_loss: <value>", rising fractions in (0, 1]
    points = [ln.split() for ln in p.stdout.splitlines() if ln.startswith("progress: ")]
    fractions = [float(f[1]) for f in points]
    assert 2 <= len(points) <= 16 and fractions == sorted(fractions) and fractions[0] > 0 and fractions[-1] <= 1
    assert all(f[2] == "train_loss:" and math.isfinite(float(f[3])) for f in points)
    assert "progress" not in metrics  # not a result: the final block is what counts


def test_exploding_lr_fails_fast_with_exit_1(prepared_data_cfg):
    p = run_cli([*tiny_args(prepared_data_cfg), "time_budget_s=60", "optim.matrix_lr=1000",
                 "optim.embedding_lr=1000", "optim.unembedding_lr=1000", "optim.scalar_lr=1000"])
    assert p.returncode == 1, p.stdout + p.stderr
    assert re.search(r"^FAIL", p.stdout, re.M)
    steps = re.findall(r"step (\d+)", p.stdout)
    assert len(steps) < 30  # it stopped at once, not after the 60 s budget
    assert "val_bpb:" not in p.stdout


def test_with_prepare_false_missing_data_names_the_prepare_command(tmp_path):
    p = run_cli(["preset=gpt_tiny", "prepare=false", f"data.cache_dir={tmp_path}"], timeout=60)
    assert p.returncode == 2
    assert "python -m model.prepare" in p.stderr and "Traceback" not in p.stderr


@pytest.mark.slow
def test_missing_data_is_prepared_once_by_concurrent_first_runs(tmp_path):
    """Two experiments starting together on a machine without data (a campaign's first wave): both
    train, the dataset is built once (the other run waits on prepare's lock, then finds it ready)."""
    from model.data import is_prepared
    from model.prepare import data_dir
    from tests.model.conftest import SMALL_DATA

    data = {**SMALL_DATA, "cache_dir": str(tmp_path)}
    args = [sys.executable, "-m", "model.train", *tiny_args(data), "time_budget_s=1", "threads=1"]
    runs = [subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            for _ in range(2)]
    outputs = [run.communicate(timeout=240)[0] for run in runs]
    assert [run.returncode for run in runs] == [0, 0], outputs
    assert all("val_bpb" in parse_metrics(out) for out in outputs), outputs
    assert sum("prepare: ready at" in out for out in outputs) == 1, outputs
    assert any("data: nothing prepared at" in out for out in outputs)
    assert is_prepared(data_dir(data))


def test_check_validates_the_settings_without_data_or_torch(tmp_path):
    """check=true (a campaign's target.check_command): exit 0 for valid settings, the usual one-line
    ConfigError (exit 2) for bad ones, at once: no data read or prepared, torch not even imported."""
    code = ("import sys; from model.train import main; main(sys.argv[1:]); "
            "print('torch imported:', 'torch' in sys.modules)")
    base = [sys.executable, "-c", code, "preset=gpt_tiny", "check=true", f"data.cache_dir={tmp_path}"]
    ok = subprocess.run([*base, "depth=3", "optim.matrix_lr=0.05"], cwd=ROOT, capture_output=True, text=True,
                        timeout=60)
    assert ok.returncode == 0, ok.stderr
    assert "check: the settings are valid" in ok.stdout and "torch imported: False" in ok.stdout
    assert "step" not in ok.stdout and list(tmp_path.iterdir()) == []
    for bad, message in [("lr=0.01", "ConfigError: lr: unknown key; known: "),
                         ("n_kv_head=3", "ConfigError: n_kv_head: 3 must divide the number of heads (4)"),
                         ("data.vocab_size=12", "ConfigError: data.vocab_size: 12 must be in [257")]:
        p = subprocess.run([*base, bad], cwd=ROOT, capture_output=True, text=True, timeout=60)
        lines = p.stderr.strip().splitlines()
        assert p.returncode == 2 and len(lines) == 1 and lines[0].startswith(message), (bad, p.stderr)
