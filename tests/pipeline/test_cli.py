"""The stage contract, exercised through a fake stage so it does not depend on any real stage."""
import json
import os

import pytest

from pipeline import cli
from pipeline.errors import GateFailed, InputRejected
from pipeline.store import open_store
from tests.helpers import add_fake_stage, last_result, result_line


@pytest.fixture
def fake_stage(monkeypatch):
    def run(cfg, ctx):
        stage.calls.append(ctx.run_id)
        if stage.behaviour == "reject":
            raise InputRejected("box is not 4 numbers", path="annotations.json", field="annotations[3].bbox")
        if stage.behaviour == "gate":
            raise GateFailed("2 gates failed", failures=[{"name": "map_min", "value": 0.1, "threshold": 0.3}])
        if stage.behaviour == "crash":
            raise RuntimeError("boom")
        ctx.publish_json({"epochs": cfg.train.epochs}, "out.json")
        return {"epochs": cfg.train.epochs}

    stage = add_fake_stage(monkeypatch, "fake", run, "fake: a stage for testing the CLI contract.")
    stage.calls, stage.behaviour = [], "ok"
    return stage


def _store():
    from pipeline.config import load_config

    return open_store(load_config().resolved().store.uri)


def test_success_writes_result_config_and_reproduce(fake_stage, capsys, monkeypatch, tmp_path):
    xcom = tmp_path / "xcom"
    xcom.mkdir()
    monkeypatch.setattr(cli, "XCOM_DIR", xcom)
    assert cli.main(["fake", "--run-id", "manual__2026-11-25T02:00:00+00:00", "--set", "train.epochs=2"]) == 0
    result = last_result(capsys)
    assert result["status"] == "ok" and result["epochs"] == 2 and result["exit_code"] == 0
    run = result["run_id"]  # cleaned, with a hash of the original so it stays one-to-one
    assert run.startswith("manual__2026-11-25T02_00_00_00_00-")
    store = _store()
    assert store.get_json(f"runs/{run}/fake/result.json")["epochs"] == 2
    assert "epochs: 2" in store.get_bytes(f"runs/{run}/fake/config.yaml").decode()
    script = store.get_bytes(f"runs/{run}/fake/reproduce.sh").decode()
    assert f"nightshift fake --run-id {run} --config config.yaml" in script
    assert json.loads((xcom / "return.json").read_text())["epochs"] == 2


def test_rerun_with_same_inputs_skips_and_changed_inputs_rerun(fake_stage, capsys):
    assert cli.main(["fake", "--run-id", "r1"]) == 0
    assert cli.main(["fake", "--run-id", "r1"]) == 0
    assert fake_stage.calls == ["r1"]
    assert cli.main(["fake", "--run-id", "r1", "--set", "train.epochs=5"]) == 0
    assert fake_stage.calls == ["r1", "r1"]


@pytest.mark.parametrize("behaviour, code, status", [("reject", 3, "rejected"), ("gate", 4, "gate_failed"),
                                                     ("crash", 1, "error")])
def test_failures_map_to_exit_codes(fake_stage, capsys, behaviour, code, status):
    fake_stage.behaviour = behaviour
    assert cli.main(["fake", "--run-id", "r2"]) == code
    captured = capsys.readouterr()
    result = result_line(captured.out)
    assert result["status"] == status
    if behaviour == "reject":
        assert "annotations.json: annotations[3].bbox: box is not 4 numbers" in captured.err
        assert "Traceback" not in captured.err
    if behaviour == "gate":
        assert result["failures"][0]["name"] == "map_min"
    # a failed result is never taken as "already done"
    fake_stage.behaviour = "ok"
    assert cli.main(["fake", "--run-id", "r2"]) == 0


def test_config_errors_exit_2(fake_stage, capsys):
    assert cli.main(["fake", "--run-id", "r3", "--set", "train.epoch=1"]) == 2
    assert "unknown key 'train.epoch'" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        cli.main(["fake"])  # --run-id is required
    assert exc.value.code == 2


def test_help_lists_every_stage():
    parser = cli.build_parser()
    text = parser.format_help()
    for stage in cli.STAGES:
        assert stage in text


def test_help_names_every_task_where_the_stage_serves_several():
    """A classification team reading `nightshift --help` finds its exports and its metrics, not detectors only."""
    text = " ".join(cli.build_parser(summary_only=True).format_help().split())
    assert "class folders, CSV/JSON manifests" in text
    assert "a detector, a Mask R-CNN on a segmentation dataset, or a classifier" in text
    assert "a classifier's accuracy" in text and "The trained model (detector, Mask R-CNN or classifier) to ONNX" in text
    ingest = " ".join(cli.build_parser("ingest")._subparsers._group_actions[0].choices["ingest"].format_help().split())
    assert "imagefolder = class folders and manifest = a CSV/JSON of file and class are classification's" in ingest


# -- the MLflow link a failed stage leaves for its alert -------------------------------------------------------

def test_failed_stage_links_its_mlflow_run(fake_stage, capsys, nightshift_home):
    from pipeline import tracking
    from pipeline.config import load_config

    fake_stage.behaviour = "gate"
    assert cli.main(["fake", "--run-id", "r-nolink"]) == 4
    assert "mlflow_run_url" not in last_result(capsys)  # nothing logged yet: no link, and no database made
    assert not (nightshift_home / "mlflow.db").exists()

    cfg = load_config().resolved()
    mlrun = tracking.run_for(cfg, "r-link")  # what train and gate do on their way
    assert cli.main(["fake", "--run-id", "r-link"]) == 4
    result = last_result(capsys)
    assert result["status"] == "gate_failed" and result["failures"][0]["name"] == "map_min"
    assert result["mlflow_run_url"] == tracking.run_url(cfg, mlrun) and mlrun in result["mlflow_run_url"]
    fake_stage.behaviour = "crash"  # an unexpected error is linked too
    assert cli.main(["fake", "--run-id", "r-link"]) == 1
    assert mlrun in last_result(capsys)["mlflow_run_url"]


def test_unreachable_tracking_server_never_masks_the_error(fake_stage, capsys, free_port):
    import time

    fake_stage.behaviour = "gate"
    started = time.time()
    code = cli.main(["fake", "--run-id", "r-down", "--set", f"mlflow.tracking_uri=http://127.0.0.1:{free_port()}"])
    assert code == 4 and time.time() - started < 30  # one short try, no retry backoff
    result = last_result(capsys)
    assert result["status"] == "gate_failed" and "mlflow_run_url" not in result
    assert "MLFLOW_HTTP_REQUEST_MAX_RETRIES" not in os.environ  # the one short try was for the link only


# -- one line and the right exit code ------------------------------------------------------------------------

def _one_line_error(captured) -> str:
    err = [line for line in captured.err.splitlines() if line.startswith("nightshift")]
    assert len(err) == 1 and "Traceback" not in captured.err, captured.err
    return err[0]


def test_bad_config_paths_are_one_line_usage_errors(fake_stage, capsys, tmp_path):
    import time

    assert cli.main(["fake", "--run-id", "r", "--config", str(tmp_path)]) == 2
    assert "is a directory" in _one_line_error(capsys.readouterr())
    fifo = tmp_path / "fifo.yaml"
    os.mkfifo(fifo)
    started = time.monotonic()
    assert cli.main(["fake", "--run-id", "r", "--config", str(fifo)]) == 2  # never waits for a writer
    assert time.monotonic() - started < 10
    assert "fifo.yaml is not a regular file" in _one_line_error(capsys.readouterr())
    binary = tmp_path / "model.yaml"
    binary.write_bytes(bytes(range(256)))
    assert cli.main(["fake", "--run-id", "r", "--config", str(binary)]) == 2
    assert "model.yaml is not UTF-8 text" in _one_line_error(capsys.readouterr())
    assert fake_stage.calls == []


@pytest.mark.parametrize("run_id", ["", "  ", "ü:ü"])
def test_empty_run_id_is_one_line_exit_2(fake_stage, capsys, run_id):
    assert cli.main(["fake", "--run-id", run_id]) == 2
    assert "--run-id" in _one_line_error(capsys.readouterr())
    assert fake_stage.calls == []


def test_run_ids_that_clean_up_alike_keep_their_own_outputs(fake_stage, capsys):
    assert cli.main(["fake", "--run-id", "nüit", "--set", "train.epochs=2"]) == 0
    first = last_result(capsys)
    assert cli.main(["fake", "--run-id", "nöit", "--set", "train.epochs=2"]) == 0
    second = last_result(capsys)
    assert first["run_id"] != second["run_id"]
    assert fake_stage.calls == [first["run_id"], second["run_id"]]  # the second ran, it did not reuse the first


@pytest.mark.parametrize("error, named", [
    (ConnectionRefusedError(111, "Connection refused"), "promote.triton_url=http://127.0.0.1:9/"),
    (OSError("HTTPConnectionPool(host='127.0.0.1', port=9): Max retries exceeded with url: "
             "http://127.0.0.1:9/v2/health/ready"), "http://127.0.0.1:9/v2/health/ready"),
])
def test_an_unreachable_service_is_exit_5_naming_it(fake_stage, capsys, error, named):
    def run(cfg, ctx):
        try:
            raise error
        except OSError as exc:
            raise RuntimeError("model load failed") from exc  # what a client library wraps it in

    fake_stage.run = run
    assert cli.main(["fake", "--run-id", "r-down", "--set", "promote.triton_url=http://127.0.0.1:9/"]) == 5
    line = _one_line_error(capsys.readouterr())
    assert named in line and "cannot reach" in line
    assert _store().get_json("runs/r-down/fake/result.json")["status"] == "infrastructure_error"


def test_an_unexpected_error_keeps_its_traceback(fake_stage, capsys):
    fake_stage.behaviour = "crash"
    assert cli.main(["fake", "--run-id", "r-crash"]) == 1
    assert "Traceback" in capsys.readouterr().err


def test_a_dead_s3_store_is_exit_5_in_bounded_time(fake_stage, capsys, monkeypatch):
    import time

    from tests.faults import dead_endpoint

    monkeypatch.setenv("NIGHTSHIFT_S3_RETRY_BUDGET_S", "2")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAEXAMPLEEXAMPLE")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "very-secret-key-value")
    started = time.monotonic()
    code = cli.main(["fake", "--run-id", "r-s3", "--set", "store.uri=s3://artifacts/ns",
                     "--set", f"store.s3_endpoint_url={dead_endpoint()}"])
    assert code == 5 and time.monotonic() - started < 15
    line = _one_line_error(capsys.readouterr())
    assert "s3://artifacts/ns/runs/r-s3/" in line and "EndpointConnectionError" in line
    assert "very-secret" not in line and "AKIA" not in line
    assert fake_stage.calls == []


def test_a_failure_the_store_cannot_record_still_reports_the_first_error(fake_stage, capsys, monkeypatch):
    from pipeline.errors import InfrastructureError

    def run(cfg, ctx):
        raise InfrastructureError("upload failed after 3 attempts", uri=ctx.url("dataset"))

    def write_outputs(*_args):
        raise InfrastructureError("PUT failed", uri="s3://x/result.json")

    fake_stage.run = run
    monkeypatch.setattr(cli, "_write_outputs", write_outputs)
    assert cli.main(["fake", "--run-id", "r-store"]) == 5
    captured = capsys.readouterr()
    assert "upload failed after 3 attempts" in _one_line_error(captured)
    assert "could not record the failure" in captured.err


WEBHOOK = "https://hooks.example.test/services/T000/B000/s3cr3t-webhook-token"


def test_a_webhook_given_in_config_is_masked_everywhere(fake_stage, capsys, tmp_path):
    import logging

    def run(cfg, ctx):
        logging.getLogger("urllib3.connectionpool").warning("Retrying POST %s", cfg.notify.webhook_url)
        logging.getLogger("pipeline.stages.fake").info("config: %s", cfg.to_dict())
        if ctx.run_id == "r-secret-fails":
            raise ConnectionResetError(f"POST {cfg.notify.webhook_url}: Connection reset by peer")
        return {"ok": True}

    fake_stage.run = run
    config = tmp_path / "c.yaml"
    config.write_text("mlflow:\n  tracking_uri: https://bob:pa55word@mlflow.invalid/\n")
    assert cli.main(["fake", "--run-id", "r-secret", "--config", str(config),
                     "--set", f"notify.webhook_url={WEBHOOK}"]) == 0
    captured = capsys.readouterr()
    store = _store()
    written = {name: store.get_bytes(f"runs/r-secret/fake/{name}").decode()
               for name in ("config.yaml", "reproduce.sh", "result.json")}
    for where, text in {**written, "stdout": captured.out, "stderr": captured.err}.items():
        assert "s3cr3t" not in text and "pa55word" not in text, where
    assert "webhook_url: '***'" in written["config.yaml"] and "bob:***@mlflow.invalid" in written["config.yaml"]
    assert "Retrying POST ***" in captured.err
    # a failure whose text holds the secret: masked in the one line and in result.json
    assert cli.main(["fake", "--run-id", "r-secret-fails", "--set", f"notify.webhook_url={WEBHOOK}"]) == 5
    captured = capsys.readouterr()
    assert "s3cr3t" not in captured.err + captured.out and "POST ***" in captured.err
    assert "s3cr3t" not in store.get_bytes("runs/r-secret-fails/fake/result.json").decode()


def test_the_environment_webhook_is_masked_in_logs_too(fake_stage, capsys, monkeypatch):
    import logging

    monkeypatch.setenv("NIGHTSHIFT_WEBHOOK_URL", WEBHOOK)

    def run(cfg, ctx):
        logging.getLogger("pipeline.alerts").warning("chat webhook delivery failed (%s)", f"POST {WEBHOOK}: 500")
        return {}

    fake_stage.run = run
    assert cli.main(["fake", "--run-id", "r-env-secret"]) == 0
    err = capsys.readouterr().err
    assert "s3cr3t" not in err and "delivery failed (POST ***: 500)" in err


def test_an_unreachable_triton_through_its_real_client_is_exit_5_naming_its_url(fake_stage, capsys):
    from tests.faults import dead_endpoint

    def run(cfg, ctx):
        from pipeline.triton.client import load_and_wait

        load_and_wait(cfg.promote.triton_url, cfg.promote.model_name, 1)  # raises ConnectionRefusedError
        return {}

    fake_stage.run = run
    url = dead_endpoint()
    assert cli.main(["fake", "--run-id", "r-triton", "--set", f"promote.triton_url={url}"]) == 5
    line = _one_line_error(capsys.readouterr())
    assert f"promote.triton_url={url}" in line and "ConnectionRefusedError" in line
