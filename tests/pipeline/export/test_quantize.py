"""INT8 dynamic quantisation: the quantised model itself, and the export stage's INT8 parity gate."""
from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch

from pipeline import cli
from pipeline.config import load_config
from pipeline.context import RunContext
from pipeline.datasets.synthetic import generate
from pipeline.export.onnx_export import export_onnx, io_spec, ort_session, run_session
from pipeline.export.quantize import quantize_int8
from pipeline.training.models import build_model
from tests.helpers import he_init_backbone, only_commands, save_model_pt

MODEL = "ssdlite320_mobilenet_v3_large"
SIZE = 160



@pytest.fixture(scope="module")
def trained_like(tmp_path_factory):
    """An SSDlite with He-initialised backbone (untrained torchvision init ties every score), exported."""
    root = tmp_path_factory.mktemp("int8")
    torch.manual_seed(0)
    model = build_model(MODEL, 4, SIZE).eval()
    he_init_backbone(model)
    export_onnx(model, SIZE, root / "model.onnx")
    return model, root


def test_quantised_model_keeps_the_interface_and_shrinks(trained_like):
    _, root = trained_like
    path = quantize_int8(root / "model.onnx", root / "model.int8.onnx")
    assert io_spec(path) == io_spec(root / "model.onnx")
    ops = {n.op_type for n in onnx.load(str(path)).graph.node}
    assert "ConvInteger" in ops and "NonMaxSuppression" in ops  # weights int8, post-processing untouched
    assert path.stat().st_size < 0.4 * (root / "model.onnx").stat().st_size

    x = np.random.default_rng(0).random((3, 3, SIZE, SIZE), dtype=np.float32)
    fp32, int8 = run_session(ort_session(root / "model.onnx"), x), run_session(ort_session(path), x)
    for a, b in zip(fp32, int8):
        assert a.shape == b.shape and a.dtype == b.dtype
    valid = int8[2] > 0
    assert valid.any() and set(np.unique(int8[2][valid])) <= {1, 2, 3}
    assert np.all(int8[0][valid] >= 0) and np.all(int8[0][valid] <= SIZE)  # boxes stay inside the image
    # quantisation perturbs scores, it does not scramble them: the best score per image stays close
    assert np.abs(fp32[1].max(axis=1) - int8[1].max(axis=1)).max() < 0.1


def test_export_stage_reports_int8_and_gates_on_its_map(trained_like, tmp_path, monkeypatch):
    model, root = trained_like
    only_commands(monkeypatch, "export")
    save_model_pt(tmp_path / "model.pt", model, MODEL, SIZE)
    data = tmp_path / "dataset"
    generate(data, num_images=6, image_size=64, seed=3, min_size=12, max_size=28)
    coco = json.loads((data / "annotations.json").read_text())
    for i, img in enumerate(coco["images"]):
        img["split"] = "val" if i < 4 else "train"
    (data / "annotations.json").write_text(json.dumps(coco))
    sets = [f"mlflow.tracking_uri=sqlite:///{tmp_path / 'mlflow.db'}", "export.benchmark_repeats=1",
            "export.benchmark_warmup=0", "export.benchmark_batches=[1]", "export.verify_images=2",
            "export.int8=true", "export.int8_max_map_drop=-1"]  # no drop is below -1: the INT8 gate must refuse
    cfg = load_config(None, sets).resolved()
    RunContext.create("night-1", "ingest", cfg).publish_dir(data, "dataset")
    RunContext.create("night-1", "train", cfg).publish(tmp_path / "model.pt", "model.pt")

    argv = ["export", "--run-id", "night-1"]
    for s in sets:
        argv += ["--set", s]
    assert cli.main(argv) == 4
    ctx = RunContext.create("night-1", "export", cfg)
    result = ctx.store.get_json(ctx.key("result.json"))
    assert result["status"] == "gate_failed" and [f["check"] for f in result["failures"]] == ["int8_parity"]
    report = ctx.store.get_json(ctx.key("report.json"))
    int8 = report["checks"]["int8"]
    assert int8["file"] == "model.int8.onnx" and int8["parity"]["max_map_drop"] == -1 and not int8["parity"]["passed"]
    assert int8["bytes"] < report["size"]["onnx_bytes"] and report["checks"]["parity"]["passed"]
    assert report["checks"]["tensorrt_ops"]["passed"]
    assert ctx.store.exists(ctx.key("model.int8.onnx"))
    local = ctx.fetch("export", "model.int8.onnx", tmp_path / "got.int8.onnx")
    assert io_spec(local)["outputs"] == io_spec(root / "model.onnx")["outputs"]
