"""Reading infra/: Kubernetes objects, and every pod template inside them (shared by the infra tests)."""
from __future__ import annotations

from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
INFRA = REPO / "infra"

# what a worker's environment holds in production; none of it may reach a pod spec, manifest or log
SECRET_ENV = {
    "AWS_ACCESS_KEY_ID": "AKIA-sentinel-0d1e2f",
    "AWS_SECRET_ACCESS_KEY": "aws-secret-sentinel-7c4b9a",
    "MLFLOW_TRACKING_USERNAME": "mlflow-user-sentinel-51e0",
    "MLFLOW_TRACKING_PASSWORD": "mlflow-pass-sentinel-a93f",
    "NIGHTSHIFT_WEBHOOK_URL": "http://127.0.0.1:9/services/T0/B0/webhook-sentinel-44d2",
    "AIRFLOW_CONN_NIGHTSHIFT_CHAT": '{"conn_type": "slackwebhook", '
                                    '"password": "http://127.0.0.1:9/services/T1/B1/chat-sentinel-e8a1"}',
}
SECRET_VALUES = ("AKIA-sentinel-0d1e2f", "aws-secret-sentinel-7c4b9a", "mlflow-user-sentinel-51e0",
                 "mlflow-pass-sentinel-a93f", "webhook-sentinel-44d2", "chat-sentinel-e8a1")

NOT_OBJECTS = ("kustomization.yaml",)  # kustomize's own files
CUSTOM_KINDS = {"TrainingRuntime", "TrainJob"}  # validated structurally (no schema in kubernetes-validate)


def documents(root: Path = INFRA / "k8s") -> list[tuple[str, dict]]:
    docs = []
    for path in sorted(root.rglob("*.y*ml")):
        if path.name in NOT_OBJECTS:
            continue
        for i, doc in enumerate(yaml.safe_load_all(path.read_text())):
            if doc is not None:
                docs.append((f"{path.relative_to(REPO)}#{i}", doc))
    return docs


def pod_templates(doc: dict) -> list[tuple[str, dict]]:
    """(where, pod template or pod) for every pod a workload object would create."""
    kind = doc.get("kind")
    spec = doc.get("spec") or {}
    if kind == "Pod":
        return [("pod", doc)]
    if kind in ("Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"):
        return [("spec.template", spec["template"])]
    if kind == "CronJob":
        return [("spec.jobTemplate.spec.template", spec["jobTemplate"]["spec"]["template"])]
    if kind == "TrainingRuntime":
        return [(f"replicatedJobs[{job['name']}]", job["template"]["spec"]["template"])
                for job in spec["template"]["spec"]["replicatedJobs"]]
    if kind == "TrainJob":
        # the TrainJob's containers are the runtime's; what it sets is checked as a container of its own
        trainer = spec["trainer"]
        return [("spec.trainer", {"spec": {"containers": [{"name": "node", "image": trainer["image"],
                                                           "resources": trainer["resourcesPerNode"]}]}})]
    return []
