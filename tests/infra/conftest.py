"""tests/infra: manifests, Dockerfiles, Helm values and CI files; runs in .venv-airflow.

The policy and secret-scan tests build the pods the DAGs create, which needs Airflow configured before it is
imported: the same throwaway settings as tests/dags/conftest.py (kept when that conftest already set them).
"""
from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
INFRA = REPO / "infra"
K8S_VERSION = "1.34.0"

if "nightshift-airflow-home-" not in os.environ.get("AIRFLOW_HOME", ""):
    _HOME = tempfile.mkdtemp(prefix="nightshift-airflow-home-")
    os.environ["AIRFLOW_HOME"] = _HOME
    os.environ["AIRFLOW__CORE__LOAD_EXAMPLES"] = "False"
    os.environ["AIRFLOW__CORE__DAGS_FOLDER"] = str(REPO / "dags")
    os.environ["AIRFLOW__CORE__PLUGINS_FOLDER"] = str(REPO / "plugins")
    os.environ["AIRFLOW__CORE__UNIT_TEST_MODE"] = "True"
else:
    _HOME = None
sys.path.insert(0, str(Path(__file__).resolve().parent))  # infra_manifests.py
from infra_manifests import SECRET_ENV  # noqa: E402

if str(REPO / "plugins") not in sys.path:
    sys.path.insert(0, str(REPO / "plugins"))


def pytest_sessionfinish(session, exitstatus):
    if _HOME:
        shutil.rmtree(_HOME, ignore_errors=True)


KUBECONFIG = """\
apiVersion: v1
kind: Config
clusters: [{name: dummy, cluster: {server: "https://127.0.0.1:9"}}]
users: [{name: dummy, user: {token: dummy}}]
contexts: [{name: dummy, context: {cluster: dummy, user: dummy, namespace: nightshift}}]
current-context: dummy
"""
def _purge():
    for name in [m for m in sys.modules if m == "nightshift_airflow" or m.startswith("nightshift_airflow.")]:
        del sys.modules[name]


@pytest.fixture(scope="session")
def dag_pods(tmp_path_factory):
    """Every pod the DAGs would submit on the kubernetes runner, as the API server receives them: the stage
    pods, and the node pods of an Indexed Job and a TrainJob for 2 nodes. Secret values sit in the env."""
    import copy
    import types

    kubeconfig = tmp_path_factory.mktemp("kube") / "config"
    kubeconfig.write_text(KUBECONFIG)
    mp = pytest.MonkeyPatch()
    env = {"NIGHTSHIFT_RUNNER": "kubernetes", "KUBECONFIG": str(kubeconfig), "NIGHTSHIFT_GPUS": "2",
           "NIGHTSHIFT_CONFIGMAP": "nightshift-config", "NIGHTSHIFT_CONFIG": "/etc/nightshift/config.yaml",
           "NIGHTSHIFT_IMAGE": "registry.example.com/nightshift/pipeline:0.1.0",
           "NIGHTSHIFT_GPU_IMAGE": "registry.example.com/nightshift/pipeline-gpu:0.1.0",
           "NIGHTSHIFT_TRAIN_LAUNCHERS": "indexed-job,trainjob", **SECRET_ENV}
    # the Kubernetes connection exactly as infra/helm/airflow-values.yaml defines it, but read from the
    # dummy kubeconfig instead of the in-cluster service account
    import json

    import yaml

    values = yaml.safe_load((INFRA / "helm" / "airflow-values.yaml").read_text())
    conn = json.loads(next(e["value"] for e in values["env"] if e["name"] == "AIRFLOW_CONN_KUBERNETES_DEFAULT"))
    conn["extra"]["in_cluster"] = False
    env["AIRFLOW_CONN_KUBERNETES_DEFAULT"] = json.dumps(conn)
    for key, value in env.items():
        mp.setenv(key, value)
    _purge()
    try:
        from airflow.dag_processing.dagbag import DagBag
        from kubernetes.client import ApiClient

        dagbag = DagBag(dag_folder=str(REPO / "dags"))
        assert dagbag.import_errors == {}
        api = ApiClient()
        out: dict[str, dict] = {}
        for dag in dagbag.dags.values():
            for task in dag.tasks:
                if not hasattr(task, "build_pod_request_obj"):
                    continue
                task = copy.deepcopy(task)
                params = dag.params.dump()
                ti = types.SimpleNamespace(dag_id=dag.dag_id, task_id=task.task_id, run_id="manual__1",
                                           map_index=-1, try_number=1)
                context = {"dag": dag, "task": task, "ti": ti, "task_instance": ti, "run_id": "manual__1",
                           "params": params}
                task.render_template_fields(context)
                pod = api.sanitize_for_serialization(task.build_pod_request_obj(context))
                out[f"{dag.dag_id}.{task.task_id} (pod)"] = pod
                if hasattr(task, "manifests"):
                    job, service = task.manifests(context, "indexed-job", 2)
                    (trainjob,) = task.manifests(context, "trainjob", 2)
                    out[f"{dag.dag_id}.{task.task_id} (indexed-job)"] = job
                    out[f"{dag.dag_id}.{task.task_id} (service)"] = service
                    out[f"{dag.dag_id}.{task.task_id} (trainjob)"] = trainjob
        yield out
    finally:
        mp.undo()
        _purge()
