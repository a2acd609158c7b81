"""infra/helm/airflow-values.yaml against the official Airflow chart's keys.

The chart's values.schema.json (apache/airflow chart/, 650 kB) could be read only in 16 kB pages through the
offline search tool, not fetched as a file, so it is not vendored. Instead every key these values use is
checked against CHART_KEYS below: key paths and types taken from that schema (read at apache/airflow commit
002e5532, where `securityContexts.pod/container` reference the Kubernetes PodSecurityContext/SecurityContext
definitions) and from the chart's documentation (helm-chart 1.20 "Adding Connections, Variables and
Environment Variables" for `secret`, `extraSecrets`, `env`, `extraEnvFrom`). The Kubernetes-typed values
(security contexts, resources, volumes) are validated with kubernetes-validate, as the schema's $refs would.
"""
from __future__ import annotations

import copy
import json

import pytest
import yaml
from infra_manifests import INFRA

kubernetes_validate = pytest.importorskip("kubernetes_validate", reason="runs in .venv-airflow")
pytestmark = pytest.mark.airflow
VALUES = INFRA / "helm" / "airflow-values.yaml"

# key path -> JSON type(s) in the chart's schema; "k8s:<kind>" marks a Kubernetes object checked separately,
# "map" a free-form mapping (airflow.cfg sections)
CHART_KEYS = {
    "executor": str, "airflowVersion": str,
    "images.airflow.repository": str, "images.airflow.tag": str, "images.airflow.pullPolicy": str,
    "data.metadataSecretName": str, "fernetKeySecretName": str, "apiSecretKeySecretName": str,
    "jwtSecretName": str,
    "secret": list, "env": list, "extraEnvFrom": str, "extraSecrets": dict,
    "securityContexts.pod": "k8s:PodSecurityContext", "securityContexts.container": "k8s:SecurityContext",
    "volumes": "k8s:volumes", "volumeMounts": "k8s:volumeMounts",
    "config": "map",
    "dags.persistence.enabled": bool, "dags.gitSync.enabled": bool,
    "scheduler.replicas": int, "scheduler.resources": "k8s:resources",
    "apiServer.replicas": int, "apiServer.resources": "k8s:resources",
    "dagProcessor.enabled": bool, "dagProcessor.resources": "k8s:resources",
    "triggerer.enabled": bool, "triggerer.resources": "k8s:resources",
    "workers.serviceAccount.create": bool, "workers.serviceAccount.name": str, "workers.resources": "k8s:resources",
    "migrateDatabaseJob.resources": "k8s:resources", "createUserJob.resources": "k8s:resources",
    "postgresql.enabled": bool, "redis.enabled": bool, "statsd.enabled": bool, "pgbouncer.enabled": bool,
}
EXECUTORS = {"LocalExecutor", "CeleryExecutor", "KubernetesExecutor", "CeleryKubernetesExecutor",
              "LocalKubernetesExecutor"}


def leaf_paths(values: dict) -> dict[str, object]:
    """Dotted key paths down to a documented key (whose value is then checked as a whole)."""
    out = {}

    def walk(node, prefix):
        for key, value in node.items():
            path = f"{prefix}{key}"
            if path in CHART_KEYS or not isinstance(value, dict):
                out[path] = value
            else:
                walk(value, path + ".")

    walk(values, "")
    return out


def check(values: dict) -> list[str]:
    found = []
    for path, value in leaf_paths(values).items():
        expected = CHART_KEYS.get(path)
        if expected is None:
            found.append(f"{path}: not a documented chart key")
        elif isinstance(expected, type) and not isinstance(value, expected):
            found.append(f"{path}: expected {expected.__name__}, got {type(value).__name__}")
    if values.get("executor") not in EXECUTORS:
        found.append(f"executor: {values.get('executor')!r} is not one the chart supports")
    for i, item in enumerate(values.get("secret", [])):
        if set(item) != {"envName", "secretName", "secretKey"}:
            found.append(f"secret[{i}]: keys must be envName, secretName, secretKey")
    for i, item in enumerate(values.get("env", [])):
        if set(item) != {"name", "value"} or not isinstance(item["value"], str):
            found.append(f"env[{i}]: needs name and a string value")
    return found


def _validate_k8s(values: dict) -> None:
    """The Kubernetes-typed values, placed where the chart puts them, validate strictly."""
    container = {"name": "c", "image": "i:1", "securityContext": values["securityContexts"]["container"],
                 "volumeMounts": values["volumeMounts"], "envFrom": yaml.safe_load(values["extraEnvFrom"])}
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"},
           "spec": {"securityContext": values["securityContexts"]["pod"], "volumes": values["volumes"],
                    "containers": [container]}}
    for path, expected in CHART_KEYS.items():
        if expected == "k8s:resources":
            node = values
            for part in path.split("."):
                node = node[part]
            pod["spec"]["containers"].append({"name": path.split(".")[0].lower(), "image": "i:1",
                                              "resources": node})
    kubernetes_validate.validate(pod, "1.34.0", strict=True)


def test_values_use_only_documented_keys_with_the_right_types():
    values = yaml.safe_load(VALUES.read_text())
    assert check(values) == []
    _validate_k8s(values)


def test_deployment_choices():
    values = yaml.safe_load(VALUES.read_text())
    assert values["executor"] == "KubernetesExecutor"
    assert values["dags"]["gitSync"]["enabled"] is False and values["dags"]["persistence"]["enabled"] is False
    assert values["secret"] == [{"envName": "AIRFLOW_CONN_NIGHTSHIFT_CHAT", "secretName": "nightshift-airflow-chat",
                                 "secretKey": "AIRFLOW_CONN_NIGHTSHIFT_CHAT"}]
    env = {e["name"]: e["value"] for e in values["env"]}
    assert env["NIGHTSHIFT_RUNNER"] == "kubernetes" and env["NIGHTSHIFT_NAMESPACE"] == "nightshift"
    assert ":latest" not in env["NIGHTSHIFT_IMAGE"] and ":latest" not in env["NIGHTSHIFT_GPU_IMAGE"]
    conn = json.loads(env["AIRFLOW_CONN_KUBERNETES_DEFAULT"])
    assert conn["conn_type"] == "kubernetes" and conn["extra"]["in_cluster"] is True
    sidecar = json.loads(conn["extra"]["xcom_sidecar_container_resources"])
    assert sidecar["limits"]["memory"] and sidecar["requests"]["cpu"]
    refs = {e["secretRef"]["name"] for e in yaml.safe_load(values["extraEnvFrom"])}
    assert refs == {"nightshift-s3", "nightshift-mlflow"}
    assert all(not isinstance(v, str) or "CHANGEME" not in v for v in env.values())
    # the Airflow image the values deploy is the one docker/airflow.Dockerfile builds
    assert values["images"]["airflow"]["repository"].endswith("/nightshift/airflow")
    assert values["images"]["airflow"]["tag"] != "latest"
    import nightshift_airflow.settings as settings

    assert set(env["NIGHTSHIFT_TRAIN_LAUNCHERS"].split(",")) <= set(settings.TRAIN_LAUNCHERS)


@pytest.mark.parametrize("mutate,expected", [
    (lambda v: v.update(exectuor="KubernetesExecutor"), "exectuor: not a documented chart key"),
    (lambda v: v["dags"]["gitSync"].update(enabled="no"), "dags.gitSync.enabled: expected bool"),
    (lambda v: v.update(executor="K8sExecutor"), "is not one the chart supports"),
    (lambda v: v["secret"].append({"name": "X", "secretName": "s"}), "secret[1]"),
    (lambda v: v["env"].append({"name": "N", "value": 3}), "env["),
    (lambda v: v["workers"].update(replicas=2), "workers.replicas: not a documented chart key"),
])
def test_the_check_catches_mistakes(mutate, expected):
    values = copy.deepcopy(yaml.safe_load(VALUES.read_text()))
    mutate(values)
    assert any(expected in p for p in check(values)), check(values)


def test_k8s_typed_values_are_validated():
    values = copy.deepcopy(yaml.safe_load(VALUES.read_text()))
    values["securityContexts"]["container"]["readOnlyRootFS"] = True
    with pytest.raises(kubernetes_validate.ValidationError):
        _validate_k8s(values)
