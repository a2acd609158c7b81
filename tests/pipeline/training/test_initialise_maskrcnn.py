"""train.init=weights for a Mask R-CNN: a Faster R-CNN file of the same backbone, a Mask R-CNN file with other
classes (the mask predictor starts fresh, said in the log), a champion whose mask rows follow the class names,
and a backbone-only classification file."""
from __future__ import annotations

import logging
from types import SimpleNamespace

import torch
import torchvision.models as tvm

from pipeline.training.initialise import apply_state, initialise
from pipeline.training.models import anchor_range, build_model, fit_anchor_scale

MASK = "maskrcnn_mobilenet_v3_large_fpn"
MASK_LOGITS = "roi_heads.mask_predictor.mask_fcn_logits.weight"


def _cfg(init: str = "weights"):
    return SimpleNamespace(train=SimpleNamespace(init=init, model=MASK))


def test_a_faster_rcnn_file_fills_all_but_the_mask_head_and_the_log_says_so(tmp_path, caplog):
    frcnn = build_model("fasterrcnn_mobilenet_v3_large_fpn", 4, 128)
    path = tmp_path / "frcnn.pth"
    torch.save(frcnn.state_dict(), path)
    model = build_model(MASK, 4, 128)
    with caplog.at_level(logging.INFO, logger="pipeline.training.initialise"):
        report = initialise(model, _cfg(), path, {"label": "frcnn.pth"}, ["x", "y", "z"])
    fresh = set(report.reinitialised_names)
    assert fresh and all(".mask_head." in k or ".mask_predictor." in k for k in fresh)
    assert report.backbone_loaded == report.backbone_total
    assert torch.equal(model.state_dict()["roi_heads.box_predictor.cls_score.weight"],
                       frcnn.state_dict()["roi_heads.box_predictor.cls_score.weight"])
    assert "mask predictor" in caplog.text and "frcnn.pth has no mask head" in caplog.text


def test_a_mask_rcnn_file_with_another_class_count_reinitialises_the_mask_predictor(tmp_path, caplog):
    src = build_model(MASK, 91, 128)
    path = tmp_path / "coco.pth"
    torch.save(src.state_dict(), path)
    model = build_model(MASK, 4, 128)
    before = model.state_dict()[MASK_LOGITS].clone()
    with caplog.at_level(logging.INFO, logger="pipeline.training.initialise"):
        report = initialise(model, _cfg(), path, {"label": "coco.pth"}, ["x", "y", "z"])
    assert MASK_LOGITS in report.reinitialised_names
    assert torch.equal(model.state_dict()[MASK_LOGITS], before)
    conv = "roi_heads.mask_head.0.0.weight"
    assert torch.equal(model.state_dict()[conv], src.state_dict()[conv])  # the mask head's convs do load
    assert "mask predictor" in caplog.text and "this run 3" in caplog.text


def test_a_champion_mask_predictor_follows_the_class_names():
    src = build_model(MASK, 3, 128)  # classes a, b
    model = build_model(MASK, 4, 128)  # classes b, c, a
    report = apply_state(model, src.state_dict(), "champion", MASK, ["a", "b"], ["b", "c", "a"], mode="champion")
    got, old = model.state_dict()[MASK_LOGITS], src.state_dict()[MASK_LOGITS]
    assert torch.equal(got[0], old[0]) and torch.equal(got[1], old[2]) and torch.equal(got[3], old[1])
    assert report.class_mapping == {"kept": ["b", "a"], "new": ["c"], "dropped": []}


def test_an_imagenet_mobilenet_fills_the_mask_rcnn_backbone():
    report = apply_state(build_model(MASK, 4, 128), tvm.mobilenet_v3_large(weights=None).state_dict(),
                         "imagenet.pth", MASK)
    assert report.matched_by == "order" and report.backbone_loaded >= 0.5 * report.backbone_total


def test_mask_rcnn_anchors_are_faster_rcnn_anchors():
    assert anchor_range(MASK, 320) == anchor_range("fasterrcnn_mobilenet_v3_large_fpn", 320) == (32.0, 320.0)
    assert anchor_range("maskrcnn_resnet50_fpn", 800) == (32.0, 512.0)
    scale, why = fit_anchor_scale(MASK, 128, [10.0] * 50 + [40.0] * 50)
    assert scale < 1.0 and "anchors" in why
