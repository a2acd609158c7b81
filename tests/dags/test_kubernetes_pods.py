"""NIGHTSHIFT_RUNNER=kubernetes: every stage task builds a valid, locked-down pod without a cluster."""
from __future__ import annotations

import copy
import json
import types

import pytest

pytestmark = pytest.mark.airflow

K8S_VERSION = "1.34.0"  # the oldest cluster version the manifests and pods target
RUN_ID = "manual__2026-11-25T02:00:00.123456+00:00"
TRIGGER_PARAMS = {
    "source": "s3://exports/night 1/it's: here",
    "format": "voc",
    "model": "fasterrcnn_mobilenet_v3_large_320_fpn",
    "epochs": 3,
    "gates": {"map_min": 0.3, "map50_min": 0.5},
    "override_reason": "new camera; accepted by ops",
    "force": True,
}


def _context(dag, task, params):
    ti = types.SimpleNamespace(dag_id=dag.dag_id, task_id=task.task_id, run_id=RUN_ID, map_index=-1, try_number=1)
    return {"dag": dag, "task": task, "ti": ti, "task_instance": ti, "run_id": RUN_ID, "params": params}


_BUILT: dict[str, list] = {}


def _pods(k8s_dagbag, dag_id, params=None):
    """(task, pod as the API server would receive it) for every pod task, templates rendered (cached)."""
    key = json.dumps([dag_id, params], sort_keys=True)
    if key not in _BUILT:
        _BUILT[key] = _build_pods(k8s_dagbag, dag_id, params)
    return [(task, copy.deepcopy(pod)) for task, pod in _BUILT[key]]


def _build_pods(k8s_dagbag, dag_id, params):
    from kubernetes.client import ApiClient

    dag = k8s_dagbag.dags[dag_id]
    resolved = dict(dag.params.dump(), **(params or {}))
    api = ApiClient()
    out = []
    for task in dag.tasks:
        if not hasattr(task, "build_pod_request_obj"):
            continue
        task = copy.deepcopy(task)  # rendering is in place and irreversible, like a task instance's copy
        task.render_template_fields(_context(dag, task, resolved))
        pod = task.build_pod_request_obj(_context(dag, task, resolved))
        out.append((task, api.sanitize_for_serialization(pod)))
    return out


def _base(pod):
    return next(c for c in pod["spec"]["containers"] if c["name"] == "base")


def test_every_stage_task_is_a_pod(k8s_dagbag):
    for dag_id in ("nightshift_retrain", "nightshift_rollback", "nightshift_weekly_report"):
        dag = k8s_dagbag.dags[dag_id]
        not_pods = {t.task_id for t in dag.tasks if type(t).__name__ != "NightshiftPodOperator"}
        assert not_pods == ({"check_conf", "branch_on_change"} if dag_id == "nightshift_retrain" else set())
    assert k8s_dagbag.import_errors == {}


@pytest.mark.parametrize("dag_id,params", [("nightshift_retrain", None), ("nightshift_retrain", TRIGGER_PARAMS),
                                           ("nightshift_rollback", {"to_version": 4})])
def test_pods_validate_against_kubernetes_schema(k8s_dagbag, dag_id, params):
    import kubernetes_validate

    pods = _pods(k8s_dagbag, dag_id, params)
    assert pods
    for task, pod in pods:
        try:
            kubernetes_validate.validate(pod, K8S_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{task.task_id}: {exc.message} at {'/'.join(map(str, exc.path))}")


def test_pod_security_and_scratch_volumes(k8s_dagbag):
    for task, pod in _pods(k8s_dagbag, "nightshift_retrain"):
        spec = pod["spec"]
        assert pod["metadata"]["namespace"] == "nightshift-test"
        assert spec["securityContext"]["runAsNonRoot"] is True
        assert spec["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
        assert spec["automountServiceAccountToken"] is False
        for container in spec["containers"]:  # the stage and the xcom sidecar
            sc = container["securityContext"]
            assert sc["runAsNonRoot"] is True and sc["readOnlyRootFilesystem"] is True, container["name"]
            assert sc["allowPrivilegeEscalation"] is False and sc["capabilities"]["drop"] == ["ALL"]
            assert sc["seccompProfile"]["type"] == "RuntimeDefault"
        mounts = {m["mountPath"]: m["name"] for m in _base(pod)["volumeMounts"]}
        empty_dirs = {v["name"] for v in spec["volumes"] if "emptyDir" in v}
        for path in ("/tmp", "/workspace", "/airflow/xcom"):
            assert mounts[path] in empty_dirs, (task.task_id, path)
        assert mounts["/etc/nightshift"] == "config"
        assert _base(pod)["command"] == ["nightshift"]
        assert any(c["name"] == "airflow-xcom-sidecar" for c in spec["containers"]), "do_xcom_push"


def test_gpu_only_for_train_and_export(k8s_dagbag):
    for task, pod in _pods(k8s_dagbag, "nightshift_retrain"):
        resources = _base(pod)["resources"]
        assert resources["requests"]["cpu"] and resources["limits"]["memory"]
        spec = pod["spec"]
        if task.task_id in ("train", "export"):
            assert resources["limits"]["nvidia.com/gpu"] == "2" and resources["requests"]["nvidia.com/gpu"] == "2"
            assert spec["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
            assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in spec["tolerations"]
            assert _base(pod)["image"] == "registry.example.com/nightshift/pipeline-gpu:1.2.3"
        else:
            assert "nvidia.com/gpu" not in resources["limits"], task.task_id
            assert not spec.get("nodeSelector") and not spec.get("tolerations"), task.task_id
            assert _base(pod)["image"] == "registry.example.com/nightshift/pipeline:1.2.3"


def test_credentials_by_secret_reference_only(k8s_dagbag, secret_sentinel):
    for dag_id in ("nightshift_retrain", "nightshift_rollback", "nightshift_weekly_report"):
        for task, pod in _pods(k8s_dagbag, dag_id, TRIGGER_PARAMS if dag_id == "nightshift_retrain" else None):
            assert secret_sentinel not in json.dumps(pod), task.task_id
            base = _base(pod)
            refs = {e["secretRef"]["name"] for e in base.get("envFrom", [])}
            assert {"nightshift-s3", "nightshift-mlflow"} <= refs, task.task_id
            assert ("nightshift-chat" in refs) == (task.task_id in ("notify", "rollback", "weekly")), task.task_id
            for env in base.get("env", []):
                assert not any(w in env["name"] for w in ("SECRET", "PASSWORD", "TOKEN", "WEBHOOK")), env["name"]


def test_pod_arguments_are_the_stage_command(k8s_dagbag):
    import yaml

    pods = dict((t.task_id, p) for t, p in _pods(k8s_dagbag, "nightshift_retrain", TRIGGER_PARAMS))
    args = _base(pods["train"])["args"]
    assert args[:5] == ["train", "--run-id", RUN_ID, "--config", "/etc/nightshift/config.yaml"]
    sets = [args[i + 1] for i, a in enumerate(args) if a == "--set"]
    parsed = {s.split("=", 1)[0]: yaml.safe_load(s.split("=", 1)[1]) for s in sets}
    assert parsed == {
        "data.source": TRIGGER_PARAMS["source"], "data.format": "voc",
        "train.model": TRIGGER_PARAMS["model"], "train.epochs": 3,
        "gates.overrides": {"map_min": 0.3, "map50_min": 0.5},
        "gates.override_reason": TRIGGER_PARAMS["override_reason"], "train.nproc_per_node": 2,
    }
    assert _base(pods["changed"])["args"][-2:] == ["--force", "true"]

    defaults = dict((t.task_id, p) for t, p in _pods(k8s_dagbag, "nightshift_retrain"))
    assert [a for a in _base(defaults["ingest"])["args"] if a.startswith(("data.", "train.model", "gates."))] == []


def test_weekly_report_pod_arguments(k8s_dagbag):
    (_, pod), = _pods(k8s_dagbag, "nightshift_weekly_report", {"since": "14d"})
    assert _base(pod)["args"] == ["weekly", "--config", "/etc/nightshift/config.yaml", "--since", "14d"]
    (_, pod), = _pods(k8s_dagbag, "nightshift_weekly_report")
    assert _base(pod)["args"][-2:] == ["--since", "7d"]


def test_rollback_pod_arguments(k8s_dagbag):
    (_, pod), = _pods(k8s_dagbag, "nightshift_rollback", {"model": "det", "to_version": 4})
    assert _base(pod)["args"] == ["rollback", "--config", "/etc/nightshift/config.yaml", "--model", "det", "--to", "4"]
    (_, pod), = _pods(k8s_dagbag, "nightshift_rollback")
    assert _base(pod)["args"] == ["rollback", "--config", "/etc/nightshift/config.yaml",
                                  "--model", "nightshift_detector"]


def _terminated_pod(exit_code):
    from kubernetes.client import models as k8s

    state = k8s.V1ContainerState(terminated=k8s.V1ContainerStateTerminated(exit_code=exit_code))
    return k8s.V1Pod(metadata=k8s.V1ObjectMeta(name="nightshift-gate-x", namespace="nightshift-test"),
                     status=k8s.V1PodStatus(phase="Failed", container_statuses=[
                         k8s.V1ContainerStatus(name="base", state=state, ready=False, restart_count=0, image="i",
                                               image_id="i")]))


@pytest.mark.parametrize("exit_code,fail_fast", [(4, True), (3, True), (1, False)])
def test_pod_exit_codes_map_like_the_local_runner(k8s_dagbag, monkeypatch, exit_code, fail_fast):
    from airflow.sdk.exceptions import AirflowFailException

    task = k8s_dagbag.dags["nightshift_retrain"].get_task("gate")
    # no cluster: the pod is neither patched nor deleted here
    monkeypatch.setattr(task, "patch_already_checked", lambda *a, **k: None)
    monkeypatch.setattr(task, "process_pod_deletion", lambda *a, **k: None)
    monkeypatch.setattr(task, "is_istio_enabled", lambda *a, **k: False)
    monkeypatch.setattr(task, "log_pod_spec_on_failure", False)
    result = {"status": "gate_failed", "error": "2 of 5 gate checks failed",
              "failures": [{"check": "map50_min", "expected": ">= 0.5", "actual": 0.41,
                            "message": "map50_min: AP50 = 0.4100, must be >= 0.5"}]}
    pod = _terminated_pod(exit_code)
    with pytest.raises(Exception) as info:
        task.cleanup(pod, pod, xcom_result=result, context=None)
    assert isinstance(info.value, AirflowFailException) == fail_fast
    if fail_fast:
        assert "map50_min" in str(info.value) and "2 of 5 gate checks failed" in str(info.value)


def test_pod_dags_serialize_for_the_scheduler(k8s_dagbag):
    from airflow.serialization.serialized_objects import DagSerialization

    for dag in k8s_dagbag.dags.values():
        back = DagSerialization.from_dict(DagSerialization.to_dict(dag))
        assert {t.task_id for t in back.tasks} == {t.task_id for t in dag.tasks}
