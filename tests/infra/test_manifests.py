"""infra/: every YAML document is a valid Kubernetes object (strict schema) and matches what the pods use.

Runs in .venv-airflow (kubernetes-validate); imports nothing from Airflow.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest
import yaml

kubernetes_validate = pytest.importorskip("kubernetes_validate", reason="runs in .venv-airflow")
pytestmark = pytest.mark.airflow
REPO = Path(__file__).resolve().parents[2]
INFRA = REPO / "infra"
K8S_VERSION = "1.34.0"


def _documents():
    docs = []
    for path in sorted(INFRA.rglob("*.y*ml")):
        for i, doc in enumerate(yaml.safe_load_all(path.read_text())):
            if doc is not None:
                docs.append((f"{path.relative_to(REPO)}#{i}", doc))
    return docs


DOCS = _documents()


def test_there_are_manifests():
    kinds = {doc["kind"] for _, doc in DOCS}
    assert {"Namespace", "ServiceAccount", "Role", "RoleBinding", "Secret"} <= kinds


@pytest.mark.parametrize("name,doc", DOCS, ids=[n for n, _ in DOCS])
def test_manifest_is_valid_kubernetes(name, doc):
    try:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    except kubernetes_validate.ValidationError as exc:
        pytest.fail(f"{name}: {exc.message} at {'/'.join(map(str, exc.path))}")


def test_every_namespaced_object_is_in_the_nightshift_namespace():
    for name, doc in DOCS:
        if doc["kind"] != "Namespace":
            assert doc["metadata"].get("namespace") == "nightshift", name


def test_role_is_limited_to_pods():
    (role,) = [doc for _, doc in DOCS if doc["kind"] == "Role"]
    resources = {r for rule in role["rules"] for r in rule["resources"]}
    assert resources == {"pods", "pods/log", "pods/exec", "events"}
    for rule in role["rules"]:
        assert rule["apiGroups"] == [""]
        if rule["resources"] == ["events"]:
            assert set(rule["verbs"]) <= {"get", "list", "watch"}
        assert "*" not in rule["verbs"]
    assert not any(doc["kind"] in ("ClusterRole", "ClusterRoleBinding") for _, doc in DOCS)


def _pod_secret_names() -> tuple[dict, str]:
    """SECRETS_ALL and SECRET_CHAT as plugins/nightshift_airflow/pods.py defines them."""
    tree = ast.parse((REPO / "plugins" / "nightshift_airflow" / "pods.py").read_text())
    values = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            if node.targets[0].id in ("SECRETS_ALL", "SECRET_CHAT"):
                values[node.targets[0].id] = ast.literal_eval(node.value)
    return values["SECRETS_ALL"], values["SECRET_CHAT"]


def test_secret_examples_hold_placeholders_and_the_keys_pods_expect():
    SECRETS_ALL, SECRET_CHAT = _pod_secret_names()

    secrets = {doc["metadata"]["name"]: doc for _, doc in DOCS if doc["kind"] == "Secret"}
    assert set(secrets) == {*SECRETS_ALL, SECRET_CHAT}
    for name, doc in secrets.items():
        assert "data" not in doc, f"{name}: examples use stringData placeholders, never encoded values"
        assert doc["stringData"] and all(v == "CHANGEME" for v in doc["stringData"].values()), name
    assert "NIGHTSHIFT_WEBHOOK_URL" in secrets[SECRET_CHAT]["stringData"]
    assert {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"} <= set(secrets["nightshift-s3"]["stringData"])


def test_namespace_enforces_restricted_pod_security():
    (ns,) = [doc for _, doc in DOCS if doc["kind"] == "Namespace"]
    assert ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
