#!/usr/bin/env bash
# .ci/slurm/stop.sh - stop what .ci/slurm/start.sh started, by the PIDs it recorded in
# $HYBRID_SLURM_DIR/run (never by process name), and put the machine's /etc/slurm/slurm.conf back.
# Daemons start.sh found already running and reused (a foreign munged or MariaDB) have no PID file
# there and are left alone. The cluster's state (saved jobs, logs, config) stays in
# $HYBRID_SLURM_DIR for the next start. Safe to run when nothing is running.
#
# Knobs: HYBRID_SLURM_DIR, as given to start.sh (default /var/tmp/hybrid-ci-slurm).
set -uo pipefail

LOG_NAME=stop
# shellcheck source=common.sh
. "$(dirname "$0")/common.sh"

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

for d in "${DAEMONS[@]}"; do stop_one "$d"; done
rm -f "$RUN_DIR"/*.daemon.pid   # the daemons' own pid files
restore_client_conf
log "stopped"
