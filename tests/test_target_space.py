"""Targets bring their space: `target=gpt` alone searches gpt_tiny (`space=...` still wins), and a
space whose names the target rejects is one ConfigError before anything is dispatched."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from hybrid.cli import compose
from hybrid.errors import ConfigError
from hybrid.space import SearchSpace
from hybrid.targets import TargetSpec, check_params

ROOT = Path(__file__).resolve().parents[1]


def space_file(name: str) -> dict:
    return yaml.safe_load((ROOT / "conf" / "space" / f"{name}.yaml").read_text())["params"]


def baseline(space: str) -> dict:
    return SearchSpace.from_config(space_file(space)).defaults()


def target(overrides: list[str]) -> TargetSpec:
    return TargetSpec.from_config(compose(overrides)["target"])


# ---- each target selects its own space; the command line overrides it ----------------------------------
@pytest.mark.parametrize(
    ("overrides", "target_name", "space"),
    [
        ([], "gpt", "gpt_tiny"),  # the default target brings its space
        (["target=gpt"], "gpt", "gpt_tiny"),
        (["target=gpt_h100"], "gpt_h100", "gpt_h100"),
        (["target=example"], "example", "example"),  # as before
        (["target=gpt", "space=example"], "gpt", "example"),  # the command line wins...
        (["space=example", "target=gpt"], "gpt", "example"),  # ...in either order
        (["target=gpt", "space=gpt_h100"], "gpt", "gpt_h100"),
        (["target=gpt_h100", "space=gpt_tiny"], "gpt_h100", "gpt_tiny"),
        (["target=command", "target.command=python train.py"], "command", "example"),  # as before
    ],
)
def test_a_target_selects_its_space_and_space_on_the_command_line_wins(overrides, target_name, space):
    cfg = compose(overrides)
    assert cfg["target"]["name"] == target_name
    assert cfg["space"]["params"] == space_file(space)


def test_an_empty_space_filled_from_the_command_line_still_works_with_target_gpt():
    cfg = compose(["target=gpt", "space=none", "+space.params.depth={type:int,low:2,high:4,default:3}"])
    assert cfg["space"]["params"] == {"depth": {"type": "int", "low": 2, "high": 4, "default": 3}}


def test_the_real_cli_composes_the_same(tmp_path):
    """Through `hybrid --cfg job` (Hydra's own printout of the config a run would use), from a
    directory outside the checkout."""
    def job(*overrides: str) -> dict:
        p = subprocess.run([sys.executable, "-m", "hybrid", *overrides, "--cfg", "job"], cwd=tmp_path,
                           capture_output=True, text=True, timeout=120)
        assert p.returncode == 0, p.stderr
        return yaml.safe_load(p.stdout)

    assert job("target=gpt")["space"]["params"] == space_file("gpt_tiny")
    assert job("target=gpt", "space=example")["space"]["params"] == space_file("example")


# ---- a space the target rejects fails once, before any dispatch -----------------------------------------
def test_the_gpt_targets_accept_their_own_spaces_baselines(tmp_path, monkeypatch):
    monkeypatch.setenv("HYBRID_CACHE", str(tmp_path))  # a check reads and prepares no data
    for name, space in [("gpt", "gpt_tiny"), ("gpt_h100", "gpt_h100"), ("gpt", "gpt_h100")]:
        check_params(target([f"target={name}"]), baseline(space))
    assert list(tmp_path.iterdir()) == []


def test_the_gpt_target_rejects_the_example_space_in_one_line_at_once():
    started = time.monotonic()
    with pytest.raises(ConfigError) as err:
        check_params(target(["target=gpt"]), baseline("example"))
    assert time.monotonic() - started < 30  # a validation, not a training run
    message = str(err.value)
    assert message.startswith("space: target gpt rejects the parameters: lr: unknown key; known: preset, depth")
    assert message.endswith("pick a space made for it (leave out space= to get the target's own, "
                            "e.g. space=gpt_tiny for target=gpt)")
    assert "\n" not in message


def test_a_bad_value_is_named_too():
    with pytest.raises(ConfigError, match=r"rejects the parameters: window_pattern: 'SXL' must be made of S and L"):
        check_params(target(["target=gpt"]), {**baseline("gpt_tiny"), "window_pattern": "SXL"})


def test_the_check_gets_the_params_and_placeholders_as_an_experiment_does(tmp_path):
    (tmp_path / "check.py").write_text(
        "import json, os, sys\n"
        "json.dump({'argv': sys.argv[1:], 'params': os.environ['HYBRID_PARAMS'], 'cwd': os.getcwd(),\n"
        "           'extra': os.environ['EXTRA']}, open('seen.json', 'w'))\n"
        "sys.exit(0 if sys.argv[-1] != 'depth=99' else 1)\n")
    spec = TargetSpec.from_config({"name": "mine", "command": "{python} train.py", "workdir": str(tmp_path),
                                   "env": {"EXTRA": "1"},
                                   "check_command": "{python} check.py {experiment_id} {args}"})
    check_params(spec, {"lr": 0.01, "depth": 4})
    seen = yaml.safe_load((tmp_path / "seen.json").read_text())
    assert seen == {"argv": ["check", "lr=0.01", "depth=4"], "params": '{"depth": 4, "lr": 0.01}',
                    "cwd": str(tmp_path), "extra": "1"}
    assert not (tmp_path / "params.json").exists()  # the user's tree gets no files from the check


def test_a_failing_check_reports_its_first_stderr_line(tmp_path):
    script = "import sys; print('noise on stdout'); sys.stderr.write('ValueError: no knob x\\nmore\\n'); sys.exit(3)"
    (tmp_path / "check.py").write_text(script)
    spec = TargetSpec.from_config({"name": "mine", "command": "true", "workdir": str(tmp_path),
                                   "check_command": "{python} check.py"})
    with pytest.raises(ConfigError, match=r"^space: target mine rejects the parameters: no knob x; pick a space"):
        check_params(spec, {"x": 1})


def test_a_check_that_hangs_is_stopped(tmp_path, monkeypatch):
    import hybrid.targets

    monkeypatch.setattr(hybrid.targets, "CHECK_TIMEOUT_S", 0.5)
    spec = TargetSpec.from_config({"name": "mine", "command": "true", "workdir": str(tmp_path),
                                   "check_command": "sleep 30"})
    with pytest.raises(ConfigError, match=r"^target.check_command: still running after 0.5s"):
        check_params(spec, {})


def test_no_check_command_runs_nothing(tmp_path):
    spec = target(["target=example"])
    assert spec.check_command is None
    check_params(spec, {"lr": "anything"})  # the example target has no check: as before
    with pytest.raises(ConfigError, match=r"^target.check_command: expected a command"):
        TargetSpec.from_config({"name": "x", "command": "true", "workdir": str(tmp_path), "check_command": " "})


def test_cli_target_gpt_with_the_example_space_exits_2_before_any_experiment(tmp_path):
    started = time.monotonic()
    p = subprocess.run([sys.executable, "-m", "hybrid", "target=gpt", "space=example", "tracking=none",
                        "budget.max_experiments=2", "campaign.progress=plain"], cwd=tmp_path,
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 2, p.stdout + p.stderr
    lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in p.stderr + p.stdout, p.stderr
    assert lines[0].startswith("ConfigError: space: target gpt rejects the parameters: lr: unknown key; known: ")
    assert lines[0].endswith("(leave out space= to get the target's own, e.g. space=gpt_tiny for target=gpt)")
    assert not list(tmp_path.rglob("run.log")) and not list(tmp_path.rglob("state.sqlite"))  # nothing ran
    assert time.monotonic() - started < 60
