"""The CI's Slurm cluster scripts, .ci/slurm/start.sh and stop.sh, for real.

They run only where they can: as root, with the Slurm, munge and MariaDB packages installed, and no
Slurm cluster answering on this machine (start.sh installs packages itself; these tests never do).
In CI the cluster .ci/run started is up while pytest runs, so they skip there; run them on a
machine (or container) of your own with ``sudo .venv/bin/python -m pytest -q tests/test_ci_slurm.py``.

Each test gives the scripts a state directory of its own, and checks what a user of a used machine
would notice: a cluster starts though /var/lib/slurm holds another cluster's state, ``sinfo`` and
``srun`` reach it, and neither stop.sh nor a failed start leaves a daemon running or the machine's
/etc/slurm/slurm.conf changed.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

ROOT = Path(__file__).resolve().parents[1]
START, STOP = ROOT / ".ci/slurm/start.sh", ROOT / ".ci/slurm/stop.sh"
CLIENT_CONF = Path("/etc/slurm/slurm.conf")
# where the controller kept its state before start.sh had a directory of its own (and where the
# Debian packages and other recipes keep it): another cluster's name there made slurmctld exit
OLD_STATE = Path("/var/lib/slurm/slurmctld")
PORTS = {6817: "slurmctld", 6818: "slurmd", 6819: "slurmdbd"}
NEEDED = ("slurmctld", "slurmd", "slurmdbd", "sinfo", "srun", "munged", "mariadbd", "mysql", "ps", "setsid")


def _why_not_here() -> str | None:
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        return "needs root (the scripts start daemons as other users)"
    missing = [c for c in NEEDED if shutil.which(c, path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin") is None]
    if missing:
        return f"Slurm/munge/MariaDB not installed ({', '.join(missing)} missing): sudo .ci/slurm/start.sh installs them"
    for port, daemon in PORTS.items():
        with socket.socket() as s:
            s.settimeout(1)
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return f"a Slurm cluster is running here ({daemon}'s port {port} answers): stop it first"
    return None


pytestmark = [pytest.mark.slow, pytest.mark.skipif(bool(_why_not_here()), reason=_why_not_here() or "")]


def _run(script: Path, state_dir: Path, **env: str) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, "HYBRID_SLURM_DIR": str(state_dir), **env}
    full_env.pop("SLURM_CONF", None)
    return subprocess.run(["bash", str(script)], env=full_env, capture_output=True, text=True, timeout=240)


def _started_pids(output: str) -> dict[str, int]:
    """The daemons start.sh said it started: ``munged started (pid 123)``."""
    return {m[1]: int(m[2]) for m in re.finditer(r"\] (\w+) started \(pid (\d+)\)", output)}


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _wait_dead(pids: dict[str, int], timeout_s: float = 5.0) -> dict[str, int]:
    deadline = time.monotonic() + timeout_s
    while (alive := {name: pid for name, pid in pids.items() if _alive(pid)}) and time.monotonic() < deadline:
        time.sleep(0.1)
    return alive


def _client(*cmd: str) -> subprocess.CompletedProcess[str]:
    """A Slurm client as users run it: no SLURM_CONF, so it reads /etc/slurm/slurm.conf."""
    env = {k: v for k, v in os.environ.items() if k != "SLURM_CONF"}
    return subprocess.run(list(cmd), env=env, capture_output=True, text=True, timeout=60, cwd="/tmp")


def _snapshot(path: Path) -> tuple[str, str] | None:
    """What the machine has at ``path``: ('link', target), ('file', text) or None."""
    if path.is_symlink():
        return "link", os.readlink(path)
    return ("file", path.read_text()) if path.exists() else None


@pytest.fixture
def state_dir() -> Iterator[Path]:
    """A state directory of the test's own (the slurm user must reach it: not under pytest's 0700 tmp)."""
    d = Path(tempfile.mkdtemp(prefix="hybrid-ci-slurm-test-", dir="/var/tmp"))
    d.chmod(0o755)
    try:
        yield d
    finally:
        _run(STOP, d)  # whatever the test left running
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def used_machine() -> Iterator[tuple[tuple[str, str] | None, Path]]:
    """A machine another cluster used: its name in the old StateSaveLocation and, when the machine
    has no client config of its own, a foreign /etc/slurm/slurm.conf. Yields (the client config
    as found, the planted clustername file); undoes only what it planted."""
    planted: list[Path] = []
    clustername = OLD_STATE / "clustername"
    if not clustername.exists():
        OLD_STATE.mkdir(parents=True, exist_ok=True)
        clustername.write_text("othercluster\n")
        planted.append(clustername)
    if _snapshot(CLIENT_CONF) is None:
        CLIENT_CONF.parent.mkdir(parents=True, exist_ok=True)
        CLIENT_CONF.write_text("# another cluster's config\nClusterName=othercluster\nSlurmctldHost=elsewhere\n")
        planted.append(CLIENT_CONF)
    try:
        yield _snapshot(CLIENT_CONF), clustername
    finally:
        for path in planted:
            path.unlink(missing_ok=True)


def test_a_cluster_starts_on_a_used_machine_and_stop_leaves_nothing_running(
    state_dir: Path, used_machine: tuple[tuple[str, str] | None, Path]
) -> None:
    conf_before, clustername = used_machine
    foreign_name = clustername.read_text()

    start = _run(START, state_dir)
    assert start.returncode == 0, start.stdout + start.stderr
    pids = _started_pids(start.stdout)
    assert {"slurmctld", "slurmd"} <= pids.keys(), start.stdout
    assert (state_dir / "slurmctld" / "clustername").read_text().strip() == "hybridci"

    sinfo = _client("sinfo", "-h", "-o", "%T %G")
    assert sinfo.returncode == 0 and sinfo.stdout.startswith("idle"), sinfo.stdout + sinfo.stderr
    assert "gpu:h100:2" in sinfo.stdout
    srun = _client("timeout", "60", "srun", "-n1", "hostname")
    assert (srun.returncode, srun.stdout.strip()) == (0, socket.gethostname().split(".")[0]), srun.stderr

    stop = _run(STOP, state_dir)
    assert stop.returncode == 0, stop.stdout + stop.stderr
    assert _wait_dead(pids) == {}, f"still running after stop.sh: {stop.stdout}"
    assert not list((state_dir / "run").glob("*.pid")), "stop.sh left PID files"
    assert _snapshot(CLIENT_CONF) == conf_before, "stop.sh did not put /etc/slurm/slurm.conf back"
    assert clustername.read_text() == foreign_name, "the other cluster's state was touched"


@pytest.mark.parametrize("failure", ["node never ready", "SIGTERM"])
def test_a_failed_start_stops_every_daemon_it_had_started(state_dir: Path, failure: str) -> None:
    conf_before = _snapshot(CLIENT_CONF)
    env = {"HYBRID_SLURM_DIR": str(state_dir)}
    if failure == "node never ready":  # every daemon is up, then the wait for the node gives up
        p = _run(START, state_dir, HYBRID_SLURM_WAIT_S="0")
        out, rc = p.stdout + p.stderr, p.returncode
        assert "node" in out and "not ready after 0s" in out, out
    else:  # CI cancelled while start.sh waits for the node
        proc = subprocess.Popen(["bash", str(START)], env={**os.environ, **env}, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)
        assert proc.stdout is not None
        lines: list[str] = []
        for line in proc.stdout:
            lines.append(line)
            if re.search(r"\] slurmd started \(pid \d+\)", line):
                proc.send_signal(signal.SIGTERM)
        rc, out = proc.wait(timeout=60), "".join(lines)
    assert rc != 0, out
    pids = _started_pids(out)
    assert {"slurmctld", "slurmd"} <= pids.keys(), out
    assert _wait_dead(pids) == {}, f"a failed start left daemons running:\n{out}"
    assert "stopping what this run started" in out, out
    assert _snapshot(CLIENT_CONF) == conf_before, "a failed start changed /etc/slurm/slurm.conf"
