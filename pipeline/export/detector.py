"""The deployable form of a detector: images [B,3,S,S] in, padded detections out, all inside one graph.

torchvision's SSD post-processing loops over images and classes in Python, which a traced ONNX export
unrolls for the traced batch size (no dynamic batch) and per class (slow). `SSDExport` re-expresses the same
computation batched: backbone + head, box decoding against precomputed anchors, per-class top-k, ONNX's own
batched `NonMaxSuppression` (emitted by `BatchedNMS.symbolic`), then the best D detections per image,
zero-padded. The maths mirrors `torchvision.models.detection.SSD.postprocess_detections` step by step:

  softmax -> decode (BoxCoder weights, clamp) -> clip to the model's input -> per class: score > thresh,
  top `topk_candidates` -> class-wise NMS (IoU > nms_thresh suppresses) -> best `detections_per_img`
  -> boxes rescaled from the model's fixed input to the S x S the caller gave.

Outputs: `boxes` float32 [B, D, 4] (x1, y1, x2, y2 in input pixels), `scores` float32 [B, D] (0 = padding),
`labels` int64 [B, D] (model label 1..K, 0 = padding).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.models.detection.ssd import SSD
from torchvision.models.detection.image_list import ImageList
from torchvision.ops import nms

INPUT_NAMES = ("images",)
OUTPUT_NAMES = ("boxes", "scores", "labels")


class UnsupportedModel(ValueError):
    """The model has no batched export wrapper (only SSD-family detectors have one so far)."""


class BatchedNMS(torch.autograd.Function):
    """ONNX NonMaxSuppression semantics in eager, exported as the ONNX op itself.

    boxes [N, A, 4] (x1, y1, x2, y2), scores [N, C, A] -> selected [M, 3] int64 rows (n, c, a): per row n and
    class c, boxes with score > score_threshold, greedily kept in score order, suppressing IoU > iou_threshold,
    at most `max_per_class` each.
    """

    @staticmethod
    def forward(ctx, boxes: Tensor, scores: Tensor, max_per_class: int, iou_threshold: float,
                score_threshold: float) -> Tensor:
        rows = []
        for n in range(boxes.shape[0]):
            for c in range(scores.shape[1]):
                s = scores[n, c]
                cand = torch.nonzero(s > score_threshold).flatten()
                keep = cand[nms(boxes[n, cand], s[cand], iou_threshold)][:max_per_class]
                rows.append(torch.stack([torch.full_like(keep, n), torch.full_like(keep, c), keep], dim=1))
        if not rows:
            return torch.zeros((0, 3), dtype=torch.int64, device=boxes.device)
        return torch.cat(rows).to(torch.int64)

    @staticmethod
    def symbolic(g, boxes, scores, max_per_class: int, iou_threshold: float, score_threshold: float):
        return g.op(
            "NonMaxSuppression", boxes, scores,
            g.op("Constant", value_t=torch.tensor([max_per_class], dtype=torch.int64)),
            g.op("Constant", value_t=torch.tensor([iou_threshold], dtype=torch.float32)),
            g.op("Constant", value_t=torch.tensor([score_threshold], dtype=torch.float32)),
            center_point_box_i=0,
        )


class SSDExport(torch.nn.Module):
    """torchvision SSD / SSDlite as one batched graph with padded outputs (see the module docstring)."""

    def __init__(self, model: SSD, image_size: int, max_detections: int = 0):
        super().__init__()
        model = model.eval()
        self.backbone = model.backbone
        self.head = model.head
        self.image_size = int(image_size)
        h, w = model.transform.fixed_size[1], model.transform.fixed_size[0]  # (width, height) in torchvision
        self.model_hw = (int(h), int(w))
        self.register_buffer("mean", torch.tensor(model.transform.image_mean).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(model.transform.image_std).view(1, 3, 1, 1))
        self.weights = model.box_coder.weights
        self.xform_clip = float(model.box_coder.bbox_xform_clip)
        self.score_thresh = float(model.score_thresh)
        self.nms_thresh = float(model.nms_thresh)
        self.detections = int(max_detections or model.detections_per_img)
        # anchors depend only on the (fixed) input size and feature-map sizes: compute them once
        with torch.no_grad():
            dummy = torch.zeros(1, 3, *self.model_hw)
            features = list(self.backbone(dummy).values())
            anchors = model.anchor_generator(ImageList(dummy, [self.model_hw]), features)[0]
        self.register_buffer("anchors", anchors)
        self.topk = min(int(model.topk_candidates), anchors.shape[0])
        self.num_classes = int(model.head.classification_head.num_columns) - 1  # K, without background
        hgt, wid = self.model_hw
        self.register_buffer("scale", torch.tensor([self.image_size / wid, self.image_size / hgt] * 2))

    def decode(self, rel: Tensor) -> Tensor:
        """Batched `BoxCoder.decode_single`: rel [B, A, 4] against the anchors -> boxes [B, A, 4] xyxy."""
        a = self.anchors
        widths = a[:, 2] - a[:, 0]
        heights = a[:, 3] - a[:, 1]
        ctr_x = a[:, 0] + 0.5 * widths
        ctr_y = a[:, 1] + 0.5 * heights
        wx, wy, ww, wh = self.weights
        dx, dy = rel[..., 0] / wx, rel[..., 1] / wy
        dw = torch.clamp(rel[..., 2] / ww, max=self.xform_clip)
        dh = torch.clamp(rel[..., 3] / wh, max=self.xform_clip)
        px, py = dx * widths + ctr_x, dy * heights + ctr_y
        pw, ph = torch.exp(dw) * widths, torch.exp(dh) * heights
        return torch.stack((px - 0.5 * pw, py - 0.5 * ph, px + 0.5 * pw, py + 0.5 * ph), dim=-1)

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        b = images.shape[0]
        x = (images - self.mean) / self.std
        if self.model_hw != (self.image_size, self.image_size):  # the detector's own fixed-size resize
            x = F.interpolate(x, size=self.model_hw, mode="bilinear", align_corners=False)
        head = self.head(list(self.backbone(x).values()))
        probs = F.softmax(head["cls_logits"], dim=-1)[:, :, 1:].transpose(1, 2)  # [B, K, A], no background
        num_classes = self.num_classes
        boxes = self.decode(head["bbox_regression"])
        hgt, wid = self.model_hw
        boxes = torch.stack((boxes[..., 0].clamp(0, wid), boxes[..., 1].clamp(0, hgt),
                             boxes[..., 2].clamp(0, wid), boxes[..., 3].clamp(0, hgt)), dim=-1)

        # per class: the top-k candidates, then NMS within each (image, class) row
        top_scores, top_idx = probs.topk(self.topk, dim=2)  # [B, K, T]
        cand = torch.gather(boxes.unsqueeze(1).expand(b, num_classes, -1, 4), 2,
                            top_idx.unsqueeze(-1).expand(b, num_classes, self.topk, 4))  # [B, K, T, 4]
        rows = b * num_classes
        selected = BatchedNMS.apply(cand.reshape(rows, self.topk, 4), top_scores.reshape(rows, 1, self.topk),
                                    self.topk, self.nms_thresh, self.score_thresh)
        flat = selected[:, 0] * self.topk + selected[:, 2]
        flat_scores = top_scores.reshape(-1)
        kept = torch.zeros_like(flat_scores).scatter(0, flat, flat_scores.gather(0, flat))
        kept = kept.reshape(b, num_classes * self.topk)

        # the best D survivors per image, zero-padded
        d = min(self.detections, num_classes * self.topk)
        scores, idx = kept.topk(d, dim=1)
        valid = scores > 0
        out_boxes = torch.gather(cand.reshape(b, num_classes * self.topk, 4), 1, idx.unsqueeze(-1).expand(b, d, 4))
        out_boxes = out_boxes * self.scale * valid.unsqueeze(-1).to(out_boxes.dtype)
        labels = (torch.div(idx, self.topk, rounding_mode="floor") + 1) * valid.to(torch.int64)
        if d < self.detections:  # fewer candidates than D in total: pad to the documented shape
            pad = self.detections - d
            out_boxes = F.pad(out_boxes, (0, 0, 0, pad))
            scores = F.pad(scores, (0, pad))
            labels = F.pad(labels, (0, pad))
        return out_boxes, scores, labels


def export_module(model: torch.nn.Module, image_size: int, max_detections: int = 0) -> torch.nn.Module:
    """The batched export wrapper for a trained model, or UnsupportedModel naming what is missing."""
    if isinstance(model, SSD):
        return SSDExport(model, image_size, max_detections).eval()
    raise UnsupportedModel(
        f"{type(model).__name__}: no batched ONNX export wrapper for this architecture yet "
        "(supported: torchvision SSD / SSDlite, e.g. ssdlite320_mobilenet_v3_large)")


def unpad(boxes: Tensor, scores: Tensor, labels: Tensor) -> list[dict[str, Tensor]]:
    """Padded [B, D] outputs -> torchvision's list of per-image dicts (padding dropped)."""
    out = []
    for bx, sc, lb in zip(boxes, scores, labels):
        keep = lb > 0
        out.append({"boxes": bx[keep], "scores": sc[keep], "labels": lb[keep]})
    return out
