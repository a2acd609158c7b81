"""Multi-node DDP for the train stage: N pods x G GPUs under torchrun, chosen per run from the DAG's params.

`train_launcher` (param) picks how the train task starts `nightshift train`:

- `pod`: the one train pod, exactly as NightshiftPodOperator runs every other stage (`train_nodes` must be 1).
- `indexed-job`: a batch/v1 Job with `completionMode: Indexed` and `parallelism = completions = train_nodes`,
  plus a headless Service. Pod i gets the hostname `<job>-i` under the Service's subdomain, so node 0 is
  reachable as `<job>-0.<job>` and hosts the c10d rendezvous on port 29400.
- `trainjob`: a Kubeflow Trainer v2 TrainJob (trainer.kubeflow.org/v1alpha1). Its JobSet names node 0
  `<job>-node-0-0` under the subdomain `<job>`; the locked-down pod template lives in the namespaced
  TrainingRuntime `nightshift-torch` (infra/k8s/trainer/training-runtime.yaml), because a TrainJob only
  carries the image, command, node count and resources.

Every node runs the same image and the same `nightshift train` arguments under

    torchrun --nnodes=N --nproc_per_node=G --rdzv_backend=c10d --rdzv_endpoint=<node 0>:29400 \
        --rdzv_id=<job> -m pipeline train --run-id ... --set ...

The train stage re-launches itself under torchrun only when LOCAL_RANK is absent, so here it trains directly.
Rank 0's CLI prints `NIGHTSHIFT_RESULT {json}` (and writes result.json to the artifact store); the operator
reads that line from node 0's log and returns it as the task's XCom, with the same fail-fast exit codes.

Multi-node launchers need more RBAC (jobs, services, trainjobs) and, for `trainjob`, the Trainer controller,
so a deployment enables them with NIGHTSHIFT_TRAIN_LAUNCHERS (settings.py); without it the train task is the
plain pod and the DAG has no multi-node params.
"""
from __future__ import annotations

import hashlib
import time
from collections.abc import Sequence
from typing import Any

from airflow.sdk.exceptions import AirflowException
from kubernetes.client import ApiClient

from nightshift_airflow import pods, settings
from nightshift_airflow.command import FAIL_FAST, describe_failure, parse_result
from nightshift_airflow.refusal import Refused

RDZV_PORT = 29400
TRAINER_GROUP, TRAINER_VERSION, TRAINER_PLURAL = "trainer.kubeflow.org", "v1alpha1", "trainjobs"
TRAINING_RUNTIME = "nightshift-torch"  # infra/k8s/trainer/training-runtime.yaml
TRAINER_NODE = "node"  # the TrainingRuntime's replicated job and container name (Trainer's convention)
JOB_LABEL = "nightshift.io/train-job"
CONTAINER = "train"
POLL_SECONDS = 20.0
LOG_TAIL_LINES = 400


# -- names and commands -------------------------------------------------------------------------------
def job_name(run_id: str, try_number: int) -> str:
    """A DNS-1035 name, stable for one task try: a retry gets a fresh Job, a re-run of a try adopts it.

    Short enough that `<job>-<index>` and `<job>-node-0-0` stay valid 63-character hostnames.
    """
    digest = hashlib.sha256(run_id.encode()).hexdigest()[:10]
    return f"nightshift-train-{digest}-t{int(try_number)}"


def rendezvous_endpoint(launcher: str, name: str) -> str:
    """Node 0's stable DNS name (relative to the namespace) and the c10d port."""
    if launcher == "indexed-job":
        return f"{name}-0.{name}:{RDZV_PORT}"
    if launcher == "trainjob":
        return f"{name}-{TRAINER_NODE}-0-0.{name}:{RDZV_PORT}"
    raise ValueError(f"no rendezvous for launcher {launcher!r}")


def torchrun_args(*, nodes: int, nproc_per_node: int, endpoint: str, rdzv_id: str,
                  stage_args: Sequence[str]) -> list[str]:
    """torchrun's flags, then `-m pipeline` and the unchanged `nightshift train ...` arguments."""
    return [
        f"--nnodes={nodes}",
        f"--nproc_per_node={nproc_per_node}",
        "--rdzv_backend=c10d",
        f"--rdzv_endpoint={endpoint}",
        f"--rdzv_id={rdzv_id}",
        "--max_restarts=0",  # a failed node fails the Job; Airflow's retry resumes from the checkpoint
        "-m", "pipeline",
        *stage_args,
    ]


def _plain(obj) -> Any:
    return ApiClient().sanitize_for_serialization(obj)


def _labels(name: str) -> dict[str, str]:
    return {"app.kubernetes.io/name": "nightshift", "app.kubernetes.io/component": "train", JOB_LABEL: name}


def _gpu_scheduling(gpus: int) -> dict[str, Any]:
    if not gpus:
        return {}
    return {"nodeSelector": dict(pods.GPU_NODE_SELECTOR),
            "tolerations": [{"key": pods.GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"}]}


def node_env(nproc_per_node: int) -> list[dict]:
    env = _plain(pods.env_vars())
    # CPU threads per rank; NCCL reports why a rendezvous or an all-reduce hangs
    env += [{"name": "OMP_NUM_THREADS", "value": "1"}, {"name": "NCCL_DEBUG", "value": "WARN"}]
    return env


def pod_template(*, name: str, image: str, args: Sequence[str], gpus: int, cpu: str, memory: str,
                 nproc_per_node: int, subdomain: str | None = None, container: str = CONTAINER) -> dict:
    """The node pod: the stage pod's security context, secrets, scratch volumes and GPU scheduling."""
    vols, mounts = pods.volumes(gpus)
    spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "serviceAccountName": settings.pod_service_account(),
        "automountServiceAccountToken": False,
        "securityContext": _plain(pods.pod_security_context()),
        "containers": [{
            "name": container,
            "image": image,
            "imagePullPolicy": "IfNotPresent",
            "command": ["torchrun"],
            "args": list(args),
            "env": node_env(nproc_per_node),
            "envFrom": _plain(pods.env_from("train")),
            "ports": [{"name": "rdzv", "containerPort": RDZV_PORT, "protocol": "TCP"}],
            "resources": _plain(pods.resources(cpu, memory, gpus)),
            "securityContext": _plain(pods.container_security_context()),
            "volumeMounts": _plain(mounts),
            "terminationMessagePolicy": "FallbackToLogsOnError",
        }],
        "volumes": _plain(vols),
        **_gpu_scheduling(gpus),
    }
    if subdomain:
        spec["subdomain"] = subdomain
    return {"metadata": {"labels": _labels(name)}, "spec": spec}


# -- manifests ----------------------------------------------------------------------------------------
def indexed_job(*, name: str, namespace: str, image: str, stage_args: Sequence[str], nodes: int, gpus: int,
                cpu: str, memory: str, deadline_s: int | None = None) -> dict:
    nproc = max(gpus, 1)
    args = torchrun_args(nodes=nodes, nproc_per_node=nproc, endpoint=rendezvous_endpoint("indexed-job", name),
                         rdzv_id=name, stage_args=stage_args)
    spec: dict[str, Any] = {
        "completionMode": "Indexed",
        "completions": nodes,
        "parallelism": nodes,
        "backoffLimit": 0,  # DDP cannot lose a node: one failure fails the Job
        "ttlSecondsAfterFinished": 86400,  # a failed Job stays a day for `kubectl logs`; success is deleted
        "template": pod_template(name=name, image=image, args=args, gpus=gpus, cpu=cpu, memory=memory,
                                 nproc_per_node=nproc, subdomain=name),
    }
    if deadline_s:
        spec["activeDeadlineSeconds"] = int(deadline_s)
    return {"apiVersion": "batch/v1", "kind": "Job",
            "metadata": {"name": name, "namespace": namespace, "labels": _labels(name)}, "spec": spec}


def headless_service(*, name: str, namespace: str) -> dict:
    """DNS for `<job>-<i>.<job>`; addresses are published before readiness so rendezvous can start."""
    return {
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name, "namespace": namespace, "labels": _labels(name)},
        "spec": {"clusterIP": "None", "publishNotReadyAddresses": True, "selector": {JOB_LABEL: name},
                 "ports": [{"name": "rdzv", "port": RDZV_PORT, "targetPort": RDZV_PORT, "protocol": "TCP"}]},
    }


def train_job(*, name: str, namespace: str, image: str, stage_args: Sequence[str], nodes: int, gpus: int,
              cpu: str, memory: str) -> dict:
    """A Kubeflow Trainer TrainJob on the `nightshift-torch` TrainingRuntime (which holds the pod template)."""
    nproc = max(gpus, 1)
    args = torchrun_args(nodes=nodes, nproc_per_node=nproc, endpoint=rendezvous_endpoint("trainjob", name),
                         rdzv_id=name, stage_args=stage_args)
    return {
        "apiVersion": f"{TRAINER_GROUP}/{TRAINER_VERSION}", "kind": "TrainJob",
        "metadata": {"name": name, "namespace": namespace, "labels": _labels(name)},
        "spec": {
            "runtimeRef": {"apiGroup": TRAINER_GROUP, "kind": "TrainingRuntime", "name": TRAINING_RUNTIME},
            "trainer": {
                "image": image,
                "command": ["torchrun"],
                "args": args,
                "numNodes": nodes,
                "numProcPerNode": nproc,
                "resourcesPerNode": _plain(pods.resources(cpu, memory, gpus)),
                "env": node_env(nproc),
            },
        },
    }


def owned_by(obj: dict, owner_kind: str, owner_api: str, owner_name: str, owner_uid: str) -> dict:
    """`obj` garbage-collected with its owner (the Service goes when the Job is deleted)."""
    obj = dict(obj, metadata=dict(obj["metadata"]))
    obj["metadata"]["ownerReferences"] = [{"apiVersion": owner_api, "kind": owner_kind, "name": owner_name,
                                           "uid": owner_uid, "blockOwnerDeletion": False, "controller": False}]
    return obj


# -- the operator ------------------------------------------------------------------------------------
def _condition(status: dict | None, *types: str) -> bool:
    for cond in (status or {}).get("conditions") or []:
        if cond.get("type") in types and str(cond.get("status")) == "True":
            return True
    return False


class NightshiftTrainOperator(pods.NightshiftPodOperator):
    """The train task when multi-node launchers are enabled: one pod, an Indexed Job or a TrainJob.

    Reads `train_nodes` and `train_launcher` from the run's params at execute time; `pod` with one node is
    exactly the NightshiftPodOperator path.
    """

    def __init__(self, *, launchers: Sequence[str], gpus: int, cpu: str, memory: str,
                 poll_seconds: float = POLL_SECONDS, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.launchers = tuple(launchers)
        self.gpus, self.cpu, self.memory = gpus, cpu, memory
        self.poll_seconds = poll_seconds
        self._submitted: tuple[str, str] | None = None  # (launcher, name) while a job runs

    # -- choosing ----------------------------------------------------------------------------------
    def choice(self, context) -> tuple[str, int]:
        params = context.get("params") or {}
        launcher = params.get("train_launcher") or "pod"
        nodes = int(params.get("train_nodes") or 1)
        if launcher not in self.launchers:
            raise Refused(f"train_launcher={launcher!r} is not enabled here "
                          f"(NIGHTSHIFT_TRAIN_LAUNCHERS: {', '.join(self.launchers)})")
        if nodes < 1:
            raise Refused(f"train_nodes={nodes}: must be at least 1")
        if launcher == "pod" and nodes != 1:
            raise Refused(f"train_launcher=pod runs on one node; train_nodes={nodes} needs "
                          "indexed-job or trainjob")
        return launcher, nodes

    def manifests(self, context, launcher: str, nodes: int) -> list[dict]:
        """What `execute` submits, rendered from this task's (already templated) arguments."""
        ti = context["ti"]
        name = job_name(context["run_id"], getattr(ti, "try_number", 1) or 1)
        common = dict(name=name, namespace=self.namespace, image=self.image, stage_args=list(self.arguments),
                      nodes=nodes, gpus=self.gpus, cpu=self.cpu, memory=self.memory)
        if launcher == "indexed-job":
            timeout = self.execution_timeout.total_seconds() if self.execution_timeout else None
            return [indexed_job(**common, deadline_s=int(timeout) if timeout else None),
                    headless_service(name=name, namespace=self.namespace)]
        if launcher == "trainjob":
            return [train_job(**common)]
        raise ValueError(launcher)

    def execute(self, context):
        launcher, nodes = self.choice(context)
        if launcher == "pod":
            return super().execute(context)
        docs = self.manifests(context, launcher, nodes)
        name = docs[0]["metadata"]["name"]
        self.log.info("train on %d node(s) x %d GPU(s) as %s %s (rendezvous %s)", nodes, max(self.gpus, 1),
                      docs[0]["kind"], name, rendezvous_endpoint(launcher, name))
        self._submitted = (launcher, name)
        self.submit(launcher, docs)
        succeeded = self.wait(launcher, name)
        result, tail = self.rank0_result(launcher, name)
        if succeeded:
            if result is None:
                raise AirflowException(f"{name} succeeded but node 0 printed no NIGHTSHIFT_RESULT line")
            self.delete(launcher, name)
            self._submitted = None
            return result
        self._submitted = None  # a failed job is kept (ttlSecondsAfterFinished) for its logs
        code = result.get("exit_code") if result else None
        message = describe_failure(self.stage, code, result, tail[-30:])
        if code in FAIL_FAST:
            raise Refused(message)
        raise AirflowException(message)

    def on_kill(self) -> None:
        if self._submitted:
            self.delete(*self._submitted)
        else:
            super().on_kill()

    # -- the Kubernetes API ------------------------------------------------------------------------
    def clients(self):
        """(BatchV1Api, CoreV1Api, CustomObjectsApi) from the operator's Kubernetes connection."""
        hook = self.hook
        return hook.batch_v1_client, hook.core_v1_client, hook.custom_object_client

    def submit(self, launcher: str, docs: list[dict]) -> None:
        from kubernetes.client.exceptions import ApiException

        batch, core, custom = self.clients()
        ns = self.namespace
        try:
            if launcher == "indexed-job":
                job, service = docs
                created = batch.create_namespaced_job(ns, job)  # a V1Job
                core.create_namespaced_service(ns, owned_by(service, "Job", "batch/v1", job["metadata"]["name"],
                                                            created.metadata.uid))
            else:
                custom.create_namespaced_custom_object(TRAINER_GROUP, TRAINER_VERSION, ns, TRAINER_PLURAL, docs[0])
        except ApiException as exc:
            if exc.status != 409:
                raise
            # this try's job exists already (the worker restarted): wait on it rather than start another
            self.log.info("%s already exists: waiting on it", docs[0]["metadata"]["name"])

    def status(self, launcher: str, name: str) -> dict:
        batch, _, custom = self.clients()
        if launcher == "indexed-job":
            # a V1Job, read as the API's JSON so both launchers' conditions look alike
            return _plain(batch.read_namespaced_job_status(name, self.namespace)).get("status") or {}
        # the custom-objects API returns the API's JSON as a dict
        obj = custom.get_namespaced_custom_object_status(TRAINER_GROUP, TRAINER_VERSION, self.namespace,
                                                         TRAINER_PLURAL, name)
        return obj.get("status") or {}

    def wait(self, launcher: str, name: str) -> bool:
        """Poll until the job completes (True) or fails (False); Airflow's execution_timeout bounds it."""
        last = None
        while True:
            status = self.status(launcher, name)
            if _condition(status, "Complete", "SuccessCriteriaMet"):
                return True
            if _condition(status, "Failed", "FailureTarget"):
                return False
            summary = {k: status.get(k) for k in ("active", "succeeded", "failed", "ready") if k in status}
            if summary != last:
                self.log.info("%s: %s", name, summary or "waiting for pods")
                last = summary
            time.sleep(self.poll_seconds)

    def rank0_selector(self, launcher: str, name: str) -> str:
        if launcher == "indexed-job":
            return f"batch.kubernetes.io/job-name={name},batch.kubernetes.io/job-completion-index=0"
        return (f"jobset.sigs.k8s.io/jobset-name={name},jobset.sigs.k8s.io/replicatedjob-name={TRAINER_NODE},"
                "jobset.sigs.k8s.io/job-index=0,batch.kubernetes.io/job-completion-index=0")

    def rank0_result(self, launcher: str, name: str) -> tuple[dict | None, list[str]]:
        """The last NIGHTSHIFT_RESULT line in node 0's log, and the log's tail for the task log."""
        _, core, _ = self.clients()
        items = core.list_namespaced_pod(self.namespace, label_selector=self.rank0_selector(launcher, name)).items
        if not items:
            self.log.warning("%s: no pod for node 0 found", name)
            return None, []
        pod = items[-1]
        pod_name = pod.metadata.name
        container = CONTAINER if launcher == "indexed-job" else TRAINER_NODE
        text = core.read_namespaced_pod_log(pod_name, self.namespace, container=container,
                                            tail_lines=LOG_TAIL_LINES)
        lines = text.splitlines()
        result = None
        tail: list[str] = []
        for line in lines:
            parsed = parse_result(line)
            if parsed is not None:
                result = parsed
            else:
                tail.append(line)
        for line in tail[-50:]:
            self.log.info("[%s] %s", pod_name, line)
        return result, tail

    def delete(self, launcher: str, name: str) -> None:
        from kubernetes.client.exceptions import ApiException

        batch, _, custom = self.clients()
        try:
            if launcher == "indexed-job":  # the Service is owned by the Job and goes with it
                batch.delete_namespaced_job(name, self.namespace, propagation_policy="Background")
            else:
                custom.delete_namespaced_custom_object(TRAINER_GROUP, TRAINER_VERSION, self.namespace,
                                                       TRAINER_PLURAL, name, propagation_policy="Background")
        except ApiException as exc:
            if exc.status != 404:
                self.log.warning("could not delete %s: %s", name, exc)


def train_operator(*, task_id: str, stage: str, arguments: Sequence[str], gpus: int, cpu: str, memory: str,
                   launchers: Sequence[str], **kwargs: Any) -> NightshiftTrainOperator:
    """The train task: for `pod`, the same pod as pods.pod_operator builds (tests/dags/test_multinode.py
    compares the two), plus the multi-node launchers."""
    return NightshiftTrainOperator(
        launchers=launchers,
        gpus=gpus,
        cpu=cpu,
        memory=memory,
        task_id=task_id,
        **pods.pod_kwargs(stage=stage, arguments=arguments, gpus=gpus, cpu=cpu, memory=memory),
        **kwargs,
    )


__all__ = [
    "NightshiftTrainOperator", "RDZV_PORT", "TRAINING_RUNTIME", "headless_service", "indexed_job", "job_name",
    "rendezvous_endpoint", "torchrun_args", "train_job", "train_operator",
]
