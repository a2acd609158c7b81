"""ONNX export of the batched detector wrapper, ONNX Runtime sessions, and output comparison.

`export_onnx` traces `pipeline.export.wrappers.export_module(...)` with `torch.onnx.export(dynamo=False)`
(the dynamo exporter fails on every torchvision detector), marks the batch dimension dynamic, pins the
detection dimension D to its real size, and runs `onnx.checker.check_model`. `OrtDetector` makes an
ONNX Runtime session look like a torchvision detector, so `pipeline.training.engine.predict` scores both
runtimes through exactly the same code.
"""
from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from pipeline.export.detector import INPUT_NAMES, OUTPUT_NAMES, unpad
from pipeline.export.wrappers import export_module

ONNX_DTYPES = {1: "float32", 6: "int32", 7: "int64", 9: "bool", 10: "float16", 11: "float64"}


def export_onnx(model: torch.nn.Module, image_size: int, path: str | Path, opset: int = 17,
                max_detections: int = 0) -> dict:
    """Export `model` (a trained detector) to `path`; returns the io spec (see `io_spec`)."""
    import onnx

    wrapper = export_module(model, image_size, max_detections)
    names = tuple(getattr(wrapper, "output_names", OUTPUT_NAMES))  # Mask R-CNN adds `masks`
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sample = torch.rand(2, 3, image_size, image_size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad(), warnings.catch_warnings():
        # the wrappers read sizes fixed by the input size (anchor and class counts) as Python ints on purpose
        warnings.filterwarnings("ignore", "Converting a tensor to a Python integer", torch.jit.TracerWarning,
                                r"pipeline\.export\.(detector|segmenter)")
        torch.onnx.export(
            wrapper, (sample,), str(path), dynamo=False, opset_version=opset,
            input_names=list(INPUT_NAMES), output_names=list(names),
            dynamic_axes={name: {0: "batch"} for name in INPUT_NAMES + names},
        )
    # the tracer names data-dependent-looking dims symbolically; D and 4 are fixed by construction
    proto = onnx.load(str(path))
    fixed = {"boxes": [wrapper.detections, 4], "scores": [wrapper.detections], "labels": [wrapper.detections],
             "masks": [wrapper.detections, getattr(wrapper, "mask_size", 0), getattr(wrapper, "mask_size", 0)]}
    for out in proto.graph.output:
        for dim, value in zip(out.type.tensor_type.shape.dim[1:], fixed[out.name]):
            dim.Clear()
            dim.dim_value = value
    onnx.checker.check_model(proto, full_check=True)
    onnx.save(proto, str(path))
    return io_spec(path)


def io_spec(path: str | Path) -> dict:
    """Inputs and outputs of an ONNX model as read from the file: name, dtype, shape (-1 = dynamic)."""
    import onnx

    proto = onnx.load(str(path), load_external_data=False)

    def describe(values):
        out = []
        for v in values:
            t = v.type.tensor_type
            out.append({"name": v.name, "dtype": ONNX_DTYPES.get(t.elem_type, str(t.elem_type)),
                        "shape": [d.dim_value if d.HasField("dim_value") else -1 for d in t.shape.dim]})
        return out

    inits = {i.name for i in proto.graph.initializer}
    spec = {"inputs": describe([i for i in proto.graph.input if i.name not in inits]),
            "outputs": describe(proto.graph.output), "opset": max(o.version for o in proto.opset_import
                                                                  if o.domain in ("", "ai.onnx"))}
    # the task a graph was exported for, when it records one (a classifier's does: pipeline.export.classifier)
    task = {p.key: p.value for p in proto.metadata_props}.get("nightshift.task")
    if task:
        spec["task"] = task
    return spec


def ort_session(path: str | Path, threads: int = 1):
    """An ONNX Runtime CPU session with the settings that matter on shared CPUs (see environment facts):
    graph optimisation ALL, no spinning intra-op threads, sequential execution."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.intra_op_num_threads = max(1, int(threads))
    opts.inter_op_num_threads = 1
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def run_session(session, images: np.ndarray) -> tuple[np.ndarray, ...]:
    """(boxes, scores, labels) of a detector's session, (boxes, scores, labels, masks) of a Mask R-CNN's."""
    names = [o.name for o in session.get_outputs()]
    names = list(OUTPUT_NAMES) + (["masks"] if "masks" in names else [])
    return tuple(session.run(names, {INPUT_NAMES[0]: np.ascontiguousarray(images, np.float32)}))


class OrtDetector(torch.nn.Module):
    """An ONNX Runtime session behind torchvision's detector interface: list of [3,S,S] -> list of dicts.
    A Mask R-CNN's dicts carry `masks` [N, 1, S, S] pasted as torchvision pastes them (and the in-box
    `box_masks` [N, M, M] the graph returned)."""

    def __init__(self, session):
        super().__init__()
        self.session = session

    def forward(self, images: list[Tensor]) -> list[dict[str, Tensor]]:
        batch = torch.stack([im.detach().cpu().float() for im in images]).numpy()
        out = unpad(*(torch.from_numpy(a) for a in run_session(self.session, batch)))
        if out and "box_masks" in out[0]:
            from pipeline.export.segmenter import paste

            for det in out:
                det["masks"] = paste(det["box_masks"], det["boxes"], batch.shape[-1])
        return out


def _iou(a: Tensor, b: Tensor) -> Tensor:
    from torchvision.ops import box_iou

    if len(a) == 0 or len(b) == 0:
        return torch.zeros(len(a), len(b))
    return box_iou(a, b)


def compare_detections(reference: list[dict], candidate: list[dict], top: int = 100, iou_min: float = 0.9,
                       score_atol: float = 1e-3) -> dict:
    """How well `candidate` detections reproduce `reference` ones, image by image, tolerant of reordering.

    Each of the candidate's `top` best detections must match an unused reference detection with the same
    label, IoU >= iou_min and a score within score_atol (near-tied scores legitimately swap order and, at
    the margins, membership); a candidate with fewer detections than the reference counts the shortfall
    as unmatched. Returns the matched fraction and the worst box/score error among matches.
    """
    matched = total = 0
    max_box = max_score = 0.0
    for ref, cand in zip(reference, candidate):
        order = torch.argsort(cand["scores"], descending=True)[:top]
        iou = _iou(cand["boxes"][order].float(), ref["boxes"].float())
        used = torch.zeros(len(ref["boxes"]), dtype=torch.bool)
        total += max(0, min(top, len(ref["scores"])) - len(order))  # reference detections the candidate lacks
        for row, i in enumerate(order.tolist()):
            total += 1
            ok = (~used) & (ref["labels"] == cand["labels"][i]) & \
                 ((ref["scores"] - cand["scores"][i]).abs() <= score_atol)
            if len(ref["boxes"]):
                ok &= iou[row] >= iou_min
            if not ok.any():
                continue
            j = int(torch.where(ok, iou[row], torch.full_like(iou[row], -1.0)).argmax())
            used[j] = True
            matched += 1
            max_box = max(max_box, float((ref["boxes"][j] - cand["boxes"][i]).abs().max()))
            max_score = max(max_score, float((ref["scores"][j] - cand["scores"][i]).abs()))
    return {"compared": total, "matched": matched, "match_fraction": matched / total if total else 1.0,
            "max_box_abs_diff": max_box, "max_score_abs_diff": max_score}


def write_labels(categories: list[dict], path: str | Path) -> Path:
    """labels.txt: one class name per model label 1..K, in order (label i is line i)."""
    path = Path(path)
    path.write_text("".join(f"{c['name']}\n" for c in categories))
    return path


def write_io(spec: dict, path: str | Path) -> Path:
    path = Path(path)
    path.write_text(json.dumps(spec, indent=2) + "\n")
    return path
