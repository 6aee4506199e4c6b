"""Pure helpers of the Slurm backend: its configuration, the batch script, and reading Slurm's answers.

Nothing here runs a Slurm command, so all of it is tested without a cluster: the batch script
against a golden file, the parsers and the state mapping against real ``squeue``/``sacct``/
``scontrol`` output recorded from Slurm 22.05.
"""

from __future__ import annotations

import math
import re
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from backends.base import JobState, Worker
from hybrid.errors import ConfigError, reject_unknown_keys

STATE_DIR = ".hybrid"  # the backend's bookkeeping inside an experiment workdir (left out of snapshots)
SCRIPT_FILE = "job.sbatch"  # the generated batch script
SUBMIT_FILE = "submitted.json"  # written by the backend right after sbatch: {job_id, submitted, log_name}
JOB_FILE = "job.json"  # written by the batch script when it starts: {job_id, node, started}
EXIT_FILE = "exit.json"  # written by the batch script when the command ends: {state, exit_code, started, ended}
TIMEOUT_MARK = "timed-out"  # created by the script's timer just before it stops the command
CANCEL_MARK = "cancel-requested"  # created by the backend before its own scancel
SLURM_OUT = "slurm.out"  # sbatch --output: what Slurm itself prints about the job (the job's output: the log)

JOB_ID = re.compile(r"\d+")  # plain batch jobs only (no arrays, no heterogeneous jobs)

# Job states (squeue %T / sacct State / scontrol JobState) in which the job may still run.
ACTIVE_STATES = frozenset({
    "PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "SUSPENDED", "REQUEUED", "REQUEUE_FED",
    "REQUEUE_HOLD", "RESIZING", "SIGNALING", "STAGE_OUT", "STOPPED", "RESV_DEL_HOLD", "POWER_UP_NODE",
})
# Pending reasons that mean "this job will never start": it is cancelled and reported at once
# instead of waiting forever.
NEVER_STARTS = frozenset({
    "PartitionTimeLimit", "PartitionNodeLimit", "InvalidAccount", "InvalidQOS", "BadConstraints",
    "DependencyNeverSatisfied", "AccountNotAllowed", "QOSMaxWallDurationPerJobLimit",
    "AssocMaxWallDurationPerJobLimit",
})


@dataclass(frozen=True)
class SlurmJob:
    """What Slurm says about one job."""

    job_id: str
    state: str  # base state: PENDING, RUNNING, COMPLETED, CANCELLED, TIMEOUT, NODE_FAIL...
    detail: str = ""  # the state as Slurm wrote it, e.g. "CANCELLED by 1000"
    reason: str = ""  # squeue/scontrol Reason (why pending, or why it ended)
    exit_code: int | None = None  # the batch script's exit code, when known
    signal: int | None = None  # the signal that ended it, when known (0: none)
    workdir: str | None = None  # the job's working directory

    @property
    def active(self) -> bool:
        return self.state in ACTIVE_STATES


@dataclass(frozen=True)
class Outcome:
    """How a job ended, in the backend contract's terms."""

    state: JobState
    exit_code: int | None
    reason: str
    note: str = ""  # a line added to the job's log (e.g. Slurm's out-of-memory verdict)


@dataclass(frozen=True)
class Slot:
    """Where the jobs of one worker go (sbatch options)."""

    partition: str | None
    account: str | None
    gres: str | None
    field: str  # the config field that set them, for error messages


# ---- the batch script ------------------------------------------------------------------------------
def time_limit(timeout_s: float | None, margin_s: float, explicit: str | None) -> str | None:
    """sbatch --time: the explicit setting, or the experiment's timeout plus a margin in whole
    minutes (the command's own timer fires first; Slurm's limit is the safety net)."""
    if explicit:
        return explicit
    if timeout_s is None:
        return None
    return str(max(1, math.ceil((float(timeout_s) + margin_s) / 60.0)))


def batch_script(
    *,
    experiment_id: str,
    workdir: str,
    command: str,
    env: Mapping[str, str],
    directives: Sequence[tuple[str, str]],
    submit_argv: Sequence[str],
    timeout_s: float | None,
    grace_s: float,
    setup: Sequence[str] = (),
    log_name: str = "run.log",
) -> str:
    """The sbatch script of one experiment.

    Paths and values only ever reach the shell through ``shlex.quote``; options that hold paths
    (--chdir, --output) go on the sbatch command line rather than in ``#SBATCH`` lines, whose
    parser knows no shell quoting. The command runs in its own session (``setsid``) so a timeout
    or a cancel stops its whole process tree, processes that left it by a ``setsid`` of their
    own included (found by ``HYBRID_JOB_MARK`` in their environment, with their process groups:
    under proctrack/linuxproc Slurm loses track of them and they outlive the job; only one that
    forks and exits faster than /proc can be listed escapes, which proctrack/cgroup catches),
    and the script records how the command ended in
    ``.hybrid/exit.json``: that is what the backend reads first, so it needs neither Slurm
    accounting nor the controller's memory of finished jobs.

    The script appends its own and the command's output to ``log_name`` itself; sbatch's
    ``--output`` is ``.hybrid/slurm.out``, which then holds only what slurmstepd writes (``***
    JOB 12 ON node CANCELLED AT ... ***``). In the log, that message landed in the middle of the
    line the command was printing when it was cancelled: the half line came out terminated, glued
    to Slurm's words, and a line the command finished after the message was cut in two.
    """
    q = shlex.quote
    lines = [
        "#!/bin/bash",
        f"# Experiment {experiment_id}, written by hybrid's Slurm backend. Submitted from its workdir as:",
        f"#   {shlex.join(submit_argv)}",
    ]
    lines += [f"#SBATCH --{key}={value}" for key, value in directives]
    lines += [
        "",
        "set -u",
        f"cd {q(workdir)} || exit 1",
        f"exec >> {q(log_name)} 2>&1 || exit 1",
        f"mkdir -p {STATE_DIR} && rm -f {STATE_DIR}/{EXIT_FILE} {STATE_DIR}/{TIMEOUT_MARK}",
        "started=$(date +%s.%N)",
        "printf '{\"job_id\": \"%s\", \"node\": \"%s\", \"started\": %s}\\n' \"${SLURM_JOB_ID:-}\" "
        f"\"$(hostname)\" \"$started\" > {STATE_DIR}/{JOB_FILE}.tmp && mv -f {STATE_DIR}/{JOB_FILE}.tmp {STATE_DIR}/{JOB_FILE}",
        "",
        "# How the command ended, for the backend: state (exited|timeout|signalled) and exit code.",
        "hybrid_record() {",
        "  printf '{\"state\": \"%s\", \"exit_code\": %s, \"started\": %s, \"ended\": %s}\\n' "
        f"\"$1\" \"$2\" \"$started\" \"$(date +%s.%N)\" > {STATE_DIR}/{EXIT_FILE}.tmp",
        f"  mv -f {STATE_DIR}/{EXIT_FILE}.tmp {STATE_DIR}/{EXIT_FILE}",
        "}",
        "# The command's processes that left its process group (setsid, a daemon's double fork) are",
        "# nobody's children here: they are found by the mark in their environment, which they inherit.",
        "hybrid_marked() {",
        "  local f",
        "  for f in $(grep -lsxzF -- \"HYBRID_JOB_MARK=$mark\" /proc/[0-9]*/environ); do f=${f#/proc/}; echo \"${f%/environ}\"; done",
        "}",
        "# Send $1 to the marked processes and their process groups: with TERM each once (also those",
        "# started since), with KILL all of them again. A group is signalled at once as a whole, so a",
        "# process that keeps forking and exiting cannot slip between a listing and the signal.",
        "hybrid_sweep() {",
        "  local sig=$1 p stat",
        "  found=$(hybrid_marked)",
        "  for p in $found; do",
        "    { read -r stat < \"/proc/$p/stat\"; } 2>/dev/null || continue",
        "    set -f; set -- ${stat##*) }; set +f  # after the command name: state ppid pgrp ...",
        "    case $groups in *\" $3 \"*) ;; *) groups=\"$groups$3 \"; kill -\"$sig\" -- \"-$3\" 2>/dev/null;; esac",
        "    case $termed in *\" $p \"*) ;; *) termed=\"$termed$p \"; kill -\"$sig\" \"$p\" 2>/dev/null;; esac",
        "  done",
        "  if [ \"$sig\" = KILL ]; then",
        "    for p in $groups; do kill -KILL -- \"-$p\" 2>/dev/null; done",
        "    [ -z \"$found\" ] || kill -KILL $found 2>/dev/null",
        "  fi",
        "}",
        "# Gone: no marked process listed and no group seen alive, in two listings in a row (one that",
        "# forked just as it exited can hide from a single listing).",
        "hybrid_gone() {",
        "  local g",
        "  [ -z \"$found\" ] || { quiet=0; return 1; }",
        "  for g in $groups; do kill -0 -- \"-$g\" 2>/dev/null && { quiet=0; return 1; }; done",
        "  quiet=$((quiet + 1)); [ \"$quiet\" -ge 2 ]",
        "}",
        "# TERM the command's process group and every marked process and group, KILL whatever is left",
        "# after the grace period.",
        "hybrid_stop() {",
        "  [ -n \"$pid\" ] || return 0",
        "  local found quiet=0 termed=' ' groups=\" $pid \"",
        "  kill -TERM -- \"-$pid\" 2>/dev/null",
        f"  for _ in $(seq 1 {max(2, round(grace_s * 10))}); do",
        "    hybrid_sweep TERM; hybrid_gone && return 0; sleep 0.1",
        "  done",
        "  for _ in $(seq 1 20); do",
        "    hybrid_sweep KILL; hybrid_gone && return 0; sleep 0.05",
        "  done",
        "}",
        "# scancel, Slurm's time limit, preemption: Slurm sends TERM to every process of the job.",
        "hybrid_signalled() {",
        "  trap '' TERM INT",
        "  [ -n \"$timer\" ] && kill -KILL -- \"-$timer\" 2>/dev/null",
        "  hybrid_stop",
        "  hybrid_record signalled null",
        "  exit 143",
        "}",
        "",
    ]
    lines += [f"export {key}={q(str(value))}" for key, value in env.items()]
    if setup:
        lines += ["", "# backend.setup", *setup]
    lines += [
        "",
        "pid= timer= mark=\"${SLURM_JOB_ID:-none}.$$.$started\"",
        "trap hybrid_signalled TERM INT",
        f"HYBRID_JOB_MARK=\"$mark\" setsid /bin/sh -c {q(command)} </dev/null &",
        "pid=$!",
    ]
    if timeout_s:
        lines += [
            f"setsid /bin/sh -c 'sleep \"$1\" && : > {STATE_DIR}/{TIMEOUT_MARK} && kill -TERM \"-$2\"' "
            f"hybrid-timer {float(timeout_s)!r} \"$pid\" </dev/null >/dev/null 2>&1 &",
            "timer=$!",
            "disown \"$timer\"  # killed when the command ends: no job-status message in the log",
        ]
    lines += [
        "wait \"$pid\"",
        "code=$?",
        "[ -n \"$timer\" ] && kill -KILL -- \"-$timer\" 2>/dev/null",
        "hybrid_stop  # what the command left behind (or, after a timeout, the rest of its tree)",
        f"if [ -e {STATE_DIR}/{TIMEOUT_MARK} ]; then hybrid_record timeout null; exit 124; fi",
        "hybrid_record exited \"$code\"",
        "exit \"$code\"",
        "",
    ]
    return "\n".join(lines)


# ---- Slurm's answers -------------------------------------------------------------------------------
SQUEUE_FORMAT = "%i|%T|%r|%Z"  # job id | state | reason | working directory (last: it may hold "|")
SACCT_FIELDS = "JobIDRaw,State,ExitCode,WorkDir"


def parse_squeue(text: str) -> dict[str, SlurmJob]:
    """``squeue -h --states=all -o '%i|%T|%r|%Z'`` output."""
    jobs: dict[str, SlurmJob] = {}
    for line in text.splitlines():
        parts = line.strip().split("|", 3)
        if len(parts) < 2 or not parts[0]:
            continue
        state = parts[1].strip()
        jobs[parts[0]] = SlurmJob(
            parts[0], _base_state(state), state, _none(parts[2] if len(parts) > 2 else ""),
            workdir=_none(parts[3]) if len(parts) > 3 else None,
        )
    return jobs


def parse_sacct(text: str) -> dict[str, SlurmJob]:
    """``sacct -X -n -P -o JobIDRaw,State,ExitCode,WorkDir`` output (ExitCode is ``code:signal``)."""
    jobs: dict[str, SlurmJob] = {}
    for line in text.splitlines():
        parts = line.strip().split("|", 3)
        if len(parts) < 3 or not JOB_ID.fullmatch(parts[0]):
            continue
        code, sig = _exit_pair(parts[2])
        jobs[parts[0]] = SlurmJob(parts[0], _base_state(parts[1]), parts[1].strip(), "", code, sig,
                                  _none(parts[3]) if len(parts) > 3 else None)
    return jobs


def parse_scontrol(text: str) -> SlurmJob | None:
    """``scontrol show job <id>`` output (the multi-line form: WorkDir sits alone on its line)."""
    fields: dict[str, str] = {}
    for line in text.splitlines():
        line = line.strip()
        for key in ("WorkDir=", "StdOut=", "Command="):
            if line.startswith(key):
                fields[key[:-1]] = line[len(key):]
                break
        else:
            for m in re.finditer(r"(\w[\w/:]*)=(\S*)", line):
                fields.setdefault(m.group(1), m.group(2))
    if "JobId" not in fields or "JobState" not in fields:
        return None
    code, sig = _exit_pair(fields.get("ExitCode", ""))
    state = fields["JobState"]
    return SlurmJob(fields["JobId"], _base_state(state), state, _none(fields.get("Reason", "")), code, sig,
                    _none(fields.get("WorkDir", "")))


def _base_state(state: str) -> str:
    return state.strip().split(" ", 1)[0].rstrip("+").upper() if state.strip() else ""


def _none(value: str) -> str | None:
    value = value.strip()
    return None if value in ("", "None", "(null)", "n/a") else value


def _exit_pair(text: str) -> tuple[int | None, int | None]:
    m = re.fullmatch(r"\s*(\d+):(\d+)\s*", text or "")
    return (int(m.group(1)), int(m.group(2))) if m else (None, None)


def parse_gres(text: str) -> list[tuple[str, str | None, int]]:
    """GRES lists as sinfo prints them (``gpu:h100:2(S:0-1),gpu:2``) or as a job requests them
    (``gpu:h100:1``, ``gpu:1``, ``gpu``) -> [(name, type or None, count)]."""
    out: list[tuple[str, str | None, int]] = []
    for item in re.sub(r"\([^)]*\)", "", text or "").split(","):
        parts = [p for p in item.strip().split(":") if p]
        if not parts or parts[0] == "null":
            continue
        name, gtype, count = parts[0], None, 1
        if len(parts) == 2:
            gtype, count = (None, int(parts[1])) if parts[1].isdigit() else (parts[1], 1)
        elif len(parts) >= 3:
            gtype = parts[1]
            count = int(parts[2]) if parts[2].isdigit() else 1
        out.append((name, gtype, count))
    return out


def gres_offered(requested: tuple[str, str | None, int], offered: Sequence[tuple[str, str | None, int]]) -> bool:
    name, gtype, count = requested
    return any(n == name and (gtype is None or t == gtype) and c >= count for n, t, c in offered)


# ---- the state mapping -----------------------------------------------------------------------------
def classify(job: SlurmJob | None, record: Mapping[str, object] | None, cancel_requested: bool,
             timeout_s: float | None = None) -> Outcome | None:
    """How a job that left Slurm's active states ended. ``job``: Slurm's final word (None when
    Slurm no longer knows the job); ``record``: the batch script's exit.json (None when it never
    wrote one). None when neither says anything yet."""
    state = job.state if job is not None else ""
    rec_state = str(record.get("state")) if record else ""
    rec_code = record.get("exit_code") if record else None
    rec_code = rec_code if isinstance(rec_code, int) and not isinstance(rec_code, bool) else None
    jid = job.job_id if job is not None else "?"
    if state == "CANCELLED" or (not state and rec_state == "signalled"):
        if cancel_requested:
            return Outcome(JobState.CANCELLED, None, "cancelled")
        by = f" ({job.detail})" if job is not None and job.detail != "CANCELLED" else ""
        what = "cancelled" if state else "stopped by a signal"
        return Outcome(JobState.LOST, None, f"Slurm job {jid} was {what} outside the campaign{by}: "
                       "scancel by someone else, an administrator, or a maintenance")
    if state == "TIMEOUT" and rec_state != "timeout":
        return Outcome(JobState.TIMEOUT, None, f"killed by Slurm at the job's time limit (Slurm job {jid})")
    if state in ("NODE_FAIL", "BOOT_FAIL"):
        return Outcome(JobState.LOST, None, f"Slurm job {jid} ended {state}: its node failed")
    if state == "PREEMPTED":
        return Outcome(JobState.LOST, None, f"Slurm job {jid} was preempted by a higher-priority job")
    if state == "DEADLINE":
        return Outcome(JobState.LOST, None, f"Slurm job {jid} reached its deadline before it could finish")
    if state == "OUT_OF_MEMORY":
        code = rec_code if rec_code is not None else (job.exit_code if job and job.exit_code else 137)
        reason = f"out of memory: Slurm job {jid} exceeded its memory limit (OUT_OF_MEMORY)"
        return Outcome(JobState.EXITED, code or 137, reason, f"slurm: {reason}")
    if rec_state == "timeout":
        limit = f" {timeout_s:g} s" if timeout_s else ""
        return Outcome(JobState.TIMEOUT, None, f"killed after the{limit} timeout")
    if rec_state == "exited" and rec_code is not None:
        return Outcome(JobState.EXITED, rec_code, f"exit code {rec_code}" if rec_code else "")
    if state in ("COMPLETED", "FAILED"):
        code = "" if job is None or job.exit_code is None else f" (exit code {job.exit_code}:{job.signal})"
        return Outcome(JobState.LOST, None, f"Slurm job {jid} ended {state}{code} before its batch script "
                       "recorded how the command ended; see the job's log")
    if state:
        return Outcome(JobState.LOST, None, f"Slurm job {jid} ended {job.detail if job else state}")
    return None


# ---- configuration ----------------------------------------------------------------------------------
FLEET_KEYS = ("hardware", "count", "hourly_usd", "name", "gres", "partition", "account")
_TIME_LIMIT = re.compile(r"\d+|\d+:\d{1,2}(:\d{1,2})?|\d+-\d{1,2}(:\d{1,2}){0,2}|UNLIMITED|INFINITE")


def build_workers(fleet: Any, max_jobs: Any, hardware: Any, hourly_usd: Any, partition: Any, account: Any,
                  gres: Any) -> tuple[list[Worker], dict[str, Slot]]:
    """The workers (job slots) and where each one's jobs go, from the backend's config."""
    partition = _optional_str("backend.partition", partition)
    account = _optional_str("backend.account", account)
    gres = _optional_str("backend.gres", gres)
    if fleet is None or (_is_list(fleet) and not fleet):
        if isinstance(max_jobs, bool) or not isinstance(max_jobs, int) or max_jobs < 1:
            raise ConfigError(f"backend.max_jobs: expected at least 1 job slot, got {max_jobs!r}; "
                              "e.g. backend.max_jobs=8, or a fleet (fleet=reference)")
        fleet = [{"hardware": hardware, "count": max_jobs, "hourly_usd": hourly_usd}]
        where_of = ["backend"]
    elif _is_list(fleet) and fleet:
        where_of = [f"backend.fleet[{i}]" for i in range(len(fleet))]
    else:
        raise ConfigError(f"backend.fleet: expected a list of {{hardware, count, hourly_usd, gres, partition}}, "
                          f"got {fleet!r}; e.g. fleet=reference")
    workers: list[Worker] = []
    slots: dict[str, Slot] = {}
    for where, entry in zip(where_of, fleet, strict=True):
        if not isinstance(entry, Mapping):
            raise ConfigError(f"{where}: expected a mapping like {{hardware: h100, count: 4, hourly_usd: 2.5}}, "
                              f"got {entry!r}")
        reject_unknown_keys(where, entry, FLEET_KEYS)
        label = entry.get("hardware", hardware)
        if not isinstance(label, str) or not re.fullmatch(r"[\w.+-]+", label):
            raise ConfigError(f"{where}.hardware: expected a label such as cpu or h100, got {label!r}")
        count = entry.get("count", 1)
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            raise ConfigError(f"{where}.count: expected a number of job slots >= 1, got {count!r}")
        price = _price(f"{where}.hourly_usd", entry.get("hourly_usd", hourly_usd))
        prefix = entry.get("name") or label
        if not isinstance(prefix, str) or not re.fullmatch(r"[\w.+-]+", prefix):
            raise ConfigError(f"{where}.name: expected a short name like h100 or big-nodes, got {prefix!r}")
        own_gres = _optional_str(f"{where}.gres", entry["gres"]) if "gres" in entry else (
            None if label == "cpu" else gres)
        slot = Slot(
            _optional_str(f"{where}.partition", entry.get("partition", partition)),
            _optional_str(f"{where}.account", entry.get("account", account)),
            own_gres.replace("{hardware}", label) if own_gres else None,
            where,
        )
        for part in (slot.partition, slot.account, slot.gres):
            if part is not None and not re.fullmatch(r"[\w.:,+=/-]+", part):
                raise ConfigError(f"{where}: {part!r} is not a valid Slurm partition, account or GRES")
        for i in range(count):
            name = f"{prefix}-{i}"
            if name in slots:
                raise ConfigError(f"{where}.name: workers named {prefix}-N exist twice; give each fleet entry "
                                  "of the same hardware its own name")
            workers.append(Worker(name, label, price))
            slots[name] = slot
    return workers, slots


def time_limit_setting(value: Any) -> str | None:
    if value is None or value == "":
        return None
    text = str(value).strip()
    if isinstance(value, bool) or not _TIME_LIMIT.fullmatch(text):
        raise ConfigError(f"backend.time_limit: {value!r} is not a Slurm time limit (minutes, or [D-]HH:MM:SS); "
                          "e.g. backend.time_limit=02:00:00, or null for target.timeout_s + backend.time_margin_s")
    return text


def _optional_str(field: str, value: Any) -> str | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str | int) or isinstance(value, bool):
        raise ConfigError(f"{field}: expected a string, got {value!r}")
    return str(value).strip() or None


def strings(field: str, value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,) if value.strip() else ()
    if not _is_list(value) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"{field}: expected a list of strings, got {value!r}")
    return tuple(value)


def number(field: str, value: Any, minimum: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value < minimum:
        raise ConfigError(f"{field}: expected a number >= {minimum:g}, got {value!r}")
    return float(value)


def _price(field: str, value: Any) -> float:
    ok = isinstance(value, int | float) and not isinstance(value, bool)
    if not ok or not math.isfinite(value) or value < 0:
        raise ConfigError(f"{field}: expected a price in US dollars per hour >= 0, got {value!r}; e.g. hourly_usd: 2.5")
    return float(value)


def _is_list(value: Any) -> bool:
    return isinstance(value, Sequence) and not isinstance(value, str | bytes)
