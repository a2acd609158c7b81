"""The one task factory: `stage(name, ...)` builds the task that runs `nightshift <name> ...`.

The runner is read from NIGHTSHIFT_RUNNER when the DAG file is parsed: `local` (default) runs the command in
the pipeline venv as a subprocess; `kubernetes` runs it in a pod. Both run the same arguments, return the
stage's small JSON result as XCom, and fail without retrying on exit codes 2, 3 and 4.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from nightshift_airflow import settings
from nightshift_airflow.command import PARAM_OVERRIDES, stage_arguments

RUNNER = settings.runner()
if RUNNER == "kubernetes":  # at import time, so the DAG processor's pre-import of this module covers it
    from nightshift_airflow.pods import pod_operator

    if settings.multinode_enabled():
        from nightshift_airflow.multinode import train_operator
else:
    from nightshift_airflow.local import NightshiftLocalOperator


def stage(
    name: str,
    *,
    gpus: int = 0,
    cpu: str = "1",
    memory: str = "2Gi",
    trigger_rule: str = "all_success",
    extra_args: Sequence[str] = (),
    run_id: bool = True,
    task_id: str | None = None,
    **kwargs: Any,
):
    """A task running `nightshift <name> --run-id {{ run_id }} [--config F] [--set k=v ...] [extra_args]`.

    `run_id=False` is for tool commands (rollback) that take no --run-id and no --set overrides; their
    arguments come from `extra_args`. `gpus`, `cpu` and `memory` size the pod on the kubernetes runner
    (the local runner uses what the machine has). Other keyword arguments go to the operator.
    """
    extra_sets: list[str] = []
    if RUNNER == "kubernetes" and run_id and settings.gpus() > 0:
        # one DDP process per GPU; set on every stage so all of them resolve the same config fingerprint
        extra_sets.append(f"train.nproc_per_node={settings.gpus()}")
    config = settings.config_file()
    arguments = stage_arguments(name, run_id=run_id, overrides=PARAM_OVERRIDES, extra_sets=extra_sets,
                                extra_args=extra_args, config=config)
    task_id = task_id or name.replace("-", "_")
    if RUNNER == "kubernetes" and name == "train" and settings.multinode_enabled():
        # one pod, an Indexed Job or a TrainJob, from the run's train_launcher / train_nodes params
        return train_operator(task_id=task_id, stage=name, arguments=arguments, gpus=gpus, cpu=cpu,
                              memory=memory, launchers=settings.train_launchers(), trigger_rule=trigger_rule,
                              **kwargs)
    if RUNNER == "kubernetes":
        return pod_operator(task_id=task_id, stage=name, arguments=arguments, gpus=gpus, cpu=cpu, memory=memory,
                            trigger_rule=trigger_rule, **kwargs)
    return NightshiftLocalOperator(task_id=task_id, arguments=arguments, require_result=run_id,
                                   trigger_rule=trigger_rule, **kwargs)


def train_params() -> dict:
    """The retrain DAG's multi-node params, present only where a multi-node launcher is enabled
    (settings.train_launchers); elsewhere training runs on one node and there is nothing to choose."""
    if not settings.multinode_enabled():
        return {}
    from airflow.sdk import Param

    launchers = list(settings.train_launchers())
    return {
        "train_nodes": Param(1, type="integer", minimum=1, maximum=settings.MAX_TRAIN_NODES, title="Training nodes",
                             description="Pods (nodes) for DDP training, each with NIGHTSHIFT_GPUS GPUs."),
        "train_launcher": Param("pod", type="string", enum=launchers, title="Training launcher",
                                description="pod: one pod; indexed-job: an Indexed Job + headless Service; "
                                            "trainjob: a Kubeflow Trainer TrainJob."),
    }


def branch_on_change(*, changed_task: str = "changed", if_changed: str = "train", if_unchanged: str = "notify",
                     task_id: str = "branch_on_change"):
    """A light branch task (Airflow venv): follow `if_changed` when the `changed` stage says so."""
    from airflow.sdk import task
    from airflow.sdk.exceptions import AirflowFailException

    @task.branch(task_id=task_id)
    def _branch(**context) -> str:
        result = context["ti"].xcom_pull(task_ids=changed_task)
        if not isinstance(result, dict) or not isinstance(result.get("changed"), bool):
            raise AirflowFailException(f"task {changed_task!r} returned no 'changed' flag: {result!r}")
        follow = if_changed if result["changed"] else if_unchanged
        print(f"{changed_task}: changed={result['changed']} ({result.get('reason', 'no reason given')}) -> {follow}")
        return follow

    return _branch()


def unknown_conf(conf: dict | None, known: Iterable[str], gates: Iterable[str] = settings.GATES) -> str | None:
    """Why a run's conf is refused (an unknown key, an unknown gate name, or not a mapping), else None."""
    known, gates = list(known), list(gates)
    if conf is None:
        return None
    if not isinstance(conf, dict):
        return f"conf must be a JSON object of params, got {type(conf).__name__}"
    unknown = [key for key in conf if key not in known]
    if unknown:
        return (f"unknown param{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))} in the run's conf; "
                f"known params: {', '.join(known)}")
    overrides = conf.get("gates")
    if overrides is not None and not isinstance(overrides, dict):
        return f"param 'gates' must be an object of gate name -> threshold, got {overrides!r}"
    bad = [name for name in overrides or {} if name not in gates]
    if bad:
        return (f"unknown gate{'s' if len(bad) > 1 else ''} {', '.join(map(repr, bad))} in param 'gates'; "
                f"known gates: {', '.join(gates)}")
    return None


def check_conf(task_id: str = "check_conf"):
    """A light first task (Airflow venv, no subprocess): refuse a run whose conf has a key that is not one of
    the DAG's params, or a gate name that does not exist, before anything runs (no retry: waiting cannot fix
    a typo). Misspelt keys would otherwise be ignored silently."""
    from airflow.sdk import task

    from nightshift_airflow.refusal import Refused

    @task(task_id=task_id, retries=0)
    def _check_conf(**context) -> dict:
        conf = getattr(context.get("dag_run"), "conf", None) or {}
        known = list(context["dag"].params.keys())
        problem = unknown_conf(conf, known)
        if problem:
            raise Refused(problem)
        given = {key: conf[key] for key in conf}
        print("conf ok: " + (", ".join(f"{key}={value!r}" for key, value in given.items()) or "no params given"))
        return {"conf_keys": sorted(given)}

    return _check_conf()
