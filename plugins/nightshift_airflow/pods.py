"""The kubernetes runner: one pod per task running the pipeline image's `nightshift <stage> ...`.

Imported only when NIGHTSHIFT_RUNNER=kubernetes. The pod is locked down (non-root, read-only root
filesystem, no capabilities, RuntimeDefault seccomp); credentials come from Kubernetes Secrets by
reference, so no secret value is ever part of the pod spec or the serialized DAG.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator
from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException
from kubernetes.client import models as k8s

from nightshift_airflow import settings
from nightshift_airflow.command import FAIL_FAST, compact, stage_failure
from nightshift_airflow.refusal import Refused

UID = 10001  # the pipeline image's user (docker/pipeline.Dockerfile)
WORKSPACE = "/workspace"
CONFIG_DIR = "/etc/nightshift"
GPU_RESOURCE = "nvidia.com/gpu"
GPU_NODE_SELECTOR = {"nvidia.com/gpu.present": "true"}

# Secret name -> whether a pod fails to start without it. Keys: infra/k8s/secrets.example.yaml.
SECRETS_ALL = {"nightshift-s3": False, "nightshift-mlflow": False}
SECRET_CHAT = "nightshift-chat"
CHAT_STAGES = {"notify", "rollback", "weekly"}  # only these stages talk to the chat webhook


def container_security_context() -> k8s.V1SecurityContext:
    return k8s.V1SecurityContext(
        run_as_non_root=True,
        run_as_user=UID,
        run_as_group=UID,
        allow_privilege_escalation=False,
        read_only_root_filesystem=True,
        privileged=False,
        capabilities=k8s.V1Capabilities(drop=["ALL"]),
        seccomp_profile=k8s.V1SeccompProfile(type="RuntimeDefault"),
    )


def pod_security_context() -> k8s.V1PodSecurityContext:
    return k8s.V1PodSecurityContext(
        run_as_non_root=True,
        run_as_user=UID,
        run_as_group=UID,
        fs_group=UID,
        seccomp_profile=k8s.V1SeccompProfile(type="RuntimeDefault"),
    )


def env_from(stage: str) -> list[k8s.V1EnvFromSource]:
    sources = [
        k8s.V1EnvFromSource(secret_ref=k8s.V1SecretEnvSource(name=name, optional=optional))
        for name, optional in SECRETS_ALL.items()
    ]
    if stage in CHAT_STAGES:  # NIGHTSHIFT_WEBHOOK_URL; optional: without it notify writes the alert sink
        sources.append(k8s.V1EnvFromSource(secret_ref=k8s.V1SecretEnvSource(name=SECRET_CHAT, optional=True)))
    return sources


def volumes(gpus: int) -> tuple[list[k8s.V1Volume], list[k8s.V1VolumeMount]]:
    """Writable scratch for a read-only root filesystem: /tmp, the workspace, /dev/shm for DataLoaders/NCCL."""
    vols = [
        k8s.V1Volume(name="tmp", empty_dir=k8s.V1EmptyDirVolumeSource(size_limit="2Gi")),
        k8s.V1Volume(name="workspace", empty_dir=k8s.V1EmptyDirVolumeSource(size_limit="50Gi")),
        k8s.V1Volume(name="dshm", empty_dir=k8s.V1EmptyDirVolumeSource(
            medium="Memory", size_limit="8Gi" if gpus else "1Gi")),
    ]
    mounts = [
        k8s.V1VolumeMount(name="tmp", mount_path="/tmp"),
        k8s.V1VolumeMount(name="workspace", mount_path=WORKSPACE),
        k8s.V1VolumeMount(name="dshm", mount_path="/dev/shm"),
    ]
    if settings.config_map():
        vols.append(k8s.V1Volume(name="config", config_map=k8s.V1ConfigMapVolumeSource(name=settings.config_map())))
        mounts.append(k8s.V1VolumeMount(name="config", mount_path=CONFIG_DIR, read_only=True))
    return vols, mounts


def resources(cpu: str, memory: str, gpus: int) -> k8s.V1ResourceRequirements:
    requests = {"cpu": cpu, "memory": memory}
    limits = {"cpu": cpu, "memory": memory}
    if gpus:
        requests[GPU_RESOURCE] = str(gpus)
        limits[GPU_RESOURCE] = str(gpus)
    return k8s.V1ResourceRequirements(requests=requests, limits=limits)


def env_vars() -> list[k8s.V1EnvVar]:
    """Plain settings only (locations inside the pod); credentials come from env_from secret refs."""
    return [
        k8s.V1EnvVar(name="HOME", value=WORKSPACE),
        k8s.V1EnvVar(name="NIGHTSHIFT_HOME", value=f"{WORKSPACE}/.nightshift"),
        k8s.V1EnvVar(name="XDG_CACHE_HOME", value=f"{WORKSPACE}/.cache"),
        k8s.V1EnvVar(name="MPLCONFIGDIR", value="/tmp/matplotlib"),
        k8s.V1EnvVar(name="PYTHONUNBUFFERED", value="1"),
        k8s.V1EnvVar(name="NIGHTSHIFT_LOG_TIMESTAMPS", value="0"),  # the task log stamps each line already
        # Airflow's own run id and DAG, shown in chat beside the store key (rendered by KPO's env_vars template)
        k8s.V1EnvVar(name="AIRFLOW_CTX_DAG_RUN_ID", value="{{ run_id }}"),
        k8s.V1EnvVar(name="AIRFLOW_CTX_DAG_ID", value="{{ dag.dag_id }}"),
    ]


def container_exit_code(remote_pod: k8s.V1Pod | None, container: str) -> int | None:
    statuses = (remote_pod.status.container_statuses if remote_pod and remote_pod.status else None) or []
    for status in statuses:
        if status.name == container and status.state and status.state.terminated:
            return status.state.terminated.exit_code
    return None


class NightshiftPodOperator(KubernetesPodOperator):
    """KubernetesPodOperator with the stage contract: compacted arguments and fail-fast exit codes.

    The xcom sidecar reads /airflow/xcom/return.json, which the CLI writes on success and on failure,
    so a refused gate's failed checks reach the task's error message.
    """

    ui_color = "#d6e6f5"

    def __init__(self, *, stage: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.stage = stage

    def render_template_fields(self, context, jinja_env=None) -> None:
        super().render_template_fields(context, jinja_env)
        self.arguments = compact(self.arguments)

    def cleanup(self, pod, remote_pod, xcom_result=None, context=None) -> None:
        try:
            super().cleanup(pod, remote_pod, xcom_result=xcom_result, context=context)
        except (AirflowFailException, AirflowSkipException):
            raise
        except Exception as exc:
            code = container_exit_code(remote_pod, self.base_container_name)
            result = xcom_result if isinstance(xcom_result, dict) else None
            if code in FAIL_FAST:
                raise stage_failure(Refused, self.stage, code, result) from exc
            raise


def pod_kwargs(*, stage: str, arguments: Sequence[str], gpus: int, cpu: str, memory: str) -> dict[str, Any]:
    """Everything that makes a stage's pod: image, command, resources, secrets, security, GPU scheduling.
    Shared by the single-pod operator and the multi-node train operator, so both build the same pod."""
    vols, mounts = volumes(gpus)
    gpu_kwargs: dict[str, Any] = {}
    if gpus:
        gpu_kwargs = {
            "node_selector": dict(GPU_NODE_SELECTOR),
            "tolerations": [k8s.V1Toleration(key=GPU_RESOURCE, operator="Exists", effect="NoSchedule")],
        }
    return dict(
        stage=stage,
        name=f"nightshift-{stage}",
        namespace=settings.namespace(),
        kubernetes_conn_id=settings.kubernetes_conn_id(),
        image=settings.gpu_image() if gpus else settings.image(),
        image_pull_policy="IfNotPresent",
        cmds=["nightshift"],
        arguments=list(arguments),
        labels={"app.kubernetes.io/name": "nightshift", "app.kubernetes.io/component": stage},
        env_vars=env_vars(),
        env_from=env_from(stage),
        container_resources=resources(cpu, memory, gpus),
        volumes=vols,
        volume_mounts=mounts,
        security_context=pod_security_context(),
        container_security_context=container_security_context(),
        xcom_sidecar_container_security_context=container_security_context(),
        service_account_name=settings.pod_service_account(),
        automount_service_account_token=False,
        do_xcom_push=True,
        get_logs=True,
        on_finish_action="delete_succeeded_pod",
        termination_message_policy="FallbackToLogsOnError",
        startup_timeout_seconds=900 if gpus else 300,
        **gpu_kwargs,
    )


def pod_operator(
    *, task_id: str, stage: str, arguments: Sequence[str], gpus: int, cpu: str, memory: str, **kwargs: Any
) -> NightshiftPodOperator:
    return NightshiftPodOperator(
        task_id=task_id,
        **pod_kwargs(stage=stage, arguments=arguments, gpus=gpus, cpu=cpu, memory=memory),
        **kwargs,
    )
