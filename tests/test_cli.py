"""The command line for real, in subprocesses: bad input, kill -9 + resume, Ctrl-C, multirun."""

from __future__ import annotations

import csv
import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hybrid.store import Store
from hybrid.types import ExperimentState

FAST = ["target=example", "surrogate=none", "target.env.EXAMPLE_SECONDS=0.3", "campaign.progress=plain", "campaign.poll_interval_s=0.05"]


def hybrid(args: list[str], cwd: Path, timeout: float = 120, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "hybrid", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, **kw)


def interruptible() -> None:
    """In the child before it runs: SIGINT back to its default, as a terminal's Ctrl-C finds it.
    A shell that starts pytest in the background (``nohup .ci/run &``) leaves SIGINT ignored, every
    child inherits that, and Python then installs no KeyboardInterrupt handler."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def start(args: list[str], cwd: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "hybrid", *args], cwd=cwd, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, preexec_fn=interruptible)


def runners_alive(campaign_dir: Path) -> list[int]:
    """Local job runners still alive for this campaign (orphans, if the campaign is over)."""
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            stat = (proc / "stat").read_text()
        except OSError:
            continue
        if "backends._runner" in cmd and str(campaign_dir) in cmd and ") Z" not in stat:
            pids.append(int(proc.name))
    return pids


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["proposer=nope"], r"ConfigError: proposer=nope: no such option; available: .*sobol"),
        (["backend=cloud"], r"ConfigError: backend=cloud: no such option; available: .*local"),
        (["campaign.nope=1"], r"ConfigError: campaign.nope: unknown key; allowed: name, dir"),
        (["+space.params.wd={type:float,low:0.5,high:0.1}"], r"ConfigError: space.params.wd: low \(0.5\) must be < high \(0.1\)"),
        (["+space.params.wd={type:float,low:zero,high:1}"], r"ConfigError: space.params.wd.low: expected a number, got 'zero'"),
        (["+space.params.wd={type:real,low:0,high:1}"], r"ConfigError: space.params.wd.type: 'real' is not one of"),
        (["+space.params.wd={type:float,low:0,high:1,lo:0.5}"], r"ConfigError: space.params.wd: unknown field\(s\) \['lo'\]"),
        (["target=command"], r"ConfigError: target.command: missing"),
        (["campaign.seed=abc"], r"ConfigError: campaign.seed: .*abc"),
        (["budget.max_experiments=-3"], r"ConfigError: budget.max_experiments: expected a positive number"),
        (["backend.workers=[{name:a,hardware:cpu,price:1}]"], r"ConfigError: backend.workers\[0\]"),
        # typed config (hybrid/config.py): the key, the value and what is allowed
        (["campaign.mode=bogus"], r"ConfigError: campaign.mode: 'bogus' is not one of async, sync$"),
        (["target.direction=up"], r"ConfigError: target.direction: 'up' is not one of minimize, maximize$"),
        (["campaign.findings=maybe"], r"ConfigError: campaign.findings: 'maybe' is not one of true, no_gp, false$"),
        (["budget.max_experiments=lots"], r"ConfigError: budget.max_experiments: expected an integer, got 'lots'$"),
        (["campaign.on_interrupt=stop"], r"ConfigError: campaign.on_interrupt: 'stop' is not one of cancel, detach$"),
        (["campaign.progress=fancy"], r"ConfigError: campaign.progress: 'fancy' is not one of auto, rich, plain, none$"),
        (["stopping.name=never"], r"ConfigError: stopping.name: 'never' is not one of budget, cost_aware$"),
        (["campaign.validate_top_k=-1"], r"ConfigError: campaign.validate_top_k: expected an integer >= 0, got -1$"),
        (["campaign.replicates=-1"], r"ConfigError: campaign.replicates: expected an integer >= 0, got -1 \(0 turns it off\)$"),
        (["campaign.confirm_top_k=two"], r"ConfigError: campaign.confirm_top_k: expected an integer, got 'two'$"),
        (["space=mine"], r"ConfigError: space=mine: no such option; available: .*example.* "
                         r"\(or add conf/space/mine.yaml to the current directory\)$"),
        (["stopping=cost_aware", "stopping.window=0"], r"ConfigError: stopping.window: expected a positive integer"),
        (["campaign.validate_top_k=2"], r"ConfigError: campaign.validate_top_k: set campaign.target_hardware too"),
        (["campaign.prefetch_pool=maybe"], r"ConfigError: campaign.prefetch_pool: 'maybe' is not one of true, inline, false$"),
        (["surrogate=gp", "surrogate.hardware=pooled"], r"ConfigError: surrogate.hardware: 'pooled' is not task or noise"),
    ],
)
def test_bad_input_is_one_line_exit_2_and_starts_nothing(tmp_path, args, message):
    p = hybrid(["target=example", "surrogate=none", *args], tmp_path, timeout=60)  # the old defaults
    assert p.returncode == 2, p.stderr
    lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, p.stderr
    assert re.match(message, lines[0]), lines[0]
    assert "Traceback" not in p.stderr + p.stdout
    assert list(tmp_path.iterdir()) == []  # nothing started, nothing written (no runs/<name>/)


def test_main_job_runs_a_real_campaign(tmp_path):
    p = hybrid([*FAST, "budget.max_experiments=4", "backend.workers=2", "proposer=sobol"], tmp_path)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "stopped: budget.max_experiments reached (4)" in p.stdout
    campaign = tmp_path / "runs" / "example-sobol-s0"
    assert len((campaign / "results.tsv").read_text().splitlines()) == 5
    assert (tmp_path / "runs" / "mlflow.db").exists()


@pytest.mark.slow
def test_kill_minus_9_at_random_moments_then_resume_loses_nothing(tmp_path):
    args = [*FAST, "budget.max_experiments=14", "backend.workers=4", "proposer=optuna", "tracking=none"]
    campaign = tmp_path / "runs" / "example-optuna-s0"
    rng = random.Random(1234)
    for _ in range(4):
        proc = start(args, tmp_path)
        time.sleep(rng.uniform(1.5, 3.5))  # python + hydra start takes ~1 s, then dispatch goes on
        proc.kill()  # SIGKILL: no cleanup at all
        proc.wait()
    p = hybrid(args, tmp_path, timeout=180)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "resumed campaign" in p.stdout

    store = Store(campaign / "state.sqlite")
    exps = store.experiments()
    counted = [e for e in exps if not e.requeued]
    assert len(counted) == 14, [(e.id, e.state, e.result and e.result.reason) for e in exps]
    # every counted experiment ran to its own end: DONE, or the example's real out-of-memory crash
    assert [(e.id, e.state.name, e.result and e.result.reason) for e in counted
            if e.state is not ExperimentState.DONE and "out of memory" not in e.result.reason] == []
    assert len({e.id for e in exps}) == len(exps)
    for e in exps:
        log = (Path(e.workdir) / "run.log").read_text() if e in counted else ""
        if e.state is ExperimentState.DONE:  # the recorded result is the one the job printed
            assert f"val_bpb: {e.value('val_bpb'):.6f}" in log
        elif e in counted:
            assert "CUDA out of memory" in log
    for e in exps:  # every lost experiment was re-run exactly once
        if e.requeued:
            reruns = [x for x in counted if x.params == e.params]
            assert len(reruns) == 1
    tsv = (campaign / "results.tsv").read_text().splitlines()[1:]
    assert sorted(line.split("\t")[0] for line in tsv) == sorted(e.id for e in exps)
    assert runners_alive(campaign) == []  # no job left orphaned


def _wait_for(proc: subprocess.Popen, pattern: str, timeout: float = 60) -> str:
    seen = ""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        seen += line
        if re.search(pattern, seen):
            return seen
    raise AssertionError(f"never saw {pattern!r} in:\n{seen}")


@pytest.mark.parametrize("on_interrupt", ["cancel", "detach"])
def test_ctrl_c_cancels_or_detaches(tmp_path, on_interrupt):
    seconds = "30" if on_interrupt == "cancel" else "2"
    args = ["target=example", "surrogate=none", "campaign.progress=plain", f"target.env.EXAMPLE_SECONDS={seconds}", "backend.workers=2",
            "budget.max_experiments=2", "proposer=sobol", "tracking=none", f"campaign.on_interrupt={on_interrupt}",
            "campaign.findings=false"]  # findings.md + plots take seconds: the detached jobs would end first
    campaign = tmp_path / "runs" / "example-sobol-s0"
    proc = start(args, tmp_path)
    _wait_for(proc, r"e0002 -> ")
    time.sleep(0.3)
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 130, out
    store = Store(campaign / "state.sqlite")
    states = [e.state for e in store.experiments()]
    store.close()
    if on_interrupt == "cancel":
        assert states == [ExperimentState.CANCELLED] * 2
        assert "running experiments cancelled" in out
        assert runners_alive(campaign) == []
    else:
        assert states == [ExperimentState.RUNNING] * 2  # left running for a resume
        assert len(runners_alive(campaign)) == 2
        p = hybrid(args, tmp_path)
        assert p.returncode == 0, p.stdout + p.stderr
        assert "2 running jobs re-attached" in p.stdout
        store = Store(campaign / "state.sqlite")
        assert [e.state for e in store.experiments()] == [ExperimentState.DONE] * 2


@pytest.mark.slow
def test_multirun_makes_one_campaign_and_parent_run_per_job(tmp_path):
    from mlflow import MlflowClient

    p = hybrid(["-m", "proposer=sobol,optuna", "campaign.seed=0,1", "budget.max_experiments=3", *FAST,
                "target.env.EXAMPLE_SECONDS=0.1"], tmp_path, timeout=300)
    assert p.returncode == 0, p.stdout + p.stderr
    names = sorted(f"example-{prop}-s{seed}" for prop in ("sobol", "optuna") for seed in (0, 1))
    assert sorted(d.name for d in (tmp_path / "runs").iterdir() if (d / "state.sqlite").exists()) == names
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}")
    for name in names:
        exp = client.get_experiment_by_name(name)
        assert exp is not None, name
        runs = client.search_runs([exp.experiment_id])
        parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
        children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
        assert len(parents) == 1 and len(children) == 3
        assert {r.data.tags["mlflow.parentRunId"] for r in children} == {parents[0].info.run_id}


CONSOLE_SCRIPT = Path(sys.executable).with_name("hybrid")  # installed by pip install -e .


@pytest.mark.parametrize("entry", ["console script", "python -m hybrid"])
def test_help_lists_the_groups_and_the_subcommands(tmp_path, entry):
    cmd = [str(CONSOLE_SCRIPT)] if entry == "console script" else [sys.executable, "-m", "hybrid"]
    p = subprocess.run([*cmd, "--help"], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    for group in ("target", "space", "backend", "proposer", "surrogate", "stopping", "tracking"):
        assert f"{group}:" in p.stdout
    assert "hybrid report campaign.name=NAME" in p.stdout and "hybrid compare SWEEP_DIR" in p.stdout
    assert "hybrid/config.py" in p.stdout  # where every option is explained


@pytest.mark.parametrize(("command", "usage"), [("report", "usage: hybrid report"),
                                                ("compare", "usage: hybrid compare")])
def test_subcommand_help_prints_its_usage_and_exits_0(tmp_path, command, usage):
    for flag in ("--help", "-h"):
        p = subprocess.run([str(CONSOLE_SCRIPT), command, flag], cwd=tmp_path, capture_output=True, text=True,
                           timeout=60)
        assert p.returncode == 0, p.stderr
        assert p.stdout.startswith(usage) and p.stderr == ""
    assert not list(tmp_path.iterdir())  # nothing written


def test_a_space_file_of_the_users_project_is_found_from_its_directory(tmp_path):
    """The quickstart: conf/space/mine.yaml in your own project, then `hybrid space=mine` there.
    A conf/config.yaml of the project (its own Hydra app's) is not taken for hybrid's."""
    project = tmp_path / "myproject"
    (project / "conf" / "space").mkdir(parents=True)
    (project / "conf" / "space" / "mine.yaml").write_text(
        "params:\n  lr: {type: float, low: 0.005, high: 0.05, log: true, default: 0.02}\n")
    (project / "conf" / "config.yaml").write_text("defaults: [not_hybrid]\nlr: 3\n")
    args = ["target=example", "space=mine", "tracking=none", "budget.max_experiments=2",
            "target.env.EXAMPLE_SECONDS=0", "campaign.progress=plain"]
    p = hybrid(args, project, timeout=180)
    assert p.returncode == 0, p.stdout + p.stderr
    campaign = project / "runs" / "example-hybrid-s0"
    with open(campaign / "results.tsv", newline="") as f:
        params = [row["params"] for row in csv.DictReader(f, delimiter="\t")]
    assert len(params) == 2 and all(set(json.loads(x)) == {"lr"} for x in params), params  # mine's names only
    assert "lr=0.02" in p.stdout  # mine's default is the baseline
    # hybrid report finds it the same way
    (campaign / "findings.md").unlink()
    p = hybrid(["report", *args[:2]], project, timeout=120)
    assert p.returncode == 0, p.stdout + p.stderr
    assert (campaign / "findings.md").is_file()


@pytest.fixture(autouse=True)
def _no_leftovers(tmp_path):
    yield
    for pid in runners_alive(tmp_path):
        os.killpg(pid, signal.SIGKILL)
