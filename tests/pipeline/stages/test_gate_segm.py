"""The gate stage with the mask gates: a segmentation run fails on mask AP; a detection run with a mask gate
set passes and lists the gate as not applicable (in the log and the result); a segmentation run whose champion
predicts no masks says its mask regression could not be judged."""
from __future__ import annotations

from tests.pipeline.stages.test_gate import run_gate, shared_db, tracking_uri  # noqa: F401 - fixtures


def test_mask_gate_fails_a_segmentation_run_and_is_na_for_a_detection_run(tracking_uri, capsys):  # noqa: F811
    segm = {"AP": 0.4, "AP50": 0.8, "champion": None, "task": "segmentation", "segm": {"AP": 0.1, "AP50": 0.3}}
    code, result, _ = run_gate("g-segm", segm, tracking_uri, "gates.segm_map_min=0.2", "gates.map50_min=0.5")
    assert code == 4 and result["status"] == "gate_failed"
    assert [f["check"] for f in result["failures"]] == ["segm_map_min"]

    capsys.readouterr()
    detection = {"AP": 0.4, "AP50": 0.8, "champion": None}
    code, result, _ = run_gate("g-det", detection, tracking_uri, "gates.segm_map_min=0.2", "gates.map50_min=0.5")
    assert code == 0 and result["passed"] is True
    assert not [c for c in result["checks"] if c["name"].startswith("segm_")]
    assert result["not_applicable"] == [{"name": "segm_map_min", "threshold": 0.2,
                                         "note": "not applicable to detection"}]
    assert "segm_map_min = 0.2 is not applicable to detection: not judged" in capsys.readouterr().err

    # a segmentation run whose champion is a detector: the mask regression cannot be judged, and says so
    champion = {"version": "1", "AP": 0.4, "AP50": 0.8}
    code, result, _ = run_gate("g-segm-det-champ", dict(segm, champion=champion, task="segmentation"),
                               tracking_uri, "gates.map50_min=0.5")
    assert code == 0 and result["not_applicable"] == []
    reg = next(c for c in result["checks"] if c["name"] == "segm_max_regression")
    assert reg["applicable"] is False and "champion predicts no masks" in reg["note"]
    assert "n/a segm_max_regression: mask AP drop vs champion = n/a (not applicable" in capsys.readouterr().err
