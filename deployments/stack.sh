#!/usr/bin/env bash
# Local Prefect stack for atft: server + pools + deployments + alert + one cpu worker and one gpu
# worker per GPU (`--limit 1`, its own CUDA_VISIBLE_DEVICES: one training per GPU).
#
#   deployments/stack.sh up      start (or finish starting) everything, print what to try
#   deployments/stack.sh down    stop workers (SIGINT, they finish their run), then the server
#   deployments/stack.sh status  what is running
#
# State lives in $PREFECT_HOME (default: <repo>/.prefect, gitignored): database, logs, pid files.
# Environment knobs:
#   ATFT_PREFECT_PORT (default 4200), PREFECT_HOME, PREFECT_BIN
#   ATFT_PREFECT_HOST (default 127.0.0.1): another address (e.g. 0.0.0.0) for gpu workers on other hosts;
#     refused unless PREFECT_SERVER_API_AUTH_STRING=user:password is set (the API is never open beyond
#     loopback). Workers and the CLI then send PREFECT_API_AUTH_STRING (this script sets it for its own).
#   PREFECT_SERVER_DATABASE_CONNECTION_URL: run the server on PostgreSQL
#     (postgresql+asyncpg://user:${PASSWORD}@db:5432/prefect) instead of SQLite in $PREFECT_HOME
#   ATFT_ALERT_WEBHOOK_URL: where an automation POSTs when a run of flow `atft` fails (setup_alerts.py)
#   ATFT_HOME: the work root every run writes under, runs/, cache/, demo/, studies/ (default
#     ~/.local/share/atft). Flow runs work in throwaway folders (the git_clone pull step), so nothing
#     may live in their working folder; the workers get it from this script's environment.
#   ATFT_GPU_IDS: GPU indices to start gpu workers for (default: every GPU `nvidia-smi -L` lists)
#   GPU_WORKERS=cpu-dev: on a host without a GPU, start one gpu worker anyway, for development (its
#     runs train on the CPU only when they say require_gpu=false; any other run fails naming the host)
#   ATFT_CRASH_AFTER_S: a run that sends no heartbeat for this long (default 180, at least 60; runs
#     send one every 30 s, prefect.yaml) is marked Crashed by an automation: a dead host is noticed in minutes
#   ATFT_GIT_REPOSITORY, ATFT_GIT_BRANCH: where workers clone the code from (prefect.yaml's git_clone
#     pull step); default this checkout's path and current branch. GPU hosts elsewhere need a URL they
#     can reach (e.g. the team's https://... remote).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"  # `prefect deploy` reads deployments/prefect.yaml and the flows' entrypoints from the root

export PREFECT_HOME="${PREFECT_HOME:-$ROOT/.prefect}"
export PREFECT_SERVER_ANALYTICS_ENABLED=false
export ATFT_HOME="${ATFT_HOME:-$HOME/.local/share/atft}"
export ATFT_CRASH_AFTER_S="${ATFT_CRASH_AFTER_S:-180}"
HOST="${ATFT_PREFECT_HOST:-127.0.0.1}"
PORT="${ATFT_PREFECT_PORT:-4200}"
# Clients on this machine reach a server bound to every address through loopback.
case "$HOST" in 0.0.0.0|::) CLIENT_HOST=127.0.0.1 ;; *) CLIENT_HOST="$HOST" ;; esac
API="http://$CLIENT_HOST:$PORT/api"
if [[ -n "${PREFECT_SERVER_API_AUTH_STRING:-}" ]]; then
  export PREFECT_API_AUTH_STRING="${PREFECT_API_AUTH_STRING:-$PREFECT_SERVER_API_AUTH_STRING}"
fi
if [[ -z "${PREFECT_BIN:-}" ]]; then
  if [[ -x "$ROOT/.venv/bin/prefect" ]]; then PREFECT_BIN="$ROOT/.venv/bin/prefect"; else PREFECT_BIN="$(command -v prefect)"; fi
fi
export PREFECT_BIN
PIDS="$PREFECT_HOME"  # <name>.pid and <name>.log side by side

is_loopback() { case "$1" in 127.*|localhost|::1) return 0 ;; *) return 1 ;; esac; }

# Workers that have a pid file (cpu, gpu-0, gpu-1, ...), whatever `up` started.
workers() { local f; for f in "$PIDS"/worker-*.pid; do [[ -e "$f" ]] && basename "$f" .pid; done; return 0; }

# GPU indices: ATFT_GPU_IDS if set ("0,1"), else every GPU `nvidia-smi -L` lists; none -> empty.
gpu_ids() {
  if [[ -n "${ATFT_GPU_IDS:-}" ]]; then tr ',' ' ' <<<"$ATFT_GPU_IDS"; return 0; fi
  command -v nvidia-smi >/dev/null 2>&1 || return 0
  nvidia-smi -L 2>/dev/null | sed -n 's/^GPU \([0-9][0-9]*\):.*/\1/p' | tr '\n' ' '
}

alive() { [[ -f "$PIDS/$1.pid" ]] && kill -0 "$(cat "$PIDS/$1.pid")" 2>/dev/null; }

healthy() { curl -fsS --max-time 2 "$API/health" >/dev/null 2>&1; }  # /health needs no auth

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

# Every process below $1 (children first), through the parent links: flow runs sit in sessions of
# their own (Prefect isolates each run's process group), so the worker's group alone misses them.
descendants() {
  local kids; kids=$(ps -o pid= --ppid "$1" 2>/dev/null | tr -d ' ') || true
  for k in $kids; do echo "$k"; descendants "$k"; done
}

# Workers: SIGINT first (stop polling). Prefect 3.8.8's worker logs "Received SIGINT" but keeps
# running (its websocket channel task survives the cancellation; a second SIGINT is ignored too), so
# after a grace period SIGTERM makes Prefect's own handler end it. Flow runs it started and that are
# still running get SIGTERM (the engine records a crash), then SIGKILL.
stop_workers() {
  local names=("$@") name pid runs=()
  for name in "${names[@]}"; do alive "$name" && runs+=($(descendants "$(pid_of "$name")")); done
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
  local left=() p
  for p in "${runs[@]}"; do kill -0 "$p" 2>/dev/null && left+=("$p"); done
  if [[ ${#left[@]} -gt 0 ]]; then
    echo "  ${#left[@]} flow-run process(es) outlived their worker: SIGTERM"
    kill -TERM "${left[@]}" 2>/dev/null || true
    sleep 3
    kill -KILL "${left[@]}" 2>/dev/null || true
  fi
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
  case "$ATFT_HOME" in /*) ;; *) echo "ATFT_HOME=$ATFT_HOME is relative: flow runs work in throwaway folders, give an absolute path" >&2; exit 2 ;; esac
  case "$ATFT_CRASH_AFTER_S" in ''|*[!0-9]*) echo "ATFT_CRASH_AFTER_S=$ATFT_CRASH_AFTER_S: give whole seconds, at least 60" >&2; exit 2 ;; esac
  (( ATFT_CRASH_AFTER_S >= 60 )) || { echo "ATFT_CRASH_AFTER_S=$ATFT_CRASH_AFTER_S: at least 60 (two missed 30 s heartbeats), or live runs are taken for dead" >&2; exit 2; }
  case "${GPU_WORKERS:-}" in ""|cpu-dev) ;; *) echo "GPU_WORKERS=$GPU_WORKERS: the only value is cpu-dev (a gpu worker on a host without a GPU, for development)" >&2; exit 2 ;; esac
  if ! is_loopback "$HOST" && [[ -z "${PREFECT_SERVER_API_AUTH_STRING:-}" ]]; then
    echo "refusing to bind $HOST: beyond loopback the Prefect API must not be open. Set" >&2
    echo "PREFECT_SERVER_API_AUTH_STRING=user:password (long, random) and run again; give remote workers" >&2
    echo "PREFECT_API_AUTH_STRING=user:password and PREFECT_API_URL=http://<this host>:$PORT/api" >&2
    exit 2
  fi
  export ATFT_GIT_REPOSITORY="${ATFT_GIT_REPOSITORY:-$ROOT}"
  if [[ -z "${ATFT_GIT_BRANCH:-}" ]]; then
    ATFT_GIT_BRANCH="$(git -C "$ROOT" rev-parse --abbrev-ref HEAD 2>/dev/null || true)"
    if [[ -z "$ATFT_GIT_BRANCH" || "$ATFT_GIT_BRANCH" == HEAD ]]; then
      echo "workers clone the code with git, but $ROOT is not on a git branch: check out a branch, or set" >&2
      echo "ATFT_GIT_REPOSITORY and ATFT_GIT_BRANCH to a repository and branch the workers can clone" >&2
      exit 2
    fi
  fi
  export ATFT_GIT_BRANCH
  echo "workers clone $ATFT_GIT_REPOSITORY, branch $ATFT_GIT_BRANCH (its last commit)"
  if [[ -n "$(git -C "$ROOT" status --porcelain --untracked-files=no 2>/dev/null)" ]]; then
    echo "  note: this checkout has uncommitted changes; flow runs will not see them until they are committed"
  fi
  mkdir -p "$PIDS" "$ATFT_HOME"
  echo "work root: $ATFT_HOME (runs/, cache/, demo/, studies/)"
  if alive server; then
    echo "server already running (pid $(cat "$PIDS/server.pid"))"
  else
    # The server must not talk to itself through a client URL inherited from the shell.
    start_bg server env -u PREFECT_API_URL "$PREFECT_BIN" server start --host "$HOST" --port "$PORT"
    db="SQLite in $PREFECT_HOME"
    [[ -n "${PREFECT_SERVER_DATABASE_CONNECTION_URL:-}" ]] && db="$(sed -E 's#://([^:/@]+):[^@]*@#://\1:***@#' \
      <<<"$PREFECT_SERVER_DATABASE_CONNECTION_URL")"
    echo "starting Prefect server on $HOST:$PORT, database $db (log: $PIDS/server.log)"
    [[ -n "${PREFECT_SERVER_API_AUTH_STRING:-}" ]] && echo "API basic auth on (PREFECT_SERVER_API_AUTH_STRING)"
  fi
  for _ in $(seq 240); do healthy && break; alive server || { tail -20 "$PIDS/server.log"; exit 1; }; sleep 0.5; done
  healthy || { echo "server not healthy after 120s; see $PIDS/server.log"; exit 1; }
  export PREFECT_API_URL="$API"

  "$ROOT/deployments/setup_pools.sh"
  "$PREFECT_BIN" --no-prompt deploy --all --prefect-file deployments/prefect.yaml >"$PIDS/deploy.log" 2>&1 \
    || { tail -30 "$PIDS/deploy.log"; exit 1; }
  echo "deployed: atft/dryrun, atft/nightly-hpo (02:00 Asia/Tokyo), atft-gpu-stage/gpu, atft-hpo-worker/gpu"
  "$(dirname "$PREFECT_BIN")/python" "$ROOT/deployments/setup_alerts.py"

  # cpu: the pipelines themselves (they mostly wait for the gpu pool), a few at once.
  start_worker cpu cpu "" --limit 4
  # gpu: one worker per GPU, each sees only its GPU and runs one flow run at a time (stage or HPO
  # worker): one training per GPU, however many runs are queued. No server-wide tag limit: that
  # would make every GPU host take turns.
  local ids; ids=$(gpu_ids)
  if [[ -n "${ids// /}" ]]; then
    for i in $ids; do start_worker "gpu-$i" gpu "$i" --limit 1; done
  elif [[ "${GPU_WORKERS:-}" == cpu-dev ]]; then
    echo "!! GPU_WORKERS=cpu-dev: a gpu worker on a host WITHOUT a GPU, for development. It trains on the CPU"
    echo "!! the runs that say require_gpu=false; any run that requires a GPU fails on it, naming this host."
    start_worker gpu-cpu-dev gpu "" --limit 1
  else
    echo "no GPU visible (nvidia-smi -L): no gpu worker started here; gpu-pool runs wait for a GPU host's worker"
    echo "  (for development on this host: GPU_WORKERS=cpu-dev make up)"
  fi

  cat <<EOF

Prefect UI: http://$CLIENT_HOST:$PORT

Work root: $ATFT_HOME (run folders in runs/, caches in cache/, the nightly study in studies/)

Try (in this shell first: export PREFECT_API_URL=$API${PREFECT_API_AUTH_STRING:+ PREFECT_API_AUTH_STRING=...}):
  prefect deployment run atft/dryrun --watch        # cache -> GPU stage on the gpu pool -> gate
      without a GPU (a gpu worker started with GPU_WORKERS=cpu-dev), train on the CPU on purpose:
  prefect deployment run atft/dryrun -p require_gpu=false --watch
  atft dryrun                                       # same flow from the CLI, shown in the UI too
  atft gc --dry-run                                 # what retention would remove (the nightly runs it)
  prefect deployment ls; prefect flow-run ls        # runs, the nightly schedule's upcoming runs
Artifacts (UI > Artifacts): dryrun-gate, cache-summary, epoch-metrics, plot-training,
  plot-gpu-util, run-files, run-folder (run-mirror when ATFT_ARTIFACT_URI=s3://... is set).
Stop: deployments/stack.sh down   (make down)
EOF
}

# start_worker NAME POOL CUDA_DEVICE [worker flags...]: one worker, unless it is already running.
start_worker() {
  local name=$1 pool=$2 device=$3; shift 3
  if alive "worker-$name"; then echo "worker $name on '$pool' already running"; return 0; fi
  if [[ -n "$device" ]]; then
    # PCI_BUS_ID: CUDA numbers the GPUs as nvidia-smi does (its default, FASTEST_FIRST, may not)
    start_bg "worker-$name" env CUDA_DEVICE_ORDER=PCI_BUS_ID CUDA_VISIBLE_DEVICES="$device" "$PREFECT_BIN" worker start --pool "$pool" \
      --name "atft-$name-$(hostname)" "$@"
  else
    start_bg "worker-$name" "$PREFECT_BIN" worker start --pool "$pool" --name "atft-$name-$(hostname)" "$@"
  fi
  echo "started worker $name on pool '$pool'${device:+ (CUDA_VISIBLE_DEVICES=$device)} $* (log: $PIDS/worker-$name.log)"
}

down() {
  # Workers first: a worker that loses its server mid-run cannot report its runs' states.
  local names; mapfile -t names < <(workers)
  [[ ${#names[@]} -gt 0 ]] && stop_workers "${names[@]}"
  stop_server
}

status() {
  local names; mapfile -t names < <(workers)
  for name in server "${names[@]}"; do
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
