#!/usr/bin/env bash
# Local Prefect stack for atft: server + pools + deployments + one cpu and one gpu worker.
#
#   deployments/stack.sh up      start (or finish starting) everything, print what to try
#   deployments/stack.sh down    stop workers (SIGINT, they finish their run), then the server
#   deployments/stack.sh status  what is running
#
# State lives in $PREFECT_HOME (default: <repo>/.prefect, gitignored): database, logs, pid files.
# Environment knobs: ATFT_PREFECT_PORT (default 4200), PREFECT_HOME, PREFECT_BIN.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"  # deploy resolves the pull step's {{ $PWD }} to the repository root

export PREFECT_HOME="${PREFECT_HOME:-$ROOT/.prefect}"
export PREFECT_SERVER_ANALYTICS_ENABLED=false
HOST=127.0.0.1
PORT="${ATFT_PREFECT_PORT:-4200}"
API="http://$HOST:$PORT/api"
if [[ -z "${PREFECT_BIN:-}" ]]; then
  if [[ -x "$ROOT/.venv/bin/prefect" ]]; then PREFECT_BIN="$ROOT/.venv/bin/prefect"; else PREFECT_BIN="$(command -v prefect)"; fi
fi
export PREFECT_BIN
PIDS="$PREFECT_HOME"  # <name>.pid and <name>.log side by side
WORKERS=(cpu gpu)

alive() { [[ -f "$PIDS/$1.pid" ]] && kill -0 "$(cat "$PIDS/$1.pid")" 2>/dev/null; }

healthy() { curl -fsS --max-time 2 "$API/health" >/dev/null 2>&1; }

# Start a command in its own session (process group) so `down` can signal it and its children.
start_bg() {
  local name=$1; shift
  setsid "$@" >"$PIDS/$name.log" 2>&1 < /dev/null &
  echo $! >"$PIDS/$name.pid"
}

# SIGINT the process group, wait, then SIGTERM if it is still there.
stop() {
  local name=$1 wait_s=${2:-30}
  alive "$name" || { rm -f "$PIDS/$name.pid"; return 0; }
  local pid; pid=$(cat "$PIDS/$name.pid")
  kill -INT -- "-$pid" 2>/dev/null || kill -INT "$pid" 2>/dev/null || true
  for _ in $(seq $((wait_s * 5))); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
  if kill -0 "$pid" 2>/dev/null; then
    echo "  $name did not stop on SIGINT within ${wait_s}s: SIGTERM"
    kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
    sleep 1
  fi
  rm -f "$PIDS/$name.pid"
  echo "  stopped $name"
}

up() {
  mkdir -p "$PIDS"
  if alive server; then
    echo "server already running (pid $(cat "$PIDS/server.pid"))"
  else
    # The server must not talk to itself through a client URL inherited from the shell.
    start_bg server env -u PREFECT_API_URL "$PREFECT_BIN" server start --host "$HOST" --port "$PORT"
    echo "starting Prefect server on $HOST:$PORT (log: $PIDS/server.log)"
  fi
  for _ in $(seq 240); do healthy && break; alive server || { tail -20 "$PIDS/server.log"; exit 1; }; sleep 0.5; done
  healthy || { echo "server not healthy after 120s; see $PIDS/server.log"; exit 1; }
  export PREFECT_API_URL="$API"

  "$ROOT/deployments/setup_pools.sh"
  "$PREFECT_BIN" --no-prompt deploy --all --prefect-file deployments/prefect.yaml >"$PIDS/deploy.log" 2>&1 \
    || { tail -30 "$PIDS/deploy.log"; exit 1; }
  echo "deployed: atft/dryrun, atft/nightly-hpo (02:00 Asia/Tokyo), atft-gpu-stage/gpu"

  for pool in "${WORKERS[@]}"; do
    if alive "worker-$pool"; then
      echo "worker on '$pool' already running"
    else
      start_bg "worker-$pool" "$PREFECT_BIN" worker start --pool "$pool" --name "atft-$pool-$(hostname)"
      echo "started worker on pool '$pool' (log: $PIDS/worker-$pool.log)"
    fi
  done

  cat <<EOF

Prefect UI: http://$HOST:$PORT

Try (in this shell first: export PREFECT_API_URL=$API):
  prefect deployment run atft/dryrun --watch        # cache -> GPU stage on the gpu pool -> gate
      on a machine without a GPU the gate's GPU criterion fails by design; to see a green run:
  prefect deployment run atft/dryrun -p require_gpu=false --watch
  atft dryrun                                       # same flow from the CLI, shown in the UI too
  prefect deployment ls; prefect flow-run ls        # runs, the nightly schedule's upcoming runs
Artifacts (UI > Artifacts): dryrun-gate, cache-summary, epoch-metrics, plot-training,
  plot-gpu-util, run-files, run-folder (run-mirror when ATFT_ARTIFACT_URI=s3://... is set).
Stop: deployments/stack.sh down   (make down)
EOF
}

down() {
  # Workers first: a worker that loses its server mid-run marks nothing and logs errors.
  for pool in "${WORKERS[@]}"; do stop "worker-$pool" 30; done
  stop server 30
}

status() {
  for name in server "${WORKERS[@]/#/worker-}"; do
    if alive "$name"; then echo "$name: running (pid $(cat "$PIDS/$name.pid"))"; else echo "$name: stopped"; fi
  done
  healthy && echo "API: $API healthy" || echo "API: $API not answering"
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  status) status ;;
  *) echo "usage: $0 up|down|status" >&2; exit 2 ;;
esac
