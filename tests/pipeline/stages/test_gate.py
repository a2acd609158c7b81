"""The gate stage through the CLI: one GateFailed listing every failed check, the report it links, and what
MLflow records. The gate library itself (policy, checks, failures) is tested in tests/pipeline/test_gates.py."""
from __future__ import annotations

import json

import pytest

from pipeline import cli
from pipeline.config import load_config
from pipeline.context import RunContext
from tests.helpers import only_commands


def metrics(ap=0.40, ap50=0.80, champion=None):
    return {"AP": ap, "AP50": ap50, "champion": champion}


# -- the stage through the CLI ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def shared_db(tmp_path_factory):
    """One sqlite MLflow for the module: creating its schema costs seconds."""
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"


@pytest.fixture
def tracking_uri(shared_db, monkeypatch):
    # only this stage in the parser: the test must not depend on every other stage importing cleanly
    only_commands(monkeypatch, "gate")
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
    assert [f["check"] for f in result["failures"]] == ["map_min", "map50_min", "max_regression"]
    first = result["failures"][0]
    assert first == {"check": "map_min", "expected": ">= 0.2", "actual": 0.1, "direction": ">=", "threshold": 0.2,
                     "metric": "AP", "message": "map_min: AP = 0.1000, must be >= 0.2"}
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


# -- the new gates through the CLI ---------------------------------------------------------------------------

def test_per_class_failure_through_the_stage(tracking_uri, tmp_path, capsys):
    """circle lost 0.10 AP on 20 boxes, square 0.30 on 5 (too few to judge), disk 0.01."""
    policy = tmp_path / "gates.yaml"
    policy.write_text("map50_min: 0.0\nper_class_max_regression: 0.05\nper_class_min_support: 10\n"
                      "latency_p95_ms_max: 40\n")
    theirs = {"circle": {"AP": 0.60, "support": 20}, "square": {"AP": 0.50, "support": 5},
              "disk": {"AP": 0.70, "support": 15}}
    doc = metrics(ap=0.5, champion={"version": "4", "AP": 0.5, "AP50": 0.8, "per_class": theirs})
    doc["per_class"] = {"circle": {"AP": 0.50, "support": 20}, "square": {"AP": 0.20, "support": 5},
                        "disk": {"AP": 0.69, "support": 15}}
    code, result, cfg = run_gate("g-perclass", doc, tracking_uri, f"gates.policy_file={policy}")
    err = capsys.readouterr().err
    assert code == 4 and result["status"] == "gate_failed"
    assert result["failures"] == [{"check": "per_class_max_regression", "class": "circle",
                                   "actual": pytest.approx(0.1), "expected": "<= 0.05", "threshold": 0.05,
                                   "direction": "<=", "metric": "AP drop vs champion",
                                   "message": "per_class_max_regression: AP drop vs champion [circle] = 0.1000, "
                                              "must be <= 0.05"}]
    assert "1 of 5 gate checks failed" in err and "AP drop vs champion [circle]" in err
    assert result["deferred"] == ["latency_p95_ms_max"] and result["per_class_min_support"] == 10
    assert mlflow_tags(cfg, "g-perclass")["nightshift.gate.failed"] == "per_class_max_regression"


def test_unknown_policy_key_through_the_stage_exits_3(tracking_uri, tmp_path, capsys):
    policy = tmp_path / "gates.yaml"
    policy.write_text("map_min: 0.1\nmAP_min: 0.2\n")
    code, result, _ = run_gate("g-badpolicy", metrics(), tracking_uri, f"gates.policy_file={policy}")
    assert code == 3 and result["status"] == "rejected"
    assert f"{policy}: mAP_min: unknown policy key 'mAP_min'" in capsys.readouterr().err


def test_slice_regressions_judged_on_their_intervals_through_the_stage(tracking_uri, tmp_path, capsys):
    """Overall AP lost 0.03 but its interval straddles the 0.02 limit: passes. group:cam2 lost 0.20 with the
    whole interval over 0.05: refused. size:small lost 0.30 on 4 boxes: too few to judge."""
    policy = tmp_path / "gates.yaml"
    policy.write_text("map50_min: 0.0\nslice_max_regression: 0.05\nslice_min_support: 10\n")
    doc = metrics(ap=0.47, champion={"version": "4", "AP": 0.50, "AP50": 0.8})
    doc["stability"] = {"confidence": 0.9, "resamples": 200,
                        "AP": {"drop": 0.03, "ci": [-0.01, 0.07]},
                        "slices": {"group:cam2": {"support": 40, "challenger": 0.3, "champion": 0.5, "drop": 0.2,
                                                  "ci": [0.12, 0.29]},
                                   "group:cam1": {"support": 45, "challenger": 0.5, "champion": 0.5, "drop": 0.0,
                                                  "ci": [-0.06, 0.07]},
                                   "size:small": {"support": 4, "challenger": 0.1, "champion": 0.4, "drop": 0.3,
                                                  "ci": [0.1, 0.5]}}}
    code, result, _ = run_gate("g-slices", doc, tracking_uri, f"gates.policy_file={policy}")
    err = capsys.readouterr().err
    assert code == 4 and result["regression_test"] == "bootstrap" and result["slice_min_support"] == 10
    assert [f["slice"] for f in result["failures"]] == ["group:cam2"]
    assert result["failures"][0]["message"] == ("slice_max_regression: AP drop vs champion [group:cam2] = 0.2000 "
                                                "[90% CI 0.1200..0.2900], must be <= 0.05 (judged on the whole "
                                                "interval)")
    assert result["failures"][0]["ci"] == [0.12, 0.29] and result["failures"][0]["message"] in err
    regression = next(c for c in result["checks"] if c["name"] == "max_regression")
    assert regression["passed"] and regression["ci"] == [-0.01, 0.07] and regression["test"] == "bootstrap"
    assert "1 of 5 gate checks failed" in err  # map_min, map50_min, max_regression, two slices
