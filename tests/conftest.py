"""Shared fixtures: every test gets its own Nightshift workspace, so nothing touches ./.nightshift."""
from __future__ import annotations

import functools
import logging
import socket

import pytest


# -- markers that say what a test needs (pyproject.toml declares them); `make test` runs every test, and one
# whose need is missing here is skipped saying which -------------------------------------------------------------

@functools.cache
def _tensorrt_missing() -> str | None:
    try:
        import tensorrt  # noqa: F401
    except ImportError as exc:  # PyPI's tensorrt wheels are stubs that fetch from NVIDIA's index: none here
        return f"TensorRT is not installed ({exc})"
    return None


@functools.cache
def _gpu_missing() -> str | None:
    import torch

    return None if torch.cuda.is_available() else "no CUDA GPU on this machine"


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item):
    """Skip a `tensorrt` or `gpu` test before its fixtures are built (they export models) where it cannot run."""
    for marker, missing in (("tensorrt", _tensorrt_missing), ("gpu", _gpu_missing)):
        if item.get_closest_marker(marker) and (reason := missing()):
            pytest.skip(reason)


@pytest.fixture(autouse=True)
def nightshift_home(tmp_path, monkeypatch):
    home = tmp_path / "nightshift-home"
    home.mkdir()
    monkeypatch.setenv("NIGHTSHIFT_HOME", str(home))
    monkeypatch.delenv("NIGHTSHIFT_WEBHOOK_URL", raising=False)
    return home


@pytest.fixture(autouse=True)
def keep_logging():
    """cli.main points the root logger at the running test's captured stderr; put it back afterwards."""
    handlers, level = logging.root.handlers[:], logging.root.level
    yield
    logging.root.handlers[:] = handlers
    logging.root.setLevel(level)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def free_port():
    """A function returning an unused TCP port on 127.0.0.1."""
    return _free_port


@pytest.fixture
def s3_server(monkeypatch):
    """A local S3-compatible server (moto) on 127.0.0.1 with fake credentials; yields its endpoint URL."""
    from moto.server import ThreadedMotoServer

    # werkzeug logs every request from the server's threads through a handler bound to the stderr of the
    # test that started it; once pytest closes that stream each line becomes a "--- Logging error ---" traceback
    werkzeug = logging.getLogger("werkzeug")
    level = werkzeug.level
    werkzeug.setLevel(logging.WARNING)
    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    # moto keeps its buckets in process-wide memory, shared by every server started in this process: start
    # each test from an empty S3, so no test sees another's objects
    import urllib.request

    urllib.request.urlopen(urllib.request.Request(f"{endpoint}/moto-api/reset", method="POST"), timeout=30).close()
    for key, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                       "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": endpoint}.items():
        monkeypatch.setenv(key, value)
    try:
        yield endpoint
    finally:
        server.stop()
        werkzeug.setLevel(level)


@pytest.fixture
def upstream():
    """`upstream(cfg, run_id, export_dir, passed=True)`: what train, gate and export leave behind for `run_id`
    (an MLflow run with model weights, the three stage results, the exported model files with their sha256); returns the MLflow run id."""
    from pathlib import Path

    def publish(cfg, run_id: str, export_dir: Path, passed: bool = True) -> str:
        import mlflow

        from pipeline import tracking
        from pipeline.context import RunContext

        mlrun = tracking.run_for(cfg, run_id)
        weights = Path(cfg.store.uri.removeprefix("file://")).parent / f"{run_id}-model.pt"
        weights.write_bytes(b"weights of " + run_id.encode())
        mlflow.MlflowClient().log_artifact(mlrun, str(weights), artifact_path="model")
        RunContext.create(run_id, "train", cfg).publish_json({"status": "ok", "mlflow_run_id": mlrun}, "result.json")
        RunContext.create(run_id, "gate", cfg).publish_json({"status": "ok", "passed": passed}, "result.json")
        from pipeline.triton.repository import sha256_file

        ctx = RunContext.create(run_id, "export", cfg)
        for name in ("model.onnx", "labels.txt", "io.json"):
            ctx.publish(export_dir / name, name)
        ctx.publish_json({"status": "ok", "run_id": ctx.run_id, "sha256": {
            name: sha256_file(export_dir / name) for name in ("model.onnx", "labels.txt", "io.json")}}, "result.json")
        return mlrun

    return publish


@pytest.fixture(scope="session")
def split_dataset():
    """`split_dataset(path, size)`: a canonical dataset of 22 generated `size` px images in `path`, split by
    position (16 train, 4 val, 2 test), each image its own group: what the train-stage tests start from."""
    import json

    def make(path, size: int):
        from pipeline.datasets.synthetic import generate

        generate(path, num_images=22, image_size=size, seed=5, min_size=12, max_size=28)
        coco = json.loads((path / "annotations.json").read_text())
        for i, image in enumerate(coco["images"]):
            image["split"] = "train" if i < 16 else ("val" if i < 20 else "test")
            image["group"] = image["file_name"]
        (path / "annotations.json").write_text(json.dumps(coco))
        return path

    return make


@pytest.fixture
def keep_torch_settings():
    """Training sets torch's thread count and deterministic mode process-wide; put them back afterwards."""
    import torch

    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(False)
