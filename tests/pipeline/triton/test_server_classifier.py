"""A classifier against a real Triton (the tritonserver of nvidia-pytriton in .venv-triton, on 127.0.0.1): the
python-backend model and promote's repository serve its `scores` exactly as ONNX Runtime computes them, Triton's
classification extension names the classes from labels.txt, and promote's smoke test reads the outputs from
the model's io spec (no boxes/labels to ask for)."""
from __future__ import annotations

import json
import uuid
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline import tracking
from pipeline.config import load_config
from pipeline.context import RunContext
from pipeline.triton import client
from pipeline.triton.repository import ModelRepository

from tests.pipeline.triton.conftest import NEEDS_TRITON

SIZE = 64
LABELS = "circle\nsquare\ntriangle\n"

pytestmark = NEEDS_TRITON


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    """An exported random-weight resnet18 (3 classes, 64 px) with its labels and io.json, one sqlite MLflow."""
    from pipeline.export.classifier import export_onnx
    from pipeline.training.models import build_model

    root = tmp_path_factory.mktemp("triton-classifier")
    torch.manual_seed(0)
    export = root / "export"
    spec = export_onnx(build_model("resnet18", 3, SIZE), SIZE, export / "model.onnx")
    (export / "labels.txt").write_text(LABELS)
    (export / "io.json").write_text(json.dumps(spec))
    return {"export": export, "io": spec, "tracking": f"sqlite:///{root / 'mlflow.db'}"}


def images(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((n, 3, SIZE, SIZE), dtype=np.float32)


def local_scores(onnx_path: Path, x: np.ndarray) -> np.ndarray:
    from pipeline.export.classifier import run_session
    from pipeline.export.onnx_export import ort_session

    return run_session(ort_session(onnx_path), x)


def top_classes(url: str, model: str, x: np.ndarray, count: int) -> list[list[str]]:
    """Triton's classification extension: the `count` best classes of `scores`, as "prob:index:label"."""
    import tritonclient.http as httpclient

    inp = httpclient.InferInput("images", list(x.shape), "FP32")
    inp.set_data_from_numpy(x, binary_data=False)
    with client._client(url) as http:
        result = http.infer(model, [inp], outputs=[httpclient.InferRequestedOutput("scores", class_count=count)])
    return [[v.decode() if isinstance(v, bytes) else str(v) for v in row] for row in result.as_numpy("scores")]


def test_python_backend_serves_scores_and_names_the_classes_from_labels_txt(server, shared):
    from pipeline.triton.python_backend import python_backend_model

    onnx_path, name = shared["export"] / "model.onnx", "py_classifier"
    python_backend_model(onnx_path, server.model_repository, name, io=shared["io"],
                         labels=shared["export"] / "labels.txt")
    client.load_and_wait(server.url, name, 1, timeout_s=60)
    with client._client(server.url) as http:
        config = http.get_model_config(name)
    assert [(o["name"], [int(d) for d in o["dims"]], o.get("label_filename")) for o in config["output"]] == [
        ("scores", [3], "labels.txt")]
    for batch in (1, 3):  # dynamic batch through Triton too
        x = images(batch, seed=batch)
        served = client.infer(server.url, name, 1, x, outputs=("scores",))["scores"]
        want = local_scores(onnx_path, x)
        assert served.dtype == want.dtype and served.shape == want.shape == (batch, 3)
        np.testing.assert_allclose(served, want, rtol=0, atol=1e-6)

    x = images(2, seed=5)
    want = local_scores(onnx_path, x)
    names = LABELS.split()
    for row, probs in zip(top_classes(server.url, name, x, 2), want):
        best = np.argsort(-probs)[:2]
        assert [entry.split(":", 2)[1:] for entry in row] == [[str(i), names[i]] for i in best]
        assert float(row[0].split(":")[0]) == pytest.approx(float(probs[best[0]]), abs=1e-6)
    client.unload(server.url, name, timeout_s=30)


@pytest.mark.slow
def test_promote_smoke_tests_the_classifier_then_rollback_reloads_the_previous_version(server, shared, upstream):
    from pipeline.stages import promote
    from pipeline.stages.rollback import rollback

    name = f"cls_{uuid.uuid4().hex[:8]}"
    cfg = load_config(None, [f"mlflow.tracking_uri={shared['tracking']}", f"promote.model_name={name}",
                             f"promote.triton_repo={server.model_repository}", f"promote.triton_url={server.url}",
                             "promote.ready_timeout_s=60"]).resolved()
    results = []
    for night in ("night-1", "night-2"):
        upstream(cfg, night, shared["export"])
        results.append(promote.run(cfg, RunContext.create(night, "promote", cfg)))
    smoke = results[0]["smoke_test"]
    assert smoke["compared"] == 1 and smoke["match_fraction"] == 1.0 and smoke["max_prob_abs_diff"] <= 1e-6
    assert [r["version"] for r in results] == [1, 2]
    x = images(2, seed=9)
    served = client.infer(server.url, name, 2, x, outputs=("scores",))["scores"]
    np.testing.assert_allclose(served, local_scores(shared["export"] / "model.onnx", x), rtol=0, atol=1e-6)

    summary = rollback(cfg, name)
    assert summary["to"]["triton_version"] == 1
    assert ModelRepository(cfg.promote.triton_repo).served_version(name) == 1
    mv = tracking.current_alias(tracking.registry_client(cfg), name, cfg.promote.alias)
    assert int(mv.version) == results[0]["registry_version"]
    with client._client(server.url) as http:
        assert http.is_model_ready(name, "1") and not http.is_model_ready(name, "2")
