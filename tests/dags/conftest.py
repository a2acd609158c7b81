"""Airflow settings for tests/dags: a throwaway AIRFLOW_HOME, no example DAGs, this repo's dags/ and plugins/.

Run with the Airflow venv: `.venv-airflow/bin/python -m pytest tests/dags`. The environment is set before
anything imports airflow, so it is module-level rather than a fixture.
"""
from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DAGS = REPO / "dags"
PLUGINS = REPO / "plugins"

_HOME = tempfile.mkdtemp(prefix="nightshift-airflow-home-")
os.environ["AIRFLOW_HOME"] = _HOME
os.environ["AIRFLOW__CORE__LOAD_EXAMPLES"] = "False"
os.environ["AIRFLOW__CORE__DAGS_FOLDER"] = str(DAGS)
os.environ["AIRFLOW__CORE__PLUGINS_FOLDER"] = str(PLUGINS)
os.environ["AIRFLOW__CORE__UNIT_TEST_MODE"] = "True"
# the tests decide the runner and the chat connection themselves
for _name in ("NIGHTSHIFT_RUNNER", "AIRFLOW_CONN_NIGHTSHIFT_CHAT", "NIGHTSHIFT_CONFIG", "NIGHTSHIFT_SCHEDULE",
              "NIGHTSHIFT_WEEKLY_SCHEDULE", "NIGHTSHIFT_GPUS", "NIGHTSHIFT_CONFIGMAP"):
    os.environ.pop(_name, None)
if str(PLUGINS) not in sys.path:  # Airflow puts plugins/ on sys.path; so do the tests
    sys.path.insert(0, str(PLUGINS))

pytest.importorskip("airflow", reason="tests/dags run in .venv-airflow")


def pytest_sessionfinish(session, exitstatus):
    shutil.rmtree(_HOME, ignore_errors=True)


def purge_plugin_modules() -> None:
    """Forget nightshift_airflow so the next import reads NIGHTSHIFT_RUNNER again."""
    for name in [m for m in sys.modules if m == "nightshift_airflow" or m.startswith("nightshift_airflow.")]:
        del sys.modules[name]


def load_dagbag():
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(DAGS))


@pytest.fixture(scope="session")
def dagbag():
    """The DAGs as parsed with the default (local) runner."""
    purge_plugin_modules()
    return load_dagbag()


@pytest.fixture
def dummy_kubeconfig(tmp_path) -> Path:
    """A syntactically valid kubeconfig for a cluster that does not exist (KPO builds pods without one)."""
    path = tmp_path / "kubeconfig"
    path.write_text(DUMMY_KUBECONFIG)
    return path


@pytest.fixture(scope="session")
def secret_sentinel() -> str:
    return SECRET_SENTINEL


@pytest.fixture(scope="session")
def k8s_dagbag(tmp_path_factory):
    """The DAGs as parsed with NIGHTSHIFT_RUNNER=kubernetes and a dummy kubeconfig (never contacted)."""
    kubeconfig = tmp_path_factory.mktemp("kube") / "config"
    kubeconfig.write_text(DUMMY_KUBECONFIG)
    mp = pytest.MonkeyPatch()
    mp.setenv("NIGHTSHIFT_RUNNER", "kubernetes")
    mp.setenv("KUBECONFIG", str(kubeconfig))
    mp.setenv("NIGHTSHIFT_GPUS", "2")
    mp.setenv("NIGHTSHIFT_NAMESPACE", "nightshift-test")
    mp.setenv("NIGHTSHIFT_IMAGE", "registry.example.com/nightshift/pipeline:1.2.3")
    mp.setenv("NIGHTSHIFT_GPU_IMAGE", "registry.example.com/nightshift/pipeline-gpu:1.2.3")
    mp.setenv("NIGHTSHIFT_CONFIG", "/etc/nightshift/config.yaml")
    mp.setenv("NIGHTSHIFT_CONFIGMAP", "nightshift-config")
    # secret values in the worker's environment must not leak into any pod spec
    mp.setenv("AWS_SECRET_ACCESS_KEY", SECRET_SENTINEL)
    mp.setenv("MLFLOW_TRACKING_PASSWORD", SECRET_SENTINEL)
    mp.setenv("AIRFLOW_CONN_NIGHTSHIFT_CHAT",
              '{"conn_type": "slackwebhook", "password": "http://127.0.0.1:9/services/T/B/' + SECRET_SENTINEL + '"}')
    purge_plugin_modules()
    try:
        yield load_dagbag()
    finally:
        mp.undo()
        purge_plugin_modules()


SECRET_SENTINEL = "s3cr3t-sentinel-value-9f1c"

DUMMY_KUBECONFIG = """\
apiVersion: v1
kind: Config
clusters:
- name: dummy
  cluster: {server: "https://127.0.0.1:9"}
users:
- name: dummy
  user: {token: dummy}
contexts:
- name: dummy
  context: {cluster: dummy, user: dummy, namespace: nightshift-test}
current-context: dummy
"""
