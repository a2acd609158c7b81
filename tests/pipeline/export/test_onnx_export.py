"""ONNX export mechanics on an untrained SSDlite: graph, dynamic batch, eager vs ONNX Runtime, benchmark."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch

from pipeline.export import EXPORTERS
from pipeline.export.bench import benchmark, table
from pipeline.export.detector import unpad
from pipeline.export.wrappers import export_module
from pipeline.export.onnx_export import (OrtDetector, compare_detections, export_onnx, io_spec, ort_session,
                                         run_session)
from pipeline.training.models import build_model
from tests.helpers import he_init_backbone

SIZE = 320


def untrained_ssdlite(num_classes: int = 4) -> torch.nn.Module:
    """Random weights, backbone convs He-initialised: torchvision's own init makes the features vanish and
    ties every score at 1/num_classes, and tied scores cannot be compared element by element."""
    torch.manual_seed(0)
    model = build_model("ssdlite320_mobilenet_v3_large", num_classes, SIZE).eval()
    he_init_backbone(model)
    return model


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    torch.set_num_threads(1)
    model = untrained_ssdlite()
    path = tmp_path_factory.mktemp("onnx") / "model.onnx"
    spec = export_onnx(model, SIZE, path, opset=17)
    return model, path, spec


def test_graph_is_valid_with_documented_io(exported):
    _, path, spec = exported
    onnx.checker.check_model(onnx.load(str(path)), full_check=True)
    assert spec == io_spec(path)
    assert spec["opset"] == 17
    assert spec["inputs"] == [{"name": "images", "dtype": "float32", "shape": [-1, 3, SIZE, SIZE]}]
    assert spec["outputs"] == [
        {"name": "boxes", "dtype": "float32", "shape": [-1, 300, 4]},
        {"name": "scores", "dtype": "float32", "shape": [-1, 300]},
        {"name": "labels", "dtype": "int64", "shape": [-1, 300]},
    ]
    ops = {n.op_type for n in onnx.load(str(path)).graph.node}
    assert "NonMaxSuppression" in ops and "Loop" not in ops  # ONNX's batched NMS, no per-image loop


def test_wrapper_reproduces_torchvision_exactly():
    model = untrained_ssdlite()
    x = torch.rand(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = model(list(x))
        got = unpad(*export_module(model, SIZE)(x))
    for r, g in zip(ref, got):
        assert len(r["scores"]) == len(g["scores"]) > 0
        torch.testing.assert_close(g["scores"], r["scores"], rtol=0, atol=1e-6)
        torch.testing.assert_close(g["boxes"], r["boxes"], rtol=0, atol=1e-4)
        assert torch.equal(g["labels"], r["labels"])


@pytest.mark.parametrize("batch", [1, 3])
def test_onnxruntime_matches_pytorch_at_any_batch(exported, batch):
    model, path, _ = exported
    session = ort_session(path)
    x = torch.rand(batch, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(batch))
    boxes, scores, labels = run_session(session, x.numpy())
    assert boxes.shape == (batch, 300, 4) and scores.shape == (batch, 300) and labels.dtype == np.int64
    assert ((labels == 0) == (scores == 0)).all()  # padding is (0 score, label 0) together
    with torch.no_grad():
        ref = model(list(x))
    stats = compare_detections(ref, OrtDetector(session)(list(x)))
    assert stats["compared"] >= 100 * batch
    assert stats["match_fraction"] >= 0.98, stats
    assert stats["max_box_abs_diff"] < 0.05 and stats["max_score_abs_diff"] < 1e-3


def test_compare_detections_notices_wrong_labels(exported):
    model, path, _ = exported
    x = torch.rand(1, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        ref = model(list(x))
    wrong = [{**d, "labels": d["labels"] % 3 + 1} for d in ref]  # every label changed
    assert compare_detections(ref, ref)["match_fraction"] == 1.0
    assert compare_detections(ref, wrong)["match_fraction"] == 0.0


def test_exporters_table_has_only_real_formats():
    import importlib.util

    # TensorRT is listed exactly where it imports (a GPU image), never faked elsewhere
    expected = {"onnx"} | ({"tensorrt"} if importlib.util.find_spec("tensorrt") else set())
    assert set(EXPORTERS) == expected


def test_benchmark_report(exported):
    model, path, _ = exported
    report = benchmark(model, ort_session(path), SIZE, batches=(1, 2), repeats=2, warmup=1)
    assert set(report["batches"]) == {"1", "2"}
    row = report["batches"]["2"]
    for runtime in ("eager", "onnxruntime"):
        lat = row[runtime]["latency_ms"]
        assert 0 < lat["p50"] <= lat["p99"] and lat["std"] >= 0 and row[runtime]["repeats"] == 2
    assert row["ort_vs_eager_speedup"] == pytest.approx(row["eager"]["latency_ms"]["p50"]
                                                        / row["onnxruntime"]["latency_ms"]["p50"])
    assert "ORT/eager" in table(report)


def test_compare_detections_counts_missing_detections(exported):
    model, _, _ = exported
    x = torch.rand(1, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        ref = model(list(x))
    empty = [{k: v[:0] for k, v in d.items()} for d in ref]
    stats = compare_detections(ref, empty)
    assert stats["compared"] == 100 and stats["match_fraction"] == 0.0
