"""train.init=weights: real torchvision models (weights=None) saved in each shape a user may bring, loaded by
name and shape, by position for a backbone-only file, and refused when they are another architecture."""
from __future__ import annotations

import argparse

import pytest
import torch
import torchvision.models as tvm

from pipeline.errors import ConfigError
from pipeline.training.initialise import apply_state, read_state
from pipeline.training.models import build_model

FRCNN = "fasterrcnn_mobilenet_v3_large_320_fpn"


def counted(state: dict) -> list[str]:
    return [k for k in state if not k.endswith("num_batches_tracked")]


@pytest.fixture(scope="module")
def coco_frcnn():
    """A "COCO checkpoint" stand-in: the whole detector with torchvision's 91 classes."""
    torch.manual_seed(1)
    return build_model(FRCNN, 91, 128).state_dict()


def test_a_full_detector_checkpoint_loads_all_but_the_class_head(coco_frcnn, tmp_path):
    path = tmp_path / "coco.pth"
    torch.save(coco_frcnn, path)
    state, names = read_state(path, str(path))
    assert names is None and state.keys() == coco_frcnn.keys()

    torch.manual_seed(2)
    model = build_model(FRCNN, 4, 128)
    fresh_head = model.roi_heads.box_predictor.cls_score.weight.detach().clone()
    report = apply_state(model, state, str(path), FRCNN)

    head = [k for k in counted(coco_frcnn) if k.startswith("roi_heads.box_predictor.")]
    assert len(head) == 4  # cls_score and bbox_pred, weight and bias
    assert report.matched_by == "name"
    assert report.reinitialised == 4 and sorted(report.reinitialised_names) == sorted(head)
    assert report.unused == 4
    assert report.loaded == len(counted(coco_frcnn)) - 4
    assert report.backbone_loaded == report.backbone_total
    loaded = model.state_dict()
    assert all(torch.equal(loaded[k], coco_frcnn[k]) for k in coco_frcnn if k not in head)
    assert torch.equal(model.roi_heads.box_predictor.cls_score.weight, fresh_head)


def test_wrapped_checkpoints_with_ddp_prefixes_are_unwrapped(coco_frcnn, tmp_path):
    """torchvision's reference scripts save {"model": ..., "args": Namespace}; DDP adds `module.`."""
    path = tmp_path / "checkpoint.pth"
    torch.save({"model": {f"module.{k}": v for k, v in coco_frcnn.items()}, "epoch": 25,
                "args": argparse.Namespace(lr=0.02)}, path)
    state, _ = read_state(path, str(path))
    assert state.keys() == coco_frcnn.keys()
    report = apply_state(build_model(FRCNN, 91, 128), state, str(path), FRCNN)
    assert report.reinitialised == 0 and report.unused == 0


@pytest.mark.parametrize("classifier, detector, body", [
    (tvm.mobilenet_v3_large, FRCNN, "backbone.body.0.0.weight"),
    (tvm.resnet50, "fcos_resnet50_fpn", "backbone.body.layer4.2.conv3.weight"),
])
def test_an_imagenet_backbone_file_fills_the_detector_backbone(classifier, detector, body, tmp_path):
    torch.manual_seed(3)
    backbone = classifier(weights=None).state_dict()
    path = tmp_path / "imagenet.pth"
    torch.save(backbone, path)
    state, _ = read_state(path, str(path))
    model = build_model(detector, 4, 128)
    report = apply_state(model, state, str(path), detector)

    assert report.matched_by == "order"
    head = [k for k in counted(backbone) if k.startswith(("fc.", "classifier."))]
    assert report.unused == len(head)  # only the ImageNet classifier has no place in a detector
    assert report.loaded == len(counted(backbone)) - len(head)
    assert report.backbone_loaded == report.loaded and report.backbone_loaded / report.backbone_total > 0.9
    loaded = model.state_dict()
    assert torch.equal(loaded[body], backbone[_source_of(body)])
    stem = ("backbone.body.conv1.weight", "conv1.weight") if "resnet" in detector else \
        ("backbone.body.0.0.weight", "features.0.0.weight")
    assert torch.equal(loaded[stem[0]], backbone[stem[1]])


def _source_of(body: str) -> str:
    rest = body.removeprefix("backbone.body.")
    return rest if rest.startswith("layer") else f"features.{rest}"


def test_an_imagenet_mobilenet_serves_ssdlite_up_to_its_reduced_tail(tmp_path):
    torch.manual_seed(4)
    backbone = tvm.mobilenet_v3_large(weights=None).state_dict()
    model = build_model("ssdlite320_mobilenet_v3_large", 4, 128)
    report = apply_state(model, backbone, "imagenet.pth", "ssdlite320_mobilenet_v3_large")
    assert report.matched_by == "order" and report.backbone_loaded >= report.backbone_total / 2
    assert torch.equal(model.state_dict()["backbone.features.0.0.0.weight"], backbone["features.0.0.weight"])


@pytest.mark.parametrize("source", ["resnet_into_mobilenet", "ssdlite_into_frcnn", "no_tensors"])
def test_weights_for_another_architecture_are_refused_naming_the_file(source, tmp_path):
    path = tmp_path / f"{source}.pth"
    if source == "resnet_into_mobilenet":
        torch.save(tvm.resnet50(weights=None).state_dict(), path)
    elif source == "ssdlite_into_frcnn":
        torch.save(build_model("ssdlite320_mobilenet_v3_large", 4, 128).state_dict(), path)
    else:
        torch.save({"epoch": 3, "note": "not weights"}, path)
    with pytest.raises(ConfigError) as info:
        state, _ = read_state(path, str(path))
        apply_state(build_model(FRCNN, 4, 128), state, str(path), FRCNN)
    assert str(path) in str(info.value) and "'train.weights'" in str(info.value)
    assert info.value.exit_code == 2


def test_a_file_that_is_not_pytorch_is_refused(tmp_path):
    path = tmp_path / "weights.pth"
    path.write_bytes(b"<html>not a checkpoint</html>")
    with pytest.raises(ConfigError, match="not a loadable PyTorch weights file"):
        read_state(path, str(path))


def test_class_head_rows_follow_the_class_names_when_the_class_list_changes():
    """A champion trained on [circle, square, triangle] seeds a model for [triangle, circle, star]: the rows
    of triangle and circle move to their new labels, star starts fresh, square is dropped."""
    torch.manual_seed(5)
    old = build_model("ssdlite320_mobilenet_v3_large", 4, 128)
    src = old.state_dict()
    torch.manual_seed(6)
    new = build_model("ssdlite320_mobilenet_v3_large", 4, 128)
    fresh = {k: v.clone() for k, v in new.state_dict().items()}
    report = apply_state(new, src, "champion", "ssdlite320_mobilenet_v3_large",
                         ["circle", "square", "triangle"], ["triangle", "circle", "star"], mode="champion")
    assert report.class_mapping == {"kept": ["triangle", "circle"], "new": ["star"], "dropped": ["square"]}
    assert report.reinitialised == 0
    got = new.state_dict()
    key = "head.classification_head.module_list.0.1.weight"  # rows (anchor, class) with class 0 = background
    classes = 4
    s = src[key].reshape(-1, classes, *src[key].shape[1:])
    g = got[key].reshape(-1, classes, *got[key].shape[1:])
    f = fresh[key].reshape(-1, classes, *fresh[key].shape[1:])
    assert torch.equal(g[:, 0], s[:, 0])  # background
    assert torch.equal(g[:, 1], s[:, 3])  # triangle: label 3 -> 1
    assert torch.equal(g[:, 2], s[:, 1])  # circle: label 1 -> 2
    assert torch.equal(g[:, 3], f[:, 3])  # star: fresh
    assert torch.equal(got["backbone.features.0.0.0.weight"], src["backbone.features.0.0.0.weight"])


def test_faster_rcnn_box_regression_rows_move_with_their_class():
    torch.manual_seed(7)
    src = build_model(FRCNN, 3, 128).state_dict()  # classes a, b
    model = build_model(FRCNN, 4, 128)  # classes b, c, a
    fresh = model.roi_heads.box_predictor.bbox_pred.weight.detach().clone()
    report = apply_state(model, src, "champion", FRCNN, ["a", "b"], ["b", "c", "a"], mode="champion")
    assert report.class_mapping["new"] == ["c"] and report.reinitialised == 0
    w, s = model.roi_heads.box_predictor.bbox_pred.weight, src["roi_heads.box_predictor.bbox_pred.weight"]
    assert torch.equal(w[4:8], s[8:12])  # b: rows of label 2 -> label 1, four values each
    assert torch.equal(w[8:12], fresh[8:12])  # c: fresh
    assert torch.equal(w[12:16], s[4:8])  # a: label 1 -> 3
    b = model.roi_heads.box_predictor.cls_score.bias
    assert b[1] == src["roi_heads.box_predictor.cls_score.bias"][2]


def test_weights_come_from_s3_through_the_store_client(s3_server, tmp_path):
    import boto3

    from pipeline.training.initialise import fetch_weights

    boto3.client("s3", endpoint_url=s3_server).create_bucket(Bucket="models")
    local = tmp_path / "w.pth"
    torch.save({"x": torch.ones(2)}, local)
    boto3.client("s3", endpoint_url=s3_server).upload_file(str(local), "models", "torchvision/w.pth")
    got = fetch_weights("s3://models/torchvision/w.pth", tmp_path / "dl", s3_server)
    assert got == tmp_path / "dl" / "w.pth" and got.read_bytes() == local.read_bytes()
    with pytest.raises(ConfigError, match="'train.weights': s3://models/torchvision/missing.pth: no such object"):
        fetch_weights("s3://models/torchvision/missing.pth", tmp_path / "dl", s3_server)
