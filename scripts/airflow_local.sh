#!/usr/bin/env bash
# Airflow on this machine with the embedded defaults: sqlite metadata under $NIGHTSHIFT_HOME/airflow,
# this repository's dags/ and plugins/, stages run as local subprocesses in .venv-pipeline.
#   scripts/airflow_local.sh dags-test [CONF_JSON]   one nightshift_retrain run end to end, then a summary
#   scripts/airflow_local.sh standalone              the Airflow UI on http://127.0.0.1:8080
#   scripts/airflow_local.sh <airflow args...>       any airflow command in this environment
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
export NIGHTSHIFT_HOME="${NIGHTSHIFT_HOME:-$repo/.nightshift}"
export AIRFLOW_HOME="${AIRFLOW_HOME:-$NIGHTSHIFT_HOME/airflow}"
export AIRFLOW__CORE__DAGS_FOLDER="$repo/dags"
export AIRFLOW__CORE__PLUGINS_FOLDER="$repo/plugins"
export AIRFLOW__CORE__LOAD_EXAMPLES=False
export AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION=False
export AIRFLOW__LOGGING__LOGGING_LEVEL="${AIRFLOW__LOGGING__LOGGING_LEVEL:-INFO}"
export NIGHTSHIFT_RUNNER="${NIGHTSHIFT_RUNNER:-local}"
export NIGHTSHIFT_PIPELINE_BIN="${NIGHTSHIFT_PIPELINE_BIN:-$repo/.venv-pipeline/bin/nightshift}"
export NIGHTSHIFT_CONFIG="${NIGHTSHIFT_CONFIG:-$repo/configs/demo.yaml}"
export PATH="$repo/.venv-airflow/bin:$PATH"
mkdir -p "$AIRFLOW_HOME"
cd "$repo"
airflow db migrate >"$AIRFLOW_HOME/db-migrate.log" 2>&1 || { cat "$AIRFLOW_HOME/db-migrate.log"; exit 1; }

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
    exec airflow standalone
    ;;
  *)
    exec airflow "$@"
    ;;
esac
