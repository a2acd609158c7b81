"""Detection metrics at one operating point: precision/recall/F1 and a confusion matrix at a score threshold.

Both match boxes at IoU >= 0.5, greedily in descending score order, the way COCOeval does: a detection takes
the unmatched ground-truth box it overlaps most; a detection that only overlaps a crowd region is ignored
(neither true nor false positive), and crowd regions never count as missed objects.

- `operating_point` matches within each class (a detection can only be right about its own class).
- `confusion_matrix` matches across classes, preferring a same-class box, so a detection on the right object
  with the wrong label lands off the diagonal instead of counting as one false positive plus one miss.
  Rows are ground truth, columns predictions, each over the classes (sorted by id) then `background`.

Inputs are the validated copies from `pipeline.metrics.coco` (bbox always present).
"""
from __future__ import annotations

from collections import defaultdict

import numpy as np

IOU_MATCH = 0.5


def _xyxy(boxes) -> np.ndarray:
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    return np.concatenate([b[:, :2], b[:, :2] + b[:, 2:]], axis=1)


def box_iou(dt_xywh, gt_xywh, crowd) -> np.ndarray:
    """[n_dt, n_gt] IoU; against a crowd region the union is the detection's own area (as in COCO)."""
    d, g = _xyxy(dt_xywh), _xyxy(gt_xywh)
    if not len(d) or not len(g):
        return np.zeros((len(d), len(g)))
    lt = np.maximum(d[:, None, :2], g[None, :, :2])
    rb = np.minimum(d[:, None, 2:], g[None, :, 2:])
    inter = np.clip(rb - lt, 0, None).prod(axis=2)
    area_d = (d[:, 2:] - d[:, :2]).prod(axis=1)
    area_g = (g[:, 2:] - g[:, :2]).prod(axis=1)
    union = area_d[:, None] + area_g[None, :] - inter
    union = np.where(np.asarray(crowd, dtype=bool)[None, :], area_d[:, None], union)
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = np.where(union > 0, inter / union, 0.0)
    return iou


def by_image(gt: dict, dt: list[dict], score_threshold: float):
    """Ground truth and the detections scoring at least `score_threshold`, grouped by image id."""
    gts, dts = defaultdict(list), defaultdict(list)
    for ann in gt["annotations"]:
        gts[ann["image_id"]].append(ann)
    for det in dt:
        if det["score"] >= score_threshold:
            dts[det["image_id"]].append(det)
    return gts, dts


def _match(dets: list[dict], gts: list[dict], same_class_only: bool):
    """Greedy matching in score order. Returns (pairs [(det, gt)], unmatched dets, unmatched non-crowd gts)."""
    dets = sorted(dets, key=lambda d: -d["score"])
    crowd = np.array([bool(g["iscrowd"]) for g in gts], dtype=bool)
    iou = box_iou([d["bbox"] for d in dets], [g["bbox"] for g in gts], crowd)
    gt_cats = np.array([g["category_id"] for g in gts], dtype=np.int64)
    taken = np.zeros(len(gts), dtype=bool)
    pairs, lost = [], []
    for i, det in enumerate(dets):
        same = gt_cats == det["category_id"]
        best = -1
        candidates = [same] if same_class_only else [same, np.ones(len(gts), dtype=bool)]
        for allowed in candidates:
            ok = allowed & ~crowd & ~taken & (iou[i] >= IOU_MATCH)
            if ok.any():
                best = int(np.argmax(np.where(ok, iou[i], -1.0)))
                break
        if best >= 0:
            taken[best] = True
            pairs.append((det, gts[best]))
            continue
        if not (crowd & same & (iou[i] >= IOU_MATCH)).any():
            lost.append(det)
    missed = [g for g, t, c in zip(gts, taken, crowd) if not t and not c]
    return pairs, lost, missed


def _prf(tp: int, fp: int, fn: int) -> dict:
    precision = tp / (tp + fp) if tp + fp else None
    recall = tp / (tp + fn) if tp + fn else None
    f1 = 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else None  # = harmonic mean of P and R; 0 if no tp
    return {"precision": precision, "recall": recall, "f1": f1, "tp": tp, "fp": fp, "fn": fn}


def operating_point(gt: dict, dt: list[dict], score_threshold: float) -> dict:
    """Micro-averaged precision/recall/F1 (and per class) of the detections scoring >= `score_threshold`.

    A ratio with nothing to count (no detections for precision, no ground truth for recall) is None.
    """
    from pipeline.metrics.coco import category_names

    names = category_names(gt)
    counts = {c: [0, 0, 0] for c in names}  # tp, fp, fn
    gts, dts = by_image(gt, dt, score_threshold)
    for image_id in set(gts) | set(dts):
        pairs, lost, missed = _match(dts.get(image_id, []), gts.get(image_id, []), same_class_only=True)
        for det, _ in pairs:
            counts[det["category_id"]][0] += 1
        for det in lost:
            counts[det["category_id"]][1] += 1
        for g in missed:
            counts[g["category_id"]][2] += 1
    tp, fp, fn = (sum(c[j] for c in counts.values()) for j in range(3))
    out = {"score_threshold": score_threshold, "iou_threshold": IOU_MATCH, **_prf(tp, fp, fn)}
    out["per_class"] = {names[c]: _prf(*counts[c]) for c in sorted(names)}
    return out


def confusion_matrix(gt: dict, dt: list[dict], score_threshold: float) -> dict:
    """{"labels": [class names..., "background"], "matrix": rows = ground truth, columns = predicted}."""
    from pipeline.metrics.coco import category_names

    names = category_names(gt)
    order = sorted(names)
    index = {c: i for i, c in enumerate(order)}
    bg = len(order)
    matrix = np.zeros((bg + 1, bg + 1), dtype=np.int64)
    gts, dts = by_image(gt, dt, score_threshold)
    for image_id in set(gts) | set(dts):
        pairs, lost, missed = _match(dts.get(image_id, []), gts.get(image_id, []), same_class_only=False)
        for det, g in pairs:
            matrix[index[g["category_id"]], index[det["category_id"]]] += 1
        for det in lost:
            matrix[bg, index[det["category_id"]]] += 1
        for g in missed:
            matrix[index[g["category_id"]], bg] += 1
    return {
        "labels": [names[c] for c in order] + ["background"],
        "matrix": matrix.tolist(),
        "score_threshold": score_threshold,
        "iou_threshold": IOU_MATCH,
    }
