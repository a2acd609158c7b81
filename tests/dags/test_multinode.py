"""Multi-node DDP from the retrain DAG's params: Indexed Job + headless Service, or a Kubeflow TrainJob.

The DAG is parsed with NIGHTSHIFT_RUNNER=kubernetes and every launcher enabled; manifests are rendered for
2 nodes and validated (Job, Service and the TrainJob's pod-facing parts with kubernetes-validate strict, the
TrainJob itself against the field list of its CRD), and the operator runs against a fake Kubernetes API.
"""
from __future__ import annotations

import copy
import sys
import types
from pathlib import Path

import pytest

pytestmark = pytest.mark.airflow
REPO = Path(__file__).resolve().parents[2]
K8S_VERSION = "1.34.0"
RUN_ID = "scheduled__2026-11-25T02:00:00+00:00"
TRIGGER = {"train_nodes": 2, "epochs": 3}
KUBECONFIG = """\
apiVersion: v1
kind: Config
clusters: [{name: dummy, cluster: {server: "https://127.0.0.1:9"}}]
users: [{name: dummy, user: {token: dummy}}]
contexts: [{name: dummy, context: {cluster: dummy, user: dummy, namespace: nightshift-test}}]
current-context: dummy
"""

# TrainJob fields (trainer.kubeflow.org/v1alpha1), from kubeflow/trainer
# manifests/base/crds/trainer.kubeflow.org_trainjobs.yaml (commit 0f13bb7a): the CRD is 550 kB, too large to
# vendor through the offline search tool, so the fields this code uses are checked against this list.
TRAINJOB_SPEC_FIELDS = {"runtimeRef", "initializer", "trainer", "labels", "annotations", "podTemplateOverrides",
                        "runtimePatches", "suspend", "managedBy", "activeDeadlineSeconds"}
TRAINJOB_TRAINER_FIELDS = {"image", "command", "args", "env", "numNodes", "resourcesPerNode", "numProcPerNode"}
TRAINJOB_RUNTIME_REF_FIELDS = {"name", "apiGroup", "kind"}


def _purge():
    for name in [m for m in sys.modules if m == "nightshift_airflow" or m.startswith("nightshift_airflow.")]:
        del sys.modules[name]


@pytest.fixture(scope="module")
def mn_dagbag(tmp_path_factory):
    from airflow.dag_processing.dagbag import DagBag

    kubeconfig = tmp_path_factory.mktemp("kube") / "config"
    kubeconfig.write_text(KUBECONFIG)
    mp = pytest.MonkeyPatch()
    for key, value in {"NIGHTSHIFT_RUNNER": "kubernetes", "KUBECONFIG": str(kubeconfig), "NIGHTSHIFT_GPUS": "4",
                       "NIGHTSHIFT_NAMESPACE": "nightshift-test",
                       "NIGHTSHIFT_GPU_IMAGE": "registry.example.com/nightshift/pipeline-gpu:1.2.3",
                       "NIGHTSHIFT_IMAGE": "registry.example.com/nightshift/pipeline:1.2.3",
                       "NIGHTSHIFT_TRAIN_LAUNCHERS": "indexed-job,trainjob"}.items():
        mp.setenv(key, value)
    _purge()
    try:
        yield DagBag(dag_folder=str(REPO / "dags"))
    finally:
        mp.undo()
        _purge()


def _context(dag, task, params, try_number=1):
    ti = types.SimpleNamespace(dag_id=dag.dag_id, task_id=task.task_id, run_id=RUN_ID, map_index=-1,
                               try_number=try_number)
    return {"dag": dag, "task": task, "ti": ti, "task_instance": ti, "run_id": RUN_ID,
            "params": dict(dag.params.dump(), **params)}


def _train(dagbag, params, try_number=1):
    dag = dagbag.dags["nightshift_retrain"]
    task = copy.deepcopy(dag.get_task("train"))
    context = _context(dag, task, params, try_number)
    task.render_template_fields(context)
    return task, context


def _validate(doc):
    import kubernetes_validate

    try:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    except kubernetes_validate.ValidationError as exc:
        pytest.fail(f"{doc['kind']}: {exc.message} at {'/'.join(map(str, exc.path))}")


def _as_pod_template(template: dict) -> dict:
    return {"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": "check"}, "template": template}


# -- params and wiring --------------------------------------------------------------------------------------
def test_params_and_operator(mn_dagbag):
    from airflow.sdk.exceptions import ParamValidationError

    assert mn_dagbag.import_errors == {}
    dag = mn_dagbag.dags["nightshift_retrain"]
    assert dag.params.dump()["train_nodes"] == 1 and dag.params.dump()["train_launcher"] == "pod"
    assert set(dag.params.get_param("train_launcher").schema["enum"]) == {"pod", "indexed-job", "trainjob"}
    assert type(dag.get_task("train")).__name__ == "NightshiftTrainOperator"
    others = {t.task_id: type(t).__name__ for t in dag.tasks
              if t.task_id not in ("train", "branch_on_change", "check_conf")}
    assert set(others.values()) == {"NightshiftPodOperator"}
    for name, bad in [("train_nodes", 0), ("train_nodes", 17), ("train_launcher", "mpijob")]:
        with pytest.raises(ParamValidationError):
            dag.params.get_param(name).resolve(value=bad)


def test_launchers_are_opt_in_and_checked(monkeypatch):
    from nightshift_airflow import settings

    monkeypatch.setenv("NIGHTSHIFT_RUNNER", "kubernetes")
    monkeypatch.delenv("NIGHTSHIFT_TRAIN_LAUNCHERS", raising=False)
    assert settings.train_launchers() == ("pod",) and not settings.multinode_enabled()
    monkeypatch.setenv("NIGHTSHIFT_TRAIN_LAUNCHERS", "trainjob")
    assert settings.train_launchers() == ("pod", "trainjob")
    monkeypatch.setenv("NIGHTSHIFT_TRAIN_LAUNCHERS", "trainjob,slurm")
    with pytest.raises(ValueError, match="slurm"):
        settings.train_launchers()
    monkeypatch.setenv("NIGHTSHIFT_RUNNER", "local")
    monkeypatch.setenv("NIGHTSHIFT_TRAIN_LAUNCHERS", "indexed-job")
    assert settings.train_launchers() == ("pod",)  # the local runner trains on this machine


def test_pod_launcher_is_the_plain_train_pod(mn_dagbag):
    """train_launcher=pod builds exactly the pod pods.pod_operator builds for the train stage."""
    from kubernetes.client import ApiClient
    from nightshift_airflow import pods

    task, context = _train(mn_dagbag, {})
    assert task.choice(context) == ("pod", 1)
    reference = pods.pod_operator(task_id="train", stage="train", arguments=task.arguments, gpus=4, cpu="4",
                                  memory="16Gi")
    reference.render_template_fields(context)  # env carries Airflow's run id, a template like the arguments
    api = ApiClient()
    built = api.sanitize_for_serialization(task.build_pod_request_obj(context))
    expected = api.sanitize_for_serialization(reference.build_pod_request_obj(context))
    for pod in (built, expected):
        pod["metadata"].pop("name")
        pod["metadata"]["labels"].pop("airflow_kpo_in_cluster", None)
    assert built == expected
    _validate(built)


@pytest.mark.parametrize("params,message", [
    ({"train_nodes": 2, "train_launcher": "pod"}, "one node"),
    ({"train_launcher": "mpijob"}, "not enabled"),
])
def test_bad_choices_fail_fast(mn_dagbag, params, message):
    from airflow.sdk.exceptions import AirflowFailException

    task, context = _train(mn_dagbag, params)
    with pytest.raises(AirflowFailException, match=message):
        task.execute(context)


# -- rendering ---------------------------------------------------------------------------------------------
def _stage_args(task):
    return list(task.arguments)


def test_indexed_job_and_service(mn_dagbag, secret_sentinel):
    task, context = _train(mn_dagbag, dict(TRIGGER, train_launcher="indexed-job"))
    job, service = task.manifests(context, "indexed-job", 2)
    for doc in (job, service):
        _validate(doc)
        assert secret_sentinel not in str(doc)
    name = job["metadata"]["name"]
    assert len(f"{name}-15") <= 63 and job["metadata"]["namespace"] == "nightshift-test"
    spec = job["spec"]
    assert spec["completionMode"] == "Indexed" and spec["completions"] == spec["parallelism"] == 2
    assert spec["backoffLimit"] == 0 and spec["activeDeadlineSeconds"] == 12 * 3600
    pod = spec["template"]["spec"]
    assert pod["subdomain"] == service["metadata"]["name"] == name
    assert service["spec"]["clusterIP"] == "None" and service["spec"]["publishNotReadyAddresses"] is True
    assert service["spec"]["selector"].items() <= spec["template"]["metadata"]["labels"].items()
    assert service["spec"]["ports"][0]["port"] == 29400

    (container,) = pod["containers"]
    assert container["command"] == ["torchrun"]
    args = container["args"]
    m = args.index("-m")
    assert args[:m] == ["--nnodes=2", "--nproc_per_node=4", "--rdzv_backend=c10d",
                        f"--rdzv_endpoint={name}-0.{name}:29400", f"--rdzv_id={name}", "--max_restarts=0"]
    # after `-m pipeline`: the very arguments of the single-pod train task (run id, --set overrides)
    assert args[m:m + 2] == ["-m", "pipeline"] and args[m + 2:] == _stage_args(task)
    assert args[m + 2:m + 5] == ["train", "--run-id", RUN_ID]
    assert "train.epochs=3" in args and "train.nproc_per_node=4" in args
    _check_node_pod(pod, container)


def _check_node_pod(pod, container):
    assert container["image"] == "registry.example.com/nightshift/pipeline-gpu:1.2.3"
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "4"
    assert container["resources"]["requests"]["nvidia.com/gpu"] == "4"
    assert container["resources"]["requests"]["memory"] == container["resources"]["limits"]["memory"] == "16Gi"
    assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
    assert pod["restartPolicy"] == "Never" and pod["automountServiceAccountToken"] is False
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    sc = container["securityContext"]
    assert sc["allowPrivilegeEscalation"] is False and sc["readOnlyRootFilesystem"] is True
    assert sc["capabilities"] == {"drop": ["ALL"]} and sc["runAsNonRoot"] is True
    assert {e["secretRef"]["name"] for e in container["envFrom"]} == {"nightshift-s3", "nightshift-mlflow"}
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    assert {"/tmp", "/workspace", "/dev/shm"} <= mounts


def test_trainjob(mn_dagbag, secret_sentinel):
    task, context = _train(mn_dagbag, dict(TRIGGER, train_launcher="trainjob"))
    (tj,) = task.manifests(context, "trainjob", 2)
    name = tj["metadata"]["name"]
    assert tj["apiVersion"] == "trainer.kubeflow.org/v1alpha1" and tj["kind"] == "TrainJob"
    assert set(tj) == {"apiVersion", "kind", "metadata", "spec"}
    assert set(tj["spec"]) <= TRAINJOB_SPEC_FIELDS
    assert set(tj["spec"]["trainer"]) <= TRAINJOB_TRAINER_FIELDS
    assert set(tj["spec"]["runtimeRef"]) <= TRAINJOB_RUNTIME_REF_FIELDS
    assert tj["spec"]["runtimeRef"] == {"apiGroup": "trainer.kubeflow.org", "kind": "TrainingRuntime",
                                        "name": "nightshift-torch"}
    trainer = tj["spec"]["trainer"]
    assert trainer["numNodes"] == 2 and trainer["numProcPerNode"] == 4
    assert trainer["command"] == ["torchrun"]
    assert f"--rdzv_endpoint={name}-node-0-0.{name}:29400" in trainer["args"]
    assert trainer["args"][trainer["args"].index("-m") + 2:] == _stage_args(task)
    assert secret_sentinel not in str(tj)
    # the parts Kubernetes types: a container with these resources and env validates strictly
    _validate(_as_pod_template({"spec": {"containers": [{"name": "node", "image": trainer["image"],
                                                         "command": trainer["command"], "args": trainer["args"],
                                                         "env": trainer["env"],
                                                         "resources": trainer["resourcesPerNode"]}]}}))
    assert trainer["resourcesPerNode"]["limits"]["nvidia.com/gpu"] == "4"


def test_structural_checks_catch_mistakes(mn_dagbag):
    """The checks above fail on a broken manifest."""
    import kubernetes_validate

    task, context = _train(mn_dagbag, dict(TRIGGER, train_launcher="indexed-job"))
    job, _ = task.manifests(context, "indexed-job", 2)
    broken = copy.deepcopy(job)
    broken["spec"]["completionMode"] = "Indexed"
    broken["spec"]["template"]["spec"]["containers"][0]["securityContext"]["readOnlyRootFS"] = True
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, K8S_VERSION, strict=True)
    (tj,) = task.manifests(context, "trainjob", 2)
    tj["spec"]["trainer"]["numProcsPerNode"] = 4
    assert not set(tj["spec"]["trainer"]) <= TRAINJOB_TRAINER_FIELDS


def test_job_names_are_per_try_and_dns_safe():
    from nightshift_airflow.multinode import job_name, rendezvous_endpoint

    a, b = job_name(RUN_ID, 1), job_name(RUN_ID, 2)
    assert a != b and a == job_name(RUN_ID, 1)
    for name in (a, b, job_name("manual__" + "x" * 300, 99)):
        assert name.replace("-", "").isalnum() and name.islower() and len(name) <= 40
    assert rendezvous_endpoint("indexed-job", a) == f"{a}-0.{a}:29400"
    with pytest.raises(ValueError):
        rendezvous_endpoint("pod", a)


def test_training_runtime_matches_the_trainjob():
    """infra/k8s/trainer/training-runtime.yaml is what the TrainJob refers to, locked down the same way."""
    import yaml
    from nightshift_airflow import multinode

    (runtime,) = list(yaml.safe_load_all((REPO / "infra/k8s/trainer/training-runtime.yaml").read_text()))
    assert runtime["kind"] == "TrainingRuntime" and runtime["metadata"]["name"] == multinode.TRAINING_RUNTIME
    (job,) = runtime["spec"]["template"]["spec"]["replicatedJobs"]
    assert job["name"] == multinode.TRAINER_NODE
    template = job["template"]["spec"]["template"]
    (container,) = template["spec"]["containers"]
    assert container["name"] == multinode.TRAINER_NODE
    _validate(_as_pod_template(template))


# -- the operator against a fake Kubernetes API ---------------------------------------------------------------
class FakeApi:
    """BatchV1Api + CoreV1Api + CustomObjectsApi, recording calls; the job finishes after `polls` polls.

    Returns what the real client returns: `kubernetes.client` models from the batch and core APIs, plain dicts
    (the API's JSON) from the custom-objects API.
    """

    def __init__(self, *, succeed=True, log="", polls=2, pods=("node-0",)):
        self.calls: list[tuple] = []
        self.succeed, self.log_text, self.polls, self.pods = succeed, log, polls, pods

    def create_namespaced_job(self, ns, body):
        from kubernetes.client import V1Job, V1ObjectMeta

        self.calls.append(("create_job", ns, body))
        return V1Job(api_version="batch/v1", kind="Job",
                     metadata=V1ObjectMeta(name=body["metadata"]["name"], namespace=ns, uid="uid-123"))

    def create_namespaced_service(self, ns, body):
        from kubernetes.client import V1ObjectMeta, V1Service

        self.calls.append(("create_service", ns, body))
        return V1Service(api_version="v1", kind="Service",
                         metadata=V1ObjectMeta(name=body["metadata"]["name"], namespace=ns, uid="uid-456"))

    def create_namespaced_custom_object(self, group, version, ns, plural, body):
        self.calls.append(("create_custom", ns, body))
        return dict(body, metadata=dict(body["metadata"], uid="uid-789"))

    def _conditions(self) -> tuple[int, list[tuple[str, str]]]:
        """(active pods, [(condition type, status)]) at this poll."""
        self.polls -= 1
        if self.polls > 0:
            return 2, []
        return 0, [("Complete" if self.succeed else "Failed", "True")]

    def read_namespaced_job_status(self, name, ns):
        from kubernetes.client import V1Job, V1JobCondition, V1JobStatus, V1ObjectMeta

        active, conditions = self._conditions()
        status = V1JobStatus(active=active or None,
                             conditions=[V1JobCondition(type=t, status=s) for t, s in conditions] or None)
        return V1Job(metadata=V1ObjectMeta(name=name, namespace=ns), status=status)

    def get_namespaced_custom_object_status(self, group, version, ns, plural, name):
        _, conditions = self._conditions()
        return {"metadata": {"name": name, "namespace": ns},
                "status": {"conditions": [{"type": t, "status": s} for t, s in conditions]}}

    def list_namespaced_pod(self, ns, label_selector):
        from kubernetes.client import V1ObjectMeta, V1Pod, V1PodList

        self.calls.append(("list_pods", label_selector))
        return V1PodList(items=[V1Pod(metadata=V1ObjectMeta(name=name, namespace=ns)) for name in self.pods])

    def read_namespaced_pod_log(self, name, ns, container, tail_lines):
        self.calls.append(("log", name, container))
        return self.log_text

    def delete_namespaced_job(self, name, ns, propagation_policy):
        from kubernetes.client import V1Status

        self.calls.append(("delete_job", name, propagation_policy))
        return V1Status(status="Success")

    def delete_namespaced_custom_object(self, group, version, ns, plural, name, propagation_policy):
        self.calls.append(("delete_custom", name, propagation_policy))
        return {"status": "Success"}


def _with_fake(task, monkeypatch, api):
    monkeypatch.setattr(task, "clients", lambda: (api, api, api))
    task.poll_seconds = 0


def test_indexed_job_run_returns_rank0_result(mn_dagbag, monkeypatch):
    task, context = _train(mn_dagbag, dict(TRIGGER, train_launcher="indexed-job"))
    api = FakeApi(log='epoch 1 loss 0.5\nNIGHTSHIFT_RESULT {"status": "ok", "world_size": 8, "exit_code": 0}\n')
    _with_fake(task, monkeypatch, api)
    assert task.execute(context) == {"status": "ok", "world_size": 8, "exit_code": 0}
    kinds = [c[0] for c in api.calls]
    assert kinds == ["create_job", "create_service", "list_pods", "log", "delete_job"]
    service = api.calls[1][2]
    assert service["metadata"]["ownerReferences"][0]["uid"] == "uid-123"  # deleted with the Job
    assert "batch.kubernetes.io/job-completion-index=0" in api.calls[2][1]


@pytest.mark.parametrize("exit_code,fail_fast", [(3, True), (1, False)])
def test_trainjob_failure_maps_exit_codes(mn_dagbag, monkeypatch, exit_code, fail_fast):
    from airflow.sdk.exceptions import AirflowException, AirflowFailException

    task, context = _train(mn_dagbag, dict(TRIGGER, train_launcher="trainjob"))
    line = ('NIGHTSHIFT_RESULT {"status": "error", "error": "no image has split train", "exit_code": %d}'
            % exit_code)
    api = FakeApi(succeed=False, log=f"Traceback ...\n{line}\n")
    _with_fake(task, monkeypatch, api)
    with pytest.raises(AirflowException) as info:
        task.execute(context)
    assert isinstance(info.value, AirflowFailException) == fail_fast
    assert "no image has split train" in str(info.value)
    assert ("create_custom", "nightshift-test") == api.calls[0][:2]
    assert not any(c[0] == "delete_custom" for c in api.calls), "a failed TrainJob is kept for its logs"
    assert "jobset.sigs.k8s.io/replicatedjob-name=node" in api.calls[1][1]


def test_success_without_result_is_an_error(mn_dagbag, monkeypatch):
    from airflow.sdk.exceptions import AirflowException

    task, context = _train(mn_dagbag, dict(TRIGGER, train_launcher="indexed-job"))
    _with_fake(task, monkeypatch, FakeApi(log="no result here\n"))
    with pytest.raises(AirflowException, match="no NIGHTSHIFT_RESULT"):
        task.execute(context)


def test_indexed_job_failure_reads_its_conditions_and_keeps_the_job(mn_dagbag, monkeypatch):
    from airflow.sdk.exceptions import AirflowFailException

    task, context = _train(mn_dagbag, dict(TRIGGER, train_launcher="indexed-job"))
    line = 'NIGHTSHIFT_RESULT {"status": "rejected", "error": "no image has split train", "exit_code": 3}'
    api = FakeApi(succeed=False, log=f"{line}\n", polls=3)
    _with_fake(task, monkeypatch, api)
    with pytest.raises(AirflowFailException, match="no image has split train"):
        task.execute(context)
    assert [c[0] for c in api.calls] == ["create_job", "create_service", "list_pods", "log"]  # kept for its logs


def test_success_without_a_node_0_pod_is_an_error(mn_dagbag, monkeypatch):
    from airflow.sdk.exceptions import AirflowException

    task, context = _train(mn_dagbag, dict(TRIGGER, train_launcher="indexed-job"))
    api = FakeApi(pods=())
    _with_fake(task, monkeypatch, api)
    with pytest.raises(AirflowException, match="no NIGHTSHIFT_RESULT"):
        task.execute(context)
    assert "log" not in [c[0] for c in api.calls]
