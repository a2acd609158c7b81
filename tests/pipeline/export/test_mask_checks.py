"""The mask checks say when they prove nothing: no shared detection to compare, or mask AP 0 on both sides."""
from __future__ import annotations

import torch

from pipeline.export.mask_checks import vacuous
from pipeline.export.segmenter import compare_masks


def _detections(n: int) -> list[dict]:
    boxes = torch.tensor([[10.0, 10.0, 40.0, 40.0]] * n).reshape(-1, 4)
    masks = torch.zeros(n, 1, 64, 64)
    masks[:, 0, 10:40, 10:40] = 0.9
    return [{"boxes": boxes, "scores": torch.full((n,), 0.9), "labels": torch.ones(n, dtype=torch.int64),
             "masks": masks}]


def test_a_model_that_detects_nothing_passes_but_is_named_as_proving_nothing():
    nothing = compare_masks(_detections(0), _detections(0))
    assert nothing["matched"] == 0 and nothing["agree_fraction"] == 1.0  # passes, as before
    zero_ap = {"passed": True, "pytorch": {"AP": 0.0}, "onnxruntime": {"AP": 0.0}}
    notes = vacuous({"masks": {**nothing, "images": 3}, "segm_parity": zero_ap})
    assert set(notes) == {"masks", "segm_parity"}
    assert notes["masks"].startswith("no detection shared") and "3 verify images" in notes["masks"]
    assert notes["segm_parity"].startswith("mask AP is 0 under both runtimes")


def test_checks_that_measured_something_have_no_note():
    one = compare_masks(_detections(1), _detections(1))
    assert one["matched"] == 1
    measured = {"passed": True, "pytorch": {"AP": 0.42}, "onnxruntime": {"AP": 0.42}}
    assert vacuous({"masks": {**one, "images": 3}, "segm_parity": measured}) == {}
    not_measured = {"passed": None, "note": "not measured: a detection dataset has no masks"}
    assert vacuous({"masks": {**one, "images": 3}, "segm_parity": not_measured}) == {}
