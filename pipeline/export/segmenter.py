"""The deployable form of a Mask R-CNN: `RCNNExport`'s boxes, scores and labels plus a `masks` output, and the
checks that an exported segmenter reproduces PyTorch's masks.

`MaskRCNNExport` runs torchvision's mask branch on the final detections inside the graph: multi-scale RoIAlign
(the mask pool, 14 x 14) on each kept detection's box, the mask head and predictor, and the sigmoid of the
channel of the detection's label, as `maskrcnn_inference` does. Output `masks` float32 [B, D, M, M] (M = 28
for torchvision's predictor): each detection's mask probabilities inside its box, 0 for padding. Only the slots
holding a detection go through the mask head (as the box head skips empty proposal slots).

Pasting a box mask into the image is the consumer's job: `paste` does it with torchvision's
`paste_masks_in_image` (the same call Mask R-CNN's own post-processing makes), so ONNX Runtime's detections
give the same [N, 1, S, S] masks as the eager model and score through `pipeline.training.engine.predict`.
`compare_masks` is the raw-output check (mask IoU of matched detections) and `segm_parity` the mask AP gate.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.models.detection.mask_rcnn import MaskRCNN

from pipeline.export.detector import RCNNExport, _padded

OUTPUT_NAMES = ("boxes", "scores", "labels", "masks")
MASK_THRESHOLD = 0.5


class MaskRCNNExport(RCNNExport):
    """torchvision Mask R-CNN as one batched graph: RCNNExport's outputs plus `masks` [B, D, M, M]."""

    output_names = OUTPUT_NAMES

    def __init__(self, model: MaskRCNN, image_size: int, max_detections: int = 0):
        super().__init__(model, image_size, max_detections)
        heads = self.roi_heads
        with torch.no_grad():
            x, image_list = self.input.dummy()
            features = self.backbone(x)
            box = [torch.tensor([[0.0, 0.0, 8.0, 8.0]])]
            # MultiScaleRoIAlign sets up its level mapper and scales on its first call; M from one mask
            pooled = heads.mask_roi_pool(features, box, image_list.image_sizes)
            self.mask_size = int(heads.mask_predictor(heads.mask_head(pooled)).shape[-1])

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        heads, m = self.roi_heads, self.mask_size
        features, (boxes, scores, labels, kept) = self.detect(images)
        b, d = boxes.shape[0], int(boxes.shape[1])
        image_index = torch.arange(b, dtype=boxes.dtype).view(b, 1, 1).expand(b, d, 1)
        rois = torch.cat([image_index, boxes], 2).reshape(-1, 5)
        real = torch.where((kept & (labels > 0)).reshape(-1))[0]
        logits = heads.mask_predictor(heads.mask_head(self.roi_align(features, rois[real], heads.mask_roi_pool)))
        channel = labels.reshape(-1)[real].view(-1, 1, 1, 1).expand(-1, 1, m, m)
        probs = torch.sigmoid(torch.gather(logits, 1, channel))[:, 0]  # [R, M, M]: each detection's own class
        masks = torch.zeros((b * d, m, m), dtype=probs.dtype).scatter(
            0, real.view(-1, 1, 1).expand(-1, m, m), probs).reshape(b, d, m, m)
        boxes, scores, labels = _padded(boxes, scores, labels, kept, self.detections,
                                        self.input.image_size / self.input.resized)
        if d < self.detections:
            masks = F.pad(masks, (0, 0, 0, 0, 0, self.detections - d))
        return boxes, scores, labels, masks


def paste(box_masks: Tensor, boxes: Tensor, size: int) -> Tensor:
    """In-box mask probabilities [N, M, M] of boxes [N, 4] (S-pixel xyxy) -> [N, 1, S, S] probabilities on the
    image, exactly as torchvision's Mask R-CNN post-processing pastes them."""
    from torchvision.models.detection.roi_heads import paste_masks_in_image

    if len(boxes) == 0:
        return torch.zeros((0, 1, size, size))
    return paste_masks_in_image(box_masks[:, None].float(), boxes.float(), (size, size))


def _mask_iou(a: Tensor, b: Tensor) -> float:
    a, b = a > MASK_THRESHOLD, b > MASK_THRESHOLD
    union = int((a | b).sum())
    return 1.0 if union == 0 else int((a & b).sum()) / union


def _edge_only(a: Tensor, b: Tensor, box: Tensor) -> bool:
    """The binary masks ([1, S, S] or [S, S]) differ only on the box's edge pixels (its outermost row or column
    on each side, give or take one): what pasting does when the two runtimes' boxes sit a hair apart across a
    pixel edge. On a small object (a 3 x 3 px mask) that alone takes the IoU below any threshold while the
    model's masks are the same; a difference inside the box, or away from it, is a real one."""
    import math

    differ = ((a > MASK_THRESHOLD) ^ (b > MASK_THRESHOLD)).reshape(a.shape[-2:])
    x0, y0, x1, y1 = (float(v) for v in box)
    ox0, oy0 = max(math.floor(x0) - 1, 0), max(math.floor(y0) - 1, 0)  # the box grown by one pixel
    ox1, oy1 = math.ceil(x1) + 1, math.ceil(y1) + 1
    ix0, iy0, ix1, iy1 = math.floor(x0) + 1, math.floor(y0) + 1, math.ceil(x1) - 1, math.ceil(y1) - 1  # inside
    inside_grown = differ[oy0:oy1, ox0:ox1].sum()
    interior = differ[iy0:iy1, ix0:ix1].sum() if ix1 > ix0 and iy1 > iy0 else 0
    return int(differ.sum()) == int(inside_grown) and int(interior) == 0


def compare_masks(reference: list[dict], candidate: list[dict], iou_min: float = 0.9, score_atol: float = 1e-3,
                  mask_iou_min: float = 0.9) -> dict:
    """Mask agreement of the detections two runtimes share: each candidate detection with a reference one of
    the same label, box IoU >= iou_min and score within score_atol (as `compare_detections` matches them) is
    compared on its pasted mask: binary IoU at 0.5 and the mean probability difference over the image (the
    worst detection's is reported; not the largest pixel's: pasting rounds box edges to pixels, so a box
    0.0001 px apart can move a whole edge row). `agree_fraction` is the share of matched detections whose masks
    agree: IoU >= mask_iou_min, or (counted in `edge_only`) no more pixels apart than one row or column of the
    box, the edge rounding above, which alone takes a small object's IoU below the threshold."""
    from torchvision.ops import box_iou

    matched = agree = edge_only = 0
    worst_iou, worst_mean = 1.0, 0.0
    for ref, cand in zip(reference, candidate):
        if len(ref["boxes"]) == 0 or len(cand["boxes"]) == 0:
            continue
        iou = box_iou(cand["boxes"].float(), ref["boxes"].float())
        used = torch.zeros(len(ref["boxes"]), dtype=torch.bool)
        for i in torch.argsort(cand["scores"], descending=True).tolist():
            ok = (~used) & (ref["labels"] == cand["labels"][i]) & (iou[i] >= iou_min) & \
                 ((ref["scores"] - cand["scores"][i]).abs() <= score_atol)
            if not ok.any():
                continue
            j = int(torch.where(ok, iou[i], torch.full_like(iou[i], -1.0)).argmax())
            used[j] = True
            matched += 1
            mi = _mask_iou(ref["masks"][j], cand["masks"][i])
            edge = mi < mask_iou_min and _edge_only(ref["masks"][j], cand["masks"][i], ref["boxes"][j])
            agree += mi >= mask_iou_min or edge
            edge_only += edge
            worst_iou = min(worst_iou, mi)
            worst_mean = max(worst_mean, float((ref["masks"][j].float() - cand["masks"][i].float()).abs().mean()))
    return {"matched": matched, "agree": agree, "agree_fraction": agree / matched if matched else 1.0,
            "edge_only": edge_only, "min_mask_iou": worst_iou, "worst_mean_prob_abs_diff": worst_mean,
            "mask_iou_min": mask_iou_min}


def segm_parity(model, runtime, dataset, gt: dict, max_drop: float) -> dict:
    """Mask AP on val: PyTorch vs the exported model (`runtime`, detector-like with pasted `masks`, e.g.
    `OrtDetector`); passes when it drops by at most `max_drop` overall (per-class drops recorded)."""
    from pipeline.metrics.segm import quick_score
    from pipeline.training.engine import predict

    eager = quick_score(gt, predict(model, dataset, progress=False))
    ort = quick_score(gt, predict(runtime, dataset, progress=False))
    drop = (eager["AP"] or 0.0) - (ort["AP"] or 0.0)
    per_class = {name: round((row.get("AP") or 0.0) - ((ort["per_class"].get(name) or {}).get("AP") or 0.0), 6)
                 for name, row in eager["per_class"].items()}
    keys = ("AP", "AP50", "AP75")
    return {"pytorch": {k: eager[k] for k in keys}, "onnxruntime": {k: ort[k] for k in keys},
            "segm_ap_drop": drop, "max_segm_ap_drop": max_drop, "per_class_segm_ap_drop": per_class,
            "passed": drop <= max_drop}
