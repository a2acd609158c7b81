"""The gate stage: policy, overrides, one GateFailed listing every failed check, and what MLflow records."""
from __future__ import annotations

import json
import re

import pytest

from pipeline import cli
from pipeline.config import GatesConfig, load_config
from pipeline.context import RunContext
from pipeline.errors import ConfigError, GateFailed, InputRejected
from pipeline.stages import gate



def metrics(ap=0.40, ap50=0.80, champion=None):
    return {"AP": ap, "AP50": ap50, "champion": champion}


# -- policy ------------------------------------------------------------------------------------------

def test_defaults_without_overrides():
    thresholds, relaxed = gate.resolve_thresholds(GatesConfig(map_min=0.1, map50_min=0.5, max_regression=0.02))
    assert thresholds == {"map_min": 0.1, "map50_min": 0.5, "max_regression": 0.02} and relaxed == []


def test_tightening_needs_no_reason_and_relaxing_does():
    thresholds, relaxed = gate.resolve_thresholds(GatesConfig(map50_min=0.5, overrides={"map50_min": 0.7,
                                                                                          "max_regression": 0.0}))
    assert thresholds["map50_min"] == 0.7 and thresholds["max_regression"] == 0.0 and relaxed == []
    for override in ({"map50_min": 0.3}, {"map_min": -0.1}, {"max_regression": 0.1}):
        with pytest.raises(InputRejected, match="override_reason") as info:
            gate.resolve_thresholds(GatesConfig(overrides=override))
        assert info.value.field == next(iter(override)) and info.value.exit_code == 3
    thresholds, relaxed = gate.resolve_thresholds(GatesConfig(overrides={"max_regression": 0.1},
                                                              override_reason="new class added; AP drop expected"))
    assert thresholds["max_regression"] == 0.1 and relaxed == ["max_regression"]


def test_unknown_gate_name_is_rejected_naming_it():
    with pytest.raises(InputRejected, match="map75_min") as info:
        gate.resolve_thresholds(GatesConfig(overrides={"map75_min": 0.2}, override_reason="x"))
    assert info.value.field == "map75_min" and info.value.path == "gates.overrides"


def test_checks_without_champion_are_absolute_only():
    checks, champion = gate.check(metrics(), {"map_min": 0.3, "map50_min": 0.5, "max_regression": 0.02})
    assert champion is None
    assert [c["name"] for c in checks] == ["map_min", "map50_min"] and all(c["passed"] for c in checks)


def test_regression_against_champion():
    thresholds = {"map_min": 0.0, "map50_min": 0.0, "max_regression": 0.02}
    champ = {"version": "3", "AP": 0.45, "AP50": 0.85}
    checks, summary = gate.check(metrics(ap=0.44, champion=champ), thresholds)
    regression = checks[-1]
    assert regression["name"] == "max_regression" and regression["value"] == pytest.approx(0.01)
    assert regression["passed"] and summary == champ
    checks, _ = gate.check(metrics(ap=0.40, champion=champ), thresholds)
    assert checks[-1]["value"] == pytest.approx(0.05) and not checks[-1]["passed"]


def test_missing_metric_fails_its_check():
    checks, _ = gate.check(metrics(ap=None, ap50=None), {"map_min": 0.0, "map50_min": 0.0, "max_regression": 0.0})
    assert not any(c["passed"] for c in checks)
    assert "n/a" in gate.describe(checks[0])


# -- the stage through the CLI ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def shared_db(tmp_path_factory):
    """One sqlite MLflow for the module: creating its schema costs seconds."""
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"


@pytest.fixture
def tracking_uri(shared_db, monkeypatch):
    # only this stage in the parser: the test must not depend on every other stage importing cleanly
    monkeypatch.setattr(cli, "STAGES", ("gate",))
    monkeypatch.setattr(cli, "TOOLS", {})
    return shared_db


def run_gate(run_id, metrics_doc, tracking_uri, *sets):
    overrides = [f"mlflow.tracking_uri={tracking_uri}", *sets]
    cfg = load_config(None, overrides).resolved()
    ctx = RunContext.create(run_id, "evaluate", cfg)
    ctx.publish_json(metrics_doc, "metrics.json")
    argv = ["gate", "--run-id", run_id]
    for s in overrides:
        argv += ["--set", s]
    code = cli.main(argv)
    result = RunContext.create(run_id, "gate", cfg).result_of("gate").to_dict()
    return code, result, cfg


def mlflow_tags(cfg, run_id):
    from pipeline import tracking

    return tracking.find_run(cfg, run_id).data.tags


def test_first_run_passes_on_absolute_thresholds(tracking_uri):
    code, result, cfg = run_gate("g-pass", metrics(), tracking_uri)
    assert code == 0 and result["passed"] is True and result["status"] == "ok"
    assert result["champion"] is None and result["note"] == "no champion yet: absolute thresholds only"
    assert mlflow_tags(cfg, "g-pass")["nightshift.gate.passed"] == "true"


def test_several_failures_raise_once_listing_all(tracking_uri, capsys):
    champ = {"version": "2", "AP": 0.5, "AP50": 0.9}
    code, result, cfg = run_gate("g-fail", metrics(ap=0.1, ap50=0.3, champion=champ), tracking_uri,
                                 "gates.map_min=0.2", "gates.map50_min=0.5")
    err = capsys.readouterr().err
    assert code == 4 and result["status"] == "gate_failed"
    assert [f["name"] for f in result["failures"]] == ["map_min", "map50_min", "max_regression"]
    first = result["failures"][0]
    assert first == {"name": "map_min", "value": 0.1, "threshold": 0.2, "direction": ">=", "passed": False}
    for text in ("3 of 3 gate checks failed", "map_min: AP = 0.1000, must be >= 0.2",
                 "map50_min: AP50 = 0.3000, must be >= 0.5", "max_regression: AP drop vs champion = 0.4000"):
        assert text in err
    assert len(result["checks"]) == 3 and result["champion"]["version"] == "2"
    tags = mlflow_tags(cfg, "g-fail")
    assert tags["nightshift.gate.passed"] == "false"
    assert tags["nightshift.gate.failed"] == "map_min,map50_min,max_regression"
    # the held release comes with its report, linked from the message the alert carries
    assert result["report"].endswith("runs/g-fail/report/report.html") and "Report: " in err
    # ... and to the MLflow run, which the CLI adds to a failed stage's result
    from pipeline import tracking

    assert result["mlflow_run_url"] == tracking.run_url(cfg, tracking.find_run(cfg, "g-fail").info.run_id)
    html = RunContext.create("g-fail", "report", cfg).store.get_bytes("runs/g-fail/report/report.html").decode()
    assert "hold" in html.lower()


def test_relaxing_override_without_reason_exits_3(tracking_uri, capsys):
    code, result, _ = run_gate("g-noreason", metrics(ap50=0.4), tracking_uri, "gates.overrides={map50_min: 0.3}")
    assert code == 3 and result["status"] == "rejected"
    assert "gates.overrides: map50_min" in capsys.readouterr().err


def test_relaxing_override_with_reason_passes_and_is_recorded(tracking_uri):
    code, result, cfg = run_gate("g-reason", metrics(ap50=0.4), tracking_uri, "gates.overrides={map50_min: 0.3}",
                                 "gates.override_reason=relabelled val set, see ticket 42")
    assert code == 0 and result["passed"] is True
    assert result["overrides"] == {"map50_min": 0.3} and result["relaxed"] == ["map50_min"]
    assert result["override_reason"] == "relabelled val set, see ticket 42"
    assert result["thresholds"]["map50_min"] == 0.3
    tags = mlflow_tags(cfg, "g-reason")
    assert tags["nightshift.gate.override.map50_min"] == "0.3"
    assert tags["nightshift.gate.override_reason"] == "relabelled val set, see ticket 42"
    assert tags["nightshift.gate.relaxed"] == "map50_min"
    json.dumps(result)  # small JSON for XCom and the notify stage


# -- per-class regression -------------------------------------------------------------------------------

def per_class_metrics():
    """circle: enough boxes, lost 0.10; square: lost 0.30 but only 5 boxes; star: new class; disk: lost 0.01."""
    ours = {"circle": {"AP": 0.50, "support": 20}, "square": {"AP": 0.20, "support": 5},
            "star": {"AP": 0.10, "support": 30}, "disk": {"AP": 0.69, "support": 15}}
    theirs = {"circle": {"AP": 0.60, "support": 20}, "square": {"AP": 0.50, "support": 5},
              "disk": {"AP": 0.70, "support": 15}}
    doc = metrics(ap=0.5, champion={"version": "4", "AP": 0.5, "AP50": 0.8, "per_class": theirs})
    doc["per_class"] = ours
    return doc


def test_per_class_regression_only_for_classes_with_enough_support():
    thresholds = {"map_min": 0.0, "map50_min": 0.0, "max_regression": 0.02, "per_class_max_regression": 0.05}
    checks, _ = gate.check(per_class_metrics(), thresholds, min_support=10)
    per_class = [c for c in checks if c["name"] == "per_class_max_regression"]
    assert [(c["class"], c["support"], c["passed"]) for c in per_class] == [("circle", 20, False), ("disk", 15, True)]
    assert per_class[0]["value"] == pytest.approx(0.10)
    assert gate.describe(per_class[0]) == ("per_class_max_regression: AP drop vs champion [circle] = 0.1000, "
                                           "must be <= 0.05")
    # a lower support bar brings the small class in; the new class never has anything to regress from
    checks, _ = gate.check(per_class_metrics(), thresholds, min_support=5)
    assert [c["class"] for c in checks if c["name"] == "per_class_max_regression"] == ["circle", "square", "disk"]


def test_per_class_gate_is_off_by_default_and_needs_per_class_metrics():
    thresholds, _ = gate.resolve_thresholds(GatesConfig())
    assert "per_class_max_regression" not in thresholds
    checks, _ = gate.check(per_class_metrics(), thresholds, 10)
    assert {c["name"] for c in checks} == {"map_min", "map50_min", "max_regression"}
    doc = metrics(champion={"version": "1", "AP": 0.4, "AP50": 0.8})  # champion without per_class
    checks, _ = gate.check(doc, dict(thresholds, per_class_max_regression=0.05), 10)
    assert checks[-1]["value"] is None and not checks[-1]["passed"]
    assert "per-class metrics not measured" in gate.describe(checks[-1])


def test_overrides_apply_to_the_new_gates():
    # switching on a gate that is off tightens the policy: no reason needed
    thresholds, relaxed = gate.resolve_thresholds(GatesConfig(overrides={"per_class_max_regression": 0.05,
                                                                         "latency_p95_ms_max": 40}))
    assert thresholds["per_class_max_regression"] == 0.05 and thresholds["latency_p95_ms_max"] == 40 and not relaxed
    with pytest.raises(InputRejected, match="per_class_max_regression 0.05 -> 0.2"):
        gate.resolve_thresholds(GatesConfig(per_class_max_regression=0.05,
                                            overrides={"per_class_max_regression": 0.2}))


# -- the policy file -------------------------------------------------------------------------------------

def test_policy_file_replaces_config_values(tmp_path):
    policy = tmp_path / "gates.yaml"
    policy.write_text("map50_min: 0.7\nper_class_max_regression: 0.05\nper_class_min_support: 20\n"
                      "latency_p95_ms_max: 40\nmodel_size_mb_max: null\n")
    gates = GatesConfig(map_min=0.1, model_size_mb_max=30, policy_file=str(policy))
    loaded = gate.load_policy(gates)
    assert loaded == {"map_min": 0.1, "map50_min": 0.7, "max_regression": 0.02, "per_class_max_regression": 0.05,
                      "latency_p95_ms_max": 40.0, "model_size_mb_max": None, "per_class_min_support": 20}
    thresholds, _ = gate.resolve_thresholds(gates)
    assert thresholds == {"map_min": 0.1, "map50_min": 0.7, "max_regression": 0.02,
                          "per_class_max_regression": 0.05, "latency_p95_ms_max": 40.0}
    # relaxing is judged against the policy file's value
    with pytest.raises(InputRejected, match="map50_min 0.7 -> 0.6"):
        gate.resolve_thresholds(gates.model_copy(update={"overrides": {"map50_min": 0.6}}))


@pytest.mark.parametrize("text, field, message", [
    ("map50_min: 0.6\nmap75_min: 0.3\n", "map75_min", "unknown policy key 'map75_min'"),
    ("map_min: high\n", "map_min", "must be a finite number"),
    ("map_min: null\n", "map_min", "must be a finite number, got None"),
    ("per_class_min_support: 2.5\n", "per_class_min_support", "whole number"),
    ("- map_min\n", "(top level)", "must be a mapping"),
])
def test_bad_policy_file_is_rejected_naming_the_key(tmp_path, text, field, message):
    policy = tmp_path / "gates.yaml"
    policy.write_text(text)
    with pytest.raises(InputRejected, match=re.escape(message)) as info:
        gate.load_policy(GatesConfig(policy_file=str(policy)))
    assert info.value.exit_code == 3 and info.value.field == field and info.value.path == str(policy)


def test_missing_policy_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="gates.policy_file: .*nope.yaml not found") as info:
        gate.load_policy(GatesConfig(policy_file=str(tmp_path / "nope.yaml")))
    assert info.value.exit_code == 2


def test_a_policy_file_that_is_not_a_regular_text_file_is_refused_at_once(tmp_path):
    import os
    import time

    fifo = tmp_path / "policy.yaml"
    os.mkfifo(fifo)
    binary = tmp_path / "policy.bin"
    binary.write_bytes(b"\x00\x01\xfe\xff" * 64)
    for location, message in ((fifo, "policy.yaml is not a regular file"), (tmp_path, "is a directory"),
                              (binary, "policy.bin is not UTF-8 text")):
        started = time.monotonic()
        with pytest.raises(ConfigError, match=re.escape(message)) as info:
            gate.load_policy(GatesConfig(policy_file=str(location)))  # a FIFO without a writer never blocks
        assert time.monotonic() - started < 5
        assert info.value.exit_code == 2 and str(info.value).startswith("gates.policy_file: ")
        assert "\n" not in str(info.value)


def test_a_binary_policy_in_s3_is_refused_in_one_line(s3_server):
    import boto3

    boto3.client("s3", endpoint_url=s3_server).create_bucket(Bucket="policies")
    boto3.client("s3", endpoint_url=s3_server).put_object(Bucket="policies", Key="gates.yaml", Body=b"\xff\xfe\x00")
    with pytest.raises(ConfigError, match=r"^gates.policy_file: s3://policies/gates.yaml is not UTF-8 text"):
        gate.load_policy(GatesConfig(policy_file="s3://policies/gates.yaml"))


# -- deployment budgets on export's report -----------------------------------------------------------------

def export_report(p95=35.0, onnx_bytes=9_500_000):
    return {"speed": {"batches": {"1": {"onnxruntime": {"latency_ms": {"p50": 20.0, "p95": p95}}},
                                  "8": {"onnxruntime": {"latency_ms": {"p50": 90.0, "p95": 120.0}}}}},
            "size": {"onnx_bytes": onnx_bytes}}


def test_deployment_checks_against_the_export_report():
    policy = {"latency_p95_ms_max": 40.0, "model_size_mb_max": 9.0}
    checks = gate.deployment_checks(policy, export_report())
    assert [(c["name"], c["value"], c["passed"]) for c in checks] == [
        ("latency_p95_ms_max", 35.0, True), ("model_size_mb_max", 9.5, False)]
    with pytest.raises(GateFailed, match=r"1 of 2 deployment checks failed: model_size_mb_max: ONNX model size "
                                         r"\(MB\) = 9.5000, must be <= 9") as info:
        gate.enforce(checks, what="deployment")
    assert info.value.exit_code == 4 and [f["name"] for f in info.value.failures] == ["model_size_mb_max"]
    assert gate.enforce(checks[:1]) == checks[:1]
    # budgets that are off are not checked at all
    assert gate.deployment_checks({"latency_p95_ms_max": None}, export_report()) == []
    assert gate.deployment_checks({"map_min": 0.5}, None) == []


def test_deployment_checks_without_measurements_fail_as_not_measured():
    policy = {"latency_p95_ms_max": 40.0, "model_size_mb_max": 20.0}
    checks = gate.deployment_checks(policy, None)
    assert [c["passed"] for c in checks] == [False, False]
    assert "n/a (not measured: no export report)" in gate.describe(checks[0])
    partial = {"size": {"onnx_bytes": 1_000_000}, "speed": {"batches": {"8": {}}}}  # batch 1 not benchmarked
    checks = gate.deployment_checks(policy, partial)
    assert [(c["value"], c["passed"], c.get("note")) for c in checks] == [(None, False, "not measured"),
                                                                         (1.0, True, None)]


def test_deployment_gate_uses_policy_and_overrides(tmp_path):
    policy = tmp_path / "gates.yaml"
    policy.write_text("latency_p95_ms_max: 30\n")
    with pytest.raises(GateFailed, match="latency_p95_ms_max"):
        gate.deployment_gate(GatesConfig(policy_file=str(policy)), export_report(p95=35.0))
    relaxed = GatesConfig(policy_file=str(policy), overrides={"latency_p95_ms_max": 50},
                          override_reason="new backbone, latency budget under review")
    assert [c["passed"] for c in gate.deployment_gate(relaxed, export_report(p95=35.0))] == [True]
    assert gate.deployment_gate(GatesConfig(), None) == []


# -- the new gates through the CLI ---------------------------------------------------------------------------

def test_per_class_failure_through_the_stage(tracking_uri, tmp_path, capsys):
    policy = tmp_path / "gates.yaml"
    policy.write_text("map50_min: 0.0\nper_class_max_regression: 0.05\nper_class_min_support: 10\n"
                      "latency_p95_ms_max: 40\n")
    code, result, cfg = run_gate("g-perclass", per_class_metrics(), tracking_uri, f"gates.policy_file={policy}")
    err = capsys.readouterr().err
    assert code == 4 and result["status"] == "gate_failed"
    assert result["failures"] == [{"name": "per_class_max_regression", "class": "circle", "value": pytest.approx(0.1),
                                   "threshold": 0.05, "direction": "<=", "passed": False}]
    assert "1 of 5 gate checks failed" in err and "AP drop vs champion [circle]" in err
    assert result["deferred"] == ["latency_p95_ms_max"] and result["per_class_min_support"] == 10
    assert mlflow_tags(cfg, "g-perclass")["nightshift.gate.failed"] == "per_class_max_regression"


def test_unknown_policy_key_through_the_stage_exits_3(tracking_uri, tmp_path, capsys):
    policy = tmp_path / "gates.yaml"
    policy.write_text("map_min: 0.1\nmAP_min: 0.2\n")
    code, result, _ = run_gate("g-badpolicy", metrics(), tracking_uri, f"gates.policy_file={policy}")
    assert code == 3 and result["status"] == "rejected"
    assert f"{policy}: mAP_min: unknown policy key 'mAP_min'" in capsys.readouterr().err
