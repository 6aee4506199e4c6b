#!/usr/bin/env bash
# .ci/slurm/start.sh - bring up a REAL single-node Slurm cluster (Debian 12 packages, Slurm 22.05)
# on this machine WITHOUT systemd, for the Slurm backend's tests: munged, MariaDB + slurmdbd (so
# `sacct` works), slurmctld and slurmd run as plain background processes whose PIDs are recorded in
# $HYBRID_SLURM_DIR/run/*.pid; .ci/slurm/stop.sh stops exactly those. Needs root (apt-get, mknod, daemons).
#
# All its state - generated config, controller state, slurmd spool, logs, PID files - lives in ONE
# directory of its own, HYBRID_SLURM_DIR (default /var/tmp/hybrid-ci-slurm; layout in common.sh), so a
# machine whose /var/lib/slurm holds another cluster's state starts this one all the same. Clients
# find it through /etc/slurm/slurm.conf, a symlink to its slurm.conf while it runs.
#
# A start that fails stops again every daemon this run had started (and puts /etc/slurm/slurm.conf
# back when nothing of the cluster is left running): a failed start leaves no daemon behind.
#
# The node advertises typed fake GPUs (character devices cloned from /dev/null), so jobs can ask for
# --gres=gpu:h100:1 and Slurm sets CUDA_VISIBLE_DEVICES as on a real GPU node. conf/fleet/local_slurm.yaml
# matches the default.
#
# Idempotent: installs packages only when missing, rewrites the config, starts only the daemons
# that are not running (restarting the Slurm daemons when the config changed), then waits until
# the node is idle.
#
# Knobs (environment variables):
#   HYBRID_SLURM_DIR=/var/tmp/hybrid-ci-slurm  where everything lives (give stop.sh the same)
#   SLURM_GPUS="h100:2,h200:1"  typed fake GPUs, type:count[,type:count...]; "" = no GRES
#   SLURM_CPUS=N                CPUs to advertise (default 8; more than the real count is fine:
#                               test jobs mostly sleep)
#   SLURM_WITH_DBD=1|0          1 (default): MariaDB + slurmdbd, so sacct works; 0: no accounting
#   SLURM_RESET=1               wipe the controller's saved jobs (and the accounting DB) first
#   HYBRID_SLURM_WAIT_S=60      how long to wait for the node to become idle before giving up
set -euo pipefail

LOG_NAME=start
# shellcheck source=common.sh
. "$(dirname "$0")/common.sh"
WITH_DBD=${SLURM_WITH_DBD:-1}
GPUS=${SLURM_GPUS-h100:2,h200:1}
CPUS=${SLURM_CPUS:-8}
WAIT_S=${HYBRID_SLURM_WAIT_S:-60}
# The accounting database and its user are this cluster's own: SLURM_RESET=1 drops only them, and
# a user of that name that another cluster created with another password cannot lock slurmdbd out.
DB_NAME=hybrid_ci_slurm_acct
DB_USER=hybrid_ci_slurm
DB_PASS=hybrid-ci-slurm

die() { log "ERROR: $*"; exit 1; }
[ "$(id -u)" = 0 ] || die "needs root (apt-get, mknod, daemons): run it with sudo"
[[ "$CPUS" =~ ^[1-9][0-9]*$ ]] || die "SLURM_CPUS: '$CPUS' is not a positive whole number"
[[ "$WAIT_S" =~ ^[0-9]+$ ]] || die "HYBRID_SLURM_WAIT_S: '$WAIT_S' is not a whole number of seconds"

# On any failure (set -e, die, a signal): stop the daemons THIS run started, newest first, so a
# failed start leaves nothing running; daemons that were running before are left as they were.
STARTED=()
on_exit() {
  local rc=$? d
  trap - EXIT
  set +e
  [ "$rc" = 0 ] && exit 0
  if [ ${#STARTED[@]} -gt 0 ]; then
    log "start failed (exit $rc): stopping what this run started: ${STARTED[*]}"
    for d in "${DAEMONS[@]}"; do
      [[ " ${STARTED[*]} " == *" $d "* ]] && stop_one "$d"
    done
  fi
  if ! any_alive; then rm -f "$RUN_DIR"/*.daemon.pid; restore_client_conf; fi
  exit "$rc"
}
trap on_exit EXIT
trap 'exit 129' HUP
trap 'exit 130' INT
trap 'exit 143' TERM

# Start a daemon in its foreground mode, detached (setsid), and record ITS pid: inside the ( )
# subshell the job is never a process-group leader, so setsid does not fork and $! is the daemon.
launch() { # name cmd...
  local name=$1; shift
  STARTED+=("$name")
  ( setsid "$@" </dev/null >"$RUN_DIR/$name.out" 2>&1 & echo $! > "$RUN_DIR/$name.pid" )
}

# Something already listens on a port one of our daemons needs: another cluster's daemon (or one of
# ours from before, whose PID file is gone). Starting ours would only fail later and less clearly.
port_free() { # port daemon
  if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then
    die "port $1, which $2 needs, is taken by a process start.sh did not record in $RUN_DIR (another Slurm cluster?): stop that first"
  fi
}

dump_logs() {
  local f
  for f in "$LOG_DIR"/*.log "$RUN_DIR"/*.out; do
    [ -f "$f" ] && { echo "----- tail $f"; tail -n 25 "$f"; }
  done
  return 0
}

# ---------------------------------------------------------------------------------- install --
need=()
command -v slurmctld >/dev/null || need+=(slurmctld)
command -v slurmd >/dev/null || need+=(slurmd)
command -v sbatch >/dev/null || need+=(slurm-client)
command -v munged >/dev/null || need+=(munge)
command -v ps >/dev/null || need+=(procps)
if [ "$WITH_DBD" = 1 ]; then
  command -v slurmdbd >/dev/null || need+=(slurmdbd)
  command -v mariadbd >/dev/null || need+=(mariadb-server)
  ls /usr/lib/*/slurm-wlm/accounting_storage_mysql.so >/dev/null 2>&1 || need+=(slurm-wlm-mysql-plugin)
fi
if [ ${#need[@]} -gt 0 ]; then
  log "installing: ${need[*]}"
  # Keep the packages' init scripts from starting services: everything is started below.
  made_policy=0
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d; chmod +x /usr/sbin/policy-rc.d; made_policy=1
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
  [ "$made_policy" = 1 ] && rm -f /usr/sbin/policy-rc.d
  log "installed"
fi

# ----------------------------------------------------------------------------------- config --
mkdir -p "$HYBRID_SLURM_DIR" "$ETC_DIR" "$RUN_DIR" "$STATE_DIR" "$SPOOL_DIR" "$LOG_DIR"
# the daemons drop to the slurm user: it must reach the directory, and write state and logs
chmod 755 "$HYBRID_SLURM_DIR" "$ETC_DIR" "$RUN_DIR"
chown slurm:slurm "$STATE_DIR" "$LOG_DIR"

NODE=$(hostname -s 2>/dev/null || uname -n | cut -d. -f1)
REAL_MEM=$(slurmd -C | sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p' | head -n1)

# Typed fake GPUs: one character device (a clone of /dev/null) per GPU; Slurm rejects regular
# files and drops file-less GPUs, and with devices it sets CUDA_VISIBLE_DEVICES per job.
GRES_NODE=""; GRES_LINES=""; n=0
if [ -n "$GPUS" ]; then
  mkdir -p "$FAKEGPU_DIR"
  IFS=, read -r -a specs <<<"$GPUS"
  for spec in "${specs[@]}"; do
    type=${spec%%:*}; count=${spec##*:}
    [[ "$type" =~ ^[a-z0-9_]+$ && "$count" =~ ^[1-9][0-9]*$ ]] || die "SLURM_GPUS: '$spec' is not type:count (e.g. h100:2)"
    files=()
    for _ in $(seq 1 "$count"); do
      dev="$FAKEGPU_DIR/nvidia$n"
      if [ ! -c "$dev" ]; then rm -f "$dev"; mknod "$dev" c 1 3 || die "mknod $dev failed: cannot fake GPUs here (SLURM_GPUS=)"; fi
      files+=("$dev"); n=$((n + 1))
    done
    GRES_NODE+="${GRES_NODE:+,}gpu:$type:$count"
    GRES_LINES+="NodeName=$NODE Name=gpu Type=$type File=$(IFS=,; echo "${files[*]}")"$'\n'
  done
fi

if [ "$WITH_DBD" = 1 ]; then
  ACCT="AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStoragePort=6819
${GRES_NODE:+AccountingStorageTRES=gres/gpu}
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=30"
else
  ACCT="AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none"
fi

NEW=$(mktemp -d)
cat > "$NEW/slurm.conf" <<CONF
# generated by .ci/slurm/start.sh
ClusterName=hybridci
SlurmctldHost=$NODE(127.0.0.1)
SlurmUser=slurm
SlurmctldPort=6817
SlurmdPort=6818
AuthType=auth/munge
CredType=cred/munge
StateSaveLocation=$STATE_DIR
SlurmdSpoolDir=$SPOOL_DIR
SlurmctldPidFile=$RUN_DIR/slurmctld.daemon.pid
SlurmdPidFile=$RUN_DIR/slurmd.daemon.pid
SlurmctldLogFile=$LOG_DIR/slurmctld.log
SlurmdLogFile=$LOG_DIR/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
MailProg=/bin/true
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
ReturnToService=2
SchedulerType=sched/backfill
# schedule every second instead of every 60 s: submit -> start takes ~1 s
SchedulerParameters=sched_interval=1,bf_interval=1,sched_min_interval=0,batch_sched_delay=0
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SlurmdParameters=config_overrides
${GRES_NODE:+GresTypes=gpu}
$ACCT
MinJobAge=300
SlurmctldTimeout=30
SlurmdTimeout=30
InactiveLimit=0
KillWait=5
Waittime=0
NodeName=$NODE NodeAddr=127.0.0.1 CPUs=$CPUS RealMemory=$REAL_MEM${GRES_NODE:+ Gres=$GRES_NODE} State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
CONF
{ [ -n "$GRES_LINES" ] && printf 'AutoDetect=off\n%s' "$GRES_LINES"; } > "$NEW/gres.conf" || true
cat > "$NEW/slurmdbd.conf" <<CONF
AuthType=auth/munge
DbdHost=localhost
DbdPort=6819
SlurmUser=slurm
PidFile=$RUN_DIR/slurmdbd.daemon.pid
LogFile=$LOG_DIR/slurmdbd.log
DebugLevel=info
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=$DB_USER
StoragePass=$DB_PASS
StorageLoc=$DB_NAME
CONF
sed -i '/^$/d' "$NEW/slurm.conf"
changed=0
for f in slurm.conf gres.conf slurmdbd.conf; do
  if ! cmp -s "$NEW/$f" "$ETC_DIR/$f"; then changed=1; cp "$NEW/$f" "$ETC_DIR/$f"; fi
done
rm -rf "$NEW"
chmod 644 "$ETC_DIR/slurm.conf" "$ETC_DIR/gres.conf"
chown slurm:slurm "$ETC_DIR/slurmdbd.conf"; chmod 600 "$ETC_DIR/slurmdbd.conf"   # slurmdbd insists
if [ "$changed" = 1 ]; then
  log "config written to $ETC_DIR (node $NODE: $CPUS CPUs${GRES_NODE:+, $GRES_NODE})"
  for d in slurmd slurmctld slurmdbd; do
    pid_alive "$d" && { log "config changed: restarting $d"; stop_one "$d"; }
  done
fi
if [ "${SLURM_RESET:-0}" = 1 ]; then
  for d in slurmd slurmctld slurmdbd; do pid_alive "$d" && die "SLURM_RESET=1 but $d is running: run .ci/slurm/stop.sh first"; done
  log "reset: wiping $STATE_DIR and $SPOOL_DIR"
  rm -rf "${STATE_DIR:?}"/* "${SPOOL_DIR:?}"/*
fi
install_client_conf

# ------------------------------------------------------------------------------------ munge --
munge_ok() { munge -n -S "$MUNGE_SOCKET" 2>/dev/null | unmunge -S "$MUNGE_SOCKET" >/dev/null 2>&1; }
if munge_ok; then
  if pid_alive munged; then log "munged already running (pid $(cat "$RUN_DIR/munged.pid"))"
  else log "munged already answering on $MUNGE_SOCKET (not ours: reused, never stopped)"; fi
else
  rm -f "$RUN_DIR/munged.pid"
  if [ ! -s /etc/munge/munge.key ]; then
    mungekey --create --keyfile=/etc/munge/munge.key
    chown munge:munge /etc/munge/munge.key; chmod 400 /etc/munge/munge.key
  fi
  mkdir -p /run/munge /var/lib/munge /var/log/munge
  chown munge:munge /run/munge /var/lib/munge /var/log/munge; chmod 755 /run/munge
  # setpriv execs (no fork), so the recorded pid is munged itself; -F keeps it in the foreground.
  launch munged setpriv --reuid=munge --regid=munge --init-groups \
    /usr/sbin/munged -F --socket="$MUNGE_SOCKET" --pid-file=/run/munge/munged.pid
  for _ in $(seq 1 40); do munge_ok && break; pid_alive munged || break; sleep 0.25; done
  munge_ok || { cat "$RUN_DIR/munged.out"; die "munged did not come up"; }
  log "munged started (pid $(cat "$RUN_DIR/munged.pid"))"
fi

# --------------------------------------------------------------------- mariadb + slurmdbd --
if [ "$WITH_DBD" = 1 ]; then
  db_ok() { mysqladmin --socket="$MYSQL_SOCKET" ping >/dev/null 2>&1; }
  if db_ok; then
    if pid_alive mariadbd; then log "mariadbd already running (pid $(cat "$RUN_DIR/mariadbd.pid"))"
    else log "a MariaDB server already answers on $MYSQL_SOCKET (not ours: reused, never stopped)"; fi
  else
    rm -f "$RUN_DIR/mariadbd.pid"
    mkdir -p /run/mysqld; chown mysql:mysql /run/mysqld
    if [ ! -d /var/lib/mysql/mysql ]; then
      log "initialising the MariaDB data dir"
      mariadb-install-db --user=mysql --datadir=/var/lib/mysql >"$RUN_DIR/mariadb-install.out" 2>&1
    fi
    launch mariadbd /usr/sbin/mariadbd --user=mysql --datadir=/var/lib/mysql --skip-networking \
      --socket="$MYSQL_SOCKET" --pid-file=/run/mysqld/mysqld.pid --innodb-lock-wait-timeout=900
    for _ in $(seq 1 120); do db_ok && break; pid_alive mariadbd || break; sleep 0.25; done
    db_ok || { tail -n 30 "$RUN_DIR/mariadbd.out"; die "mariadbd did not come up"; }
    log "mariadbd started (pid $(cat "$RUN_DIR/mariadbd.pid"))"
  fi
  [ "${SLURM_RESET:-0}" = 1 ] && mysql --socket="$MYSQL_SOCKET" -e "DROP DATABASE IF EXISTS $DB_NAME;"
  mysql --socket="$MYSQL_SOCKET" -e "CREATE DATABASE IF NOT EXISTS $DB_NAME;
    CREATE USER IF NOT EXISTS '$DB_USER'@'localhost' IDENTIFIED BY '$DB_PASS';
    GRANT ALL ON $DB_NAME.* TO '$DB_USER'@'localhost'; FLUSH PRIVILEGES;"
  dbd_ok() { timeout 5 sacctmgr -n show cluster >/dev/null 2>&1; }
  if pid_alive slurmdbd; then
    log "slurmdbd already running (pid $(cat "$RUN_DIR/slurmdbd.pid"))"
  else
    port_free 6819 slurmdbd
    launch slurmdbd /usr/sbin/slurmdbd -D
    for _ in $(seq 1 60); do pid_alive slurmdbd || break; dbd_ok && break; sleep 0.5; done
    dbd_ok || { dump_logs; die "slurmdbd did not come up"; }
    log "slurmdbd started (pid $(cat "$RUN_DIR/slurmdbd.pid"))"
  fi
fi

# ------------------------------------------------------------------------ slurmctld/slurmd --
if pid_alive slurmctld; then
  log "slurmctld already running (pid $(cat "$RUN_DIR/slurmctld.pid"))"
else
  port_free 6817 slurmctld
  launch slurmctld /usr/sbin/slurmctld -D
  log "slurmctld started (pid $(cat "$RUN_DIR/slurmctld.pid"))"
fi
SLURMD_T0=0
if pid_alive slurmd; then
  log "slurmd already running (pid $(cat "$RUN_DIR/slurmd.pid"))"
else
  port_free 6818 slurmd
  SLURMD_T0=$(date +%s)
  launch slurmd /usr/sbin/slurmd -D
  log "slurmd started (pid $(cat "$RUN_DIR/slurmd.pid"))"
fi

# Wait for the node. Every client call gets `timeout`: with slurmctld down a client retries for long.
state=""; resumed=0
for i in $(seq 1 $((WAIT_S * 2))); do
  pid_alive slurmctld || { dump_logs; die "slurmctld exited"; }
  pid_alive slurmd || { dump_logs; die "slurmd exited"; }
  state=$(timeout 5 sinfo -h -n "$NODE" -o '%T' 2>/dev/null | head -n1 || true)
  case "$state" in
    idle|mixed|allocated|completing)
      # a state restored from StateSaveLocation can read "idle" before the new slurmd has
      # registered: also require its registration (SlurmdStartTime)
      [ "$SLURMD_T0" = 0 ] && break
      st=$(timeout 5 scontrol -o show node "$NODE" 2>/dev/null | sed -n 's/.*SlurmdStartTime=\([^ ]*\).*/\1/p')
      [ "$(date -d "$st" +%s 2>/dev/null || echo 0)" -ge $((SLURMD_T0 - 1)) ] && break
      state="$state (waiting for slurmd to register)" ;;
    *drain*|down*)
      if [ "$resumed" = 0 ] && [ "$i" -gt 4 ]; then
        log "node is $state ($(timeout 5 sinfo -h -n "$NODE" -o '%E')): resuming it"
        timeout 5 scontrol update NodeName="$NODE" State=RESUME || true; resumed=1
      fi ;;
  esac
  sleep 0.5
done
case "$state" in
  idle|mixed|allocated|completing) ;;
  *) dump_logs; die "node $NODE not ready after ${WAIT_S}s (state '$state')" ;;
esac
log "cluster ready: node $NODE is $state; state in $HYBRID_SLURM_DIR, clients read $CLIENT_CONF -> $SLURM_CONF; stop it with .ci/slurm/stop.sh"
timeout 5 sinfo -N -o '%N %P %T %c %G' || true
