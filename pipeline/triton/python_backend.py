"""Serving the exported ONNX model through Triton's python backend, for servers without an onnxruntime backend.

`python_backend_model` writes a model directory Triton loads with `backend: "python"`: config.pbtxt with the
same inputs and outputs as the ONNX model (`pipeline.triton.config.render`), and `<version>/model.py`
(`pipeline/triton/onnx_model.py`) beside `<version>/model.onnx`. `install_onnxruntime_backend` instead puts
the same model.py in a backends directory as a python-based backend named `onnxruntime`, so that the
`platform: "onnxruntime_onnx"` repository promote publishes loads unchanged on a python-only Triton (such as
the tritonserver nvidia-pytriton ships, see `pipeline.triton.server`).
"""
from __future__ import annotations

import shutil
from pathlib import Path

from pipeline.triton import config as tconfig

MODEL_PY = Path(__file__).with_name("onnx_model.py")


def python_backend_model(onnx_path: str | Path, repo_dir: str | Path, name: str, version: int = 1,
                         io: dict | None = None, max_batch_size: int = 8, instance_count: int = 1,
                         max_queue_delay_us: int = 1000, labels: str | Path | None = None,
                         intra_op_threads: int = 1) -> Path:
    """Write `<repo_dir>/<name>/` for Triton's python backend; returns the model directory."""
    from pipeline.export.onnx_export import io_spec

    io = io or io_spec(onnx_path)
    model_dir = Path(repo_dir) / name
    version_dir = model_dir / str(int(version))
    version_dir.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(onnx_path, version_dir / "model.onnx")
    shutil.copyfile(MODEL_PY, version_dir / "model.py")
    if labels is not None:
        shutil.copyfile(labels, model_dir / tconfig.LABELS_FILE)
    text = tconfig.render(io, name, max_batch_size, "KIND_CPU", instance_count, max_queue_delay_us,
                          labels_output=tconfig.labels_output(io) if labels is not None else "",  # Triton opens it
                          backend="python", parameters={"intra_op_threads": str(int(intra_op_threads))})
    (model_dir / "config.pbtxt").write_text(text)
    return model_dir


def install_onnxruntime_backend(backends_dir: str | Path, name: str = "onnxruntime") -> Path:
    """`<backends_dir>/<name>/model.py`: a python-based backend serving `platform: "onnxruntime_onnx"` models.

    Triton maps that platform to the backend named `onnxruntime`; a backend directory holding only a model.py
    is run by the python backend (libtriton_python.so and its stub under `<backends_dir>/python/`)."""
    target = Path(backends_dir) / name
    target.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(MODEL_PY, target / "model.py")
    return target
