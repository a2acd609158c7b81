"""Typed stage results: every stage's result.json loads as its model, round-trips unchanged, and a bad one is
refused with one line naming the file and the field.

tests/fixtures/results/<stage>.json are the result.json files of one `make demo` run written before the
typed results existed (paths rewritten to /srv/nightshift): the old files every later version must read.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from pipeline import results
from pipeline.config import load_config
from pipeline.context import RunContext, signature
from pipeline.errors import EXIT_REJECTED
from pipeline.store import LocalStore

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "results"
OLD = {path.stem: path.read_text() for path in sorted(FIXTURES.glob("*.json"))}

# the stages the demo run does not write a result for (audit is optional), as that stage builds them
AUDIT = {"threshold": 0.3, "annotations": 120, "issues": 4, "per_reason": {"swap": 1, "badloc": 2, "missing": 1,
         "duplicate": 0}, "rate": 0.025, "model": "champion nightshift_detector v3", "queue": 4,
         "max_label_issue_rate": None, "passed": True, "top": [{"image": "a.png", "score": 0.1}],
         "files": {"report": "file:///a/report.json", "queue": "file:///a/queue.html"}}
AUDIT_SKIPPED = {"skipped": True, "reason": "no nightshift_detector@champion and no --model"}
# a refusal as the CLI writes it: the stage's partial result + the envelope
GATE_REFUSED = {"passed": False, "checks": [{"name": "min_map", "metric": "AP", "value": 0.1, "threshold": 0.3,
                                              "direction": ">=", "passed": False}],
                "status": "gate_failed", "exit_code": 4, "error": "1 of 1 gate checks failed",
                "failures": [{"name": "min_map", "value": 0.1, "threshold": 0.3, "direction": ">="}],
                "report": "file:///r/report.html", "run_id": "n1", "stage": "gate", "duration_s": 0.4}


def test_the_demo_run_left_a_result_of_every_stage_but_audit():
    assert set(OLD) == set(results.RESULT_TYPES) - {"audit"}


@pytest.mark.parametrize("stage", sorted(OLD))
def test_old_files_load_as_their_stage_model_and_write_back_byte_for_byte(stage, caplog):
    with caplog.at_level(logging.WARNING, logger="pipeline.results"):
        result = results.loads(stage, OLD[stage], f"runs/demo/{stage}/result.json")
    assert type(result) is results.RESULT_TYPES[stage] and result.STAGE == stage
    assert result.ok and result.stage == stage and result.exit_code == 0
    assert result.extra_keys == [] and not caplog.records  # every key the stage writes is declared
    assert results.dumps(result).decode() == OLD[stage]  # same keys, same values, same layout
    # so an upstream result's signature, and with it every skip decision, is what it was
    assert signature(result.to_dict()) == signature(json.loads(OLD[stage]))


def test_attributes_read_what_the_keys_held():
    train = results.loads("train", OLD["train"], "train")
    assert train.mlflow_run_id == json.loads(OLD["train"])["mlflow_run_id"] and train.epochs == 6
    assert train.losses[-1] == train.final_loss
    gate = results.loads("gate", OLD["gate"], "gate")
    assert gate.passed is True and all(c["passed"] for c in gate.checks)
    export = results.loads("export", OLD["export"], "export")
    assert set(export.sha256) >= {"model.onnx"} and export.parity["map_drop"] is not None
    changed = results.loads("changed", OLD["changed"], "changed")
    assert changed.changed is True and changed.champion is None
    promote = results.loads("promote", OLD["promote"], "promote")
    assert (promote.version, promote.previous_version, promote.recovered) == (1, None, None)


@pytest.mark.parametrize("stage, data", [("audit", AUDIT), ("audit", AUDIT_SKIPPED), ("gate", GATE_REFUSED),
                                         ("train", {"status": "error", "error": "RuntimeError: boom"}),
                                         ("notify", {"event": "unchanged", "delivered_to": None, "text": "t"})])
def test_results_built_from_dicts_round_trip_with_only_the_keys_they_have(stage, data):
    result = results.from_run(stage, data)
    assert result.to_dict() == data
    again = results.loads(stage, results.dumps(result), "again")
    assert again == result and again.to_dict() == data


def test_a_partial_result_keeps_its_shape_and_reads_none_for_what_it_lacks():
    refused = results.from_run("gate", GATE_REFUSED)
    assert refused.status == "gate_failed" and not refused.ok
    assert refused.failures[0]["name"] == "min_map" and refused.report.endswith("report.html")
    assert refused.thresholds is None and "thresholds" not in refused.to_dict()
    notify = results.from_run("notify", {"event": "unchanged", "delivered_to": None, "text": "t"})
    assert "delivered_to" in notify.to_dict()  # an explicit null is written back, an absent key is not


def test_what_run_returns_is_normalised_as_it_is_written():
    result = results.from_run("check", {"relaxed": ("min_map",), "model": "ssdlite", "source": Path("/data")})
    assert result.relaxed == ["min_map"] and result.source == "/data"
    assert results.from_run("check", result) == result  # a stage may return its model too


def test_ints_stay_ints_and_floats_stay_floats():
    result = results.from_run("evaluate", {"AP": 0, "AP50": 0.5, "f1": 1})
    assert result.to_dict() == {"AP": 0, "AP50": 0.5, "f1": 1}
    assert results.dumps(result) == json.dumps({"AP": 0, "AP50": 0.5, "f1": 1}, indent=2, sort_keys=True).encode()


@pytest.mark.parametrize("stage, data, field, says", [
    ("train", {"mlflow_run_id": 42}, "mlflow_run_id", "valid string"),
    ("gate", {"passed": "yes"}, "passed", "valid boolean"),
    ("changed", {"changed": 1}, "changed", "valid boolean"),  # no silent coercion
    ("promote", {"version": "3"}, "version", "valid integer"),
    ("export", {"sha256": {"model.onnx": None}}, "sha256.model.onnx", "valid string"),
    ("snapshot", {"exit_code": 0.5}, "exit_code", "valid integer"),
])
def test_a_field_of_the_wrong_type_is_refused_naming_the_file_and_the_field(stage, data, field, says):
    where = f"file:///store/runs/n1/{stage}/result.json"
    with pytest.raises(results.ResultError) as err:
        results.loads(stage, json.dumps(data), where)
    message = str(err.value)
    assert message.startswith(f"{where}: {field}: ") and says in message and "\n" not in message
    assert err.value.exit_code == EXIT_REJECTED


@pytest.mark.parametrize("raw, says", [("{not json", "not JSON"), ("[1, 2]", "must be a JSON object, not list")])
def test_a_file_that_is_not_a_json_object_is_refused_naming_it(raw, says):
    with pytest.raises(results.ResultError, match=f"^runs/n1/train/result.json: .*{says}"):
        results.loads("train", raw, "runs/n1/train/result.json")


def test_undeclared_keys_are_kept_and_named_in_a_warning(caplog):
    data = {**json.loads(OLD["evaluate"]), "mAP_small": 0.12, "zeta": [1]}
    with caplog.at_level(logging.WARNING, logger="pipeline.results"):
        result = results.loads("evaluate", json.dumps(data), "runs/n1/evaluate/result.json")
    assert result.to_dict() == data and result.extra_keys == ["mAP_small", "zeta"]
    assert result["mAP_small"] == 0.12  # read by key, as the JSON it was written as
    [record] = caplog.records
    assert "runs/n1/evaluate/result.json" in record.message and "mAP_small, zeta" in record.message
    assert "EvaluateResult" in record.message


def test_a_stage_without_a_model_gets_the_envelope_and_keeps_its_keys_quietly(caplog):
    with caplog.at_level(logging.WARNING, logger="pipeline.results"):
        result = results.from_run("fake", {"epochs": 2})
    assert type(result) is results.StageResult and result.to_dict() == {"epochs": 2}
    assert not caplog.records


def test_the_run_context_writes_and_reads_typed_results(tmp_path, monkeypatch):
    monkeypatch.setenv("NIGHTSHIFT_HOME", str(tmp_path / "home"))
    cfg = load_config(overrides=[f"store.uri=file://{tmp_path}/store"]).resolved()
    train = RunContext.create("night-1", "train", cfg)
    url = train.write_result(results.from_run("train", {"mlflow_run_id": "abc", "epochs": 3, "status": "ok"}))
    assert url.endswith("runs/night-1/train/result.json")
    promote = RunContext.create("night-1", "promote", cfg)
    assert promote.has_result("train") and not promote.has_result("export")
    got = promote.result_of("train")
    assert isinstance(got, results.TrainResult) and (got.mlflow_run_id, got.epochs, got.ok) == ("abc", 3, True)
    # an old file dropped into the store loads the same way
    store = LocalStore(tmp_path / "store")
    store.put_bytes(OLD["gate"].encode(), "runs/night-1/gate/result.json")
    assert promote.result_of("gate").passed is True
    with pytest.raises(FileNotFoundError):
        promote.result_of("export")
    store.put_bytes(b'{"passed": "no"}', "runs/night-1/gate/result.json")
    with pytest.raises(results.ResultError, match=r"runs/night-1/gate/result.json: passed: input should be"):
        promote.result_of("gate")


def test_a_stage_returning_a_value_of_the_wrong_type_is_a_bug_naming_the_field():
    with pytest.raises(TypeError, match=r"stage train returned a result that does not fit TrainResult: .*epochs"):
        results.from_run("train", {"epochs": "six"})


# -- through the CLI: a fake stage named after a stage that declares a model ----------------------------------
@pytest.fixture
def fake_train(monkeypatch):
    import sys
    import types

    from pipeline import cli

    module = types.ModuleType("pipeline.stages.train")
    module.returns, module.calls = {"epochs": 2}, []

    def run(cfg, ctx):
        module.calls.append(ctx.run_id)
        if isinstance(module.returns, Exception):
            raise module.returns
        return module.returns

    module.run = run
    monkeypatch.setitem(sys.modules, "pipeline.stages.train", module)
    monkeypatch.setattr(cli, "STAGES", ("train",))
    monkeypatch.setattr(cli, "TOOLS", {})
    return module


def _store():
    return LocalStore(load_config().resolved().store.uri[len("file://"):])


def test_cli_a_result_of_the_wrong_type_fails_the_stage_as_a_bug(fake_train, capsys):
    from pipeline import cli

    fake_train.returns = {"epochs": "six"}
    assert cli.main(["train", "--run-id", "t1"]) == 1
    written = results.read(_store(), "t1", "train")
    assert written.status == "error" and "epochs" in written.error and "TrainResult" in written.error


def test_cli_a_refusal_whose_details_do_not_fit_is_still_recorded(fake_train, capsys):
    from pipeline import cli
    from pipeline.errors import GateFailed

    fake_train.returns = GateFailed("loss exploded", failures=[{"check": "loss"}], result={"epochs": "six"})
    assert cli.main(["train", "--run-id", "t2"]) == 4
    written = results.read(_store(), "t2", "train")
    assert (written.status, written.error, written.epochs) == ("gate_failed", "loss exploded", None)
    assert written.failures == [{"check": "loss"}]  # every failed check is still listed
    assert "the refusal's details are left out" in capsys.readouterr().err


def test_cli_a_previous_result_this_version_cannot_read_is_not_taken_as_done(fake_train, capsys):
    from pipeline import cli

    assert cli.main(["train", "--run-id", "t3"]) == 0
    store = _store()
    old = json.loads(store.get_bytes("runs/t3/train/result.json"))
    store.put_bytes(json.dumps({**old, "epochs": "two"}).encode(), "runs/t3/train/result.json")
    assert cli.main(["train", "--run-id", "t3"]) == 0
    assert fake_train.calls == ["t3", "t3"]  # ran again, and wrote a result it can read
    assert results.read(store, "t3", "train").epochs == 2
    err = capsys.readouterr().err
    assert "previous result not reusable" in err and "result.json: epochs: input should be" in err
