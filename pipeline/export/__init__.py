"""Export formats, each followed by a check (STYLE.md §9).

`EXPORTERS` maps a format to a function `(model, image_size, out_dir, cfg) -> path`; `export()` wraps any
of them uniformly, logging time and size. TensorRT is not installable on these machines (PyPI's `tensorrt*`
are stubs that fetch from NVIDIA's index), so it is not in the table rather than faked.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Callable

log = logging.getLogger(__name__)


def _onnx(model, image_size: int, out_dir: Path, cfg) -> Path:
    from pipeline.export.onnx_export import export_onnx

    path = Path(out_dir) / "model.onnx"
    export_onnx(model, image_size, path, opset=cfg.export.opset, max_detections=cfg.export.max_detections)
    return path


EXPORTERS: dict[str, Callable] = {
    "onnx": _onnx,
}


def export(fmt: str, model, image_size: int, out_dir: str | Path, cfg) -> Path:
    """Run one exporter from the table; logs how long it took and how big the artifact is."""
    if fmt not in EXPORTERS:
        raise KeyError(f"unknown export format {fmt!r}; known: {', '.join(EXPORTERS)}")
    started = time.perf_counter()
    path = EXPORTERS[fmt](model, image_size, Path(out_dir), cfg)
    log.info("export %s: %s, %.1f MB in %.1fs", fmt, path.name, path.stat().st_size / 1e6,
             time.perf_counter() - started)
    return path
