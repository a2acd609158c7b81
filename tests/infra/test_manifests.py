"""infra/k8s: every object is valid Kubernetes (strict schema) and matches what the pods and DAGs use."""
from __future__ import annotations

import ast

import pytest
import yaml
from infra_manifests import CUSTOM_KINDS, INFRA, REPO, documents

kubernetes_validate = pytest.importorskip("kubernetes_validate", reason="runs in .venv-airflow")
pytestmark = pytest.mark.airflow
K8S_VERSION = "1.34.0"

DOCS = documents()
BUILTIN = [(n, d) for n, d in DOCS if d["kind"] not in CUSTOM_KINDS]


def validate(doc):
    kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_there_are_manifests():
    kinds = {doc["kind"] for _, doc in DOCS}
    assert {"Namespace", "ServiceAccount", "Role", "RoleBinding", "Secret", "NetworkPolicy", "Deployment",
            "StatefulSet", "Service", "ConfigMap", "Job", "TrainingRuntime"} <= kinds


@pytest.mark.parametrize("name,doc", BUILTIN, ids=[n for n, _ in BUILTIN])
def test_manifest_is_valid_kubernetes(name, doc):
    try:
        validate(doc)
    except kubernetes_validate.ValidationError as exc:
        pytest.fail(f"{name}: {exc.message} at {'/'.join(map(str, exc.path))}")


def test_strict_validation_catches_a_misspelt_field():
    (name, deployment), *_ = [(n, d) for n, d in DOCS if d["kind"] == "Deployment"]
    broken = yaml.safe_load(yaml.safe_dump(deployment))
    broken["spec"]["template"]["spec"]["containers"][0]["resource"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        validate(broken)


def test_kustomizations_list_existing_files_and_cover_the_objects():
    listed = set()
    for kfile in sorted((INFRA / "k8s").rglob("kustomization.yaml")):
        k = yaml.safe_load(kfile.read_text())
        assert k["kind"] == "Kustomization"
        for res in k["resources"]:
            target = (kfile.parent / res).resolve()
            assert target.exists(), f"{kfile}: {res} does not exist"
            listed.add(target)
    files = {p.resolve() for p in (INFRA / "k8s").rglob("*.yaml") if p.name != "kustomization.yaml"}
    # applied separately, on purpose: the secrets (created out of band) and the Trainer runtime (needs its CRDs)
    unlisted = {p.relative_to(INFRA / "k8s").as_posix() for p in files - listed}
    assert unlisted == {"secrets.example.yaml", "trainer/training-runtime.yaml"}


def test_every_namespaced_object_is_in_the_nightshift_namespace():
    for name, doc in DOCS:
        if doc["kind"] != "Namespace":
            assert doc["metadata"].get("namespace") == "nightshift", name


def test_role_is_namespaced_and_limited():
    (role,) = [doc for _, doc in DOCS if doc["kind"] == "Role"]
    grants = {(group, res): set(rule["verbs"]) for rule in role["rules"] for group in rule["apiGroups"]
              for res in rule["resources"]}
    assert set(grants) == {("", "pods"), ("", "pods/log"), ("", "pods/exec"), ("", "events"), ("", "services"),
                           ("batch", "jobs"), ("batch", "jobs/status"), ("trainer.kubeflow.org", "trainjobs"),
                           ("trainer.kubeflow.org", "trainjobs/status")}
    assert grants[("", "events")] <= {"get", "list", "watch"}
    assert grants[("", "services")] == {"create", "get", "delete"}
    assert all("*" not in verbs for verbs in grants.values())
    assert not any(doc["kind"] in ("ClusterRole", "ClusterRoleBinding") for _, doc in DOCS)
    (binding,) = [doc for _, doc in DOCS if doc["kind"] == "RoleBinding"]
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    values = yaml.safe_load((INFRA / "helm" / "airflow-values.yaml").read_text())
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": values["workers"]["serviceAccount"]["name"],
                                    "namespace": "nightshift"}]


def test_role_covers_what_the_multinode_operator_calls():
    """Every Kubernetes API method multinode.py calls is allowed by the Role (resource, verb)."""
    calls = {"create_namespaced_job": ("batch", "jobs", "create"),
             "read_namespaced_job_status": ("batch", "jobs/status", "get"),
             "delete_namespaced_job": ("batch", "jobs", "delete"),
             "create_namespaced_service": ("", "services", "create"),
             "list_namespaced_pod": ("", "pods", "list"),
             "read_namespaced_pod_log": ("", "pods/log", "get"),
             "create_namespaced_custom_object": ("trainer.kubeflow.org", "trainjobs", "create"),
             "get_namespaced_custom_object_status": ("trainer.kubeflow.org", "trainjobs/status", "get"),
             "delete_namespaced_custom_object": ("trainer.kubeflow.org", "trainjobs", "delete")}
    source = (REPO / "plugins" / "nightshift_airflow" / "multinode.py").read_text()
    used = {node.attr for node in ast.walk(ast.parse(source)) if isinstance(node, ast.Attribute)
            and node.attr.endswith(("_namespaced_job", "_namespaced_job_status", "_namespaced_service",
                                    "_namespaced_pod", "_namespaced_pod_log", "_custom_object",
                                    "_custom_object_status"))}
    assert used and used <= set(calls), used - set(calls)
    (role,) = [doc for _, doc in DOCS if doc["kind"] == "Role"]
    allowed = {(g, r, v) for rule in role["rules"] for g in rule["apiGroups"] for r in rule["resources"]
               for v in rule["verbs"]}
    for method in used:
        assert calls[method] in allowed, method


def _pod_secret_names() -> tuple[dict, str]:
    """SECRETS_ALL and SECRET_CHAT as plugins/nightshift_airflow/pods.py defines them."""
    tree = ast.parse((REPO / "plugins" / "nightshift_airflow" / "pods.py").read_text())
    values = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            if node.targets[0].id in ("SECRETS_ALL", "SECRET_CHAT"):
                values[node.targets[0].id] = ast.literal_eval(node.value)
    return values["SECRETS_ALL"], values["SECRET_CHAT"]


def _referenced_secrets() -> set[str]:
    """Every Secret a manifest or the Helm values refer to."""
    names = set()

    def walk(node):
        if isinstance(node, dict):
            for key in ("secretRef", "secretKeyRef"):
                if isinstance(node.get(key), dict):
                    names.add(node[key]["name"])
            if "secretName" in node and isinstance(node["secretName"], str):
                names.add(node["secretName"])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    for _, doc in DOCS:
        if doc["kind"] != "Secret":
            walk(doc)
    values = yaml.safe_load((INFRA / "helm" / "airflow-values.yaml").read_text())
    walk(values)
    walk(yaml.safe_load(values["extraEnvFrom"]))
    for key in ("fernetKeySecretName", "apiSecretKeySecretName", "jwtSecretName"):
        names.add(values[key])
    names.add(values["data"]["metadataSecretName"])
    return names


def test_secret_examples_hold_placeholders_and_every_referenced_secret():
    SECRETS_ALL, SECRET_CHAT = _pod_secret_names()
    secrets = {doc["metadata"]["name"]: doc for _, doc in DOCS if doc["kind"] == "Secret"}
    assert {*SECRETS_ALL, SECRET_CHAT} <= set(secrets)
    assert _referenced_secrets() <= set(secrets), _referenced_secrets() - set(secrets)
    for name, doc in secrets.items():
        assert "data" not in doc, f"{name}: examples use stringData placeholders, never encoded values"
        assert doc["stringData"] and all(v == "CHANGEME" for v in doc["stringData"].values()), name
    assert "NIGHTSHIFT_WEBHOOK_URL" in secrets[SECRET_CHAT]["stringData"]
    assert {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"} <= set(secrets["nightshift-s3"]["stringData"])
    # the keys the Airflow chart reads from its Secrets
    assert {"connection", "fernet-key", "api-secret-key", "jwt-secret"} <= set(secrets["nightshift-airflow"]["stringData"])
    assert set(secrets["nightshift-airflow-chat"]["stringData"]) == {"AIRFLOW_CONN_NIGHTSHIFT_CHAT"}


def test_namespace_enforces_restricted_pod_security():
    (ns,) = [doc for _, doc in DOCS if doc["kind"] == "Namespace"]
    assert ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"


def test_network_policies_default_deny_and_allow_the_flows():
    policies = {doc["metadata"]["name"]: doc["spec"] for _, doc in DOCS if doc["kind"] == "NetworkPolicy"}
    deny = policies["default-deny"]
    assert deny["podSelector"] == {} and set(deny["policyTypes"]) == {"Ingress", "Egress"}
    assert "ingress" not in deny and "egress" not in deny

    def ports_to(policy, app):
        out = set()
        for rule in policies[policy].get("egress", []):
            if any(peer.get("podSelector", {}).get("matchLabels", {}).get("app.kubernetes.io/name") == app
                   for peer in rule.get("to", [])):
                out |= {p["port"] for p in rule.get("ports", [])}
        return out

    assert ports_to("stage-egress", "mlflow") == {5000} and ports_to("stage-egress", "minio") == {9000}
    assert ports_to("stage-egress", "triton") == {8000, 8001}
    assert ports_to("mlflow", "postgres") == {5432} and ports_to("triton", "minio") == {9000}
    stage_components = next(e["values"] for e in policies["stage-egress"]["podSelector"]["matchExpressions"])
    stages = {"check", "ingest", "validate", "snapshot", "changed", "train", "evaluate", "gate", "export", "promote",
              "notify", "rollback"}
    assert stages <= set(stage_components)
    # DDP: train pods reach each other on every port (NCCL), and nothing else is opened to them
    ddp = policies["train-ddp"]
    assert ddp["ingress"] == [{"from": [{"podSelector": {"matchLabels": {"app.kubernetes.io/component": "train"}}}]}]
    # each workload is selected by some policy beyond default-deny
    selected = [p["podSelector"].get("matchLabels", {}) for p in policies.values()]
    for app in ("mlflow", "triton", "minio", "postgres"):
        assert {"app.kubernetes.io/name": app} in selected, app


def test_triton_serves_the_model_repository_in_explicit_mode():
    (triton,) = [doc for _, doc in DOCS if doc["kind"] == "Deployment" and doc["metadata"]["name"] == "triton"]
    (config,) = [doc for _, doc in DOCS if doc["kind"] == "ConfigMap" and doc["metadata"]["name"] == "triton"]
    (container,) = triton["spec"]["template"]["spec"]["containers"]
    args = container["args"]
    assert "--model-control-mode=explicit" in args and "--load-model=$(TRITON_MODEL_NAME)" in args
    assert config["data"]["TRITON_MODEL_REPOSITORY"].startswith("s3://")
    from pipeline_defaults import promote_model_name

    assert config["data"]["TRITON_MODEL_NAME"] == promote_model_name()
    assert container["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert container["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert triton["spec"]["template"]["spec"]["nodeSelector"] == {"nvidia.com/gpu.present": "true"}


def test_mlflow_uses_postgres_and_s3():
    (mlflow,) = [doc for _, doc in DOCS if doc["kind"] == "Deployment" and doc["metadata"]["name"] == "mlflow"]
    (config,) = [doc for _, doc in DOCS if doc["kind"] == "ConfigMap" and doc["metadata"]["name"] == "mlflow"]
    (container,) = mlflow["spec"]["template"]["spec"]["containers"]
    assert "--backend-store-uri=$(MLFLOW_BACKEND_STORE_URI)" in container["args"]
    assert config["data"]["MLFLOW_ARTIFACTS_DESTINATION"].startswith("s3://")
    assert {"nightshift-mlflow-server", "nightshift-s3"} <= {e["secretRef"]["name"] for e in container["envFrom"]
                                                              if "secretRef" in e}
    (pg,) = [doc for _, doc in DOCS if doc["kind"] == "StatefulSet" and doc["metadata"]["name"] == "postgres"]
    assert pg["spec"]["volumeClaimTemplates"][0]["metadata"]["name"] == "data"


def test_dev_stage_config_is_a_valid_pipeline_config():
    """The ConfigMap's config.yaml loads with the real pipeline.config schema (pipeline venv)."""
    import subprocess

    python = REPO / ".venv-pipeline" / "bin" / "python"
    if not python.exists():
        pytest.fail("no .venv-pipeline: run `make envs` (make test creates it before these tests)")
    (cm,) = [doc for _, doc in DOCS if doc["kind"] == "ConfigMap" and doc["metadata"]["name"] == "nightshift-config"]
    code = ("import sys, yaml; from pipeline.config import Config; "
            "Config.model_validate(yaml.safe_load(sys.stdin.read())); print('ok')")
    out = subprocess.run([str(python), "-c", code], input=cm["data"]["config.yaml"], capture_output=True,
                         text=True, cwd=REPO, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]
