"""TensorRT: the Triton config for a plan (everywhere), engine building and running (where TensorRT imports).

The engine tests need `import tensorrt` and a CUDA GPU (markers `tensorrt` and `gpu`, tests/conftest.py skips
them with the reason where either is missing).
"""
from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch

from pipeline.export import EXPORTERS
from pipeline.export.onnx_export import compare_detections, export_onnx, io_spec, ort_session, run_session
from pipeline.export.detector import unpad
from pipeline.training.models import build_model
from pipeline.triton import config as tconfig
from tests.helpers import he_init_backbone

SIZE = 160


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    root = tmp_path_factory.mktemp("trt")
    torch.manual_seed(0)
    model = build_model("ssdlite320_mobilenet_v3_large", 4, SIZE).eval()
    he_init_backbone(model)
    export_onnx(model, SIZE, root / "model.onnx")
    return root


def test_plan_config_is_tensorrt_on_the_gpu_with_the_onnx_io(exported):
    io = io_spec(exported / "model.onnx")
    text = tconfig.render_plan(io, "detector", max_batch_size=8)
    config = tconfig.parse(text)
    assert config.platform == "tensorrt_plan" and config.max_batch_size == 8
    assert [g.kind for g in config.instance_group] == [config.instance_group[0].KIND_GPU]
    assert [o.name for o in config.output] == ["boxes", "scores", "labels"]
    assert list(config.input[0].dims) == [3, SIZE, SIZE]
    pinned = tconfig.pin_version(text, 4)
    assert tconfig.pinned_version(pinned) == 4 and "tensorrt_plan" in pinned


def test_tensorrt_is_in_the_table_exactly_when_it_imports():
    importable = importlib.util.find_spec("tensorrt") is not None
    if importable:
        try:
            import tensorrt  # noqa: F401
        except ImportError:
            importable = False
    assert ("tensorrt" in EXPORTERS) == importable


@pytest.fixture(scope="module")
def trt():
    import tensorrt  # the tests asking for it are marked `tensorrt` and `gpu`: skipped where either is missing

    return tensorrt


@pytest.mark.gpu
@pytest.mark.tensorrt
def test_fp16_engine_with_dynamic_batch_profile_and_timing_cache(trt, exported, tmp_path):
    from pipeline.export.tensorrt import TrtRunner, build_engine

    cache = tmp_path / "timing.cache"
    info = build_engine(exported / "model.onnx", tmp_path / "model.plan", "fp16", max_batch=4, opt_batch=2,
                        timing_cache=cache)
    assert info["profile"]["min"][0] == 1 and info["profile"]["opt"][0] == 2 and info["profile"]["max"][0] == 4
    assert cache.stat().st_size > 0 and info["timing_cache"]["loaded_bytes"] == 0
    again = build_engine(exported / "model.onnx", tmp_path / "again.plan", "fp16", max_batch=4, timing_cache=cache)
    assert again["timing_cache"]["loaded_bytes"] == info["timing_cache"]["saved_bytes"]  # the second build reused it

    runner = TrtRunner(tmp_path / "model.plan")
    assert runner.max_batch == 4
    x = np.random.default_rng(0).random((6, 3, SIZE, SIZE), dtype=np.float32)  # 6 > max: runs in chunks
    got = runner.run(x)
    want = run_session(ort_session(exported / "model.onnx"), x)
    for a, b in zip(got, want):
        assert a.shape == b.shape and a.dtype == b.dtype
    stats = compare_detections(unpad(*map(torch.from_numpy, want)), unpad(*map(torch.from_numpy, got)),
                               iou_min=0.8, score_atol=1e-2)
    assert stats["compared"] > 0 and stats["match_fraction"] >= 0.9, stats


@pytest.mark.gpu
@pytest.mark.tensorrt
def test_int8_engine_calibrates_once_then_reuses_the_cache(trt, exported, tmp_path):
    from pipeline.export.tensorrt import TrtRunner, build_engine

    if not hasattr(trt, "IInt8EntropyCalibrator2"):
        pytest.skip(f"TensorRT {trt.__version__} has no implicit INT8 calibration")
    batches = [np.random.default_rng(i).random((2, 3, SIZE, SIZE), dtype=np.float32) for i in range(3)]
    calib = tmp_path / "calibration.cache"
    first = build_engine(exported / "model.onnx", tmp_path / "int8.plan", "int8", max_batch=2,
                         calibration=batches, calibration_cache=calib)
    assert first["calibration"] == {"batches_served": 3, "cache_reused": False} and calib.stat().st_size > 0
    second = build_engine(exported / "model.onnx", tmp_path / "int8b.plan", "int8", max_batch=2,
                          calibration=batches, calibration_cache=calib)
    assert second["calibration"]["cache_reused"]
    boxes, scores, labels = TrtRunner(tmp_path / "int8.plan").run(batches[0])
    assert boxes.shape == (2, scores.shape[1], 4) and labels.dtype == np.int64
