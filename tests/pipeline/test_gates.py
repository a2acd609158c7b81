"""pipeline.gates: the policy, threshold resolution, every check kind, the one failure shape and describe."""
from __future__ import annotations

import re

import pytest

from pipeline import gates
from pipeline.config import GatesConfig
from pipeline.errors import ConfigError, GateFailed, InputRejected


def metrics(ap=0.40, ap50=0.80, champion=None):
    return {"AP": ap, "AP50": ap50, "champion": champion}


# -- policy ------------------------------------------------------------------------------------------

def test_defaults_without_overrides():
    thresholds, relaxed = gates.resolve_thresholds(GatesConfig(map_min=0.1, map50_min=0.5, max_regression=0.02))
    box = {"map_min": 0.1, "map50_min": 0.5, "max_regression": 0.02}
    assert {k: thresholds[k] for k in box} == box and relaxed == []
    # every other gate that is on by default belongs to another task (classification, segmentation masks)
    assert set(thresholds) - set(box) <= {"accuracy_min", "macro_f1_min", *gates.SEGM_GATES}


def test_tightening_needs_no_reason_and_relaxing_does():
    thresholds, relaxed = gates.resolve_thresholds(GatesConfig(map50_min=0.5, overrides={"map50_min": 0.7,
                                                                                          "max_regression": 0.0}))
    assert thresholds["map50_min"] == 0.7 and thresholds["max_regression"] == 0.0 and relaxed == []
    for override in ({"map50_min": 0.3}, {"map_min": -0.1}, {"max_regression": 0.1}):
        with pytest.raises(InputRejected, match="override_reason") as info:
            gates.resolve_thresholds(GatesConfig(overrides=override))
        assert info.value.field == next(iter(override)) and info.value.exit_code == 3
    thresholds, relaxed = gates.resolve_thresholds(GatesConfig(overrides={"max_regression": 0.1},
                                                              override_reason="new class added; AP drop expected"))
    assert thresholds["max_regression"] == 0.1 and relaxed == ["max_regression"]


def test_unknown_gate_name_is_rejected_naming_it():
    with pytest.raises(InputRejected, match="map75_min") as info:
        gates.resolve_thresholds(GatesConfig(overrides={"map75_min": 0.2}, override_reason="x"))
    assert info.value.field == "map75_min" and info.value.path == "gates.overrides"


def test_checks_without_champion_are_absolute_only():
    checks, champion = gates.check(metrics(), {"map_min": 0.3, "map50_min": 0.5, "max_regression": 0.02})
    assert champion is None
    assert [c["name"] for c in checks] == ["map_min", "map50_min"] and all(c["passed"] for c in checks)


def test_regression_against_champion():
    thresholds = {"map_min": 0.0, "map50_min": 0.0, "max_regression": 0.02}
    champ = {"version": "3", "AP": 0.45, "AP50": 0.85}
    checks, summary = gates.check(metrics(ap=0.44, champion=champ), thresholds)
    regression = checks[-1]
    assert regression["name"] == "max_regression" and regression["value"] == pytest.approx(0.01)
    assert regression["passed"] and summary == champ
    checks, _ = gates.check(metrics(ap=0.40, champion=champ), thresholds)
    assert checks[-1]["value"] == pytest.approx(0.05) and not checks[-1]["passed"]


def test_missing_metric_fails_its_check():
    checks, _ = gates.check(metrics(ap=None, ap50=None), {"map_min": 0.0, "map50_min": 0.0, "max_regression": 0.0})
    assert not any(c["passed"] for c in checks)
    assert "n/a" in gates.describe(checks[0])


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
    checks, _ = gates.check(per_class_metrics(), thresholds, min_support=10)
    per_class = [c for c in checks if c["name"] == "per_class_max_regression"]
    assert [(c["class"], c["support"], c["passed"]) for c in per_class] == [("circle", 20, False), ("disk", 15, True)]
    assert per_class[0]["value"] == pytest.approx(0.10)
    assert gates.describe(per_class[0]) == ("per_class_max_regression: AP drop vs champion [circle] = 0.1000, "
                                           "must be <= 0.05")
    # a lower support bar brings the small class in; the new class never has anything to regress from
    checks, _ = gates.check(per_class_metrics(), thresholds, min_support=5)
    assert [c["class"] for c in checks if c["name"] == "per_class_max_regression"] == ["circle", "square", "disk"]


def test_per_class_gate_is_off_by_default_and_needs_per_class_metrics():
    thresholds, _ = gates.resolve_thresholds(GatesConfig())
    assert "per_class_max_regression" not in thresholds
    checks, _ = gates.check(per_class_metrics(), thresholds, 10)
    assert {c["name"] for c in checks} == {"map_min", "map50_min", "max_regression"}
    doc = metrics(champion={"version": "1", "AP": 0.4, "AP50": 0.8})  # champion without per_class
    checks, _ = gates.check(doc, dict(thresholds, per_class_max_regression=0.05), 10)
    assert checks[-1]["value"] is None and not checks[-1]["passed"]
    assert "per-class metrics not measured" in gates.describe(checks[-1])


def test_overrides_apply_to_the_new_gates():
    # switching on a gate that is off tightens the policy: no reason needed
    thresholds, relaxed = gates.resolve_thresholds(GatesConfig(overrides={"per_class_max_regression": 0.05,
                                                                         "latency_p95_ms_max": 40}))
    assert thresholds["per_class_max_regression"] == 0.05 and thresholds["latency_p95_ms_max"] == 40 and not relaxed
    with pytest.raises(InputRejected, match="per_class_max_regression 0.05 -> 0.2"):
        gates.resolve_thresholds(GatesConfig(per_class_max_regression=0.05,
                                            overrides={"per_class_max_regression": 0.2}))


# -- the policy file -------------------------------------------------------------------------------------

def test_policy_file_replaces_config_values(tmp_path):
    policy = tmp_path / "gates.yaml"
    policy.write_text("map50_min: 0.7\nper_class_max_regression: 0.05\nper_class_min_support: 20\n"
                      "latency_p95_ms_max: 40\nmodel_size_mb_max: null\nregression_test: point\n"
                      "slice_max_regression: 0.1\nslice_min_support: 5\n")
    section = GatesConfig(map_min=0.1, model_size_mb_max=30, policy_file=str(policy))
    other_tasks = {"accuracy_min", "macro_f1_min", *gates.SEGM_GATES}  # at their defaults, tested with their task
    loaded = {k: v for k, v in gates.load_policy(section).items() if k not in other_tasks}
    assert loaded == {"map_min": 0.1, "map50_min": 0.7, "max_regression": 0.02, "per_class_max_regression": 0.05,
                      "latency_p95_ms_max": 40.0, "model_size_mb_max": None, "per_class_min_support": 20,
                      "regression_test": "point", "slice_max_regression": 0.1, "slice_min_support": 5,
                      "robustness_max_drop": None, "robustness_max_regression": None}
    thresholds, _ = gates.resolve_thresholds(section)
    thresholds = {k: v for k, v in thresholds.items() if k not in other_tasks}
    assert thresholds == {"map_min": 0.1, "map50_min": 0.7, "max_regression": 0.02,
                          "per_class_max_regression": 0.05, "slice_max_regression": 0.1, "latency_p95_ms_max": 40.0}
    # relaxing is judged against the policy file's value
    with pytest.raises(InputRejected, match="map50_min 0.7 -> 0.6"):
        gates.resolve_thresholds(section.model_copy(update={"overrides": {"map50_min": 0.6}}))


@pytest.mark.parametrize("text, field, message", [
    ("map50_min: 0.6\nmap75_min: 0.3\n", "map75_min", "unknown policy key 'map75_min'"),
    ("map_min: high\n", "map_min", "must be a finite number"),
    ("map_min: null\n", "map_min", "must be a finite number, got None"),
    ("per_class_min_support: 2.5\n", "per_class_min_support", "whole number"),
    ("regression_test: interval\n", "regression_test", "must be one of point, bootstrap, got 'interval'"),
    ("slice_min_support: -1\n", "slice_min_support", "whole number"),
    ("- map_min\n", "(top level)", "must be a mapping"),
])
def test_bad_policy_file_is_rejected_naming_the_key(tmp_path, text, field, message):
    policy = tmp_path / "gates.yaml"
    policy.write_text(text)
    with pytest.raises(InputRejected, match=re.escape(message)) as info:
        gates.load_policy(GatesConfig(policy_file=str(policy)))
    assert info.value.exit_code == 3 and info.value.field == field and info.value.path == str(policy)


def test_missing_policy_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="gates.policy_file: .*nope.yaml not found") as info:
        gates.load_policy(GatesConfig(policy_file=str(tmp_path / "nope.yaml")))
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
            gates.load_policy(GatesConfig(policy_file=str(location)))  # a FIFO without a writer never blocks
        assert time.monotonic() - started < 5
        assert info.value.exit_code == 2 and str(info.value).startswith("gates.policy_file: ")
        assert "\n" not in str(info.value)


def test_a_binary_policy_in_s3_is_refused_in_one_line(s3_server):
    import boto3

    boto3.client("s3", endpoint_url=s3_server).create_bucket(Bucket="policies")
    boto3.client("s3", endpoint_url=s3_server).put_object(Bucket="policies", Key="gates.yaml", Body=b"\xff\xfe\x00")
    with pytest.raises(ConfigError, match=r"^gates.policy_file: s3://policies/gates.yaml is not UTF-8 text"):
        gates.load_policy(GatesConfig(policy_file="s3://policies/gates.yaml"))


# -- deployment budgets on export's report -----------------------------------------------------------------

def export_report(p95=35.0, onnx_bytes=9_500_000):
    return {"speed": {"batches": {"1": {"onnxruntime": {"latency_ms": {"p50": 20.0, "p95": p95}}},
                                  "8": {"onnxruntime": {"latency_ms": {"p50": 90.0, "p95": 120.0}}}}},
            "size": {"onnx_bytes": onnx_bytes}}


def test_deployment_checks_against_the_export_report():
    policy = {"latency_p95_ms_max": 40.0, "model_size_mb_max": 9.0}
    checks = gates.deployment_checks(policy, export_report())
    assert [(c["name"], c["value"], c["passed"]) for c in checks] == [
        ("latency_p95_ms_max", 35.0, True), ("model_size_mb_max", 9.5, False)]
    with pytest.raises(GateFailed, match=r"1 of 2 deployment checks failed: model_size_mb_max: ONNX model size "
                                         r"\(MB\) = 9.5000, must be <= 9") as info:
        gates.enforce(checks, what="deployment")
    assert info.value.exit_code == 4 and [f["check"] for f in info.value.failures] == ["model_size_mb_max"]
    assert gates.enforce(checks[:1]) == checks[:1]
    # budgets that are off are not checked at all
    assert gates.deployment_checks({"latency_p95_ms_max": None}, export_report()) == []
    assert gates.deployment_checks({"map_min": 0.5}, None) == []


def test_deployment_checks_without_measurements_fail_as_not_measured():
    policy = {"latency_p95_ms_max": 40.0, "model_size_mb_max": 20.0}
    checks = gates.deployment_checks(policy, None)
    assert [c["passed"] for c in checks] == [False, False]
    assert "n/a (not measured: no export report)" in gates.describe(checks[0])
    partial = {"size": {"onnx_bytes": 1_000_000}, "speed": {"batches": {"8": {}}}}  # batch 1 not benchmarked
    checks = gates.deployment_checks(policy, partial)
    assert [(c["value"], c["passed"], c.get("note")) for c in checks] == [(None, False, "not measured"),
                                                                         (1.0, True, None)]


def test_deployment_gate_uses_policy_and_overrides(tmp_path):
    policy = tmp_path / "gates.yaml"
    policy.write_text("latency_p95_ms_max: 30\n")
    checks = gates.deployment_gate(GatesConfig(policy_file=str(policy)), export_report(p95=35.0))
    assert [(c["name"], c["threshold"], c["passed"]) for c in checks] == [("latency_p95_ms_max", 30.0, False)]
    relaxed = GatesConfig(policy_file=str(policy), overrides={"latency_p95_ms_max": 50},
                          override_reason="new backbone, latency budget under review")
    assert [c["passed"] for c in gates.deployment_gate(relaxed, export_report(p95=35.0))] == [True]
    assert gates.deployment_gate(GatesConfig(), None) == []
    # relaxing a budget without a reason is refused here as everywhere
    with pytest.raises(InputRejected, match="override_reason"):
        gates.deployment_gate(GatesConfig(policy_file=str(policy), overrides={"latency_p95_ms_max": 50}), None)


# -- the one failure shape, the one describe -----------------------------------------------------------------

def test_a_failed_check_becomes_one_failure_shape():
    checks, _ = gates.check(metrics(ap=0.1, ap50=0.9), {"map_min": 0.2, "map50_min": 0.5})
    [failure] = gates.failures_of(checks)
    assert failure.to_dict() == {"check": "map_min", "expected": ">= 0.2", "actual": 0.1, "direction": ">=",
                                 "message": "map_min: AP = 0.1000, must be >= 0.2", "threshold": 0.2,
                                 "metric": "AP"}
    assert failure.message == gates.describe(checks[0])  # the check and its failure read the same


def test_per_class_and_unmeasured_failures_keep_class_and_note():
    checks = gates.per_class_checks(per_class_metrics(), 0.05, 10)
    as_json = gates.Failure.of_check(checks[0]).to_dict()
    assert as_json["class"] == "circle" and "class_name" not in as_json
    assert as_json["message"] == "per_class_max_regression: AP drop vs champion [circle] = 0.1000, must be <= 0.05"
    [missing] = gates.deployment_checks({"model_size_mb_max": 5.0}, None)
    as_json = gates.Failure.of_check(missing).to_dict()
    assert as_json["actual"] is None and as_json["note"] == "not measured: no export report"
    assert as_json["message"] == "model_size_mb_max: ONNX model size (MB) = n/a (not measured: no export report), " \
                                 "must be <= 5"


def test_failures_without_a_threshold_and_with_a_message_of_their_own():
    failure = gates.Failure("gate", "passed", False)
    assert failure.message == "gate: expected passed, got False"
    assert failure.to_dict() == {"check": "gate", "expected": "passed", "actual": False,
                                 "message": "gate: expected passed, got False"}
    parity = gates.Failure.threshold_check("parity", "val mAP drop, PyTorch - ONNX Runtime", 0.05, "<=", 0.02)
    assert parity.message == "parity: val mAP drop, PyTorch - ONNX Runtime = 0.0500, must be <= 0.02"
    own = gates.Failure("boxes_inside", "every box inside its image", {"unexpected_count": 2},
                        message="boxes_inside: every box inside its image (2 of 40 rows)")
    assert own.to_dict()["message"] == "boxes_inside: every box inside its image (2 of 40 rows)"


def test_refuse_raises_nothing_itself_and_lists_every_failure():
    failures = [gates.Failure("gate", "passed", False),
                gates.Failure.threshold_check("parity", "mAP drop", 0.05, "<=", 0.02)]
    exc = gates.refuse("nothing to promote", failures, {"run": 1})
    assert isinstance(exc, GateFailed) and exc.exit_code == 4 and exc.result == {"run": 1}
    assert str(exc) == ("nothing to promote: gate: expected passed, got False; "
                        "parity: mAP drop = 0.0500, must be <= 0.02")
    assert [f["check"] for f in exc.failures] == ["gate", "parity"]
    import json

    json.dumps(exc.failures)  # result.json carries them as they are


# -- regressions on bootstrap intervals, slices ----------------------------------------------------------------

def stability_metrics(drop_ci, slice_ci=None):
    m = metrics(ap=0.47, champion={"version": "3", "AP": 0.50, "AP50": 0.80})
    m["stability"] = {"confidence": 0.95, "AP": {"drop": 0.03, "ci": drop_ci},
                      "slices": {"size:small": {"support": 30, "challenger": 0.2, "champion": 0.3, "drop": 0.1,
                                                "ci": slice_ci}}}
    return m


def test_bootstrap_mode_fails_a_drop_only_when_the_whole_interval_is_over_the_limit():
    thresholds = {"max_regression": 0.02}
    straddles = stability_metrics([0.004, 0.058])
    (check,), _ = gates.check(straddles, thresholds, regression_test="bootstrap")
    assert check["passed"] and check["value"] == pytest.approx(0.03) and check["test"] == "bootstrap"
    assert gates.describe(check) == ("max_regression: AP drop vs champion = 0.0300 [95% CI 0.0040..0.0580], "
                                     "must be <= 0.02 (judged on the whole interval)")
    (check,), _ = gates.check(stability_metrics([0.021, 0.058]), thresholds, regression_test="bootstrap")
    assert not check["passed"]
    failure = gates.failures_of([check])[0]
    assert failure.ci == (0.021, 0.058) and failure.to_dict()["ci"] == [0.021, 0.058]
    assert failure.message == gates.describe(check)
    # point mode ignores the interval
    (check,), _ = gates.check(straddles, thresholds, regression_test="point")
    assert not check["passed"] and check["test"] == "point" and "ci" not in check


def test_slice_checks_need_support_and_the_stability_section():
    thresholds = {"slice_max_regression": 0.05}
    checks, _ = gates.check(stability_metrics(None, [0.06, 0.14]), thresholds, regression_test="bootstrap",
                            slice_min_support=20)
    assert [(c["slice"], c["passed"], c["support"]) for c in checks] == [("size:small", False, 30)]
    assert gates.check(stability_metrics(None, [0.06, 0.14]), thresholds, slice_min_support=31)[0] == []
    no_suite = metrics(ap=0.47, champion={"version": "3", "AP": 0.50, "AP50": 0.80})
    (check,), _ = gates.check(no_suite, thresholds)
    assert not check["passed"] and check["note"] == "slice metrics not measured"
    assert gates.check(metrics(), thresholds)[0] == []  # no champion: nothing to compare


def test_robustness_checks_against_clean_data_and_the_champion():
    thresholds = {"robustness_max_drop": 0.15, "robustness_max_regression": 0.05}
    m = metrics(ap=0.50, champion={"version": "3", "AP": 0.50, "AP50": 0.80})
    m["robustness"] = {"clean": 0.50, "corruptions": {
        "blur@1": {"challenger": 0.40, "drop_vs_clean": 0.10, "champion": 0.42, "drop_vs_champion": 0.02},
        "jpeg@2": {"challenger": 0.30, "drop_vs_clean": 0.20, "champion": 0.40, "drop_vs_champion": 0.10}}}
    checks, _ = gates.check(m, thresholds)
    failed = [gates.describe(c) for c in checks if not c["passed"]]
    assert len(checks) == 4 and failed == [
        "robustness_max_drop: AP drop vs clean data [corruption:jpeg@2] = 0.2000, must be <= 0.15",
        "robustness_max_regression: AP drop vs champion [corruption:jpeg@2] = 0.1000, must be <= 0.05"]
    # no champion: only the drop against clean data; nothing measured: one failing check per gate that is on
    m["champion"] = None
    assert {c["name"] for c in gates.check(m, thresholds)[0]} == {"robustness_max_drop"}
    (missing,), _ = gates.check(metrics(), {"robustness_max_drop": 0.15})
    assert not missing["passed"] and "evaluate.corruptions is empty" in missing["note"]


def test_a_robustness_regression_is_judged_on_its_bootstrap_interval():
    """Like every drop against the champion: noise (an interval reaching under the limit) passes, a drop whose
    whole interval is over the limit fails and says so; the point test judges the estimate alone."""
    thresholds = {"robustness_max_regression": 0.05}
    m = metrics(ap=0.50, champion={"version": "3", "AP": 0.50, "AP50": 0.80})
    m["robustness"] = {"clean": 0.50, "confidence": 0.95, "corruptions": {
        "blur@1": {"challenger": 0.40, "champion": 0.50, "drop_vs_champion": 0.10, "ci": [0.01, 0.19]},
        "jpeg@2": {"challenger": 0.30, "champion": 0.40, "drop_vs_champion": 0.10, "ci": [0.07, 0.13]}}}
    checks, _ = gates.check(m, thresholds, regression_test="bootstrap")
    assert [(c["slice"], c["passed"], c["test"]) for c in checks] == [
        ("corruption:blur@1", True, "bootstrap"), ("corruption:jpeg@2", False, "bootstrap")]
    assert gates.describe(checks[1]).startswith("robustness_max_regression: AP drop vs champion [corruption:jpeg@2] "
                                                "= 0.1000 [95% CI 0.0700..0.1300], must be <= 0.05")
    point, _ = gates.check(m, thresholds, regression_test="point")
    assert [c["passed"] for c in point] == [False, False]


# -- classification ------------------------------------------------------------------------------------

def classification_metrics(accuracy=0.80, macro_f1=0.75, champion_accuracy=None, ci=None, recall_b=0.7):
    metrics = {"task": "classification", "accuracy": accuracy, "macro_f1": macro_f1, "champion": None,
               "per_class": {"a": {"recall": 0.9, "support": 30}, "b": {"recall": recall_b, "support": 30},
                             "rare": {"recall": 0.0, "support": 2}}}
    if champion_accuracy is not None:
        metrics["champion"] = {"version": "4", "accuracy": champion_accuracy, "macro_f1": 0.8,
                               "per_class": {"a": {"recall": 0.9}, "b": {"recall": 0.9}, "rare": {"recall": 1.0}}}
        metrics["stability"] = {"confidence": 0.95,
                                "accuracy": {"drop": champion_accuracy - accuracy, "ci": ci},
                                "per_class": {"b": {"drop": 0.9 - recall_b, "ci": [0.1, 0.3]}}}
    return metrics


def test_classification_is_judged_on_accuracy_and_macro_f1_not_map():
    thresholds = {"map_min": 0.3, "map50_min": 0.5, "accuracy_min": 0.85, "macro_f1_min": 0.5, "max_regression": 0.02}
    checks, summary = gates.check(classification_metrics(), thresholds)
    assert [c["name"] for c in checks] == ["accuracy_min", "macro_f1_min"] and summary is None
    failed = gates.failures_of(checks)
    assert [f.message for f in failed] == ["accuracy_min: accuracy = 0.8000, must be >= 0.85"]
    # the box gates set away from their defaults are named as not applicable; map50_min at its default is not
    assert gates.not_applicable(thresholds, "classification") == [
        {"name": "map_min", "threshold": 0.3, "note": "not applicable to classification"}]
    # and a detection run ignores the classification gates, naming one set away from its default
    det_checks, _ = gates.check({"AP": 0.4, "AP50": 0.8, "champion": None}, thresholds)
    assert [c["name"] for c in det_checks] == ["map_min", "map50_min"]
    assert [(g["name"], g["note"]) for g in gates.not_applicable(thresholds, "detection")] == [
        ("accuracy_min", "not applicable to detection"), ("macro_f1_min", "not applicable to detection")]


def test_classification_regressions_are_judged_on_their_bootstrap_intervals():
    """An accuracy drop of 0.05 whose interval reaches below the limit passes under bootstrap and fails under
    point; a per-class recall drop whose whole interval is over the limit fails; a class under the support
    minimum is not judged."""
    thresholds = {"accuracy_min": 0.0, "max_regression": 0.02, "per_class_max_regression": 0.05}
    metrics = classification_metrics(champion_accuracy=0.85, ci=[-0.01, 0.11])
    checks, summary = gates.check(metrics, thresholds, min_support=10, regression_test="bootstrap")
    by_name = {(c["name"], c.get("class")): c for c in checks}
    assert set(by_name) == {("accuracy_min", None), ("max_regression", None), ("per_class_max_regression", "a"),
                            ("per_class_max_regression", "b")}
    drop = by_name[("max_regression", None)]
    assert drop["passed"] and drop["test"] == "bootstrap" and drop["value"] == pytest.approx(0.05)
    assert drop["metric"] == "accuracy drop vs champion"
    b = by_name[("per_class_max_regression", "b")]
    assert not b["passed"] and b["support"] == 30
    assert gates.describe(b) == ("per_class_max_regression: recall drop vs champion [b] = 0.2000 "
                                 "[95% CI 0.1000..0.3000], must be <= 0.05 (judged on the whole interval)")
    assert summary == {"version": "4", "accuracy": 0.85, "macro_f1": 0.8}
    point, _ = gates.check(metrics, thresholds, min_support=10, regression_test="point")
    assert not next(c for c in point if c["name"] == "max_regression")["passed"]
