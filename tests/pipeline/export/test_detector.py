"""Every registered detector exports: the batched wrapper reproduces torchvision, the ONNX graph has a dynamic
batch, ONNX Runtime matches PyTorch, Triton's schema accepts its config, and TensorRT's parser would take it.

Models are `representative` random detectors at 128 px (BatchNorm statistics set, scores spread out): the
outputs of torchvision's own init are all tied and cannot be compared element by element."""
from __future__ import annotations

import pytest
import torch

from pipeline.export.bench import representative
from pipeline.export.detector import UnsupportedModel, export_module, unpad
from pipeline.export.onnx_export import OrtDetector, compare_detections, export_onnx, ort_session
from pipeline.export.trt_ops import check_model
from pipeline.triton.config import parse, render

SIZE = 128
OTHERS = ["fasterrcnn_mobilenet_v3_large_320_fpn", "fasterrcnn_resnet50_fpn", "retinanet_resnet50_fpn",
          "fcos_resnet50_fpn"]


def real(detections: list[dict]) -> list[dict]:
    """torchvision's detections without the background-column ones a sigmoid head may keep (the export
    reports those as padding; every consumer drops label 0)."""
    return [{k: v[d["labels"] > 0] for k, v in d.items()} for d in detections]


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if "resnet50" in n and "rcnn" in n else n
                                  for n in OTHERS])
def test_wrapper_reproduces_torchvision_exactly(name):
    model = representative(name, 3, SIZE)
    x = torch.rand(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = real(model(list(x)))
        got = unpad(*export_module(model, SIZE)(x))
    for r, g in zip(ref, got):
        assert len(g["scores"]) > 20
        n = len(g["scores"])  # D slots hold the background-column ones too, so ref may go on a little further
        torch.testing.assert_close(g["scores"], r["scores"][:n], rtol=0, atol=1e-6)
        torch.testing.assert_close(g["boxes"], r["boxes"][:n], rtol=0, atol=1e-4)
        assert torch.equal(g["labels"], r["labels"][:n])


@pytest.mark.slow
@pytest.mark.parametrize("name", OTHERS)
def test_onnx_export_dynamic_batch_parity_triton_and_tensorrt_ops(name, tmp_path):
    size = 64  # the smallest input every FPN level still fits: the graph is the same, the eager reference quick
    model = representative(name, 3, size)
    if "rcnn" in name:  # fewer proposals keep the eager reference quick; the wrapper reads the model's values
        model.rpn._pre_nms_top_n["testing"] = model.rpn._post_nms_top_n["testing"] = 150
    path = tmp_path / "model.onnx"
    spec = export_onnx(model, size, path)
    detections = export_module(model, size).detections
    assert spec["inputs"] == [{"name": "images", "dtype": "float32", "shape": [-1, 3, size, size]}]
    assert [(o["name"], o["shape"]) for o in spec["outputs"]] == [
        ("boxes", [-1, detections, 4]), ("scores", [-1, detections]), ("labels", [-1, detections])]

    session = ort_session(path)
    x = torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ref = real(model(list(x)))
        batched = OrtDetector(session)(list(x))
        single = [OrtDetector(session)([im])[0] for im in x]
    vs_torch = compare_detections(ref, batched)
    assert vs_torch["compared"] >= 40 and vs_torch["match_fraction"] >= 0.98, vs_torch
    assert compare_detections(single, batched, iou_min=0.99, score_atol=1e-5)["match_fraction"] == 1.0

    config = parse(render(spec, "detector", max_batch_size=8))  # Triton's own schema
    assert config.max_batch_size == 8 and [o.name for o in config.output] == ["boxes", "scores", "labels"]

    ops = check_model(path)
    assert ops["passed"], (ops["unsupported"], ops["problems"])
    assert "NonMaxSuppression" in ops["ops"] and "Loop" not in ops["ops"]


def test_mask_rcnn_has_no_wrapper_and_says_so():
    from torchvision.models.detection import maskrcnn_resnet50_fpn

    model = maskrcnn_resnet50_fpn(weights=None, weights_backbone=None, num_classes=3)
    with pytest.raises(UnsupportedModel, match="MaskRCNN"):
        export_module(model, SIZE)
