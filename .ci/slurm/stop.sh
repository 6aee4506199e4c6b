#!/usr/bin/env bash
# .ci/slurm/stop.sh - stop what .ci/slurm/start.sh started, by the PIDs it recorded in $RUN_DIR
# (never by process name). Daemons start.sh found already running and reused (a foreign munged or
# MariaDB) have no PID file there and are left alone. Safe to run when nothing is running.
set -uo pipefail

RUN_DIR=${HYBRID_SLURM_RUN_DIR:-/run/hybrid-slurm}
export SLURM_CONF=/etc/slurm/slurm.conf
T_START=$(date +%s%N)
log() { local ms=$(( ($(date +%s%N) - T_START) / 1000000 )); printf '[slurm stop %d.%03ds] %s\n' $((ms / 1000)) $((ms % 1000)) "$*"; }

pid_alive() { # name: alive, not a zombie, and still the expected program
  local f="$RUN_DIR/$1.pid" pid stat comm
  [ -s "$f" ] || return 1
  pid=$(cat "$f")
  stat=$(ps -o stat= -p "$pid" 2>/dev/null) || return 1
  case "$stat" in Z*) return 1 ;; esac
  comm=$(ps -o comm= -p "$pid" 2>/dev/null) || return 1
  [ "$comm" = "$1" ]
}

stop_one() { # name: SIGTERM, wait up to 15 s, SIGKILL
  local name=$1 f="$RUN_DIR/$1.pid" pid
  if pid_alive "$name"; then
    pid=$(cat "$f")
    log "stopping $name (pid $pid)"
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 60); do pid_alive "$name" || break; sleep 0.25; done
    if pid_alive "$name"; then
      log "$name (pid $pid) ignored SIGTERM for 15 s: SIGKILL"
      kill -KILL "$pid" 2>/dev/null || true
      sleep 0.5
    fi
  elif [ -e "$f" ]; then
    log "$name: recorded pid $(cat "$f") is no longer running"
  fi
  rm -f "$f"
}

# Cancel the cluster's jobs first, so no job processes outlive slurmd (slurmstepd daemonises).
if pid_alive slurmctld; then
  jobs=$(timeout 10 squeue -h -o '%A' 2>/dev/null | tr '\n' ' ')
  if [ -n "${jobs// /}" ]; then
    log "cancelling jobs: $jobs"
    # shellcheck disable=SC2086
    timeout 10 scancel $jobs 2>/dev/null || true
    for _ in $(seq 1 40); do
      [ -z "$(timeout 5 squeue -h -o '%A' 2>/dev/null)" ] && break
      sleep 0.5
    done
  fi
fi

stop_one slurmd
stop_one slurmctld
stop_one slurmdbd
stop_one mariadbd
stop_one munged
rm -f "$RUN_DIR"/*.daemon.pid   # the daemons' own pid files
log "stopped"
