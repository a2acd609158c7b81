import json

from pipeline.config import load_config
from pipeline.context import RunContext
from pipeline.stages import notify


def _ctx(cfg, results):
    ctx = RunContext.create("night-7", "notify", cfg)
    for stage, result in results.items():
        ctx.store.put_json(result, ctx.key("result.json", stage))
    return ctx


def test_success_summary_names_version_metrics_gates_and_override():
    cfg = load_config().resolved()
    ctx = _ctx(cfg, {
        "changed": {"changed": True},
        "evaluate": {"AP": 0.61, "AP50": 0.93, "champion": {"AP": 0.6, "AP50": 0.9}},
        "gate": {"checks": [{"name": "map_min", "passed": True}, {"name": "map50_min", "passed": True}],
                 "overrides": {"map_min": 0.1}, "override_reason": "new camera, labels pending"},
        "promote": {"model": "det", "version": 3, "repository": "/repo"},
    })
    result = notify.run(cfg, ctx)
    assert result["event"] == "success" and result["delivered_to"] == "sink"
    text = json.loads(open(cfg.notify.sink).read().splitlines()[-1])["text"]
    for expected in ("night-7", "promoted det v3", "mAP@0.5 0.930", "champion: mAP 0.600", "2/2 checks passed",
                     "new camera, labels pending"):
        assert expected in text
    assert "report (" in text and ctx.store.exists("runs/night-7/report/report.html")
    assert "{" not in text, text  # sentences, not dicts


def test_nothing_changed_note():
    cfg = load_config().resolved()
    ctx = _ctx(cfg, {"changed": {"changed": False, "reason": "nothing changed since champion v2",
                                 "dataset_hash": "abc.dir"}})
    result = notify.run(cfg, ctx)
    assert result["event"] == "unchanged"
    assert "nothing changed since champion v2; training skipped" in result["text"]


def test_success_summary_can_be_switched_off():
    cfg = load_config(None, ["notify.on_success=false"]).resolved()
    result = notify.run(cfg, _ctx(cfg, {"promote": {"version": 1}}))
    assert result["delivered_to"] is None


def test_overrides_on_an_unchanged_night_are_announced_as_not_applied():
    cfg = load_config(None, ['gates.overrides={"map50_min": 0.99}']).resolved()
    ctx = _ctx(cfg, {"changed": {"changed": False, "reason": "nothing changed since champion v2"}})
    result = notify.run(cfg, ctx)
    assert result["event"] == "overrides_not_applied" and result["delivered_to"] == "sink"
    assert "Gate overrides NOT applied: map50_min 0.99" in result["text"]
    assert "force=true" in result["text"]
    sent = json.loads(open(cfg.notify.sink).read().splitlines()[-1])
    assert sent["event"] == "overrides_not_applied" and sent["fields"]["overrides_not_applied"] == {"map50_min": 0.99}


def test_summary_is_readable_and_names_airflows_run_id(monkeypatch):
    monkeypatch.setenv("AIRFLOW_CTX_DAG_RUN_ID", "manual__2026-11-30T06:00:00+00:00")
    cfg = load_config().resolved()
    ctx = _ctx(cfg, {"export": {"parity": {"map_drop": 0.0002, "ap_pytorch": 0.6123, "ap_onnxruntime": 0.6121}},
                     "gate": {"checks": [], "overrides": {"map50_min": 0.7}, "override_reason": ""}})
    event, text, _ = notify.compose(cfg, ctx, notify._results(ctx))
    assert event == "success"
    assert "run manual__2026-11-30T06:00:00+00:00 (store key night-7)" in text
    assert "export: ONNX Runtime mAP 0.612 vs PyTorch 0.612 (drop 0.000)" in text
    assert "threshold overrides map50_min 0.7" in text
    assert "{" not in text and "'" not in text, text


def test_report_link_is_the_mlflow_artifact_when_a_ui_is_configured(tmp_path):
    from pipeline import alerts, tracking

    cfg = load_config(None, [f"mlflow.tracking_uri=sqlite:///{tmp_path / 'mlflow.db'}",
                             "mlflow.ui_url=https://mlflow.example.com/"]).resolved()
    ctx = _ctx(cfg, {})
    mlrun = tracking.run_for(cfg, ctx.run_id)
    link = alerts.report_link(cfg, ctx.store, "runs/night-7/report/report.html", ctx.run_id)
    assert link.startswith("https://mlflow.example.com/#/experiments/") and link.endswith(
        f"/runs/{mlrun}/artifacts/report/report.html")
    # no UI known: the store's own URL, as before
    plain = load_config(None, [f"mlflow.tracking_uri=sqlite:///{tmp_path / 'mlflow.db'}"]).resolved()
    assert alerts.report_link(plain, ctx.store, "runs/night-7/report/report.html", ctx.run_id) == \
        ctx.store.url("runs/night-7/report/report.html")


def test_report_link_is_presigned_on_an_s3_store(monkeypatch):
    from moto.server import ThreadedMotoServer

    from pipeline import alerts
    from pipeline.store import open_store

    for name, value in (("AWS_ACCESS_KEY_ID", "test"), ("AWS_SECRET_ACCESS_KEY", "test"),
                        ("AWS_DEFAULT_REGION", "us-east-1")):
        monkeypatch.setenv(name, value)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    try:
        host, port = server.get_host_and_port()
        cfg = load_config(None, ["store.uri=s3://reports/nightshift", f"store.s3_endpoint_url=http://{host}:{port}",
                                 "notify.report_link_expiry_s=3600"]).resolved()
        store = open_store(cfg.store.uri, cfg.store.s3_endpoint_url)
        store.client.create_bucket(Bucket="reports")
        store.put_bytes(b"<html>report</html>", "runs/night-7/report/report.html")
        link = alerts.report_link(cfg, store, "runs/night-7/report/report.html", "night-7")
        assert link.startswith(f"http://{host}:{port}/reports/nightshift/runs/night-7/report/report.html?")
        assert "Expires=" in link or "X-Amz-Expires=3600" in link
        import urllib.request

        with urllib.request.urlopen(link, timeout=10) as response:  # a teammate's browser: no credentials
            assert response.read() == b"<html>report</html>"
    finally:
        server.stop()


def test_a_classifier_summary_speaks_accuracy_not_map():
    cfg = load_config().resolved()
    ctx = _ctx(cfg, {
        "changed": {"changed": True},
        "evaluate": {"task": "classification", "accuracy": 0.91, "macro_f1": 0.88, "top_k": {"2": 0.99},
                     "champion": {"version": "2", "accuracy": 0.9, "macro_f1": 0.87}},
        "gate": {"checks": [{"name": "accuracy_min", "passed": True}], "task": "classification",
                 "not_applicable": [{"name": "map50_min", "threshold": 0.7, "note": "not applicable to classification"}]},
        "export": {"task": "classification", "parity": {"accuracy_drop": 0.0, "accuracy_pytorch": 0.91,
                                                         "accuracy_onnxruntime": 0.91, "per_class_recall_drop": {}}},
        "promote": {"model": "cls", "version": 3, "repository": "/repo"},
    })
    event, text, fields = notify.compose(cfg, ctx, notify._results(ctx))
    assert event == "success" and "accuracy 0.910, macro F1 0.880 (champion: accuracy 0.900, macro F1 0.870)" in text
    assert fields["accuracy"] == 0.91 and fields["task"] == "classification"
    # a box gate the ML lead set for this run is named as not judged, and the export speaks accuracy too
    assert "not applicable to classification, not judged: map50_min 0.7" in text
    assert "export: ONNX Runtime accuracy 0.910 vs PyTorch 0.910 (drop 0.000)" in text
    assert "mAP" not in text.replace("map50_min", "")

