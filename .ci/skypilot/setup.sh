#!/usr/bin/env bash
# .ci/skypilot/setup.sh - a SkyPilot API server driving the Slurm cluster of THIS machine, for the
# SkyPilot backend's end-to-end lane:
#
#   .ci/slurm/start.sh            # Slurm first (this script never starts, stops or configures it)
#   .ci/skypilot/setup.sh
#   HYBRID_SKYPILOT_E2E=1 .venv/bin/pytest -m skypilot_e2e tests/backends/test_skypilot.py
#   .ci/skypilot/stop.sh
#
# SkyPilot reaches Slurm only over SSH (sinfo/sbatch/srun on a "login node"): this script runs a
# throwaway sshd on 127.0.0.1 for a dedicated user, points ~/.slurm/config at it, applies the
# offline workarounds of shared/recipes/skypilot-on-local-slurm.md (uv installer shim, uv wrapper,
# seeded GPU catalog, node names that resolve), starts the API server and checks `sky check slurm`.
# Needs root. Idempotent: what exists already is kept; daemons it started are recorded by PID in
# $RUN_DIR and stopped by .ci/skypilot/stop.sh (never by process name).
#
# Knobs (environment variables):
#   HYBRID_SKYPILOT_USER=skyuser     the Slurm login user SkyPilot connects as (created if missing)
#   HYBRID_SKYPILOT_SSH_PORT=2222    the throwaway sshd's port (127.0.0.1 only)
#   HYBRID_SKYPILOT_GPUS=H100,H200   GPU names seeded into SkyPilot's catalog (it fetches it otherwise)
#   HYBRID_SKYPILOT_RUN_DIR          keys, sshd config, PID files (default /run/hybrid-skypilot)
#   HYBRID_SKYPILOT_PYTHON           the interpreter for the clusters' venv (default /usr/bin/python3)
#   SLURM_CONF                       the running cluster's slurm.conf (default /etc/slurm/slurm.conf)
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
VENV=${HYBRID_VENV:-$ROOT/.venv}
RUN_DIR=${HYBRID_SKYPILOT_RUN_DIR:-/run/hybrid-skypilot}
SSH_USER=${HYBRID_SKYPILOT_USER:-skyuser}
SSH_PORT=${HYBRID_SKYPILOT_SSH_PORT:-2222}
GPU_NAMES=${HYBRID_SKYPILOT_GPUS:-H100,H200}
TOOLS=/opt/hybrid-skypilot/bin
export SLURM_CONF=${SLURM_CONF:-/etc/slurm/slurm.conf}
MARK="# written by .ci/skypilot/setup.sh"
T_START=$(date +%s%N)

log() { local ms=$(( ($(date +%s%N) - T_START) / 1000000 )); printf '[skypilot setup %d.%03ds] %s\n' $((ms / 1000)) $((ms % 1000)) "$*"; }
die() { log "ERROR: $*"; exit 1; }
[ "$(id -u)" = 0 ] || die "needs root (a user, an sshd, /etc/hosts): run it with sudo"
mkdir -p "$RUN_DIR" "$TOOLS"

# ---------------------------------------------------------------------------------------- Slurm --
timeout 10 sinfo -h >/dev/null 2>&1 || die "Slurm does not answer (sinfo); start it first: .ci/slurm/start.sh"
mapfile -t NODES < <(timeout 10 sinfo -h -N -o '%N' | sort -u)
[ "${#NODES[@]}" -gt 0 ] || die "sinfo lists no node"
log "Slurm answers; nodes: ${NODES[*]}"

# ------------------------------------------------------------------------------------- packages --
need=()
[ -x /usr/sbin/sshd ] || need+=(openssh-server)
command -v ssh >/dev/null || need+=(openssh-client)
command -v rsync >/dev/null || need+=(rsync)
if [ "${#need[@]}" -gt 0 ]; then
  log "installing ${need[*]}"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
[ -x "$VENV/bin/python" ] || die "no virtualenv at $VENV: install the project first (pip install -e '.[dev,skypilot]')"
"$VENV/bin/python" -c 'import sky' 2>/dev/null || "$VENV/bin/pip" install -q 'skypilot[slurm]==0.14.*'
[ -x "$VENV/bin/uv" ] || "$VENV/bin/pip" install -q uv
cp -f "$VENV/bin/uv" "$TOOLS/uv-real"
# The remote interpreter runs as the Slurm login user: it must be outside root's home (a pyenv shim
# under /root is not readable by that user); prefer the system python3.
LOCAL_PY=${HYBRID_SKYPILOT_PYTHON:-}
if [ -z "$LOCAL_PY" ]; then
  for p in /usr/bin/python3 /usr/local/bin/python3; do [ -x "$p" ] && { LOCAL_PY=$p; break; }; done
fi
[ -n "$LOCAL_PY" ] && [ -x "$LOCAL_PY" ] || die "no python3 outside root's home; set HYBRID_SKYPILOT_PYTHON"
log "skypilot $("$VENV/bin/python" -c 'import sky; print(sky.__version__)'), uv $("$TOOLS/uv-real" --version | cut -d' ' -f2), remote python $LOCAL_PY"

# --------------------------------------------------------------------------- the Slurm login user --
id "$SSH_USER" >/dev/null 2>&1 || { log "creating user $SSH_USER"; useradd -m -s /bin/bash "$SSH_USER"; }
# useradd leaves the password field "!" (locked); sshd without PAM refuses locked accounts even for
# key logins. "*" means "no password can match" without locking the account.
case "$(getent shadow "$SSH_USER" | cut -d: -f2)" in '!'*) usermod -p '*' "$SSH_USER" ;; esac
USER_HOME=$(getent passwd "$SSH_USER" | cut -d: -f6)
KEY=$RUN_DIR/id_ed25519
[ -s "$KEY" ] || ssh-keygen -q -t ed25519 -N '' -f "$KEY" -C hybrid-skypilot
install -d -m 700 -o "$SSH_USER" "$USER_HOME/.ssh" "$USER_HOME/bin"
grep -qxF "$(cat "$KEY.pub")" "$USER_HOME/.ssh/authorized_keys" 2>/dev/null || cat "$KEY.pub" >> "$USER_HOME/.ssh/authorized_keys"

# Offline workaround 1: SkyPilot's remote setup runs `curl -LsSf https://astral.sh/uv/install.sh | sh`.
# This curl prints an "installer" that copies the uv wrapper below instead; other URLs go to real curl.
cat > "$USER_HOME/bin/curl" <<EOF
#!/bin/sh
$MARK
for a in "\$@"; do
  case "\$a" in
    *astral.sh/uv/install.sh*)
      printf '%s\n' 'd="\${UV_INSTALL_DIR:-\$HOME/.local/bin}"; mkdir -p "\$d"; cp $TOOLS/uv "\$d/uv"; chmod +x "\$d/uv"'
      exit 0 ;;
  esac
done
exec /usr/bin/curl "\$@"
EOF
# Offline workaround 2: `uv venv --python 3.10` would download CPython; use the local python3, and
# trust the system CA store (this machine's TLS proxy is unknown to uv's built-in roots).
cat > "$TOOLS/uv" <<EOF
#!/bin/bash
$MARK
export UV_NATIVE_TLS=1 UV_PYTHON_DOWNLOADS=never SSL_CERT_FILE=\${SSL_CERT_FILE:-/etc/ssl/certs/ca-certificates.crt}
args=(); prev=""
for a in "\$@"; do
  if [ "\$prev" = "--python" ] || [ "\$prev" = "-p" ]; then case "\$a" in 3.*) a=$LOCAL_PY ;; esac; fi
  case "\$a" in --python=3.*) a=--python=$LOCAL_PY ;; esac
  args+=("\$a"); prev="\$a"
done
exec $TOOLS/uv-real "\${args[@]}"
EOF
chmod 755 "$USER_HOME/bin/curl" "$TOOLS/uv" "$TOOLS/uv-real"
USER_PATH="$USER_HOME/bin:/usr/local/bin:/usr/bin:/bin"
echo "PATH=$USER_PATH" > "$USER_HOME/.ssh/environment"  # non-login ssh commands (PermitUserEnvironment)
grep -qF "$MARK" "$USER_HOME/.profile" 2>/dev/null || printf '%s\nexport PATH="%s"\n' "$MARK" "$USER_PATH" >> "$USER_HOME/.profile"
chown -R "$SSH_USER": "$USER_HOME/.ssh" "$USER_HOME/bin" "$USER_HOME/.profile"
chmod 600 "$USER_HOME/.ssh/authorized_keys" "$USER_HOME/.ssh/environment"

# ---------------------------------------------------------------------------------- the sshd --
pid_alive() { local f="$RUN_DIR/$1.pid"; [ -s "$f" ] && kill -0 "$(cat "$f")" 2>/dev/null; }
[ -s "$RUN_DIR/ssh_host_ed25519_key" ] || ssh-keygen -q -t ed25519 -N '' -f "$RUN_DIR/ssh_host_ed25519_key"
cat > "$RUN_DIR/sshd_config" <<EOF
$MARK
Port $SSH_PORT
ListenAddress 127.0.0.1
HostKey $RUN_DIR/ssh_host_ed25519_key
PidFile $RUN_DIR/sshd.pid
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
AllowUsers $SSH_USER
AuthorizedKeysFile .ssh/authorized_keys
PermitUserEnvironment yes
SetEnv SLURM_CONF=$SLURM_CONF
EOF
mkdir -p /run/sshd
if pid_alive sshd; then
  log "sshd already running (pid $(cat "$RUN_DIR/sshd.pid"))"
else
  /usr/sbin/sshd -t -f "$RUN_DIR/sshd_config" || die "sshd rejects $RUN_DIR/sshd_config"
  /usr/sbin/sshd -f "$RUN_DIR/sshd_config"
  for _ in $(seq 1 40); do pid_alive sshd && break; sleep 0.25; done
  pid_alive sshd || die "sshd did not start"
  log "sshd started on 127.0.0.1:$SSH_PORT (pid $(cat "$RUN_DIR/sshd.pid"))"
fi
SSH=(ssh -i "$KEY" -p "$SSH_PORT" -o BatchMode=yes -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR)
"${SSH[@]}" "$SSH_USER@127.0.0.1" 'sinfo -h -o %P && command -v rsync && command -v curl' >/dev/null \
  || die "ssh $SSH_USER@127.0.0.1 -p $SSH_PORT cannot run sinfo/rsync/curl"

# --------------------------------------------------------- SkyPilot's view of the Slurm cluster --
# ~/.slurm/config: one Host per Slurm cluster (localslurm) and, because SkyPilot resolves node names
# (offline workaround 4), one per node; the node names resolve to 127.0.0.1 in /etc/hosts too.
SLURM_SSH=$HOME/.slurm/config
if [ -e "$SLURM_SSH" ] && ! grep -qF "$MARK" "$SLURM_SSH"; then
  die "$SLURM_SSH exists and was not written by this script; move it away first"
fi
mkdir -p "$HOME/.slurm"
{
  echo "$MARK"
  for host in localslurm "${NODES[@]}"; do
    printf 'Host %s\n  HostName 127.0.0.1\n  Port %s\n  User %s\n  IdentityFile %s\n  StrictHostKeyChecking no\n  UserKnownHostsFile /dev/null\n' \
      "$host" "$SSH_PORT" "$SSH_USER" "$KEY"
  done
} > "$SLURM_SSH"
for node in "${NODES[@]}"; do
  getent hosts "$node" >/dev/null || { log "adding $node to /etc/hosts"; echo "127.0.0.1 $node $MARK" >> /etc/hosts; }
done

# Offline workaround 3: any accelerator name makes SkyPilot fetch its GPU catalog; seed it.
CATALOG=$HOME/.sky/catalogs/v8/common
mkdir -p "$CATALOG"
if [ ! -s "$CATALOG/accelerators.csv" ]; then
  { echo "AcceleratorName,Clouds"; tr ',' '\n' <<<"$GPU_NAMES" | sed 's/$/,Slurm/'; } > "$CATALOG/accelerators.csv"
fi
if [ ! -s "$CATALOG/metadata.csv" ]; then
  { echo "GPU,MemoryGB,Manufacturer"
    for g in ${GPU_NAMES//,/ }; do case "$g" in H200) m=141 ;; H100|A100-80GB) m=80 ;; A100) m=40 ;; *) m=24 ;; esac; echo "$g,$m,NVIDIA"; done
  } > "$CATALOG/metadata.csv"
fi
# A busy GPU type fails over after 30 s instead of SkyPilot's default of a day.
SKY_CONFIG=$HOME/.sky/config.yaml
if ! grep -qs '^slurm:' "$SKY_CONFIG"; then
  printf '%s\nslurm:\n  provision_timeout: 30\n' "$MARK" >> "$SKY_CONFIG"
fi

# ------------------------------------------------------------------------------- the API server --
if "$VENV/bin/python" -c 'from sky.server import common as c; import sys; sys.exit(0 if c.get_api_server_status().status.value == "healthy" else 1)' 2>/dev/null; then
  log "SkyPilot API server already running"
else
  log "starting the SkyPilot API server"
  "$VENV/bin/sky" api start >"$RUN_DIR/api_start.log" 2>&1 || { cat "$RUN_DIR/api_start.log"; die "sky api start failed"; }
fi
"$VENV/bin/sky" check slurm >"$RUN_DIR/check.log" 2>&1 || true
grep -qiE 'slurm.*enabled|enabled.*slurm' "$RUN_DIR/check.log" && ! grep -qiE 'slurm.*disabled' "$RUN_DIR/check.log" \
  || { cat "$RUN_DIR/check.log"; die "sky check slurm does not report Slurm enabled"; }
log "ready: HYBRID_SKYPILOT_E2E=1 $VENV/bin/pytest -m skypilot_e2e tests/backends/test_skypilot.py"
