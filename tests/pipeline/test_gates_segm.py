"""The mask gates (segm_map_min, segm_map50_min, segm_max_regression): judged on evaluate's `segm`, not
applicable (and said so) on a detection run, the regression on its bootstrap interval when measured."""
from __future__ import annotations

import pytest

from pipeline import gates
from pipeline.config import GatesConfig


def seg_metrics(ap=0.40, ap50=0.80, segm_ap=0.30, segm_ap50=0.60, champion=None, drop_ci=None):
    out = {"AP": ap, "AP50": ap50, "champion": champion, "segm": {"AP": segm_ap, "AP50": segm_ap50}}
    if drop_ci is not None:
        out["segm"]["champion_drop"] = {"drop": None, "ci": drop_ci, "confidence": 0.95}
    return out


def by_name(checks):
    return {c["name"]: c for c in checks}


def test_mask_gates_default_on_and_judge_segm():
    thresholds, _ = gates.resolve_thresholds(GatesConfig(segm_map_min=0.35, segm_map50_min=0.5))
    assert thresholds["segm_map_min"] == 0.35 and thresholds["segm_max_regression"] == 0.02
    checks = by_name(gates.check(seg_metrics(), thresholds)[0])
    assert not checks["segm_map_min"]["passed"] and checks["segm_map_min"]["value"] == 0.30
    assert checks["segm_map50_min"]["passed"] and checks["segm_map_min"]["metric"] == "mask AP"
    assert "segm_max_regression" not in checks  # no champion
    failure = gates.failures_of(list(checks.values()))
    assert [f.check for f in failure] == ["segm_map_min"]
    assert failure[0].message == "segm_map_min: mask AP = 0.3000, must be >= 0.35"


def test_mask_regression_point_and_on_its_interval():
    thresholds, _ = gates.resolve_thresholds(GatesConfig())
    champion = {"version": "2", "AP": 0.4, "AP50": 0.8, "segm": {"AP": 0.36, "AP50": 0.7}}
    point = by_name(gates.check(seg_metrics(champion=champion), thresholds, regression_test="point")[0])
    reg = point["segm_max_regression"]
    assert reg["value"] == pytest.approx(0.06) and not reg["passed"] and reg["test"] == "point"
    # the interval reaches below the limit: noise, not a regression
    noisy = seg_metrics(champion=champion, drop_ci=[-0.01, 0.12])
    reg = by_name(gates.check(noisy, thresholds, regression_test="bootstrap")[0])["segm_max_regression"]
    assert reg["passed"] and reg["test"] == "bootstrap" and reg["ci"] == [-0.01, 0.12]
    real = seg_metrics(champion=champion, drop_ci=[0.03, 0.09])
    reg = by_name(gates.check(real, thresholds, regression_test="bootstrap")[0])["segm_max_regression"]
    assert not reg["passed"] and "judged on the whole interval" in gates.describe(reg)


def test_champion_without_masks_makes_the_regression_not_applicable():
    thresholds, _ = gates.resolve_thresholds(GatesConfig())
    champion = {"version": "1", "AP": 0.4, "AP50": 0.8}  # a detector champion
    reg = by_name(gates.check(seg_metrics(champion=champion), thresholds)[0])["segm_max_regression"]
    assert reg["passed"] and reg["applicable"] is False and "champion predicts no masks" in reg["note"]


def test_mask_gates_are_not_applicable_to_other_tasks_when_set():
    detection = {"AP": 0.4, "AP50": 0.8, "champion": None}
    thresholds, _ = gates.resolve_thresholds(GatesConfig())
    assert not [c for c in gates.check(detection, thresholds)[0] if c["name"].startswith("segm_")]
    assert gates.not_applicable(thresholds, "detection") == []  # at their defaults they say nothing
    thresholds, _ = gates.resolve_thresholds(GatesConfig(segm_map_min=0.3, overrides={"segm_map50_min": 0.5}))
    assert not [c for c in gates.check(detection, thresholds)[0] if c["name"].startswith("segm_")]
    for task in ("detection", "classification"):
        listed = {item["name"]: item for item in gates.not_applicable(thresholds, task)}
        assert set(listed) == {"segm_map_min", "segm_map50_min"}
        assert listed["segm_map_min"]["note"] == f"not applicable to {task}"
    assert gates.not_applicable(thresholds, "segmentation") == []


def test_policy_file_accepts_the_mask_gates(tmp_path):
    policy = tmp_path / "gates.yaml"
    policy.write_text("segm_map_min: 0.25\nsegm_max_regression: 0.01\n")
    thresholds, _ = gates.resolve_thresholds(GatesConfig(policy_file=str(policy)))
    assert thresholds["segm_map_min"] == 0.25 and thresholds["segm_max_regression"] == 0.01
