"""The gate stage: policy, overrides, one GateFailed listing every failed check, and what MLflow records."""
from __future__ import annotations

import json
import logging

import pytest

from pipeline import cli
from pipeline.config import GatesConfig, load_config
from pipeline.context import RunContext
from pipeline.errors import InputRejected
from pipeline.stages import gate


@pytest.fixture(autouse=True)
def keep_logging():
    """cli.main points the root logger at this test's captured stderr; put it back for the next test."""
    handlers, level = logging.root.handlers[:], logging.root.level
    yield
    logging.root.handlers[:] = handlers
    logging.root.setLevel(level)


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
    result = RunContext.create(run_id, "gate", cfg).result_of("gate")
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
