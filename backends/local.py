"""Run experiments as local processes: one worker per CPU slot or per GPU of this machine.

Each job is supervised by ``backends._runner`` in its own session, so jobs survive the
orchestrator being killed; the runner records the job in ``<workdir>/.hybrid/`` (job.json, then
exit.json when it ends) and this backend reads those files and asks psutil about processes
(so it runs on Linux and macOS; nothing here reads /proc). A job id is
``"<runner pid>@<runner start mark>"``, the mark being when the runner started, in seconds since
boot (``backends._runner.start_mark``): it makes a recycled pid harmless on resume. Ids written
before psutil (``"<pid>@<clock ticks since boot>"``, digits only) are still accepted.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import psutil

from backends._runner import (
    EXIT_FILE,
    JOB_FILE,
    MARK_ENV,
    RUNNER_LOG,
    STATE_DIR,
    group_alive,
    is_running,
    parse_mark,
    read_json,
    same_start,
    start_mark,
    write_json_atomic,
)
from backends.base import Backend, Finished, JobHandle, JobState, RunSpec, Worker, read_log
from hybrid.errors import BackendError, ConfigError, reject_unknown_keys
from hybrid.secrets import experiment_environ
from hybrid.types import Experiment

__all__ = ["LocalBackend"]

KILL_GRACE_S = 3.0  # SIGTERM -> SIGKILL delay for a job's process tree (timeout, cancel)
_CANCEL_MARGIN_S = 2.0  # extra time a cancelled runner gets to clean up before it is killed itself
_WORKER_KEYS = ("name", "hardware", "hourly_usd", "gpus")
# The runner is started as `python -P -c _BOOTSTRAP <code root> args...`: it imports this very
# checkout's backends._runner whatever the cwd, PYTHONPATH or target code (a `backends/` dir in a
# snapshot must not shadow ours), like `python -m backends._runner args...` would when installed.
_CODE_ROOT = str(Path(__file__).resolve().parent.parent)
_BOOTSTRAP = (
    "import sys; sys.path.insert(0, sys.argv.pop(1)); from backends._runner import main; sys.exit(main())"
)
_STATES = {"exited": JobState.EXITED, "timeout": JobState.TIMEOUT, "cancelled": JobState.CANCELLED}


class LocalBackend(Backend):
    """Workers on this machine.

    ``workers``: a number N of identical workers (``w00``, ``w01``...), or a list of
    ``{name, hardware, hourly_usd, gpus: [0]}``. ``gpus``: ``"auto"`` (one worker per GPU that
    ``nvidia-smi`` lists) or a list of indices (one worker per index); then ``workers`` as a
    number is ignored. GPU workers' jobs see only their GPUs (``CUDA_VISIBLE_DEVICES``).
    ``hardware``/``hourly_usd`` label and price the workers made from a number or from ``gpus``.
    """

    def __init__(
        self,
        workers: int | Sequence[Mapping[str, Any]] = 2,
        gpus: str | Sequence[int] | None = None,
        hardware: str = "cpu",
        hourly_usd: float = 0.0,
        name: str = "local",
    ) -> None:
        super().__init__()
        if os.name != "posix":  # process groups and sessions: Linux and macOS, not Windows
            raise ConfigError(
                "backend=local: jobs need POSIX process groups, which this system lacks (Linux and "
                "macOS have them); run the campaign there or use backend=slurm / backend=skypilot"
            )
        self.name = name
        self._workers = _build_workers(workers, gpus, hardware, hourly_usd)
        self._procs: dict[str, subprocess.Popen[bytes]] = {}  # runners we started, by job id
        self._ended: list[subprocess.Popen[bytes]] = []  # runners that finished, not yet reaped

    def workers(self) -> list[Worker]:
        return list(self._workers)

    # ---- hooks ------------------------------------------------------------------------------
    def _start(self, exp: Experiment, spec: RunSpec, worker: Worker) -> JobHandle:
        workdir = spec.workdir.resolve()
        state_dir = workdir / STATE_DIR
        state_dir.mkdir(exist_ok=True)
        for stale in (JOB_FILE, EXIT_FILE):  # from an earlier attempt in the same workdir
            (state_dir / stale).unlink(missing_ok=True)
        env = experiment_environ()  # this process's environment less the orchestrator's own credentials
        env.update({str(k): str(v) for k, v in spec.env.items()})
        env["HYBRID_WORKER"] = worker.name
        if worker.gpus:  # the worker's GPUs win over any inherited value: jobs must not share GPUs
            env["CUDA_VISIBLE_DEVICES"] = ",".join(str(i) for i in worker.gpus)
        argv = [sys.executable, "-P", "-c", _BOOTSTRAP, _CODE_ROOT, "--workdir", str(workdir)]
        argv += ["--log", spec.log_name, "--grace", repr(KILL_GRACE_S)]
        if spec.timeout_s:
            argv += ["--timeout", repr(float(spec.timeout_s))]
        argv += ["--", spec.command]
        try:
            with open(state_dir / RUNNER_LOG, "wb") as runner_log:
                proc = subprocess.Popen(
                    argv,
                    cwd=state_dir,
                    env=env,
                    stdin=subprocess.DEVNULL,
                    stdout=runner_log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,  # survives the orchestrator and its Ctrl-C
                )
        except OSError as e:
            raise BackendError(f"could not start the job runner for experiment {exp.id}: {e}") from e
        job_id = _job_id(proc.pid, start_mark(proc.pid))  # our unreaped child: still there to ask
        self._procs[job_id] = proc
        return JobHandle(job_id, exp.id, worker, time.time(), workdir, spec.log_name)

    def _poll(self, handles: Sequence[JobHandle]) -> list[Finished]:
        self._reap_ended()
        out: list[Finished] = []
        for h in handles:
            exit_file = h.workdir / STATE_DIR / EXIT_FILE
            ended = read_json(exit_file)
            if ended is None:
                if self._runner_alive(h.job_id):
                    continue
                ended = read_json(exit_file)  # it may have been written just before the runner exited
            out.append(self._lost(h) if ended is None else self._finished(h, ended))
            proc = self._procs.pop(h.job_id, None)
            if proc is not None and proc.poll() is None:
                self._ended.append(proc)  # exits right after writing exit.json; reaped later
        return out

    def _cancel(self, handle: JobHandle) -> None:
        self._stop([handle])

    def cancel_all(self) -> None:
        # Signal every job first, then wait once: N jobs cost one grace period, not N.
        self._stop(self.running())

    def _attach(self, job_id: str, exp: Experiment, worker: Worker) -> JobHandle | None:
        parsed = _parse_job_id(job_id)
        if parsed is None:
            return None  # not a local job id (e.g. the campaign ran on another backend)
        pid, mark = parsed
        alive = is_running(pid, mark)
        workdir = Path(exp.workdir) if exp.workdir else (_runner_workdir(pid) if alive else None)
        if workdir is None:
            return None
        job = read_json(workdir / STATE_DIR / JOB_FILE) or {}
        ours = not job or (
            job.get("runner_pid") == pid and same_start(parse_mark(job.get("runner_start")), mark)
        )
        if not alive and not (ours and (workdir / STATE_DIR / EXIT_FILE).exists()):
            return None
        started = exp.started or job.get("started") or time.time()
        return JobHandle(job_id, exp.id, worker, float(started), workdir, str(job.get("log_name", "run.log")))

    def recover(self, exp: Experiment) -> JobHandle | None:
        """Find the job of ``exp`` from ``<workdir>/.hybrid/job.json`` (its id never reached the
        store because the orchestrator died between submit and mark_running)."""
        if not exp.workdir:
            return None
        job = read_json(Path(exp.workdir) / STATE_DIR / JOB_FILE)
        if job is None or not isinstance(job.get("runner_pid"), int):
            return None
        start = job.get("runner_start")
        if isinstance(start, int) and not isinstance(start, bool):  # an old runner's file: keep its id
            return self.attach(f"{job['runner_pid']}@{start}", exp)
        return self.attach(_job_id(job["runner_pid"], parse_mark(start)), exp)

    def close(self) -> None:
        # Jobs are left alone (the campaign cancels or detaches first); only reap runners that
        # already wrote exit.json so no zombie outlives the backend.
        deadline = time.monotonic() + 1.0
        while self._reap_ended() and time.monotonic() < deadline:
            time.sleep(0.01)
        self._ended.clear()

    # ---- internals ----------------------------------------------------------------------------
    def _reap_ended(self) -> bool:
        """Reap finished runners; True while some are still exiting."""
        self._ended = [p for p in self._ended if p.poll() is None]
        return bool(self._ended)

    def _runner_alive(self, job_id: str) -> bool:
        proc = self._procs.get(job_id)
        if proc is not None:  # our child: poll() also reaps it
            return proc.poll() is None
        parsed = _parse_job_id(job_id)
        return parsed is not None and is_running(*parsed)

    def _finished(self, h: JobHandle, ended: Mapping[str, Any]) -> Finished:
        state = _STATES.get(str(ended.get("state")), JobState.LOST)
        code = ended.get("exit_code")
        code = code if isinstance(code, int) else None
        reason = str(ended.get("reason") or "")
        if state is JobState.EXITED and code and not reason:
            reason = f"exit code {code}"
        end_time = ended.get("ended")
        return Finished(
            job_id=h.job_id,
            experiment_id=h.experiment_id,
            state=state,
            exit_code=code if state is JobState.EXITED else None,
            log=read_log(h.workdir / h.log_name),
            started=h.started,
            ended=float(end_time) if isinstance(end_time, int | float) else time.time(),
            worker=h.worker,
            reason=reason,
        )

    def _lost(self, h: JobHandle) -> Finished:
        """The runner vanished without writing exit.json (killed from outside, OOM killer...)."""
        job = read_json(h.workdir / STATE_DIR / JOB_FILE) or {}
        _kill_job_group(job)  # don't let an orphaned training keep the worker's GPU
        pid = h.job_id.split("@", 1)[0]
        reason = f"the job runner (pid {pid}) disappeared without recording how the job ended"
        runner_log = read_log(h.workdir / STATE_DIR / RUNNER_LOG, max_bytes=2000).strip()
        if runner_log:
            reason += f"; runner log: {runner_log}"
        return Finished(
            job_id=h.job_id,
            experiment_id=h.experiment_id,
            state=JobState.LOST,
            exit_code=None,
            log=read_log(h.workdir / h.log_name),
            started=h.started,
            ended=time.time(),
            worker=h.worker,
            reason=reason,
        )

    def _stop(self, handles: Sequence[JobHandle]) -> None:
        """Cancel jobs: SIGTERM each runner (it kills its job's tree and writes exit.json); any
        runner still alive after the grace period is SIGKILLed with its job's group."""
        targets = [h for h in handles if not (h.workdir / STATE_DIR / EXIT_FILE).exists()]
        for h in targets:
            if self._runner_alive(h.job_id):
                _signal_group(int(h.job_id.split("@", 1)[0]), signal.SIGTERM)
        deadline = time.monotonic() + KILL_GRACE_S + _CANCEL_MARGIN_S
        waiting = list(targets)
        while waiting and time.monotonic() < deadline:
            waiting = [h for h in waiting if self._runner_alive(h.job_id)]
            if waiting:
                time.sleep(0.02)
        for h in targets:
            state_dir = h.workdir / STATE_DIR
            if self._runner_alive(h.job_id):
                _signal_group(int(h.job_id.split("@", 1)[0]), signal.SIGKILL)
            if not (state_dir / EXIT_FILE).exists():
                # The runner died before it could record the end (killed early, or just now).
                _kill_job_group(read_json(state_dir / JOB_FILE) or {})
                write_json_atomic(
                    state_dir / EXIT_FILE,
                    {"state": "cancelled", "exit_code": None, "ended": time.time(), "reason": "cancelled"},
                )


# ---- job ids and processes ----------------------------------------------------------------------
def _job_id(pid: int, mark: float | None) -> str:
    # No mark: the runner already vanished (a zombie on macOS); an id no live process matches.
    return f"{pid}@{mark if mark is not None else 0.0:.3f}"


def _parse_job_id(job_id: str) -> tuple[int, float] | None:
    """(runner pid, start mark) of a local job id; None for another backend's id."""
    pid, sep, mark = str(job_id).partition("@")
    if not sep or not pid.isdigit() or not re.fullmatch(r"\d+(\.\d+)?", mark):
        return None
    parsed = parse_mark(mark)  # digits only: a pre-psutil id in clock ticks
    return None if parsed is None else (int(pid), parsed)


def _runner_workdir(pid: int) -> Path | None:
    """The --workdir argument of a live runner (attach without a recorded workdir)."""
    try:
        args = psutil.Process(pid).cmdline()
    except psutil.Error:
        return None
    for flag, value in itertools.pairwise(args):
        if flag == "--workdir":
            return Path(value)
    return None


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def _kill_job_group(job: Mapping[str, Any]) -> None:
    """SIGKILL the job's process group recorded in job.json, unless its id now names another
    process (Linux never reuses a pid while a process group of that id exists), and the job's
    processes that left the group: the runner that would have killed them is gone."""
    _kill_marked(job.get("mark"))
    pgid, start = job.get("child_pgid"), parse_mark(job.get("child_start"))
    if not isinstance(pgid, int) or isinstance(pgid, bool) or pgid <= 1:
        return
    leader = start_mark(pgid)  # None: the leader is gone, the group may live on
    if (leader is None or same_start(leader, start)) and group_alive(pgid):
        _signal_group(pgid, signal.SIGKILL)


def _kill_marked(mark: object, patience_s: float = 2.0) -> None:
    """SIGKILL every process whose environment holds the job's mark (``MARK_ENV``), until a
    listing finds none twice in a row (one that forked as it exited can hide from one)."""
    if not isinstance(mark, str) or not mark:
        return
    me, quiet = os.getpid(), 0
    deadline = time.monotonic() + patience_s
    while quiet < 2 and time.monotonic() < deadline:
        found = False
        for proc in psutil.process_iter():
            with contextlib.suppress(psutil.Error):  # gone, or another user's
                if proc.pid != me and proc.environ().get(MARK_ENV) == mark:
                    proc.kill()
                    found = True
        quiet = 0 if found else quiet + 1


# ---- worker configuration -------------------------------------------------------------------------
def _build_workers(workers: Any, gpus: Any, hardware: Any, hourly_usd: Any) -> list[Worker]:
    if not isinstance(hardware, str) or not hardware.strip():
        raise ConfigError(f"backend.hardware: expected a label such as cpu or h100, got {hardware!r}")
    price = _price("backend.hourly_usd", hourly_usd)
    if gpus is not None:
        if _is_list(workers):
            raise ConfigError(
                "backend.gpus: set either backend.gpus or a list of backend.workers, not both; "
                "give each listed worker its own gpus: [i] instead"
            )
        return [
            Worker(f"gpu{i}", hardware if hardware != "cpu" else _gpu_label(gpu_name), price, (i,))
            for i, gpu_name in _gpus(gpus)
        ]
    if isinstance(workers, int) and not isinstance(workers, bool):
        if workers < 1:
            raise ConfigError(f"backend.workers: expected at least 1 worker, got {workers}")
        return [Worker(f"w{i:02d}", hardware, price) for i in range(workers)]
    if not _is_list(workers) or not workers:
        raise ConfigError(
            f"backend.workers: expected a number of workers or a non-empty list of "
            f"{{name, hardware, hourly_usd, gpus}}, got {workers!r}; e.g. backend.workers=4"
        )
    out: list[Worker] = []
    seen: dict[str, int] = {}
    for i, item in enumerate(workers):
        where = f"backend.workers[{i}]"
        if not isinstance(item, Mapping):
            raise ConfigError(
                f"{where}: expected a mapping like {{name: gpu0, hardware: h100, hourly_usd: 2.5, "
                f"gpus: [0]}}, got {item!r}"
            )
        reject_unknown_keys(where, item, _WORKER_KEYS)
        name = item.get("name", f"w{i:02d}")
        if not isinstance(name, str) or not name.strip():
            raise ConfigError(f"{where}.name: expected a non-empty string, got {name!r}")
        if name in seen:
            raise ConfigError(
                f"{where}.name: {name!r} is already the name of backend.workers[{seen[name]}]; "
                "give every worker a unique name"
            )
        seen[name] = i
        label = item.get("hardware", hardware)
        if not isinstance(label, str) or not label.strip():
            raise ConfigError(f"{where}.hardware: expected a label such as cpu or h100, got {label!r}")
        indices = _gpu_indices(f"{where}.gpus", item.get("gpus", []))
        out.append(Worker(name, label, _price(f"{where}.hourly_usd", item.get("hourly_usd", price)), indices))
    return out


def _is_list(value: Any) -> bool:
    return isinstance(value, Sequence) and not isinstance(value, str | bytes)


def _price(field: str, value: Any) -> float:
    ok = isinstance(value, int | float) and not isinstance(value, bool)
    if not ok or not math.isfinite(value) or value < 0:
        key = field.rsplit(".", 1)[-1]
        raise ConfigError(
            f"{field}: expected a price in US dollars per hour >= 0, got {value!r}; e.g. {key}: 2.5"
        )
    return float(value)


def _gpu_indices(field: str, value: Any) -> tuple[int, ...]:
    if isinstance(value, str) and re.fullmatch(r"\s*\d+(\s*,\s*\d+)*\s*", value):
        value = [int(v) for v in value.split(",")]
    elif isinstance(value, int) and not isinstance(value, bool):
        value = [value]
    if not _is_list(value) or any(isinstance(v, bool) or not isinstance(v, int) or v < 0 for v in value):
        raise ConfigError(f"{field}: expected a list of GPU indices such as [0, 1], got {value!r}")
    if len(set(value)) != len(value):
        raise ConfigError(f"{field}: GPU indices {list(value)} repeat an index; list each GPU once")
    return tuple(int(v) for v in value)


def _gpus(gpus: Any) -> list[tuple[int, str]]:
    """(index, name) of the GPUs to make workers of."""
    found = _detect_gpus()
    if gpus == "auto":
        if not found:
            raise ConfigError(
                "backend.gpus=auto: no NVIDIA GPU found (nvidia-smi is missing or lists none); "
                "use backend.workers=N for CPU workers, or list GPU indices with backend.gpus=[0,1]"
            )
        return found
    names = dict(found)
    return [(i, names.get(i, "")) for i in _gpu_indices("backend.gpus", gpus)]


def _detect_gpus() -> list[tuple[int, str]]:
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=index,name", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=20,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    gpus = []
    for line in out.splitlines():
        index, _, name = line.partition(",")
        if index.strip().isdigit():
            gpus.append((int(index), name.strip()))
    return gpus


def _gpu_label(name: str) -> str:
    """A short hardware label from a GPU name: "NVIDIA H100 80GB HBM3" -> "h100",
    "NVIDIA A100-SXM4-80GB" -> "a100", "NVIDIA GeForce RTX 4090" -> "rtx4090"."""
    words = [w for w in re.split(r"[\s\-_/]+", name.lower()) if w]
    words = [w for w in words if w not in ("nvidia", "tesla", "geforce", "quadro")]
    for i, word in enumerate(words):
        if re.fullmatch(r"\d+\s*gb", word):
            continue  # memory size, not the model
        if re.fullmatch(r"[a-z]*\d+[a-z]*", word):
            if word.isdigit() and i > 0 and words[i - 1].isalpha():
                return words[i - 1] + word  # "rtx 4090" -> "rtx4090"
            return word
    return "gpu"
