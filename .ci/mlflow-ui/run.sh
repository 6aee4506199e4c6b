#!/usr/bin/env bash
# .ci/mlflow-ui/run.sh - the MLflow UI lane: a real `mlflow server` on loopback, a small campaign
# mirrored into it, and its runs comparison page and experiment page opened in headless Chromium,
# checked (every child run rendered, nested under the campaign's run) and screenshotted:
#
#   .ci/mlflow-ui/run.sh                 # from anywhere; extra arguments go to pytest
#
# Installs Debian's chromium when it is missing (apt-get, as root or through `sudo -n`), then runs
# tests/test_mlflow_ui.py with HYBRID_REQUIRE_BROWSER=1, so a missing browser fails instead of
# skipping. The REST half of the check (tests/test_mlflow_server.py) needs no browser and runs in
# the plain `pytest -q` of .ci/run.
#
# Knobs (environment variables):
#   HYBRID_VENV                   the project's virtualenv (default <repo>/.venv)
#   HYBRID_CHROMIUM               the browser (default /usr/bin/chromium, installed if missing)
#   HYBRID_UI_SCREENSHOT          the comparison page's PNG (default docs/img/mlflow-ui-compare.png)
#   HYBRID_UI_SCREENSHOT_RUNS     the experiment page's PNG (default docs/img/mlflow-ui-runs.png)
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
VENV=${HYBRID_VENV:-$ROOT/.venv}
export HYBRID_CHROMIUM=${HYBRID_CHROMIUM:-/usr/bin/chromium}
export HYBRID_UI_SCREENSHOT=${HYBRID_UI_SCREENSHOT:-$ROOT/docs/img/mlflow-ui-compare.png}
export HYBRID_UI_SCREENSHOT_RUNS=${HYBRID_UI_SCREENSHOT_RUNS:-$ROOT/docs/img/mlflow-ui-runs.png}
export HYBRID_REQUIRE_BROWSER=1
T_START=$(date +%s%N)

log() { local ms=$(( ($(date +%s%N) - T_START) / 1000000 )); printf '[mlflow-ui %d.%03ds] %s\n' $((ms / 1000)) $((ms % 1000)) "$*"; }
die() { log "ERROR: $*"; exit 1; }
cd "$ROOT"
[ -x "$VENV/bin/python" ] || die "no virtualenv at $VENV: install the project first (pip install -e '.[dev]')"

# ------------------------------------------------------------------------------------- Chromium --
if [ ! -x "$HYBRID_CHROMIUM" ]; then
  [ "$HYBRID_CHROMIUM" = /usr/bin/chromium ] || die "HYBRID_CHROMIUM=$HYBRID_CHROMIUM is not an executable"
  SUDO=""
  if [ "$(id -u)" != 0 ]; then
    command -v sudo >/dev/null && sudo -n true 2>/dev/null || die "installing chromium needs root or passwordless sudo"
    SUDO="sudo -n"
  fi
  log "installing Debian's chromium"
  $SUDO apt-get update -qq
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium >/dev/null
  [ -x "$HYBRID_CHROMIUM" ] || die "apt-get installed chromium but there is no $HYBRID_CHROMIUM"
fi
# (Debian's wrapper script may print a harmless '[: ...: unexpected operator' about memory size)
log "$("$HYBRID_CHROMIUM" --version 2>/dev/null), mlflow $("$VENV/bin/python" -c 'import mlflow; print(mlflow.__version__)')"

# ------------------------------------------------------------------------------------- the test --
log "HYBRID_REQUIRE_BROWSER=1 $VENV/bin/python -m pytest -m browser tests/test_mlflow_ui.py -q $*"
"$VENV/bin/python" -m pytest -m browser tests/test_mlflow_ui.py -q "$@"
log "screenshots: $HYBRID_UI_SCREENSHOT $HYBRID_UI_SCREENSHOT_RUNS"
