"""The chat notifier: posts to a Slack-compatible webhook on 127.0.0.1, falls back to the JSONL sink."""
from __future__ import annotations

import json
import threading
import types
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

pytestmark = pytest.mark.airflow

GATE_ERROR = ("nightshift gate: gate refused\ngate refused the release: 1 check failed\n"
              "  - map50_min: value=0.41, threshold=0.5")


class Webhook:
    """A local incoming-webhook endpoint that records every POST and answers with `status`."""

    def __init__(self, status=200):
        self.status = status
        self.posts: list[dict] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                outer.posts.append({"path": self.path, "body": json.loads(body or b"{}")})
                self.send_response(outer.status)
                self.end_headers()
                self.wfile.write(b"ok" if outer.status == 200 else b"internal_error")

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/services/T/B/X"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


def _context(dag, exception=GATE_ERROR):
    ti = types.SimpleNamespace(dag_id="nightshift_retrain", task_id="gate", run_id="scheduled__2026-11-25T02:00:00",
                               try_number=1, log_url="http://airflow.local/dags/nightshift_retrain/runs/x/tasks/gate",
                               xcom_pull=lambda **kw: {"status": "ok", "version": 7})
    return {"ti": ti, "task_instance": ti, "dag": dag,
            "run_id": ti.run_id, "exception": exception}


@pytest.fixture
def context(dagbag):
    """A failure callback's context for the `gate` task of the parsed nightshift_retrain DAG."""
    return lambda **kw: _context(dagbag.dags["nightshift_retrain"], **kw)


@pytest.fixture
def notifier_cls(dagbag):
    from nightshift_airflow import NightshiftChatNotifier

    return NightshiftChatNotifier


def _use_webhook(monkeypatch, url):
    monkeypatch.setenv("AIRFLOW_CONN_NIGHTSHIFT_CHAT", json.dumps({"conn_type": "slackwebhook", "password": url}))


def _sink_lines(path):
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_posts_failure_to_the_chat_webhook(notifier_cls, context, monkeypatch, tmp_path):
    sink = tmp_path / "alerts.jsonl"
    monkeypatch.setenv("NIGHTSHIFT_ALERT_SINK", str(sink))
    with Webhook() as hook:
        _use_webhook(monkeypatch, hook.url)
        notifier_cls()(context())  # called the way Airflow calls a failure callback
    assert len(hook.posts) == 1 and hook.posts[0]["path"] == "/services/T/B/X"
    text = hook.posts[0]["body"]["text"]
    for expected in ("nightshift_retrain", "scheduled__2026-11-25T02:00:00", "*gate*", "map50_min",
                     "http://airflow.local/dags/nightshift_retrain/runs/x/tasks/gate"):
        assert expected in text
    assert not sink.exists(), "a delivered alert is not also written to the sink"


def test_no_secrets_in_messages(notifier_cls, context, monkeypatch, tmp_path):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "aws-secret-value-123")
    error = ("upload to s3 failed: key aws-secret-value-123 refused; tracking "
             "http://admin:hunter2@mlflow.local:5000; hook https://hooks.slack.com/services/T0/B0/tok")
    with Webhook() as hook:
        _use_webhook(monkeypatch, hook.url)
        notifier_cls()(context(exception=error))
    text = hook.posts[0]["body"]["text"]
    for secret in ("aws-secret-value-123", "hunter2", "T0/B0/tok"):
        assert secret not in text
    assert "upload to s3 failed" in text


def test_falls_back_to_the_jsonl_sink(notifier_cls, context, monkeypatch, nightshift_home):
    monkeypatch.delenv("AIRFLOW_CONN_NIGHTSHIFT_CHAT", raising=False)
    monkeypatch.delenv("NIGHTSHIFT_ALERT_SINK", raising=False)
    notifier_cls()(context())
    (record,) = _sink_lines(nightshift_home / "alerts.jsonl")  # default sink: $NIGHTSHIFT_HOME/alerts.jsonl
    assert record["event"] == "failure" and record["task_id"] == "gate" and record["dag_id"] == "nightshift_retrain"
    assert "map50_min" in record["error"] and record["log_url"].endswith("/tasks/gate")


def test_webhook_500_is_retried_logged_and_never_raises(notifier_cls, context, monkeypatch, tmp_path):
    sink = tmp_path / "alerts.jsonl"
    monkeypatch.setenv("NIGHTSHIFT_ALERT_SINK", str(sink))
    with Webhook(status=500) as hook:
        _use_webhook(monkeypatch, hook.url)
        notifier_cls(attempts=3, retry_delay=0.01)(context())  # must not raise
    assert len(hook.posts) == 3
    (record,) = _sink_lines(sink)
    assert record["webhook_failed"] is True and "map50_min" in record["error"]


def test_unreachable_webhook_never_raises(notifier_cls, context, monkeypatch, tmp_path, free_port):
    sink = tmp_path / "alerts.jsonl"
    monkeypatch.setenv("NIGHTSHIFT_ALERT_SINK", str(sink))
    _use_webhook(monkeypatch, f"http://127.0.0.1:{free_port()}/services/T/B/X")
    notifier_cls(attempts=2, retry_delay=0.01)(context())
    assert _sink_lines(sink)[0]["webhook_failed"] is True


def test_success_event_carries_the_result(notifier_cls, context, monkeypatch, tmp_path):
    sink = tmp_path / "alerts.jsonl"
    monkeypatch.setenv("NIGHTSHIFT_ALERT_SINK", str(sink))
    monkeypatch.delenv("AIRFLOW_CONN_NIGHTSHIFT_CHAT", raising=False)
    notifier_cls(event="success")(context(exception=None))
    (record,) = _sink_lines(sink)
    assert record["event"] == "success" and '"version": 7' in record["result"] and "error" not in record
    assert "succeeded" in record["text"]
