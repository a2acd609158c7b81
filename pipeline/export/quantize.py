"""INT8 dynamic quantisation of the exported ONNX model for CPU serving (onnxruntime.quantization).

`quantize_dynamic` stores weights as int8 (Conv -> ConvInteger, MatMul -> MatMulInteger) and quantises
activations at run time per tensor, so no calibration data is needed; the model shrinks about 3.4x. The
post-processing (NMS, TopK, box decoding) stays float. Like every exported artifact it is checked before
it leaves the export stage: its val mAP may not drop more than `export.int8_max_map_drop` below PyTorch's.
"""
from __future__ import annotations

import logging
from pathlib import Path

log = logging.getLogger(__name__)


def quantize_int8(onnx_path: str | Path, out_path: str | Path) -> Path:
    """Write the dynamically INT8-quantised copy of `onnx_path` to `out_path` (same inputs and outputs)."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    quantize_dynamic(str(onnx_path), str(out_path), weight_type=QuantType.QInt8)
    onnx.checker.check_model(onnx.load(str(out_path)))
    log.info("INT8 dynamic quantisation: %s %.1f MB -> %s %.1f MB", Path(onnx_path).name,
             Path(onnx_path).stat().st_size / 1e6, out_path.name, out_path.stat().st_size / 1e6)
    return out_path
