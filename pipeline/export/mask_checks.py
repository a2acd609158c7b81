"""The export stage's extra checks for a Mask R-CNN (an ONNX model with a `masks` output).

On top of the detector checks (raw boxes vs PyTorch, batched vs one image, box mAP parity), which a
segmenter passes through unchanged:

- `checks.masks`: on the first `export.verify_images` val images, every detection ONNX Runtime and PyTorch
  share (same label, box IoU >= 0.9, score within 1e-3) has its mask pasted into the image as torchvision
  pastes it and compared with PyTorch's: the share whose binary masks (at 0.5) overlap with IoU >= 0.9 must
  reach `export.output_match_min`; the worst mean probability difference is recorded.
- `checks.segm_parity`: mask AP on the whole val split, PyTorch vs ONNX Runtime's pasted masks; it may drop by
  at most `export.parity_max_segm_ap_drop`.

Both are Failures like the box parity (one refusal, exit 4). INT8 and TensorRT variants of a segmenter are
gated on box mAP only: the mask parity of those is not measured, and the log says so.
"""
from __future__ import annotations

import logging

from pipeline.config import Config
from pipeline.gates import Failure
from pipeline.tasks import dataset_task

log = logging.getLogger(__name__)


def verify_masks(cfg: Config, model, session, dataset, gt: dict) -> tuple[dict, list[Failure]]:
    """({"masks": ..., "segm_parity": ...} for report.json's checks, the failed ones as Failures)."""
    import torch

    from pipeline.export.onnx_export import OrtDetector
    from pipeline.export.segmenter import compare_masks, segm_parity

    n = min(cfg.export.verify_images, len(dataset))
    images = [dataset[i][0] for i in range(n)]
    with torch.inference_mode():
        reference = [{k: v[d["labels"] > 0] for k, v in d.items()} for d in model(images)]
        exported = OrtDetector(session)(images)
    masks = compare_masks(reference, exported)
    masks.update(images=n, passed=masks["agree_fraction"] >= cfg.export.output_match_min)
    log.info("masks on %d val images: %d of %d shared detections agree (mask IoU >= %.2f; worst %.4f, worst "
             "mean probability difference %.2g)", n, masks["agree"], masks["matched"], masks["mask_iou_min"],
             masks["min_mask_iou"], masks["worst_mean_prob_abs_diff"])
    checks = {"masks": masks}
    failures = []
    if not masks["passed"]:
        failures.append(Failure.threshold_check(
            "masks", "share of shared detections whose masks agree, ONNX Runtime vs PyTorch",
            masks["agree_fraction"], ">=", cfg.export.output_match_min))
    if dataset_task(gt) != "segmentation":
        log.warning("the dataset has no masks (its task is %s): mask AP parity not measured", dataset_task(gt))
        checks["segm_parity"] = {"passed": None, "note": f"not measured: a {dataset_task(gt)} dataset has no masks"}
    else:
        parity = segm_parity(model, OrtDetector(session), dataset, gt, cfg.export.parity_max_segm_ap_drop)
        checks["segm_parity"] = parity
        log.info("mask AP parity on %d val images: pytorch %.4f, onnxruntime %.4f (drop %.4f, allowed %.4f)",
                 len(dataset), parity["pytorch"]["AP"] or 0, parity["onnxruntime"]["AP"] or 0,
                 parity["segm_ap_drop"], parity["max_segm_ap_drop"])
        if not parity["passed"]:
            failures.append(Failure.threshold_check("segm_parity", "val mask AP drop, PyTorch - ONNX Runtime",
                                                    parity["segm_ap_drop"], "<=", parity["max_segm_ap_drop"]))
    for name, note in vacuous(checks).items():
        log.warning("%s: %s", name, note)
        checks[name]["note"] = note
    if cfg.export.int8 or cfg.export.tensorrt != "off":
        log.warning("export.int8 / export.tensorrt of a Mask R-CNN: those variants are gated on box mAP only; "
                    "their masks are not checked")
    return checks, failures


def vacuous(checks: dict) -> dict[str, str]:
    """What the mask checks could not show: a model that detects nothing above its score threshold on the
    verify images (an early or undertrained one) passes the mask comparison with 0 of 0 detections, and one
    with mask AP 0 under both runtimes passes the AP parity at any difference in its masks. Both still pass (the
    export is faithful to what the model does); the log and the check's `note` in report.json say so."""
    notes = {}
    masks = checks.get("masks") or {}
    if masks.get("matched") == 0:
        notes["masks"] = (f"no detection shared by PyTorch and ONNX Runtime on the {masks.get('images')} verify "
                          "images (the model detects nothing above its score threshold): the mask comparison "
                          "proves nothing about this export")
    parity = checks.get("segm_parity") or {}
    if parity.get("passed") is not None and not (parity.get("pytorch") or {}).get("AP") \
            and not (parity.get("onnxruntime") or {}).get("AP"):
        notes["segm_parity"] = ("mask AP is 0 under both runtimes: the parity holds trivially and proves nothing "
                                "about the exported masks (train the model further to measure it)")
    return notes
