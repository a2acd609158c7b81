"""Export formats, each followed by a check (STYLE.md §9).

`EXPORTERS` maps a format to a function `(model, image_size, out_dir, cfg, **extra) -> path`; `export()`
wraps any of them uniformly, logging time and size. "tensorrt" is in the table only where `import tensorrt`
works (it is not installable on CPU-only machines: PyPI's `tensorrt*` fetch from NVIDIA's index), never
faked. INT8 quantisation (pipeline.export.quantize) is a variant of the ONNX artifact, not a format.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Callable

log = logging.getLogger(__name__)


def _onnx(model, image_size: int, out_dir: Path, cfg) -> Path:
    from pipeline.export import classifier
    from pipeline.export.onnx_export import export_onnx

    path = Path(out_dir) / "model.onnx"
    if classifier.is_classifier(model):  # images -> softmax scores [B, K] (pipeline.export.classifier)
        classifier.export_onnx(model, image_size, path, opset=cfg.export.opset)
    else:
        export_onnx(model, image_size, path, opset=cfg.export.opset, max_detections=cfg.export.max_detections)
    return path


def _tensorrt(model, image_size: int, out_dir: Path, cfg, calibration=None, timing_cache=None) -> Path:
    """model.plan (`export.tensorrt` precision) from the directory's model.onnx; the profile's max batch is
    the largest configured batch. INT8 calibrates on `calibration` batches (calibration.cache is reused)."""
    from pipeline.export.tensorrt import build_engine

    onnx_path = Path(out_dir) / "model.onnx"
    if not onnx_path.exists():
        _onnx(model, image_size, out_dir, cfg)
    precision = cfg.export.tensorrt if cfg.export.tensorrt != "off" else "fp16"
    path = Path(out_dir) / "model.plan"
    max_batch = max((*cfg.export.benchmark_batches, cfg.promote.max_batch_size))
    build_engine(onnx_path, path, precision, max_batch=max_batch, opt_batch=cfg.export.tensorrt_opt_batch,
                 workspace_mb=cfg.export.tensorrt_workspace_mb,
                 timing_cache=timing_cache, calibration=calibration,
                 calibration_cache=Path(out_dir) / "calibration.cache")
    return path


EXPORTERS: dict[str, Callable] = {
    "onnx": _onnx,
}
try:  # only where TensorRT really imports (a GPU image); never a stand-in
    import tensorrt as _tensorrt_module  # noqa: F401

    EXPORTERS["tensorrt"] = _tensorrt
except ImportError:
    pass


def export(fmt: str, model, image_size: int, out_dir: str | Path, cfg, **extra) -> Path:
    """Run one exporter from the table; logs how long it took and how big the artifact is."""
    if fmt not in EXPORTERS:
        raise KeyError(f"unknown export format {fmt!r}; known: {', '.join(EXPORTERS)}")
    started = time.perf_counter()
    path = EXPORTERS[fmt](model, image_size, Path(out_dir), cfg, **extra)
    log.info("export %s: %s, %.1f MB in %.1fs", fmt, path.name, path.stat().st_size / 1e6,
             time.perf_counter() - started)
    return path
