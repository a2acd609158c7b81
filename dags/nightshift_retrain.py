"""Nightly retrain: check_conf -> check -> ingest -> validate -> snapshot -> changed -> (branch) -> train ->
evaluate -> gate -> export -> promote -> notify.

Every stage is `nightshift <stage> --run-id {{ run_id }}` (plugins/nightshift_airflow); when the dataset
snapshot and config have not changed since the champion, the run goes straight to `notify`. Trigger it
manually with Params to retrain on another export, model or epoch count, or with per-run gate thresholds
(`gates` + `override_reason`). Empty params keep the values from the config file or the schema defaults.
Unknown params and gate names are refused by the first task; relaxed gates without a reason, unknown models
and missing sources by `check`, in seconds. Where NIGHTSHIFT_TRAIN_LAUNCHERS enables them, `train_nodes` and
`train_launcher` spread training over several GPU nodes (an Indexed Job or a Kubeflow TrainJob under torchrun).
"""
from __future__ import annotations

from datetime import datetime, timedelta

from airflow.sdk import DAG, Param, chain
from nightshift_airflow import branch_on_change, check_conf, default_args, settings, stage, train_params

FROM_CONFIG = "(from the config file)"
PARAMS = {
    # every field may stay empty: empty means "the value from the config file (NIGHTSHIFT_CONFIG)"
    "source": Param(None, type=["null", "string"], title="Dataset source",
                    description="Dataset export to ingest: a directory, a .zip/.tar(.gz) archive or an s3:// "
                                "prefix. Empty: the config's data.source (the generated demo set by default)."),
    "format": Param(None, type=["null", "string"], enum=[None, *settings.FORMAT_CHOICES], title="Annotation format",
                    values_display={"null": FROM_CONFIG, "auto": "auto (detect it)",
                                    **{f: f for f in settings.FORMATS}},
                    description="Annotation format of the source; auto detects it from the files. "
                                "Empty: the config's data.format."),
    "task": Param(None, type=["null", "string"], enum=[None, *settings.TASKS], title="Task",
                  values_display={"null": FROM_CONFIG, **{t: t for t in settings.TASKS}},
                  description="detection (boxes), classification (one class per image) or segmentation "
                              "(instance masks). Empty: the config's data.task, which by default is the task of "
                              "the model. A task without a model trains that task's default model; a model of "
                              "another task is refused by check."),
    "model": Param(None, type=["null", "string"], title="Model",
                   description="Model from the registry: a detector (ssdlite320_mobilenet_v3_large, ...), a "
                               "classifier (resnet18, mobilenet_v3_large, ...) or Mask R-CNN "
                               "(maskrcnn_mobilenet_v3_large_fpn, ...). Empty: the config's train.model."),
    "epochs": Param(None, type=["null", "integer"], minimum=1, title="Epochs",
                    description="Training epochs. Empty: the config's train.epochs."),
    "gates": Param(None, type=["null", "object"], additionalProperties={"type": "number"},
                   propertyNames={"enum": list(settings.GATES)}, title="Gate overrides",
                   description='This run\'s thresholds, e.g. {"map_min": 0.3, "map50_min": 0.5}; gates: '
                               + ", ".join(settings.GATES) + ". Empty: the policy's thresholds. A relaxed "
                               "threshold needs an override reason. When nothing changed since the champion, "
                               "the run says the overrides were not applied unless Force is on."),
    "override_reason": Param(None, type=["null", "string"], title="Override reason",
                             description="Why the gates are relaxed: required when they are, and announced."),
    "force": Param(False, type=["null", "boolean"], title="Force",
                   description="Retrain (and judge the gates) even when nothing changed since the champion."),
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
        check_conf(),  # unknown params or gate names: refused before anything runs
        stage("check", retries=0),  # gate overrides, model and source: refused in seconds, not after training
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
