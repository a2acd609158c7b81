"""Nightly retrain: ingest -> validate -> snapshot -> changed -> (branch) -> train -> evaluate -> gate ->
export -> promote -> notify.

Every stage is `nightshift <stage> --run-id {{ run_id }}` (plugins/nightshift_airflow); when the dataset
snapshot and config have not changed since the champion, the run goes straight to `notify`. Trigger it
manually with Params to retrain on another export, model or epoch count, or with per-run gate thresholds
(`gates` + `override_reason`). Empty params keep the values from the config file or the schema defaults.
Where NIGHTSHIFT_TRAIN_LAUNCHERS enables them, `train_nodes` and `train_launcher` spread training over
several GPU nodes (an Indexed Job or a Kubeflow TrainJob under torchrun).
"""
from __future__ import annotations

from datetime import datetime, timedelta

from airflow.sdk import DAG, Param, chain
from nightshift_airflow import branch_on_change, default_args, settings, stage, train_params

PARAMS = {
    "source": Param("", type="string", title="Dataset source",
                    description="Dataset export to ingest: directory, archive or s3:// prefix (empty = config)."),
    "format": Param(None, type=["null", "string"], enum=[None, *settings.FORMATS], title="Annotation format",
                    description="Annotation format of the source (empty = config)."),
    "model": Param("", type="string", title="Model", description="Detector name from the model registry (empty = config)."),
    "epochs": Param(None, type=["null", "integer"], minimum=1, title="Epochs", description="Empty = config."),
    "gates": Param({}, type="object", additionalProperties={"type": "number"}, title="Gate overrides",
                   description='This run\'s thresholds, e.g. {"map_min": 0.3, "map50_min": 0.5}.'),
    "override_reason": Param("", type="string", title="Override reason",
                             description="Why the gates are relaxed; required when they are, and announced."),
    "force": Param(False, type="boolean", title="Force", description="Retrain even when nothing changed."),
    **train_params(),  # train_nodes / train_launcher where multi-node launchers are enabled
}

with DAG(
    dag_id="nightshift_retrain",
    schedule=settings.schedule(),
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    default_args=default_args(),
    params=PARAMS,
    tags=["nightshift"],
    doc_md=__doc__,
):
    changed = stage("changed", extra_args=["--force", "{{ 'true' if params.force else 'false' }}"])
    route = branch_on_change(changed_task="changed", if_changed="train", if_unchanged="notify")
    notify = stage("notify", trigger_rule="none_failed_min_one_success")

    chain(
        stage("ingest"),
        stage("validate"),
        stage("snapshot"),
        changed,
        route,
        stage("train", gpus=settings.gpus(), cpu="4", memory="16Gi", execution_timeout=timedelta(hours=12)),
        stage("evaluate", cpu="2", memory="8Gi"),
        stage("gate"),
        stage("export", gpus=settings.gpus(), cpu="2", memory="8Gi"),
        stage("promote"),
        notify,
    )
    route >> notify
