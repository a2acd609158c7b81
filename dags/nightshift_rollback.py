"""Manual rollback: move the served model back one version (or to `to_version`), and announce it.

Runs `nightshift rollback --model <model> [--to <version>]` through the same task factory as the stages. The
rollback tool announces the rollback itself, in one readable message; failures come from the failure callback.
"""
from __future__ import annotations

from datetime import datetime

from airflow.sdk import DAG, Param
from nightshift_airflow import default_args, stage

with DAG(
    dag_id="nightshift_rollback",
    schedule=None,
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    default_args=default_args(),
    params={
        "model": Param("nightshift_detector", type="string", minLength=1, title="Model",
                       description="Registered / Triton model name to roll back."),
        "to_version": Param(None, type=["null", "integer"], minimum=1, title="To version",
                            description="Version to serve (empty = the one before the current champion)."),
    },
    tags=["nightshift"],
    doc_md=__doc__,
):
    stage(
        "rollback",
        run_id=False,
        extra_args=["--model", "{{ params.model }}",
                    "--to", "{{ params.to_version if params.to_version is not none else '' }}"],
    )
