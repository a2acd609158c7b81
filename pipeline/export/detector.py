"""The deployable form of a detector: images [B,3,S,S] in, padded detections out, all inside one graph.

torchvision's SSD post-processing loops over images and classes in Python, which a traced ONNX export
unrolls for the traced batch size (no dynamic batch) and per class (slow). `SSDExport` re-expresses the same
computation batched: backbone + head, box decoding against precomputed anchors, per-class top-k, ONNX's own
batched `NonMaxSuppression` (emitted by `BatchedNMS.symbolic`), then the best D detections per image,
zero-padded. The maths mirrors `torchvision.models.detection.SSD.postprocess_detections` step by step:

  softmax -> decode (BoxCoder weights, clamp) -> clip to the model's input -> per class: score > thresh,
  top `topk_candidates` -> class-wise NMS (IoU > nms_thresh suppresses) -> best `detections_per_img`
  -> boxes rescaled from the model's fixed input to the S x S the caller gave.

The other registered detectors get the same treatment, each mirroring torchvision's own post-processing:
`DenseExport` for RetinaNet and FCOS (per-level top-k over anchors x classes, decode, clip, class-wise NMS as
`batched_nms` does it, best D) and `RCNNExport` for Faster R-CNN (RPN per-level top-k, decode, clip, small-box
and score filters, per-level NMS, best `post_nms_top_n` proposals per image padded to a fixed count, the
multi-scale RoIAlign with image indices, box head, class-wise decode, score filter, class-wise NMS, best D).
Their input goes through the detector's GeneralizedRCNNTransform steps: normalise, resize to the model's size,
zero-pad to `size_divisible`; anchors are computed once for that fixed size.

Outputs: `boxes` float32 [B, D, 4] (x1, y1, x2, y2 in input pixels), `scores` float32 [B, D] (0 = padding),
`labels` int64 [B, D] (model label 1..K, 0 = padding); Mask R-CNN adds `masks` float32 [B, D, M, M]
(`pipeline.export.segmenter.MaskRCNNExport`, built on `RCNNExport.detect`).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.models.detection.faster_rcnn import FasterRCNN
from torchvision.models.detection.fcos import FCOS
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.retinanet import RetinaNet
from torchvision.models.detection.ssd import SSD
from torchvision.ops import nms, roi_align

INPUT_NAMES = ("images",)
OUTPUT_NAMES = ("boxes", "scores", "labels")


class UnsupportedModel(ValueError):
    """The model has no batched export wrapper (see `export_module` for the architectures that have one)."""


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


class _Input(torch.nn.Module):
    """GeneralizedRCNNTransform for a batch of S x S images, traceable: normalise, resize to the model's size
    (none when S is already that size), zero-pad to a multiple of `size_divisible`."""

    def __init__(self, transform, image_size: int):
        super().__init__()
        self.register_buffer("mean", torch.tensor(transform.image_mean).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(transform.image_std).view(1, 3, 1, 1))
        scale = min(float(transform.min_size[-1]) / image_size, float(transform.max_size) / image_size)
        self.resized = int(image_size * scale)  # what F.interpolate(scale_factor, recompute_scale_factor) gives
        self.image_size = int(image_size)
        div = int(transform.size_divisible)
        self.padded = int(-(-self.resized // div) * div)

    def forward(self, images: Tensor) -> Tensor:
        x = (images - self.mean) / self.std
        if self.resized != self.image_size:
            x = F.interpolate(x, size=(self.resized, self.resized), mode="bilinear", align_corners=False)
        if self.padded != self.resized:
            x = F.pad(x, (0, self.padded - self.resized, 0, self.padded - self.resized))
        return x

    def dummy(self) -> tuple[Tensor, ImageList]:
        x = torch.zeros(1, 3, self.padded, self.padded)
        return x, ImageList(x, [(self.resized, self.resized)])


def _clip(boxes: Tensor, size: int) -> Tensor:
    return boxes.clamp(min=0, max=size)


def _classwise_top(boxes: Tensor, scores: Tensor, labels: Tensor, valid: Tensor, nms_thresh: float,
                   offset: float, keep: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """torchvision's `batched_nms(...)[:keep]` per image, batched: boxes [B, N, 4], scores / labels / valid
    [B, N]. Boxes of different labels are moved apart by `offset` (the coordinate trick `batched_nms` uses)
    so one NonMaxSuppression per image is class-wise. Returns the best `keep` survivors per image (boxes,
    scores, labels, kept mask), in score order."""
    b, n = scores.shape[0], int(scores.shape[1])  # N is fixed by the model's input size; B stays dynamic
    shifted = boxes + (labels.to(boxes.dtype) * offset).unsqueeze(-1)
    masked = torch.where(valid, scores, torch.full_like(scores, -1.0))
    selected = BatchedNMS.apply(shifted, masked.unsqueeze(1), n, nms_thresh, -0.5)
    flat = selected[:, 0] * n + selected[:, 2]
    kept = torch.full_like(masked.reshape(-1), -1.0).scatter(0, flat, masked.reshape(-1).gather(0, flat))
    top, idx = kept.reshape(b, n).topk(min(keep, n), dim=1)
    out_boxes = torch.gather(boxes, 1, idx.unsqueeze(-1).expand(b, idx.shape[1], 4))
    return out_boxes, top, torch.gather(labels, 1, idx), top >= 0


def _padded(boxes: Tensor, scores: Tensor, labels: Tensor, kept: Tensor, detections: int,
            scale: float) -> tuple[Tensor, Tensor, Tensor]:
    """The documented outputs: boxes in input pixels, zeros where nothing was kept, padded to D. A sigmoid
    head (RetinaNet, FCOS) may keep a background-column detection, as torchvision does; it is reported as
    padding (label 0, score 0), which is what every consumer makes of label 0."""
    kept = kept & (labels > 0)
    boxes = boxes * scale * kept.unsqueeze(-1).to(boxes.dtype)
    scores = torch.where(kept, scores, torch.zeros_like(scores))
    labels = labels * kept.to(labels.dtype)
    pad = detections - int(scores.shape[1])
    if pad > 0:
        boxes, scores, labels = F.pad(boxes, (0, 0, 0, pad)), F.pad(scores, (0, pad)), F.pad(labels, (0, pad))
    return boxes, scores, labels


class DenseExport(torch.nn.Module):
    """torchvision RetinaNet or FCOS as one batched graph (see the module docstring)."""

    def __init__(self, model: RetinaNet | FCOS, image_size: int, max_detections: int = 0):
        super().__init__()
        model = model.eval()
        self.fcos = isinstance(model, FCOS)
        self.input = _Input(model.transform, image_size)
        self.backbone, self.head, self.box_coder = model.backbone, model.head, model.box_coder
        self.score_thresh, self.nms_thresh = float(model.score_thresh), float(model.nms_thresh)
        self.topk = int(model.topk_candidates)
        self.detections = int(max_detections or model.detections_per_img)
        with torch.no_grad():
            x, image_list = self.input.dummy()
            features = list(self.backbone(x).values())
            anchors = model.anchor_generator(image_list, features)[0]
        self.register_buffer("anchors", anchors)
        hw = [f.shape[-2] * f.shape[-1] for f in features]
        per_location = anchors.shape[0] // sum(hw)
        self.level_sizes = [n * per_location for n in hw]

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        b = images.shape[0]
        head = self.head(list(self.backbone(self.input(images)).values()))
        logits = head["cls_logits"]  # [B, HWA, K+1]
        classes = int(logits.shape[-1])  # K + 1, fixed: keeps every TopK's K a build-time constant
        scores = torch.sigmoid(logits)
        if self.fcos:
            scores = torch.sqrt(scores * torch.sigmoid(head["bbox_ctrness"]))
        boxes, top_scores, labels = [], [], []
        start = 0
        for size in self.level_sizes:
            s = scores[:, start:start + size].reshape(b, size * classes)
            s = torch.where(s > self.score_thresh, s, torch.zeros_like(s))  # below the threshold: never kept
            k = min(self.topk, size * classes)
            val, idx = s.topk(k, dim=1)
            anchor_idx = torch.div(idx, classes, rounding_mode="floor") + start
            rel = torch.gather(head["bbox_regression"], 1, anchor_idx.unsqueeze(-1).expand(b, k, 4))
            anc = self.anchors[anchor_idx.reshape(-1)]
            if self.fcos:
                dec = self.box_coder.decode(rel.reshape(-1, 4), anc)
            else:
                dec = self.box_coder.decode_single(rel.reshape(-1, 4), anc)
            boxes.append(_clip(dec.reshape(b, k, 4), self.input.resized))
            top_scores.append(val)
            labels.append(idx % classes)
            start += size
        boxes, top_scores, labels = torch.cat(boxes, 1), torch.cat(top_scores, 1), torch.cat(labels, 1)
        out = _classwise_top(boxes, top_scores, labels, top_scores > self.score_thresh, self.nms_thresh,
                             self.input.resized + 1.0, self.detections)
        return _padded(*out, self.detections, self.input.image_size / self.input.resized)


class RCNNExport(torch.nn.Module):
    """torchvision Faster R-CNN as one batched graph (see the module docstring). Every image carries exactly
    `post_nms_top_n` proposal slots; slots the RPN left empty are masked out of the final detections."""

    def __init__(self, model: FasterRCNN, image_size: int, max_detections: int = 0):
        super().__init__()
        model = model.eval()
        self.input = _Input(model.transform, image_size)
        self.backbone, self.rpn, self.roi_heads = model.backbone, model.rpn, model.roi_heads
        self.detections = int(max_detections or model.roi_heads.detections_per_img)
        with torch.no_grad():
            x, image_list = self.input.dummy()
            features = self.backbone(x)
            anchors = self.rpn.anchor_generator(image_list, list(features.values()))[0]
            # MultiScaleRoIAlign sets up its level mapper and scales on its first call
            self.roi_heads.box_roi_pool(features, [torch.tensor([[0.0, 0.0, 8.0, 8.0]])], image_list.image_sizes)
        self.register_buffer("anchors", anchors)
        per_level = [f.shape[-2] * f.shape[-1] for f in features.values()]
        self.per_location = anchors.shape[0] // sum(per_level)
        self.level_sizes = [n * self.per_location for n in per_level]
        self.pre_nms = int(self.rpn._pre_nms_top_n["testing"])
        self.post_nms = int(self.rpn._post_nms_top_n["testing"])
        levels = torch.cat([torch.full((min(self.pre_nms, n),), i, dtype=torch.int64)
                            for i, n in enumerate(self.level_sizes)])
        self.register_buffer("levels", levels)

    def proposals(self, features: list[Tensor]) -> tuple[Tensor, Tensor]:
        """RegionProposalNetwork.filter_proposals, batched: ([B, P, 4] boxes, [B, P] slot holds a proposal)."""
        rpn, size = self.rpn, self.input.resized
        objectness, deltas = rpn.head(features)
        b = features[0].shape[0]
        obj = torch.cat([o.permute(0, 2, 3, 1).flatten(1) for o in objectness], 1)  # [B, N], level-major
        reg = torch.cat([d.reshape(-1, self.per_location, 4, d.shape[-2], d.shape[-1]).permute(0, 3, 4, 1, 2)
                         .reshape(b, -1, 4) for d in deltas], 1)
        picks, start = [], 0
        for n in self.level_sizes:
            picks.append(obj[:, start:start + n].topk(min(self.pre_nms, n), dim=1)[1] + start)
            start += n
        idx = torch.cat(picks, 1)  # [B, T]
        t = int(idx.shape[1])
        prob = torch.sigmoid(torch.gather(obj, 1, idx))
        rel = torch.gather(reg, 1, idx.unsqueeze(-1).expand(b, t, 4))
        boxes = _clip(rpn.box_coder.decode_single(rel.reshape(-1, 4), self.anchors[idx.reshape(-1)])
                      .reshape(b, t, 4), size)
        wh = boxes[..., 2:] - boxes[..., :2]
        valid = (wh[..., 0] >= rpn.min_size) & (wh[..., 1] >= rpn.min_size) & (prob >= rpn.score_thresh)
        levels = self.levels.unsqueeze(0).expand(b, t)
        boxes, _, _, kept = _classwise_top(boxes, prob, levels, valid, rpn.nms_thresh, size + 1.0, self.post_nms)
        return boxes, kept

    def roi_align(self, features: dict[str, Tensor], rois: Tensor, pool=None) -> Tensor:
        """MultiScaleRoIAlign (`pool`, default the box head's) on rois [R, 5] (image index, x1, y1, x2, y2). The
        per-level results are put back in RoI order by one row gather through the inverse permutation:
        torchvision's traced merge scatters every output element (a ScatterElements over [R, C, 7, 7], half of
        ONNX Runtime's time)."""
        pool = self.roi_heads.box_roi_pool if pool is None else pool
        maps = [v for k, v in features.items() if k in pool.featmap_names]  # as MultiScaleRoIAlign filters
        if len(maps) == 1:
            return roi_align(maps[0], rois, pool.output_size, pool.scales[0], pool.sampling_ratio)
        levels = pool.map_levels([rois[:, 1:]])
        results, order = [], []
        for level, (feature, scale) in enumerate(zip(maps, pool.scales)):
            idx = torch.where(levels == level)[0]
            order.append(idx)
            results.append(roi_align(feature, rois[idx], pool.output_size, scale, pool.sampling_ratio))
        order = torch.cat(order)  # RoI index of each row of the level-ordered results
        inverse = torch.zeros_like(order).scatter(0, order, torch.arange(order.shape[0], device=order.device))
        return torch.cat(results, 0)[inverse]

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        _, out = self.detect(images)
        return _padded(*out, self.detections, self.input.image_size / self.input.resized)

    def detect(self, images: Tensor) -> tuple[dict[str, Tensor], tuple[Tensor, Tensor, Tensor, Tensor]]:
        """(the FPN features, the best D detections per image before padding: boxes in the model's resized
        pixels, scores, labels, kept mask), for `forward` and Mask R-CNN's mask head."""
        heads, size = self.roi_heads, self.input.resized
        features = self.backbone(self.input(images))
        proposals, slot = self.proposals(list(features.values()))
        b, p = proposals.shape[0], int(proposals.shape[1])
        image_index = torch.arange(b, dtype=proposals.dtype).view(b, 1, 1).expand(b, p, 1)
        rois = torch.cat([image_index, proposals], 2).reshape(-1, 5)
        # only the slots holding a proposal go through RoIAlign and the box head (the RPN often keeps far
        # fewer than post_nms_top_n); their outputs are scattered back to the fixed [B * P] layout
        real = torch.where(slot.reshape(-1))[0]
        logits, regression = heads.box_predictor(heads.box_head(self.roi_align(features, rois[real])))
        classes = int(logits.shape[-1])
        rows = real.unsqueeze(1)
        logits = torch.zeros((rois.shape[0], classes), dtype=logits.dtype).scatter(
            0, rows.expand(-1, classes), logits)
        regression = torch.zeros((rois.shape[0], 4 * classes), dtype=regression.dtype).scatter(
            0, rows.expand(-1, 4 * classes), regression)
        boxes = heads.box_coder.decode_single(regression, proposals.reshape(-1, 4)).reshape(b, p, classes, 4)
        boxes = _clip(boxes[:, :, 1:], size).reshape(b, p * (classes - 1), 4)  # background dropped
        scores = F.softmax(logits, -1).reshape(b, p, classes)[:, :, 1:].reshape(b, -1)
        labels = torch.arange(1, classes, device=images.device).view(1, 1, -1).expand(b, p, classes - 1).reshape(b, -1)
        wh = boxes[..., 2:] - boxes[..., :2]
        valid = (scores > heads.score_thresh) & (wh[..., 0] >= 1e-2) & (wh[..., 1] >= 1e-2) & \
            slot.unsqueeze(-1).expand(b, p, classes - 1).reshape(b, -1)
        out = _classwise_top(boxes, scores, labels, valid, heads.nms_thresh, size + 1.0, self.detections)
        return features, out


def unpad(boxes: Tensor, scores: Tensor, labels: Tensor, masks: Tensor | None = None) -> list[dict[str, Tensor]]:
    """Padded [B, D] outputs -> torchvision's list of per-image dicts (padding dropped). With Mask R-CNN's
    `masks` [B, D, M, M] each dict also holds its detections' `box_masks` [N, M, M] (in-box probabilities, not
    pasted: `pipeline.export.segmenter.paste`)."""
    out = []
    for i, (bx, sc, lb) in enumerate(zip(boxes, scores, labels)):
        keep = lb > 0
        out.append({"boxes": bx[keep], "scores": sc[keep], "labels": lb[keep]})
        if masks is not None:
            out[-1]["box_masks"] = masks[i][keep]
    return out
