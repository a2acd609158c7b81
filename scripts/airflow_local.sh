#!/usr/bin/env bash
# Airflow on this machine with the embedded defaults: sqlite metadata under $NIGHTSHIFT_HOME/airflow,
# this repository's dags/ and plugins/, stages run as local subprocesses in .venv-pipeline.
#   scripts/airflow_local.sh dags-test [CONF_JSON]   one nightshift_retrain run end to end, then a summary
#   scripts/airflow_local.sh standalone              the Airflow UI on http://127.0.0.1:8080 (Ctrl-C stops it)
#
# `standalone` is sized for a laptop: api-server, scheduler and dag-processor only, every socket on 127.0.0.1
# (no log servers: the UI reads the task logs from local files), AIRFLOW__CORE__PARALLELISM workers (default:
# min(4, CPUs)), and no run starts by itself: NIGHTSHIFT_SCHEDULE and NIGHTSHIFT_WEEKLY_SCHEDULE default to `none`
# here (set a cron to get the nightly run or the weekly report). Ctrl-C or SIGTERM stops every process it started, within STOP_TIMEOUT_S.
#   scripts/airflow_local.sh <airflow args...>       any airflow command in this environment
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
export NIGHTSHIFT_HOME="${NIGHTSHIFT_HOME:-$repo/.nightshift}"
export AIRFLOW_HOME="${AIRFLOW_HOME:-$NIGHTSHIFT_HOME/airflow}"
# NIGHTSHIFT_DAGS_FOLDER: another folder of DAG files (the scheduler test adds a fault-injection DAG beside ours)
export AIRFLOW__CORE__DAGS_FOLDER="${NIGHTSHIFT_DAGS_FOLDER:-$repo/dags}"
export AIRFLOW__CORE__PLUGINS_FOLDER="$repo/plugins"
export AIRFLOW__CORE__LOAD_EXAMPLES=False
export AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION=False
export AIRFLOW__LOGGING__LOGGING_LEVEL="${AIRFLOW__LOGGING__LOGGING_LEVEL:-INFO}"
# links in chat alerts point here (Airflow's [api] base_url); set it to the URL teammates reach Airflow at
export AIRFLOW_PORT="${AIRFLOW_PORT:-8080}"
export AIRFLOW__API__BASE_URL="${AIRFLOW__API__BASE_URL:-http://127.0.0.1:$AIRFLOW_PORT}"
export NIGHTSHIFT_RUNNER="${NIGHTSHIFT_RUNNER:-local}"
export NIGHTSHIFT_PIPELINE_BIN="${NIGHTSHIFT_PIPELINE_BIN:-$repo/.venv-pipeline/bin/nightshift}"
export NIGHTSHIFT_CONFIG="${NIGHTSHIFT_CONFIG:-$repo/configs/demo.yaml}"
export PATH="$repo/.venv-airflow/bin:$PATH"
mkdir -p "$AIRFLOW_HOME"
cd "$repo"
airflow db migrate >"$AIRFLOW_HOME/db-migrate.log" 2>&1 || { cat "$AIRFLOW_HOME/db-migrate.log"; exit 1; }

standalone() {
  export NIGHTSHIFT_SCHEDULE="${NIGHTSHIFT_SCHEDULE:-none}" NIGHTSHIFT_WEEKLY_SCHEDULE="${NIGHTSHIFT_WEEKLY_SCHEDULE:-none}"
  export AIRFLOW__CORE__EXECUTOR=LocalExecutor
  export AIRFLOW__CORE__AUTH_MANAGER=airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager
  local cpus; cpus=$(nproc 2>/dev/null || echo 2)
  export AIRFLOW__CORE__PARALLELISM="${AIRFLOW__CORE__PARALLELISM:-$(( cpus < 4 ? cpus : 4 ))}"
  export AIRFLOW__API__HOST=127.0.0.1 AIRFLOW__API__PORT="$AIRFLOW_PORT" AIRFLOW__API__WORKERS=1
  # A failed task is reported by its supervisor once it sees the task process exit; with nothing left to read it
  # looks only every min_heartbeat_interval (default 5 s), which a refused run waited out in full. 1 s: a refusal
  # shows as failed ~4 s sooner, for one heartbeat a second per running task (scripts/airflow_refusal_times.py).
  export AIRFLOW__WORKERS__MIN_HEARTBEAT_INTERVAL="${AIRFLOW__WORKERS__MIN_HEARTBEAT_INTERVAL:-1}"
  local stop_timeout="${STOP_TIMEOUT_S:-30}" logs="$AIRFLOW_HOME/standalone-logs"
  mkdir -p "$logs"
  # the console prefixer outlives Ctrl-C (which the terminal sends to it too), so a component's last words
  # during shutdown never hit a closed pipe
  prefix() { trap '' INT; exec sed -u "s/^/$1/"; }
  pids=()
  # each component leads its own process group, so stopping it reaches its workers too
  setsid airflow api-server --host 127.0.0.1 --port "$AIRFLOW_PORT" > >(prefix 'api-server    | ') 2>&1 &
  pids+=($!)
  setsid airflow scheduler --skip-serve-logs > >(prefix 'scheduler     | ') 2>&1 &
  pids+=($!)
  setsid airflow dag-processor > >(prefix 'dag-processor | ') 2>&1 &
  pids+=($!)
  # The task-execution API (/execution, built with Cadwyn) generates its versioned routes on its first request,
  # inside the API server's event loop: the first task of a fresh Airflow waited 26 s for it (load 10 on 2 CPUs)
  # and the UI froze meanwhile. One request as soon as the API server listens does it before anyone triggers.
  setsid python -c '
import sys, time, urllib.error, urllib.request
deadline = time.monotonic() + 600
while time.monotonic() < deadline:
    try:
        urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/execution/health", timeout=300).read()
        break
    except urllib.error.HTTPError:
        break  # an answer of any kind: the routes are built
    except OSError:
        time.sleep(1)
' "$AIRFLOW_PORT" >/dev/null 2>&1 &
  warm_up=$!
  stop() {
    trap '' INT TERM
    echo "stopping Airflow (pids ${pids[*]})..."
    kill -TERM -- "-$warm_up" 2>/dev/null || true
    # the whole session each component leads, not only its process group: the scheduler's task supervisors and
    # runners move to groups of their own, and one still running (a run triggered just before Ctrl-C) kept the
    # console pipe open, so the `wait` below never returned
    for pid in "${pids[@]}"; do pkill -TERM -s "$pid" 2>/dev/null || true; done
    local deadline=$(( $(date +%s) + stop_timeout ))
    for pid in "${pids[@]}"; do
      while pgrep -s "$pid" >/dev/null 2>&1 && [ "$(date +%s)" -lt "$deadline" ]; do sleep 0.5; done
      pkill -KILL -s "$pid" 2>/dev/null || true
    done
    wait 2>/dev/null || true
    echo "Airflow stopped."
  }
  trap 'stop; exit 130' INT
  trap 'stop; exit 143' TERM
  echo "Airflow on http://127.0.0.1:$AIRFLOW_PORT (parallelism $AIRFLOW__CORE__PARALLELISM, schedule:" \
       "${NIGHTSHIFT_SCHEDULE}); login admin, password in $AIRFLOW_HOME/simple_auth_manager_passwords.json.generated"
  echo "Ctrl-C stops it. Trigger nightshift_retrain from the UI; every field may stay empty."
  # one component ending (a crash) stops the others: no half-running Airflow
  local status=0
  wait -n "${pids[@]}" || status=$?
  stop
  exit "$status"
}

case "${1:-}" in
  dags-test)
    conf="${2:-}"
    args=(dags test nightshift_retrain)
    [ -n "$conf" ] && args+=(--conf "$conf")
    started=$(date +%s)
    status=0
    airflow "${args[@]}" || status=$?
    "$repo/.venv-pipeline/bin/python" "$repo/scripts/summary.py" --since "$started" || true
    exit "$status"
    ;;
  standalone)
    standalone
    ;;
  *)
    exec airflow "$@"
    ;;
esac
