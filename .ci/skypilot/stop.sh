#!/usr/bin/env bash
# .ci/skypilot/stop.sh - undo the running part of .ci/skypilot/setup.sh: tear down the e2e lane's
# clusters (hye2e-*), stop the SkyPilot API server (`sky api stop`, which stops its whole process
# group) and the throwaway sshd by the PID setup.sh recorded. Files it wrote are left in place.
# Never touches Slurm. Safe to run when nothing is running.
set -uo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
VENV=${HYBRID_VENV:-$ROOT/.venv}
RUN_DIR=${HYBRID_SKYPILOT_RUN_DIR:-/run/hybrid-skypilot}
log() { printf '[skypilot stop] %s\n' "$*"; }

if [ -x "$VENV/bin/sky" ]; then
  clusters=$("$VENV/bin/python" - <<'EOF' 2>/dev/null
import sky
from sky.server import common
if common.get_api_server_status().status.value == "healthy":
    print(" ".join(r["name"] for r in sky.get(sky.status()) if r["name"].startswith("hye2e-")))
EOF
)
  for c in $clusters; do log "sky down $c"; timeout 300 "$VENV/bin/sky" down -y "$c" || true; done
  log "stopping the SkyPilot API server"
  timeout 60 "$VENV/bin/sky" api stop || true
fi
f=$RUN_DIR/sshd.pid
if [ -s "$f" ] && kill -0 "$(cat "$f")" 2>/dev/null; then
  log "stopping sshd (pid $(cat "$f"))"
  kill -TERM "$(cat "$f")" || true
fi
rm -f "$f"
