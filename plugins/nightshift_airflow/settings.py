"""Deployment settings read from the environment (stdlib only: DAG files import this at parse time).

Nothing here touches the metadata database, Variables or connections; every value has a local default so a
laptop with two venvs runs the DAGs with no configuration at all.
"""
from __future__ import annotations

import os
from pathlib import Path

RUNNERS = ("local", "kubernetes")
# data.format choices; tests/dags check this tuple against pipeline/config.py (the Airflow venv has no pipeline)
FORMATS = ("coco", "voc", "yolo", "labelme", "cvat", "kitti", "imagefolder", "manifest")
# what the trigger form offers: "auto" detects the format and layout from the export (pipeline/formats/layout.py)
FORMAT_CHOICES = ("auto", *FORMATS)
# data.task choices; tests/dags check this tuple against pipeline/tasks.py's TASKS
TASKS = ("detection", "classification", "segmentation")
# gate names a run may override; tests/dags check this tuple against pipeline/gates.py's GATES
GATES = ("map_min", "map50_min", "accuracy_min", "macro_f1_min", "max_regression", "per_class_max_regression",
         "slice_max_regression", "robustness_max_drop", "robustness_max_regression", "latency_p95_ms_max",
         "model_size_mb_max", "segm_map_min", "segm_map50_min", "segm_max_regression")
CHAT_CONN_ID = "nightshift_chat"

# repo = parent of dags/ and plugins/
REPO = Path(__file__).resolve().parents[2]


def runner() -> str:
    """`NIGHTSHIFT_RUNNER`: local (a subprocess in the pipeline venv) or kubernetes (one pod per task)."""
    value = os.environ.get("NIGHTSHIFT_RUNNER", "local").strip().lower() or "local"
    if value not in RUNNERS:
        raise ValueError(f"NIGHTSHIFT_RUNNER={value!r}: expected one of {', '.join(RUNNERS)}")
    return value


def home() -> Path:
    return Path(os.environ.get("NIGHTSHIFT_HOME") or REPO / ".nightshift")


def alert_sink() -> Path:
    return Path(os.environ.get("NIGHTSHIFT_ALERT_SINK") or home() / "alerts.jsonl")


def pipeline_bin() -> str:
    return os.environ.get("NIGHTSHIFT_PIPELINE_BIN") or str(REPO / ".venv-pipeline" / "bin" / "nightshift")


def config_file() -> str | None:
    """`NIGHTSHIFT_CONFIG`: the YAML config passed as --config (a path as the stage process sees it)."""
    return os.environ.get("NIGHTSHIFT_CONFIG") or None


def gpus() -> int:
    """`NIGHTSHIFT_GPUS`: GPUs per pod for train and export on the kubernetes runner (0 = CPU pods)."""
    raw = os.environ.get("NIGHTSHIFT_GPUS", "1")
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"NIGHTSHIFT_GPUS={raw!r}: expected a whole number") from None
    if value < 0:
        raise ValueError(f"NIGHTSHIFT_GPUS={raw!r}: must be >= 0")
    return value


def schedule(variable: str = "NIGHTSHIFT_SCHEDULE", default: str = "0 2 * * *") -> str | None:
    """`NIGHTSHIFT_SCHEDULE`: cron for the nightly retrain ("none" or "" = manual triggers only)."""
    value = os.environ.get(variable, default).strip()
    return None if value.lower() in ("", "none", "null") else value


def weekly_schedule() -> str | None:
    """`NIGHTSHIFT_WEEKLY_SCHEDULE`: cron for the weekly report (Monday 06:00; "none" = manual only)."""
    return schedule("NIGHTSHIFT_WEEKLY_SCHEDULE", "0 6 * * 1")


# -- kubernetes runner ------------------------------------------------------------------------------
def namespace() -> str:
    return os.environ.get("NIGHTSHIFT_NAMESPACE", "nightshift")


def image() -> str:
    return os.environ.get("NIGHTSHIFT_IMAGE", "nightshift/pipeline:0.1.0")


def gpu_image() -> str:
    return os.environ.get("NIGHTSHIFT_GPU_IMAGE") or os.environ.get("NIGHTSHIFT_IMAGE", "nightshift/pipeline-gpu:0.1.0")


def kubernetes_conn_id() -> str:
    return os.environ.get("NIGHTSHIFT_K8S_CONN_ID", "kubernetes_default")


def pod_service_account() -> str:
    return os.environ.get("NIGHTSHIFT_POD_SERVICE_ACCOUNT", "nightshift-stage")


def config_map() -> str | None:
    """`NIGHTSHIFT_CONFIGMAP`: a ConfigMap mounted read-only at /etc/nightshift in every pod."""
    return os.environ.get("NIGHTSHIFT_CONFIGMAP") or None


# -- multi-node training (kubernetes runner) --------------------------------------------------------
TRAIN_LAUNCHERS = ("pod", "indexed-job", "trainjob")
MAX_TRAIN_NODES = 16


def train_launchers() -> tuple[str, ...]:
    """`NIGHTSHIFT_TRAIN_LAUNCHERS`: how the kubernetes runner may start the train stage, comma-separated.

    `pod` (the default, always allowed) is one pod; `indexed-job` (an Indexed Job + headless Service) and
    `trainjob` (a Kubeflow Trainer TrainJob) spread DDP over several nodes. Enable only what the cluster
    supports: the extra RBAC of infra/k8s/rbac.yaml, and for `trainjob` the Trainer controller and the
    `nightshift-torch` TrainingRuntime. With more than `pod` enabled the retrain DAG gets the `train_nodes`
    and `train_launcher` params. The local runner always trains on the one machine.
    """
    raw = os.environ.get("NIGHTSHIFT_TRAIN_LAUNCHERS", "pod")
    chosen = [item.strip().lower() for item in raw.split(",") if item.strip()]
    unknown = [item for item in chosen if item not in TRAIN_LAUNCHERS]
    if unknown:
        raise ValueError(f"NIGHTSHIFT_TRAIN_LAUNCHERS={raw!r}: unknown {', '.join(unknown)}; "
                         f"expected some of {', '.join(TRAIN_LAUNCHERS)}")
    if runner() != "kubernetes":
        return ("pod",)
    return tuple(name for name in TRAIN_LAUNCHERS if name == "pod" or name in chosen)


def multinode_enabled() -> bool:
    return train_launchers() != ("pod",)
