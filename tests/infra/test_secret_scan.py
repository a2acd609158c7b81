"""No secret value reaches a manifest, a pod spec, a serialized DAG or a stage's log.

Sentinel values stand in for every secret-like key of infra/k8s/secrets.example.yaml (the worker's
environment in production); they are set while the DAGs build their pods and while a real stage runs
through the local operator, whose captured log is scanned too."""
from __future__ import annotations

import json
import logging
import os
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from infra_manifests import INFRA, REPO, SECRET_ENV, SECRET_VALUES, documents

pytestmark = pytest.mark.airflow
SECRET_LIKE = re.compile(r"KEY|SECRET|PASSWORD|USERNAME|TOKEN|WEBHOOK|CONN_|connection|fernet|jwt")


def scan(text: str) -> list[str]:
    return [value for value in SECRET_VALUES if value in text]


def test_every_secret_key_has_a_sentinel():
    """A new secret key in secrets.example.yaml needs a sentinel here, or the scan would not cover it."""
    examples = {doc["metadata"]["name"]: doc["stringData"] for _, doc in documents() if doc["kind"] == "Secret"}
    for name in ("nightshift-s3", "nightshift-mlflow", "nightshift-chat", "nightshift-airflow-chat"):
        for key in examples[name]:
            if SECRET_LIKE.search(key):
                assert key in SECRET_ENV, f"{name}.{key} has no sentinel in tests/infra/conftest.py"


def test_manifests_and_values_hold_no_secret():
    for path in list((INFRA).rglob("*.y*ml")) + list((REPO / "docker").glob("*")) + [REPO / "docs" / "deploy.md"]:
        if path.is_file():
            assert scan(path.read_text(errors="replace")) == [], path
    for name, doc in documents():
        if doc["kind"] == "Secret":
            assert set(doc["stringData"].values()) == {"CHANGEME"}, name


def test_pod_specs_hold_no_secret(dag_pods):
    assert dag_pods
    for name, obj in dag_pods.items():
        assert scan(json.dumps(obj)) == [], name


def test_the_scan_finds_a_leak(dag_pods):
    name, pod = next(iter(dag_pods.items()))
    leaked = json.loads(json.dumps(pod))
    leaked["spec"]["containers"][0].setdefault("env", []).append(
        {"name": "AWS_SECRET_ACCESS_KEY", "value": SECRET_ENV["AWS_SECRET_ACCESS_KEY"]})
    assert scan(json.dumps(leaked)) == [SECRET_ENV["AWS_SECRET_ACCESS_KEY"]]


class _Hook:
    def __init__(self):
        self.bodies: list[str] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                outer.bodies.append(self.rfile.read(int(self.headers.get("Content-Length", 0))).decode())
                self.send_response(200)
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.mark.slow
def test_a_stage_log_holds_no_secret(monkeypatch, tmp_path, caplog):
    """`nightshift notify` (the stage that handles the chat webhook) runs through the local operator with
    every secret in its environment; neither the captured task log nor what it posts shows one."""
    nightshift = REPO / ".venv-pipeline" / "bin" / "nightshift"
    if not nightshift.exists():
        pytest.fail("no .venv-pipeline: run `make envs` (make test creates it before these tests)")
    hook = _Hook()
    try:
        port = hook.server.server_port
        for key, value in SECRET_ENV.items():
            monkeypatch.setenv(key, value.replace("127.0.0.1:9", f"127.0.0.1:{port}"))
        monkeypatch.setenv("NIGHTSHIFT_HOME", str(tmp_path / "home"))
        monkeypatch.delenv("NIGHTSHIFT_CONFIG", raising=False)
        import sys

        for mod in [m for m in sys.modules if m.startswith("nightshift_airflow")]:
            del sys.modules[mod]
        monkeypatch.setenv("NIGHTSHIFT_RUNNER", "local")
        from nightshift_airflow.local import NightshiftLocalOperator

        op = NightshiftLocalOperator(task_id="notify", arguments=["notify", "--run-id", "secret-scan"],
                                     executable=str(nightshift))
        with caplog.at_level(logging.INFO):
            result = op.execute({"run_id": "secret-scan"})
        logged = caplog.text + json.dumps(result)
        assert "notify" in logged and result["status"] == "ok", logged[-2000:]
        assert scan(logged) == [], logged[-2000:]
        assert scan("\n".join(hook.bodies)) == []
    finally:
        hook.close()
        for mod in [m for m in sys.modules if m.startswith("nightshift_airflow")]:
            del sys.modules[mod]
        os.environ.pop("NIGHTSHIFT_RUNNER", None)
