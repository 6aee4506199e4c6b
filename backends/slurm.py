"""Run experiments as Slurm jobs: one ``sbatch`` job per experiment.

Each experiment's workdir gets a generated batch script (``.hybrid/job.sbatch``) that runs the
command in its own process group with the experiment's timeout, appends its output to
``run.log`` (what Slurm itself says goes to ``.hybrid/slurm.out``, never into the middle of the
command's lines) and records how the command ended in ``.hybrid/exit.json``. The backend reads that
file first, so a finished job is seen at once and classified without Slurm accounting; Slurm's
own verdict (``squeue``, then ``sacct``, then ``scontrol``) decides what the script cannot see:
a cancel, a node failure, a preemption, Slurm's time limit, an out-of-memory kill.

Workers are slots, not nodes: a fleet entry ``{hardware: h100, count: 13}`` lets 13 jobs with
``--gres=gpu:h100:1`` be queued or running at once. Jobs survive the orchestrator; a resumed
campaign re-attaches them by job id. The workdir must be on a file system the compute nodes
share (as the campaign directory of any Slurm user is).

A job gets the environment sbatch is run with (Slurm's default ``--export=ALL``) plus the
experiment's: every Slurm command runs with this process's environment less the orchestrator's
own credentials (``hybrid.secrets.experiment_environ``), so they never reach the controller's job
records nor the job.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import time
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from backends import _slurm as S
from backends._runner import read_json, write_json_atomic
from backends.base import Backend, Finished, JobHandle, JobState, RunSpec, Worker, read_log
from hybrid.errors import BackendError, ConfigError
from hybrid.secrets import experiment_environ
from hybrid.types import Experiment

__all__ = ["SlurmBackend"]

KILL_GRACE_S = 3.0  # SIGTERM -> SIGKILL delay for a job's process tree (timeout)
_TOOLS = ("sbatch", "squeue", "scancel", "sinfo")
_ENV_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_UNKNOWN_GRACE_S = 30.0  # a job neither Slurm nor its workdir knows is LOST after this long


class SlurmBackend(Backend):
    """Workers are job slots on a Slurm cluster.

    ``fleet``: a list of ``{hardware, count, hourly_usd, gres, partition, account, name}``; each
    entry makes ``count`` workers named ``<name or hardware>-<i>``. Without a fleet: ``max_jobs``
    workers labelled ``hardware``. ``gres`` (per entry, else the backend's) may use ``{hardware}``
    and is left out for ``cpu`` workers; ``partition``/``account`` default to the backend's, then
    to the cluster's defaults. Partitions and GRES are checked against ``sinfo`` (and the options
    with ``sbatch --test-only``) when the backend is built, before anything is submitted.
    """

    def __init__(
        self,
        fleet: Sequence[Mapping[str, Any]] | None = None,
        max_jobs: int = 2,
        hardware: str = "cpu",
        hourly_usd: float = 0.0,
        partition: str | None = None,
        account: str | None = None,
        gres: str | None = "gpu:{hardware}:1",
        time_limit: str | int | None = None,
        time_margin_s: float = 300.0,
        job_prefix: str = "hybrid",
        sbatch_args: Sequence[str] = (),
        setup: Sequence[str] = (),
        poll_interval_s: float = 2.0,
        command_timeout_s: float = 60.0,
        unreachable_timeout_s: float = 600.0,
        validate: bool = True,
        name: str = "slurm",
    ) -> None:
        super().__init__()
        self.name = name
        self.job_prefix = re.sub(r"[^\w.+-]+", "_", str(job_prefix or "hybrid")).strip("_") or "hybrid"
        self.time_limit = S.time_limit_setting(time_limit)
        self.time_margin_s = S.number("backend.time_margin_s", time_margin_s, minimum=0.0)
        self.sbatch_args = S.strings("backend.sbatch_args", sbatch_args)
        self.setup = S.strings("backend.setup", setup)
        self.poll_interval_s = S.number("backend.poll_interval_s", poll_interval_s, minimum=0.0)
        self.command_timeout_s = S.number("backend.command_timeout_s", command_timeout_s, minimum=1.0)
        self.unreachable_timeout_s = S.number("backend.unreachable_timeout_s", unreachable_timeout_s, minimum=0.0)
        self._workers, self._slots = S.build_workers(fleet, max_jobs, hardware, hourly_usd, partition, account, gres)
        self._cancelled: set[str] = set()  # job ids this instance asked Slurm to cancel
        self._next_query = 0.0  # monotonic time of the next allowed squeue call
        self._unreachable_since: float | None = None
        self._unknown_since: dict[str, float] = {}
        self._accounting: bool | None = None  # does sacct work here? (None: not tried yet)
        missing = [tool for tool in _TOOLS if shutil.which(tool) is None]
        if missing:
            raise BackendError(
                f"backend=slurm: {', '.join(missing)} not found on PATH; run the campaign where the Slurm "
                "client commands work (a login node), or use another backend, e.g. backend=local"
            )
        if validate:
            self._validate()

    def workers(self) -> list[Worker]:
        return list(self._workers)

    # ---- hooks ------------------------------------------------------------------------------
    def _start(self, exp: Experiment, spec: RunSpec, worker: Worker) -> JobHandle:
        workdir = spec.workdir.resolve()
        if "\\" in str(workdir) or "\n" in str(workdir):
            raise BackendError(f"experiment {exp.id}: Slurm cannot write job output under {str(workdir)!r} "
                               "(a backslash or newline in the path); move campaign.dir")
        bad = [k for k in spec.env if not _ENV_KEY.fullmatch(str(k))]
        if bad:
            raise BackendError(f"experiment {exp.id}: {bad[0]!r} is not a valid environment variable name")
        state_dir = workdir / S.STATE_DIR
        state_dir.mkdir(exist_ok=True)
        for stale in (S.SUBMIT_FILE, S.JOB_FILE, S.EXIT_FILE, S.TIMEOUT_MARK, S.CANCEL_MARK):
            (state_dir / stale).unlink(missing_ok=True)  # from an earlier attempt in the same workdir
        script = state_dir / S.SCRIPT_FILE
        argv = self.sbatch_argv(workdir, script)
        script.write_text(self.batch_script(exp, spec, worker, argv))
        proc = self._run(argv, cwd=workdir, what=f"submit experiment {exp.id}")
        m = re.match(r"\s*(\d+)", proc.stdout)
        if proc.returncode != 0 or m is None:
            raise BackendError(f"sbatch could not submit experiment {exp.id}: {_first_line(proc)}")
        job_id = m.group(1)
        started = time.time()
        write_json_atomic(state_dir / S.SUBMIT_FILE, {"job_id": job_id, "submitted": started, "log_name": spec.log_name})
        return JobHandle(job_id, exp.id, worker, started, workdir, spec.log_name)

    def _poll(self, handles: Sequence[JobHandle]) -> list[Finished]:
        out: list[Finished] = []
        waiting: list[tuple[JobHandle, dict[str, Any] | None]] = []
        for h in handles:
            record = read_json(h.workdir / S.STATE_DIR / S.EXIT_FILE)
            state = record.get("state") if record else None
            final = state == "timeout" or (state == "exited" and record and record.get("exit_code") == 0)
            done = self._finished(h, None, record) if final else None
            if done is not None:
                out.append(done)  # the script's word is final: no Slurm call needed
            else:
                waiting.append((h, record))
        now = time.monotonic()
        if not waiting or now < self._next_query:
            return out
        self._next_query = now + self.poll_interval_s
        jobs = self._squeue([h.job_id for h, _ in waiting])
        if jobs is None:  # Slurm does not answer: report what the scripts recorded, wait for the rest
            for h, rec in waiting:
                done = self._finished(h, None, rec) if rec and rec.get("state") == "exited" else None
                if done is not None:
                    out.append(done)
            self._unreachable_since = self._unreachable_since or now
            if now - self._unreachable_since > self.unreachable_timeout_s:
                raise BackendError(
                    f"the Slurm controller has not answered for {now - self._unreachable_since:.0f} s; the jobs "
                    "are left as they are: re-run the same command to resume once `squeue` works again"
                )
            return out
        self._unreachable_since = None
        ended: list[tuple[JobHandle, dict[str, Any] | None, S.SlurmJob | None]] = []
        for h, rec in waiting:
            job = jobs.get(h.job_id)
            if job is not None and job.active:
                if job.state == "PENDING" and job.reason in S.NEVER_STARTS:
                    out.append(self._never_starts(h, job))
                continue
            ended.append((h, rec, job))
        # Slurm's detailed verdict (exit code, out of memory...) where the queue alone is not enough.
        unsure = [h.job_id for h, rec, job in ended if job is None or (rec is None and job.state in ("COMPLETED", "FAILED"))]
        details = self._sacct(unsure) if unsure else {}
        for h, rec, job in ended:
            detail = details.get(h.job_id)
            if detail is not None and not detail.active:
                job = detail if job is None else S.SlurmJob(job.job_id, job.state, job.detail, job.reason,
                                                            detail.exit_code, detail.signal, job.workdir)
            elif job is not None and rec is None and job.state in ("COMPLETED", "FAILED"):
                job = self._scontrol(h.job_id) or job
            finished = self._finished(h, job, rec)
            if finished is None:
                first = self._unknown_since.setdefault(h.job_id, now)
                if now - first < _UNKNOWN_GRACE_S:
                    continue  # e.g. accounting lags behind the queue: look again at the next poll
                finished = self._lost(h, f"Slurm no longer knows job {h.job_id} and its batch script left no "
                                         f"exit record in {h.workdir / S.STATE_DIR}")
            self._unknown_since.pop(h.job_id, None)
            out.append(finished)
        for f in out:
            self._cancelled.discard(f.job_id)
        return out

    def _cancel(self, handle: JobHandle) -> None:
        self._scancel([handle])

    def cancel_all(self) -> None:
        self._scancel(self.running())  # one scancel for all of them

    def _attach(self, job_id: str, exp: Experiment, worker: Worker) -> JobHandle | None:
        if not S.JOB_ID.fullmatch(str(job_id)):
            return None  # not a Slurm job id (e.g. the campaign ran on another backend)
        workdir = Path(exp.workdir).resolve() if exp.workdir else None
        jobs = self._squeue([job_id])
        if jobs is None:
            raise BackendError(f"cannot re-attach Slurm job {job_id} of experiment {exp.id}: the Slurm controller "
                               "does not answer; re-run once `squeue` works")
        job = jobs.get(job_id) or self._sacct([job_id]).get(job_id)
        if job is not None:
            if workdir is not None and job.workdir and not _same_path(job.workdir, workdir):
                return None  # that id now names somebody else's job
            workdir = workdir or (Path(job.workdir) if job.workdir else None)
        if workdir is None:
            return None
        state_dir = workdir / S.STATE_DIR
        submitted = read_json(state_dir / S.SUBMIT_FILE) or {}
        started = read_json(state_dir / S.JOB_FILE) or {}
        ours = job_id in (str(submitted.get("job_id")), str(started.get("job_id")))
        if job is None and not (ours and (state_dir / S.EXIT_FILE).exists()):
            return None  # Slurm forgot it and it left no record: lost
        when = exp.started or submitted.get("submitted") or time.time()
        return JobHandle(job_id, exp.id, worker, float(when), workdir, str(submitted.get("log_name") or "run.log"))

    def recover(self, exp: Experiment) -> JobHandle | None:
        """Find the job of ``exp`` whose id never reached the store: from the files in its workdir,
        else by its job name in the queue."""
        if not exp.workdir:
            return None
        state_dir = Path(exp.workdir) / S.STATE_DIR
        for name in (S.SUBMIT_FILE, S.JOB_FILE):
            job_id = str((read_json(state_dir / name) or {}).get("job_id") or "")
            if S.JOB_ID.fullmatch(job_id):
                handle = self.attach(job_id, exp)
                if handle is not None:
                    return handle
        proc = self._run(["squeue", "-h", "--states=all", f"--name={self.job_name(exp)}", "-o", S.SQUEUE_FORMAT],
                         what="look up a job by name")
        if proc.returncode != 0:
            return None
        for job in S.parse_squeue(proc.stdout).values():
            if job.workdir and _same_path(job.workdir, Path(exp.workdir)):
                return self.attach(job.job_id, exp)
        return None

    # ---- the batch script -----------------------------------------------------------------------
    def job_name(self, exp: Experiment) -> str:
        return f"{self.job_prefix}-{exp.id}"

    def sbatch_argv(self, workdir: Path, script: Path) -> list[str]:
        """The sbatch command line. Paths go here, not into ``#SBATCH`` lines (no shell quoting there).
        Slurm's own output goes to ``.hybrid/slurm.out``: the script writes the job's log itself."""
        return ["sbatch", "--parsable", f"--chdir={workdir}", f"--output={S.STATE_DIR}/{S.SLURM_OUT}",
                "--open-mode=append", *self.sbatch_args, str(script)]

    def batch_script(self, exp: Experiment, spec: RunSpec, worker: Worker, submit_argv: Sequence[str]) -> str:
        slot = self._slots[worker.name]
        directives = [("job-name", self.job_name(exp))]
        directives += [(k, v) for k, v in (("partition", slot.partition), ("account", slot.account),
                                           ("gres", slot.gres)) if v]
        limit = S.time_limit(spec.timeout_s, self.time_margin_s, self.time_limit)
        if limit:
            directives.append(("time", limit))
        env = {**{str(k): str(v) for k, v in spec.env.items()}, "HYBRID_WORKER": worker.name}
        return S.batch_script(
            experiment_id=exp.id, workdir=str(spec.workdir.resolve()), command=spec.command, env=env,
            directives=directives, submit_argv=submit_argv, timeout_s=spec.timeout_s, grace_s=KILL_GRACE_S,
            setup=self.setup, log_name=spec.log_name,
        )

    # ---- Slurm commands -------------------------------------------------------------------------
    def _run(self, argv: Sequence[str], what: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
        try:
            return subprocess.run(list(argv), cwd=cwd, capture_output=True, text=True, stdin=subprocess.DEVNULL,
                                  timeout=self.command_timeout_s, env=experiment_environ())
        except FileNotFoundError as e:
            raise BackendError(f"cannot {what}: {argv[0]} not found on PATH") from e
        except subprocess.TimeoutExpired as e:
            raise BackendError(f"cannot {what}: `{argv[0]}` did not answer within {self.command_timeout_s:g} s "
                               "(is slurmctld up? try `scontrol ping`)") from e
        except OSError as e:
            raise BackendError(f"cannot {what}: {argv[0]}: {e}") from e

    def _squeue(self, job_ids: Sequence[str]) -> dict[str, S.SlurmJob] | None:
        """One squeue call for all ``job_ids``; None when the controller does not answer."""
        try:
            proc = self._run(["squeue", "-h", "--states=all", "-j", ",".join(job_ids), "-o", S.SQUEUE_FORMAT],
                             what="query the Slurm queue")
        except BackendError:
            return None
        if proc.returncode != 0:
            # every id unknown (they left the queue long ago): an answer, not an outage
            return {} if "Invalid job id" in proc.stderr else None
        return S.parse_squeue(proc.stdout)

    def _sacct(self, job_ids: Sequence[str]) -> dict[str, S.SlurmJob]:
        """One sacct call; {} where accounting is off (then it is not asked again)."""
        if self._accounting is False or shutil.which("sacct") is None or not job_ids:
            return {}
        try:
            proc = self._run(["sacct", "-X", "-n", "-P", "-j", ",".join(job_ids), "-o", S.SACCT_FIELDS],
                             what="query Slurm accounting")
        except BackendError:
            return {}
        if proc.returncode != 0:
            if "accounting storage is disabled" in proc.stderr.lower():
                self._accounting = False
            return {}
        self._accounting = True
        return S.parse_sacct(proc.stdout)

    def _scontrol(self, job_id: str) -> S.SlurmJob | None:
        if shutil.which("scontrol") is None:
            return None
        try:
            proc = self._run(["scontrol", "show", "job", job_id], what="query a Slurm job")
        except BackendError:
            return None
        return S.parse_scontrol(proc.stdout) if proc.returncode == 0 else None

    def _scancel(self, handles: Sequence[JobHandle]) -> None:
        if not handles:
            return
        for h in handles:
            self._cancelled.add(h.job_id)
            with contextlib.suppress(OSError):  # marks our own cancel for a resumed campaign
                (h.workdir / S.STATE_DIR / S.CANCEL_MARK).touch()
        ids = " ".join(h.job_id for h in handles)
        try:
            proc = self._run(["scancel", *ids.split()], what=f"cancel Slurm jobs {ids}")
        except BackendError as err:
            problem = str(err)
        else:
            benign = ("already completing or completed", "Invalid job id")
            if proc.returncode == 0 or any(b in proc.stderr for b in benign):
                return
            problem = f"scancel {ids} failed: {_first_line(proc)}"
        # Not raised: the campaign goes on polling, and reports jobs it could not confirm stopped.
        warnings.warn(f"{problem}; the jobs may still run (check with squeue)", RuntimeWarning, stacklevel=3)

    # ---- results --------------------------------------------------------------------------------
    def _finished(self, h: JobHandle, job: S.SlurmJob | None, record: Mapping[str, Any] | None) -> Finished | None:
        cancel_requested = h.job_id in self._cancelled or (h.workdir / S.STATE_DIR / S.CANCEL_MARK).exists()
        outcome = S.classify(job, record, cancel_requested)
        if outcome is None:
            return None
        log = read_log(h.workdir / h.log_name)
        reason = outcome.reason
        if outcome.state is JobState.LOST and (said := _slurm_says(h.workdir)):
            reason += f"; Slurm: {said}"
        if outcome.note:
            log += ("" if not log or log.endswith("\n") else "\n") + outcome.note + "\n"
        started, ended = self._times(h, record)
        return Finished(h.job_id, h.experiment_id, outcome.state, outcome.exit_code, log, started, ended,
                        h.worker, reason)

    def _times(self, h: JobHandle, record: Mapping[str, Any] | None) -> tuple[float, float]:
        """When the command really started and ended: queue time is not run time (nor cost)."""
        rec = record or read_json(h.workdir / S.STATE_DIR / S.JOB_FILE) or {}
        started = rec.get("started")
        ended = (record or {}).get("ended")
        if not isinstance(started, int | float):
            return time.time(), time.time()  # never started: it ran (and cost) nothing
        end = float(ended) if isinstance(ended, int | float) else time.time()
        return float(started), max(float(started), end)

    def _lost(self, h: JobHandle, reason: str) -> Finished:
        started, ended = self._times(h, None)
        return Finished(h.job_id, h.experiment_id, JobState.LOST, None, read_log(h.workdir / h.log_name),
                        started, ended, h.worker, reason)

    def _never_starts(self, h: JobHandle, job: S.SlurmJob) -> Finished:
        with contextlib.suppress(BackendError):
            self._run(["scancel", h.job_id], what="cancel a job that cannot start")
        return self._lost(h, f"Slurm will never start job {h.job_id} (pending reason {job.reason}); "
                             "it was cancelled: check backend.partition/account/time_limit")

    # ---- construction ---------------------------------------------------------------------------
    def _validate(self) -> None:
        """Check partitions and GRES against the cluster, before anything is submitted."""
        proc = self._run(["sinfo", "-h", "-o", "%P|%a|%G"], what="reach the Slurm controller")
        if proc.returncode != 0:
            raise BackendError(f"backend=slurm: the Slurm controller does not answer ({_first_line(proc)}); "
                               "check `scontrol ping`, or start the cluster")
        offered: dict[str, list[tuple[str, str | None, int]]] = {}
        availability: dict[str, str] = {}
        default = None
        for line in proc.stdout.splitlines():
            part, _, rest = line.strip().partition("|")
            avail, _, gres = rest.partition("|")
            if part.endswith("*"):
                part = default = part[:-1]
            if part:
                offered.setdefault(part, []).extend(S.parse_gres(gres))
                availability[part] = avail
        names = ", ".join(sorted(offered)) or "none"
        checked: set[S.Slot] = set()
        for slot in self._slots.values():
            if slot in checked:
                continue
            checked.add(slot)
            part = slot.partition or default
            if slot.partition and slot.partition not in offered:
                raise ConfigError(f"{slot.field}.partition: {slot.partition!r} is not a partition of this cluster "
                                  f"(partitions: {names}); set it to one of them")
            if part is None:
                raise ConfigError(f"{slot.field}.partition: this cluster has no default partition; "
                                  f"set one of: {names}")
            for req in S.parse_gres(slot.gres or ""):
                if not S.gres_offered(req, offered.get(part, [])):
                    have = ",".join(f"{n}:{t}:{c}" if t else f"{n}:{c}" for n, t, c in offered.get(part, [])) or "no GRES"
                    raise ConfigError(
                        f"{slot.field}.gres: {slot.gres!r} is not offered by partition {part} (it has {have}); "
                        "set the gres of that worker (e.g. gres: gpu:1), or gres: null for CPU-only jobs"
                    )
            if availability.get(part, "up") != "up":
                warnings.warn(f"Slurm partition {part} is {availability[part]}: jobs will wait in the queue until "
                              "it is up again", RuntimeWarning, stacklevel=3)
            argv = ["sbatch", "--test-only", *self.sbatch_args]
            argv += [f"--{k}={v}" for k, v in (("partition", slot.partition), ("account", slot.account),
                                               ("gres", slot.gres)) if v]
            test = self._run([*argv, "--wrap", "true"], what="check the job options with sbatch --test-only")
            if test.returncode != 0:
                raise ConfigError(f"{slot.field}: Slurm rejects these job options ({' '.join(argv[2:])}): "
                                  f"{_first_line(test)}")


def _slurm_says(workdir: Path) -> str:
    """The last lines Slurm itself wrote about the job (slurmstepd's ``*** JOB ... ***``, an error
    of the batch script before it opened the log), for the reason of a lost job."""
    lines = [ln.strip() for ln in read_log(workdir / S.STATE_DIR / S.SLURM_OUT, max_bytes=2000).splitlines()]
    return "; ".join([ln for ln in lines if ln][-2:])


def _same_path(a: str | Path, b: str | Path) -> bool:
    return os.path.realpath(a) == os.path.realpath(b)


def _first_line(proc: subprocess.CompletedProcess[str]) -> str:
    text = (proc.stderr or proc.stdout or "").strip()
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return "; ".join(lines[:2]) if lines else f"exit status {proc.returncode}"
