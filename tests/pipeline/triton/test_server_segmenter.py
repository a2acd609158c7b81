"""A Mask R-CNN against a real Triton (the tritonserver of nvidia-pytriton in .venv-triton, on 127.0.0.1): the
python-backend model and promote's repository serve its four outputs, `masks` included, exactly as ONNX
Runtime computes them, and promote's smoke test compares the masks too."""
from __future__ import annotations

import json
import uuid

import numpy as np
import pytest
import torch

from pipeline.config import load_config
from pipeline.context import RunContext
from pipeline.triton import client

from tests.pipeline.triton.conftest import NEEDS_TRITON

SIZE = 64
OUTPUTS = ("boxes", "scores", "labels", "masks")

pytestmark = NEEDS_TRITON


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    """An exported Mask R-CNN (representative random weights, 2 classes, 64 px) with labels and io.json."""
    from pipeline.export.bench import representative
    from pipeline.export.onnx_export import export_onnx

    root = tmp_path_factory.mktemp("triton-segmenter")
    model = representative("maskrcnn_mobilenet_v3_large_fpn", 2, SIZE)
    with torch.no_grad():  # a few detections per image rather than 100
        model.roi_heads.box_predictor.cls_score.bias[0] = 3.0
    export = root / "export"
    spec = export_onnx(model, SIZE, export / "model.onnx")
    (export / "labels.txt").write_text("disc\nsquare\n")
    (export / "io.json").write_text(json.dumps(spec))
    return {"export": export, "io": spec, "tracking": f"sqlite:///{root / 'mlflow.db'}"}


def images(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((n, 3, SIZE, SIZE), dtype=np.float32)


@pytest.mark.slow
def test_masks_served_as_onnxruntime_computes_them_and_promote_smoke_tests_them(server, shared, upstream):
    from pipeline.export.onnx_export import ort_session, run_session
    from pipeline.stages import promote
    from pipeline.triton.python_backend import python_backend_model

    onnx_path = shared["export"] / "model.onnx"
    python_backend_model(onnx_path, server.model_repository, "py_segmenter", io=shared["io"],
                         labels=shared["export"] / "labels.txt")
    client.load_and_wait(server.url, "py_segmenter", 1, timeout_s=60)
    with client._client(server.url) as http:
        config = http.get_model_config("py_segmenter")
    assert [(o["name"], [int(d) for d in o["dims"]]) for o in config["output"]] == [
        ("boxes", [100, 4]), ("scores", [100]), ("labels", [100]), ("masks", [100, 28, 28])]
    x = images(2, seed=3)  # a batch of two through Triton's dynamic batch dimension
    served = client.infer(server.url, "py_segmenter", 1, x, outputs=OUTPUTS)
    local = dict(zip(OUTPUTS, run_session(ort_session(onnx_path), x)))
    for name in OUTPUTS:
        assert served[name].dtype == local[name].dtype and served[name].shape == local[name].shape, name
        np.testing.assert_allclose(served[name], local[name], rtol=0, atol=1e-6, err_msg=name)
    assert (local["masks"][local["labels"] > 0] > 0.5).any()  # real masks, not only padding
    client.unload(server.url, "py_segmenter", timeout_s=30)

    name = f"seg_{uuid.uuid4().hex[:8]}"
    cfg = load_config(None, [f"mlflow.tracking_uri={shared['tracking']}", f"promote.model_name={name}",
                             f"promote.triton_repo={server.model_repository}", f"promote.triton_url={server.url}",
                             "promote.ready_timeout_s=60"]).resolved()
    upstream(cfg, "seg-night-1", shared["export"])
    smoke = promote.run(cfg, RunContext.create("seg-night-1", "promote", cfg))["smoke_test"]
    assert smoke["match_fraction"] == 1.0 and smoke["masks_compared"] > 0 and smoke["masks_max_abs_diff"] <= 1e-6
