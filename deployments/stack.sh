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
  if command -v setsid >/dev/null; then
    setsid "$@" >"$PIDS/$name.log" 2>&1 </dev/null &
  else  # macOS has no setsid: the process is then signalled by pid only
    "$@" >"$PIDS/$name.log" 2>&1 </dev/null &
  fi
  echo $! >"$PIDS/$name.pid"
}

pid_of() { cat "$PIDS/$1.pid" 2>/dev/null; }

# Wait until none of the named processes is alive, at most $1 seconds.
wait_gone() {
  local limit=$1; shift
  for _ in $(seq $((limit * 5))); do
    local any=0
    for name in "$@"; do alive "$name" && any=1; done
    [[ $any == 0 ]] && return 0
    sleep 0.2
  done
  return 1
}

# Workers: SIGINT first (stop polling). Prefect 3.8.8's worker logs "Received SIGINT" but keeps
# running (its websocket channel task survives the cancellation; a second SIGINT is ignored too), so
# after a grace period SIGTERM makes Prefect's own handler end it. Flow runs it started share its
# process group (setsid): any still running get SIGTERM, which the engine records as a crash.
stop_workers() {
  local names=("$@") name pid
  for name in "${names[@]}"; do alive "$name" && kill -INT "$(pid_of "$name")" 2>/dev/null || true; done
  wait_gone 5 "${names[@]}" || for name in "${names[@]}"; do
    alive "$name" && kill -TERM "$(pid_of "$name")" 2>/dev/null || true
  done
  wait_gone 10 "${names[@]}" || true
  for name in "${names[@]}"; do
    pid=$(pid_of "$name") || continue
    if alive "$name" || pgrep -g "$pid" >/dev/null 2>&1; then
      echo "  $name: flow runs still running in its process group: SIGTERM"
      kill -TERM -- "-$pid" 2>/dev/null || true
      sleep 3
      kill -KILL -- "-$pid" 2>/dev/null || true
    fi
    rm -f "$PIDS/$name.pid"
    echo "  stopped $name"
  done
}

# Server: SIGINT (the CLI forwards SIGTERM to its uvicorn process), SIGTERM to the group as a fallback.
stop_server() {
  alive server || { rm -f "$PIDS/server.pid"; return 0; }
  local pid; pid=$(pid_of server)
  kill -INT "$pid" 2>/dev/null || true
  wait_gone 30 server || { echo "  server still up after SIGINT: SIGTERM"; kill -TERM -- "-$pid" 2>/dev/null || true; sleep 2; }
  pgrep -g "$pid" >/dev/null 2>&1 && kill -KILL -- "-$pid" 2>/dev/null || true
  rm -f "$PIDS/server.pid"
  echo "  stopped server"
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
  echo "deployed: atft/dryrun, atft/nightly-hpo (02:00 Asia/Tokyo), atft-gpu-stage/gpu, atft-hpo-worker/gpu"

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
  # Workers first: a worker that loses its server mid-run cannot report its runs' states.
  stop_workers "${WORKERS[@]/#/worker-}"
  stop_server
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
