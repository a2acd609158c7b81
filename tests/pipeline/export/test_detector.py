"""Every registered detector's batched wrapper reproduces torchvision (the export stage's test,
tests/pipeline/stages/test_export.py, takes each one through ONNX, its checks, promotion and rollback).

Models are `representative` random detectors at 128 px (BatchNorm statistics set, scores spread out): the
outputs of torchvision's own init are all tied and cannot be compared element by element."""
from __future__ import annotations

import pytest
import torch

from pipeline.export.bench import representative
from pipeline.export.detector import UnsupportedModel, unpad
from pipeline.export.wrappers import export_module

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


def test_keypoint_rcnn_has_no_wrapper_and_says_so():
    from torchvision.models.detection import keypointrcnn_resnet50_fpn

    model = keypointrcnn_resnet50_fpn(weights=None, weights_backbone=None, num_classes=2)
    with pytest.raises(UnsupportedModel, match="KeypointRCNN"):
        export_module(model, SIZE)
