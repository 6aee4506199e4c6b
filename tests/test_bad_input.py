"""Every mistake one line, through the real command line: ``ConfigError: <field>: <fix>``, exit
code 2, no traceback, nothing started and nothing written (no ``runs/<name>/`` left behind).
Then the outcomes a pipeline reads: exit 3 when no experiment succeeded, and a campaign that
survives its stdout being closed (``hybrid ... | head -1``)."""

from __future__ import annotations

import os
import re
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from hybrid.store import Store

# the example target, as small as it gets: one experiment, no tracking, no findings
BASE = ["target=example", "surrogate=none", "tracking=none", "campaign.progress=plain", "campaign.findings=false",
        "target.env.EXAMPLE_SECONDS=0", "budget.max_experiments=1", "campaign.poll_interval_s=0.05"]


def hybrid(args: list[str], cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "hybrid", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout)


def tree(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*")}


def assert_one_config_error(p: subprocess.CompletedProcess, message: str) -> None:
    assert p.returncode == 2, p.stdout + p.stderr
    lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, p.stderr
    assert re.match(message, lines[0]), lines[0]
    assert "Traceback" not in p.stderr + p.stdout


@pytest.mark.parametrize(("args", "message"), [
    # a campaign name is one directory name under runs/: nothing written outside it
    (["campaign.name=.."], r"^ConfigError: campaign\.name: '\.\.' must be one directory name"),
    (["campaign.name=../x"], r"^ConfigError: campaign\.name: '\.\./x' must be one directory name"),
    (["campaign.name=a/b"], r"^ConfigError: campaign\.name: 'a/b' must be one directory name \(no '/'"),
    (["campaign.name=.hidden"], r"^ConfigError: campaign\.name: '\.hidden' must be one directory name"),
    # values checked before the baseline is dispatched
    (["campaign.poll_interval_s=-1"], r"^ConfigError: campaign\.poll_interval_s: expected a number >= 0, got -1"),
    (["campaign.poll_interval_s=inf"], r"^ConfigError: campaign\.poll_interval_s: expected a number >= 0, got inf"),
    # a misspelled key added with + is not silently ignored: the valid ones are named
    (["+budget.max_experimnets=1"], r"^ConfigError: budget\.max_experimnets: unknown key; did you mean "
                                    r"max_experiments\? allowed: max_experiments, max_hours, max_cost_usd$"),
    (["+campaign.nmae=x"], r"^ConfigError: campaign\.nmae: unknown key; did you mean name\? allowed: name, dir"),
    (["+budgett.max_experiments=1"], r"^ConfigError: budgett: unknown key; did you mean budget\? allowed: target"),
    (["+backend.worker=2"], r"^ConfigError: backend\.worker: unknown key; did you mean workers\?"),
    (["+tracking.url=x"], r"^ConfigError: tracking\.url: unknown key; did you mean uri\?"),
    (["proposer=sobol", "+proposer.scrambel=false"], r"^ConfigError: proposer\.scrambel: unknown key; did you mean "
                                                     r"scramble\?"),
    # without +, the same line (Hydra's hint to add it with + would only lead to the one above)
    (["campaign.nmae=x"], r"^ConfigError: campaign\.nmae: unknown key; did you mean name\? allowed: name, dir"),
    (["budgett.max_experiments=1"], r"^ConfigError: budgett: unknown key; did you mean budget\?"),
    # a schema is not an option
    (["backend=local_schema"], r"^ConfigError: backend=local_schema: no such option; available: local, skypilot, "
                               r"slurm \("),
    (["tracking=schema"], r"^ConfigError: tracking=schema: no such option; available: mlflow, none \("),
    # a range must be finite; log is true or false
    (["+space.params.wd={type:float,low:0,high:inf}"], r"^ConfigError: space\.params\.wd\.high: expected a finite "
                                                       r"number, got inf$"),
    (["+space.params.wd={type:float,low:nan,high:1}"], r"^ConfigError: space\.params\.wd\.low: expected a finite "
                                                       r"number, got nan$"),
    (["+space.params.wd={type:float,low:0.1,high:1,log:maybe}"], r"^ConfigError: space\.params\.wd\.log: expected "
                                                                 r"true or false, got 'maybe'$"),
])
def test_a_mistake_is_one_line_exit_2_and_leaves_nothing_behind(tmp_path: Path, args: list[str], message: str) -> None:
    work = tmp_path / "work"
    work.mkdir()
    p = hybrid([*BASE, *args], work)
    assert_one_config_error(p, message)
    assert tree(tmp_path) == {"work"}  # no runs/<name>/, nothing above it either


SPACES = {
    "syntax": "params:\n  lr: {type: float, low: 0.01, high: 1\n  depth: {type: int, low: 2, high: 8}\n",
    "infinite": "params:\n  lr: {type: float, low: 0.01, high: .inf}\n",
    "maybe": "params:\n  lr: {type: float, low: 0.01, high: 1, log: maybe}\n",
}


@pytest.mark.parametrize(("space", "message"), [
    ("syntax", r"^ConfigError: conf/space/syntax\.yaml: line 3, column 8: YAML syntax error: expected ',' or '}', "
               r"but got ':' \(in the flow mapping of line 2\)"),
    ("infinite", r"^ConfigError: space\.params\.lr\.high: expected a finite number, got inf$"),
    ("maybe", r"^ConfigError: space\.params\.lr\.log: expected true or false, got 'maybe'$"),
])
def test_a_bad_space_file_is_one_line(tmp_path: Path, space: str, message: str) -> None:
    (tmp_path / "conf" / "space").mkdir(parents=True)
    (tmp_path / "conf" / "space" / f"{space}.yaml").write_text(SPACES[space])
    before = tree(tmp_path)
    p = hybrid([*BASE, f"space={space}"], tmp_path)
    assert_one_config_error(p, message)
    assert tree(tmp_path) == before


@pytest.mark.parametrize("case", ["a file", "under a file", "not writable"])
def test_a_campaign_dir_that_cannot_be_one_is_one_line(tmp_path: Path, case: str) -> None:
    if case == "not writable" and os.geteuid() == 0:
        pytest.skip("root writes anywhere: permissions do not apply")
    (tmp_path / "notes.txt").write_text("mine\n")
    (tmp_path / "locked").mkdir(mode=0o500)
    given, message = {
        "a file": ("notes.txt", r"^ConfigError: campaign\.dir: .*notes\.txt is a file, not a directory; "),
        "under a file": ("notes.txt/c", r"^ConfigError: campaign\.dir: .*notes\.txt/c: .*notes\.txt is a file, "),
        "not writable": ("locked/c", r"^ConfigError: campaign\.dir: .*locked/c: .*locked is not writable"),
    }[case]
    before = tree(tmp_path)
    try:
        p = hybrid([*BASE, f"campaign.dir={given}"], tmp_path)
    finally:
        (tmp_path / "locked").chmod(stat.S_IRWXU)
    assert_one_config_error(p, message)
    assert tree(tmp_path) == before and (tmp_path / "notes.txt").read_text() == "mine\n"


def test_a_config_error_of_the_campaigns_own_checks_leaves_no_campaign_dir(tmp_path: Path) -> None:
    """target.check_command fails inside Campaign.run, after the config validated: the campaign
    dir (and the .hydra/ record written there) is taken back."""
    p = hybrid([*BASE, "target.check_command='{python} -c \"import sys; sys.exit(3)\"'"], tmp_path)
    assert p.returncode == 2 and p.stderr.startswith("ConfigError: space: target example rejects"), p.stderr
    assert tree(tmp_path) == set()


def test_the_hydra_record_is_written_after_validation_redacted_and_private(tmp_path: Path) -> None:
    secret = "hf_abcdefghijklmnop"
    p = hybrid([*BASE, f"+target.env.HF_TOKEN={secret}", "campaign.name=c"], tmp_path)
    assert p.returncode == 0, p.stdout + p.stderr
    record = tmp_path / "runs" / "c" / ".hydra"
    files = sorted(f.name for f in record.iterdir())
    assert files == ["config.yaml", "hydra.yaml", "overrides.yaml"]
    for f in record.iterdir():
        assert secret not in f.read_text(), f.name
        assert stat.S_IMODE(f.stat().st_mode) == 0o600, f.name
    assert "HF_TOKEN" in (record / "config.yaml").read_text()  # the name stays, the value goes
    assert "campaign.name=c" in (record / "overrides.yaml").read_text()
    # nor in the store (its config meta keeps the name): every byte of the database and its WAL
    store = Store.open_read_only(tmp_path / "runs" / "c" / "state.sqlite")
    assert store.get_meta("config")["target"]["env"]["HF_TOKEN"] == "<redacted>"
    store.close()
    for f in (tmp_path / "runs" / "c").glob("state.sqlite*"):
        assert secret.encode() not in f.read_bytes(), f.name


def test_a_campaign_in_which_every_experiment_failed_exits_3(tmp_path: Path) -> None:
    p = hybrid([*BASE, "budget.max_experiments=2", "target.command='{python} -c \"import sys; sys.exit(1)\"'"], tmp_path)
    assert p.returncode == 3, p.stdout + p.stderr
    assert "no successful experiment" in p.stdout
    assert p.stderr.strip().splitlines()[-1].startswith("campaign example-hybrid-s0: no experiment succeeded")
    assert (tmp_path / "runs" / "example-hybrid-s0" / "results.tsv").is_file()  # it still reports


def test_the_campaign_survives_a_closed_stdout(tmp_path: Path) -> None:
    """``hybrid ... | head -1``: the reader goes away after one line; the campaign runs its whole
    budget and writes its results."""
    args = [*BASE, "budget.max_experiments=4", "backend.workers=2", "proposer=sobol",
            "target.env.EXAMPLE_SECONDS=0.2"]
    proc = subprocess.Popen([sys.executable, "-m", "hybrid", *args], cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    assert proc.stdout.readline()  # head -1
    proc.stdout.close()
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert "Traceback" not in err and "BrokenPipe" not in err, err
    campaign = tmp_path / "runs" / "example-sobol-s0"
    assert len((campaign / "results.tsv").read_text().splitlines()) == 5
    assert "stopped: budget.max_experiments reached (4)" in (campaign / "summary.txt").read_text()


def test_a_multirun_keeps_a_record_per_job_and_compares_them(tmp_path: Path) -> None:
    secret = "hf_abcdefghijklmnop"
    p = hybrid(["-m", *BASE, "proposer=sobol,grid", f"+target.env.HF_TOKEN={secret}", "hydra.sweep.dir=sweep"],
               tmp_path, timeout=180)
    assert p.returncode == 0, p.stdout + p.stderr
    sweep = tmp_path / "sweep"
    for job in ("0", "1"):
        assert (sweep / job / ".hydra" / "config.yaml").is_file() and (sweep / job / "campaign.json").is_file()
    assert (sweep / "comparison.md").is_file()
    for f in tmp_path.rglob("*.yaml"):
        assert secret not in f.read_text(), f
