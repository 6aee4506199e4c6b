# .ci/slurm/common.sh - sourced by start.sh and stop.sh (not run on its own): where the CI cluster
# keeps its state, and how a daemon that start.sh started is recognised and stopped.
#
# Everything the cluster writes lives under one directory, HYBRID_SLURM_DIR (default
# /var/tmp/hybrid-ci-slurm: absolute, outside the repository so the daemons' users can reach it from
# any checkout, and kept across reboots like the controller's saved state should be). The machine's
# own /var/lib/slurm, /var/log/slurm and /run/slurm* are never read or written, so another cluster's
# state there (e.g. a "clustername" of its own) cannot stop this one from starting.
#   etc/        slurm.conf, gres.conf, slurmdbd.conf (generated)
#   run/        PID files of what start.sh started (<daemon>.pid), the daemons' stdout, their own pid files
#   slurmctld/  the controller's StateSaveLocation (saved jobs, node state, clustername)
#   slurmd/     slurmd's spool
#   log/        slurmctld.log, slurmd.log, slurmdbd.log
#   fakegpu/    the fake GPU device files
# Clients (sbatch, sinfo, the tests, `hybrid backend=slurm`) read /etc/slurm/slurm.conf, so start.sh
# makes that a symlink to etc/slurm.conf, first moving any file there to run/etc-slurm.conf.saved;
# stop.sh puts it back.
#
# Shared with the machine, as services of it: munged (the machine's key, /etc/munge/munge.key) and
# the MariaDB server (/var/lib/mysql). Both are reused when already running, and stopped only when
# start.sh started them. The accounting data is a database (and a database user) of its own.

HYBRID_SLURM_DIR=${HYBRID_SLURM_DIR:-/var/tmp/hybrid-ci-slurm}
# A plain absolute path: slurm.conf values cannot be quoted, and the slurm/mysql users must reach it.
if ! [[ "$HYBRID_SLURM_DIR" =~ ^/[A-Za-z0-9._/-]*[A-Za-z0-9._-]$ ]] || [[ "$HYBRID_SLURM_DIR" =~ (^|/)\.\.?(/|$) ]]; then
  echo "HYBRID_SLURM_DIR: '$HYBRID_SLURM_DIR' must be an absolute path of letters, digits and . _ - / (e.g. /var/tmp/hybrid-ci-slurm)" >&2
  exit 2
fi
ETC_DIR=$HYBRID_SLURM_DIR/etc
RUN_DIR=$HYBRID_SLURM_DIR/run
STATE_DIR=$HYBRID_SLURM_DIR/slurmctld
SPOOL_DIR=$HYBRID_SLURM_DIR/slurmd
LOG_DIR=$HYBRID_SLURM_DIR/log
FAKEGPU_DIR=$HYBRID_SLURM_DIR/fakegpu
CLIENT_CONF=/etc/slurm/slurm.conf
SAVED_CLIENT_CONF=$RUN_DIR/etc-slurm.conf.saved
MUNGE_SOCKET=/run/munge/munge.socket.2
MYSQL_SOCKET=/run/mysqld/mysqld.sock
# the daemons start.sh may start, in the order they are stopped (clients of a daemon before it)
DAEMONS=(slurmd slurmctld slurmdbd mariadbd munged)
export SLURM_CONF=$ETC_DIR/slurm.conf   # the daemons and every client call of these scripts

T_START=$(date +%s%N)
log() { local ms=$(( ($(date +%s%N) - T_START) / 1000000 )); printf '[slurm %s %d.%03ds] %s\n' "$LOG_NAME" $((ms / 1000)) $((ms % 1000)) "$*"; }

# Alive, not a zombie, and still the program we started (a recycled PID is not ours).
pid_alive() { # name
  local f="$RUN_DIR/$1.pid" pid stat comm
  [ -s "$f" ] || return 1
  pid=$(cat "$f")
  stat=$(ps -o stat= -p "$pid" 2>/dev/null) || return 1
  case "$stat" in Z*) return 1 ;; esac
  comm=$(ps -o comm= -p "$pid" 2>/dev/null) || return 1
  [ "$comm" = "$1" ]
}

any_alive() {
  local d
  for d in "${DAEMONS[@]}"; do pid_alive "$d" && return 0; done
  return 1
}

stop_one() { # name: SIGTERM the recorded PID, wait up to 15 s, SIGKILL
  local name=$1 f="$RUN_DIR/$1.pid" pid
  if pid_alive "$name"; then
    pid=$(cat "$f")
    log "stopping $name (pid $pid)"
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 60); do pid_alive "$name" || break; sleep 0.25; done
    if pid_alive "$name"; then
      # e.g. a slurmd that never registered ignores SIGTERM while it retries
      log "$name (pid $pid) ignored SIGTERM for 15 s: SIGKILL"
      kill -KILL "$pid" 2>/dev/null || true
      sleep 0.5
    fi
  elif [ -e "$f" ]; then
    log "$name: recorded pid $(cat "$f") is no longer running"
  fi
  rm -f "$f"
}

client_conf_is_ours() { [ -L "$CLIENT_CONF" ] && [ "$(readlink "$CLIENT_CONF")" = "$SLURM_CONF" ]; }

# Point the clients' default config at this cluster, keeping whatever was there for stop.sh.
install_client_conf() {
  client_conf_is_ours && return 0
  mkdir -p "$(dirname "$CLIENT_CONF")"
  if [ -e "$CLIENT_CONF" ] || [ -L "$CLIENT_CONF" ]; then
    mv -f "$CLIENT_CONF" "$SAVED_CLIENT_CONF"
    log "moved the machine's $CLIENT_CONF to $SAVED_CLIENT_CONF (stop.sh puts it back)"
  fi
  ln -s "$SLURM_CONF" "$CLIENT_CONF"
}

# Undo install_client_conf; a link someone else has replaced meanwhile is theirs and stays.
restore_client_conf() {
  client_conf_is_ours || return 0
  rm -f "$CLIENT_CONF"
  if [ -e "$SAVED_CLIENT_CONF" ] || [ -L "$SAVED_CLIENT_CONF" ]; then
    mv -f "$SAVED_CLIENT_CONF" "$CLIENT_CONF"
    log "put the machine's $CLIENT_CONF back"
  fi
}
