"""The chat notifier: posts to a Slack-compatible webhook on 127.0.0.1, falls back to the JSONL sink."""
from __future__ import annotations

import json
import threading
import types
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

pytestmark = pytest.mark.airflow

GATE_ERROR = ("nightshift gate: gate refused\ngate refused the release: 1 check failed\n"
              "  - map50_min: AP50 = 0.4100, must be >= 0.5")


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
    assert "succeeded" in record["text"] and "version: 7" in record["text"]
    assert "{" not in record["text"], record["text"]  # readable lines, not the raw JSON


# -- failed gates and links ----------------------------------------------------------------------------------

GATE_RESULT = {
    "status": "gate_failed", "exit_code": 4,
    "error": "2 of 3 gate checks failed: ... Report: file:///srv/store/runs/r/report/report.html",
    "failures": [{"check": "map_min", "expected": ">= 0.2", "actual": 0.1,
                  "message": "map_min: AP = 0.1000, must be >= 0.2"},
                 {"check": "max_regression", "expected": "<= 0.02", "actual": 0.4,
                  "message": "max_regression: AP drop vs champion = 0.4000, must be <= 0.02"}],
    "mlflow_run_url": "http://mlflow.local:5000/#/experiments/1/runs/0123abcd",
    "report": "file:///srv/store/runs/r/report/report.html",
}
EXPECTED_LINES = ("• map_min: AP = 0.1000, must be >= 0.2",
                  "• max_regression: AP drop vs champion = 0.4000, must be <= 0.02",
                  "log: <http://airflow.local/dags/nightshift_retrain/runs/x/tasks/gate|task log>",
                  "MLflow run: <http://mlflow.local:5000/#/experiments/1/runs/0123abcd|MLflow run>",
                  "Report: file:///srv/store/runs/r/report/report.html")


def _sent(notifier_cls, ctx, monkeypatch, tmp_path):
    monkeypatch.setenv("NIGHTSHIFT_ALERT_SINK", str(tmp_path / "alerts.jsonl"))
    with Webhook() as hook:
        _use_webhook(monkeypatch, hook.url)
        notifier_cls()(ctx)
    assert len(hook.posts) == 1
    return hook.posts[0]["body"]["text"]


def test_gate_failure_lists_every_failed_gate_and_the_links(notifier_cls, context, monkeypatch, tmp_path):
    from nightshift_airflow.command import stage_failure
    from airflow.sdk.exceptions import AirflowFailException

    # a very long error is clipped; the gates and links are listed outside it and survive
    result = dict(GATE_RESULT, error="x" * 5000)
    text = _sent(notifier_cls, context(exception=stage_failure(AirflowFailException, "gate", 4, result)),
                 monkeypatch, tmp_path)
    lines = text.splitlines()
    assert lines[:3] == [":red_circle: Nightshift *nightshift_retrain* failed at task *gate*",
                         "run: `scheduled__2026-11-25T02:00:00`", "nightshift gate: gate refused"]
    assert "*2 failed checks:*" in lines
    for line in EXPECTED_LINES:
        assert line in lines, line
    assert "xxxxx" not in text  # with the checks listed, only the error's headline is repeated


def test_links_are_found_in_the_text_when_the_exception_lost_its_result(notifier_cls, context, monkeypatch,
                                                                        tmp_path):
    from nightshift_airflow.command import describe_failure

    text = _sent(notifier_cls, context(exception=describe_failure("gate", 4, GATE_RESULT)), monkeypatch, tmp_path)
    assert "MLflow run: <http://mlflow.local:5000/#/experiments/1/runs/0123abcd|MLflow run>" in text
    assert "Report: file:///srv/store/runs/r/report/report.html" in text
    assert "map_min: AP = 0.1000, must be >= 0.2" in text  # inside the error block this time


def test_pod_runner_failure_reaches_the_alert(notifier_cls, context, k8s_dagbag, monkeypatch, tmp_path):
    """The pod operator's cleanup raises with the pod's result (read from its xcom sidecar); the alert lists it."""
    from airflow.sdk.exceptions import AirflowFailException
    from kubernetes.client import models as k8s

    task = k8s_dagbag.dags["nightshift_retrain"].get_task("gate")
    for name in ("patch_already_checked", "process_pod_deletion", "is_istio_enabled"):
        monkeypatch.setattr(task, name, lambda *a, **k: False)
    monkeypatch.setattr(task, "log_pod_spec_on_failure", False)
    state = k8s.V1ContainerState(terminated=k8s.V1ContainerStateTerminated(exit_code=4))
    pod = k8s.V1Pod(metadata=k8s.V1ObjectMeta(name="nightshift-gate-x", namespace="nightshift-test"),
                    status=k8s.V1PodStatus(phase="Failed", container_statuses=[k8s.V1ContainerStatus(
                        name="base", state=state, ready=False, restart_count=0, image="i", image_id="i")]))
    with pytest.raises(AirflowFailException) as info:
        task.cleanup(pod, pod, xcom_result=dict(GATE_RESULT), context=None)
    text = _sent(notifier_cls, context(exception=info.value), monkeypatch, tmp_path)
    for line in EXPECTED_LINES:
        assert line in text.splitlines(), line


def test_a_failed_result_in_xcom_is_used_when_the_exception_has_none(notifier_cls, context, monkeypatch, tmp_path):
    """A pod that crashed (exit 1) fails with the provider's own exception; its result is in XCom."""
    ctx = context(exception="Pod nightshift-gate-x returned a failure")
    ctx["ti"].xcom_pull = lambda **kw: dict(GATE_RESULT)
    text = _sent(notifier_cls, ctx, monkeypatch, tmp_path)
    for line in EXPECTED_LINES:
        assert line in text.splitlines(), line


# -- end to end: a real `nightshift gate` refusing, through the local runner, to a webhook ---------------------

def test_real_gate_failure_end_to_end(notifier_cls, context, monkeypatch, nightshift_home, secret_sentinel):
    """The local operator runs the pipeline's `nightshift gate` on a hand-made metrics.json that fails two
    gates (exit 4); the notifier, given the task's exception as Airflow gives it, posts to a webhook on
    127.0.0.1 the failed gates with value and threshold, the log, MLflow and report links, and no secret."""
    import sqlite3
    from urllib.parse import urlparse

    from airflow.sdk.exceptions import AirflowFailException
    from nightshift_airflow import settings
    from nightshift_airflow.local import NightshiftLocalOperator

    if not Path(settings.pipeline_bin()).exists():
        pytest.fail("no .venv-pipeline: run `make envs` (make test creates it before these tests)")
    run_id = "e2e-gate-1"
    metrics = nightshift_home / "artifacts" / "runs" / run_id / "evaluate" / "metrics.json"
    metrics.parent.mkdir(parents=True)
    metrics.write_text(json.dumps({"AP": 0.1, "AP50": 0.3, "champion": None}))
    for name in ("AWS_SECRET_ACCESS_KEY", "MLFLOW_TRACKING_PASSWORD"):
        monkeypatch.setenv(name, secret_sentinel)
    monkeypatch.setenv("NIGHTSHIFT_ALERT_SINK", str(nightshift_home / "alerts.jsonl"))
    op = NightshiftLocalOperator(task_id="gate", arguments=[
        "gate", "--run-id", "{{ run_id }}", "--set", "gates.map_min=0.2", "--set", "gates.map50_min=0.5"])
    with Webhook() as hook:
        _use_webhook(monkeypatch, hook.url + secret_sentinel)  # the token is a secret, too
        hook.url += secret_sentinel
        op.render_template_fields({"run_id": run_id, "params": {}}, _jinja())
        with pytest.raises(AirflowFailException) as info:
            op.execute({"run_id": run_id, "params": {}})
        ctx = context(exception=info.value)
        ctx["run_id"] = ctx["ti"].run_id = run_id
        notifier_cls(attempts=1)(ctx)
    assert len(hook.posts) == 1, "posted to the webhook, not the sink"
    lines = hook.posts[0]["body"]["text"].splitlines()
    text = "\n".join(lines)
    assert lines[0] == ":red_circle: Nightshift *nightshift_retrain* failed at task *gate*"
    assert f"run: `{run_id}`" in lines and "nightshift gate: gate refused" in lines
    assert "• map_min: AP = 0.1000, must be >= 0.2" in lines
    assert "• map50_min: AP50 = 0.3000, must be >= 0.5" in lines
    assert "log: <http://airflow.local/dags/nightshift_retrain/runs/x/tasks/gate|task log>" in lines
    # the MLflow run the gate tagged, found by its pipeline run id in the tracking database
    with sqlite3.connect(nightshift_home / "mlflow.db") as db:
        (mlrun,), = db.execute("SELECT run_uuid FROM tags WHERE key = 'nightshift.run_id' AND value = ?",
                               (run_id,)).fetchall()
    (mlflow_line,) = [line for line in lines if line.startswith("MLflow run: ")]
    assert mlrun in mlflow_line
    (report_line,) = [line for line in lines if line.startswith("Report: ")]
    report = urlparse(report_line[len("Report: "):])
    assert report.scheme == "file" and report.path.endswith(f"runs/{run_id}/report/report.html")
    assert Path(report.path).is_file()
    assert hook.posts[0]["path"].endswith(secret_sentinel)  # the token went where it belongs, and nowhere else
    assert secret_sentinel not in json.dumps(hook.posts[0]["body"])


def _jinja():
    import jinja2

    return jinja2.Environment()


# -- no secret in any log, whatever the receiver does ----------------------------------------------------------

class FlakyWebhook(Webhook):
    """Answers 500 to the first `failures` posts (slack_sdk and our own retry both kick in), then 200."""

    def __init__(self, failures):
        super().__init__(status=500)
        self.failures = failures
        outer = self
        handler = self.server.RequestHandlerClass
        original = handler.do_POST

        def do_post(req):
            outer.status = 500 if len(outer.posts) < outer.failures else 200
            original(req)

        handler.do_POST = do_post


@pytest.mark.parametrize("receiver", ["dead", "500", "500-then-ok"])
def test_no_webhook_url_in_any_log_under_failures(notifier_cls, context, monkeypatch, tmp_path, free_port,
                                                  secret_sentinel, caplog, capfd, receiver):
    """Every log record at DEBUG and everything printed, under a dead receiver, a 500-answering one and one
    that recovers: the webhook token (a sentinel) never appears; the alert still lands somewhere."""
    import logging

    sink = tmp_path / "alerts.jsonl"
    monkeypatch.setenv("NIGHTSHIFT_ALERT_SINK", str(sink))
    caplog.set_level(logging.DEBUG)
    for name in ("slack_sdk", "urllib3"):  # as chatty as a deployment could make them
        monkeypatch.setattr(logging.getLogger(name), "level", logging.DEBUG)
    if receiver == "dead":
        _use_webhook(monkeypatch, f"http://127.0.0.1:{free_port()}/services/T/B/{secret_sentinel}")
        notifier_cls(attempts=2, retry_delay=0.01)(context())
        delivered = False
    else:
        with (Webhook(status=500) if receiver == "500" else FlakyWebhook(failures=1)) as hook:
            _use_webhook(monkeypatch, hook.url[: -len("X")] + secret_sentinel)
            notifier_cls(attempts=2, retry_delay=0.01)(context())
        delivered = receiver != "500"
        assert hook.posts and hook.posts[-1]["path"].endswith(secret_sentinel)
    logged = "\n".join(f"{r.name} {r.levelname} {r.getMessage()}" for r in caplog.records)
    out, err = capfd.readouterr()
    everything = "\n".join([logged, out, err, sink.read_text() if sink.exists() else ""])
    assert secret_sentinel not in everything
    assert "/services/T/B/" not in logged + out + err or "/services/T/B/***" in logged + out + err
    assert delivered or _sink_lines(sink)[-1]["webhook_failed"] is True


def test_http_client_loggers_redact_the_webhook_url(caplog, secret_sentinel, dagbag):
    """urllib3 logs its retries with the URL at WARNING: once protected, its records carry no token."""
    import logging

    from nightshift_airflow.notifier import HTTP_LOG, protect_http_logs

    url = f"http://127.0.0.1:9/services/T/B/{secret_sentinel}"
    protect_http_logs(url, url.split("://", 1)[-1].split("/", 1)[-1])
    caplog.set_level(logging.DEBUG)
    logging.getLogger("urllib3.connectionpool").warning(
        "Retrying (Retry(total=2)) after connection broken by 'NewConnectionError': /services/T/B/%s", secret_sentinel)
    logging.getLogger(HTTP_LOG).error("Going to retry the same request: POST %s", url)
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 2 and all(secret_sentinel not in m for m in messages), messages
    assert messages[1].startswith("Going to retry the same request: POST ") and messages[1].endswith("***")


def test_failure_alert_shows_airflows_run_id_beside_the_store_key(notifier_cls, context, monkeypatch, tmp_path):
    from nightshift_airflow.command import stage_failure
    from airflow.sdk.exceptions import AirflowFailException

    result = {"status": "rejected", "exit_code": 3, "run_id": "scheduled__2026-11-25T02_00_00",
              "error": "gates.overrides: map50_min: override relaxes map50_min 0.5 -> 0.1"}
    exc = stage_failure(AirflowFailException, "check", 3, result)
    text = _sent(notifier_cls, context(exception=exc), monkeypatch, tmp_path)
    assert "run: `scheduled__2026-11-25T02:00:00` (store key `scheduled__2026-11-25T02_00_00`)" in text
