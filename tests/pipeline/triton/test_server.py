"""Against a real Triton: the tritonserver binary shipped in nvidia-pytriton (.venv-triton), on 127.0.0.1.

The server has only the python backend. It serves (a) a `backend: "python"` model written by
`python_backend_model` and (b) the repository promote publishes (`platform: "onnxruntime_onnx"`), through the
python-based `onnxruntime` backend `LocalTritonServer` installs. Both run the exported ONNX with onnxruntime,
so Triton's answers must equal in-process onnxruntime's exactly.
"""
from __future__ import annotations

import json
import uuid
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from pipeline import tracking
from pipeline.config import load_config
from pipeline.context import RunContext
from pipeline.triton import client
from pipeline.triton.repository import ModelRepository
from tests.helpers import he_init_backbone

from tests.pipeline.triton.conftest import NEEDS_TRITON

SIZE = 160

pytestmark = NEEDS_TRITON


def made_up_op(src: Path, dst: Path) -> Path:
    """The same model with a custom-domain op on its `scores` output: its io spec is unchanged, but no
    runtime can load it."""
    proto = onnx.load(str(src))
    for node in proto.graph.node:
        node.output[:] = ["scores_raw" if o == "scores" else o for o in node.output]
    proto.graph.node.append(onnx.helper.make_node("NightshiftMadeUpOp", ["scores_raw"], ["scores"],
                                                  domain="nightshift.test"))
    proto.opset_import.append(onnx.helper.make_opsetid("nightshift.test", 1))
    onnx.save(proto, str(dst))
    return dst


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    """An exported SSDlite (He-initialised so its scores are not all tied), a broken twin, one sqlite MLflow."""
    from pipeline.export.onnx_export import export_onnx
    from pipeline.training.models import build_model

    root = tmp_path_factory.mktemp("triton-server")
    torch.manual_seed(0)
    model = build_model("ssdlite320_mobilenet_v3_large", 4, SIZE).eval()
    he_init_backbone(model)
    good, broken = root / "good", root / "broken"
    spec = export_onnx(model, SIZE, good / "model.onnx")
    broken.mkdir()
    made_up_op(good / "model.onnx", broken / "model.onnx")
    for d in (good, broken):
        (d / "labels.txt").write_text("circle\nsquare\ntriangle\n")
        (d / "io.json").write_text(json.dumps(spec))
    return {"good": good, "broken": broken, "tracking": f"sqlite:///{root / 'mlflow.db'}"}


def images(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((n, 3, SIZE, SIZE), dtype=np.float32)


def assert_same_as_onnxruntime(served: dict, onnx_path: Path, x: np.ndarray) -> None:
    from pipeline.export.onnx_export import ort_session, run_session

    local = run_session(ort_session(onnx_path), x)
    for (name, got), want in zip(served.items(), local):
        assert got.dtype == want.dtype and got.shape == want.shape, name
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-6, err_msg=name)
    assert (local[1] > 0).any()  # there are detections to compare, not only padding


def test_python_backend_model_load_ready_infer_unload(server, shared):
    from pipeline.triton.python_backend import python_backend_model

    onnx_path = shared["good"] / "model.onnx"
    python_backend_model(onnx_path, server.model_repository, "py_detector", labels=shared["good"] / "labels.txt")
    with client._client(server.url) as http:
        assert not http.is_model_ready("py_detector")  # explicit mode: nothing loads by itself
        client.load_and_wait(server.url, "py_detector", 1, timeout_s=60)
        assert http.is_model_ready("py_detector", "1")
        config = http.get_model_config("py_detector")
        assert config["backend"] == "python" and config["max_batch_size"] == 8
        assert [o["name"] for o in config["output"]] == ["boxes", "scores", "labels"]

        for batch in (1, 3):  # the batch dimension is really dynamic through Triton too
            x = images(batch, seed=batch)
            assert_same_as_onnxruntime(client.infer(server.url, "py_detector", 1, x), onnx_path, x)

        client.unload(server.url, "py_detector", timeout_s=30)
        assert not http.is_model_ready("py_detector", "1")
        with pytest.raises(client.TritonError, match="inference on py_detector"):
            client.infer(server.url, "py_detector", 1, images(1))


# -- the promote and rollback stages against the real server ----------------------------------------------------
def make_cfg(shared, server):
    name = f"det_{uuid.uuid4().hex[:8]}"
    return load_config(None, [f"mlflow.tracking_uri={shared['tracking']}", f"promote.model_name={name}",
                              f"promote.triton_repo={server.model_repository}", f"promote.triton_url={server.url}",
                              "promote.ready_timeout_s=60"]).resolved()


def alias_version(cfg):
    mv = tracking.current_alias(tracking.registry_client(cfg), cfg.promote.model_name, cfg.promote.alias)
    return int(mv.version) if mv else None


def ready_versions(server, name: str, candidates=(1, 2, 3)) -> list[int]:
    with client._client(server.url) as http:
        return [v for v in candidates if http.is_model_ready(name, str(v))]


@pytest.mark.slow
def test_promote_loads_smoke_tests_then_moves_the_alias_and_a_failed_load_changes_nothing(server, shared, upstream):
    from pipeline.stages import promote

    cfg = make_cfg(shared, server)
    name = cfg.promote.model_name
    upstream(cfg, "night-1", shared["good"])
    first = promote.run(cfg, RunContext.create("night-1", "promote", cfg))
    assert first["version"] == 1 and first["smoke_test"]["match_fraction"] == 1.0
    assert first["smoke_test"]["compared"] > 0 and alias_version(cfg) == first["registry_version"]
    assert ready_versions(server, name) == [1]
    x = images(2, seed=7)
    served_path = Path(cfg.promote.triton_repo) / name / "1" / "model.onnx"
    assert_same_as_onnxruntime(client.infer(server.url, name, 1, x), served_path, x)

    upstream(cfg, "night-2", shared["broken"])  # publishes fine (checksums, config), but Triton cannot load it
    with pytest.raises(client.TritonError, match="load"):
        promote.run(cfg, RunContext.create("night-2", "promote", cfg))
    repo = ModelRepository(cfg.promote.triton_repo)
    assert repo.versions(name) == [1] and repo.served_version(name) == 1
    assert alias_version(cfg) == first["registry_version"]
    assert ready_versions(server, name) == [1]  # the previous version was loaded again and still answers
    assert_same_as_onnxruntime(client.infer(server.url, name, 1, x), served_path, x)


def test_rollback_makes_the_server_serve_the_previous_version(server, shared, upstream):
    from pipeline.stages import promote
    from pipeline.stages.rollback import rollback

    cfg = make_cfg(shared, server)
    name = cfg.promote.model_name
    results = []
    for night in ("night-1", "night-2"):
        upstream(cfg, night, shared["good"])
        results.append(promote.run(cfg, RunContext.create(night, "promote", cfg)))
    assert [r["version"] for r in results] == [1, 2] and ready_versions(server, name) == [2]

    summary = rollback(cfg, name)
    assert summary["to"] == {"registry_version": results[0]["registry_version"], "triton_version": 1}
    assert ready_versions(server, name) == [1]  # reloaded: the pinned config now names version 1 only
    assert ModelRepository(cfg.promote.triton_repo).served_version(name) == 1
    assert alias_version(cfg) == results[0]["registry_version"]
    x = images(1, seed=3)
    assert_same_as_onnxruntime(client.infer(server.url, name, 1, x),
                               Path(cfg.promote.triton_repo) / name / "1" / "model.onnx", x)
