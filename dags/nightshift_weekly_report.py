"""Weekly report: every run of the past week, the champion's history and the trends, as one HTML page.

Runs `nightshift weekly --since <since>` through the same task factory as the stages: the page goes to the
artifact store and MLflow, and a chat summary links to it. Weekly (NIGHTSHIFT_WEEKLY_SCHEDULE, default Monday
06:00) and on manual trigger.
"""
from __future__ import annotations

from datetime import datetime

from airflow.sdk import DAG, Param
from nightshift_airflow import default_args, settings, stage

with DAG(
    dag_id="nightshift_weekly_report",
    schedule=settings.weekly_schedule(),
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    default_args=default_args(),
    params={
        "since": Param("7d", type="string", pattern=r"^(\d+[hdw]|\d{4}-\d{2}-\d{2}.*)$", title="Since",
                       description="Start of the period: 7d, 36h, 2w or an ISO date."),
    },
    tags=["nightshift"],
    doc_md=__doc__,
):
    stage("weekly", run_id=False, extra_args=["--since", "{{ params.since }}"])
