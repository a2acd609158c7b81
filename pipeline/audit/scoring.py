"""Score annotations for likely label errors from a detector's predictions (cleanlab's object-detection scores).

Four kinds of issue, each item scored in [0, 1], lower = more likely wrong:

- `swapped class` (an annotated box whose class the model disagrees with): cleanlab's swap score per box;
- `badly placed box` (the right class, the wrong place or size): cleanlab's bad-location score per box;
- `missing box` (the model sees an object nobody annotated): cleanlab's overlooked score per predicted box;
- `duplicate` (two boxes of one class on one object): 1 - IoU of the pair, for pairs with IoU >= 0.8.

An annotation's score is the lowest of its swap, bad-location and duplicate scores, its reason the kind that
gave it. One ranking over annotations and missing-box items together: the review queue is its head.
cleanlab (2.9) is the maintained implementation of these scores (Tkachenko et al., "ObjectLab", 2023); the
duplicate rule is ours, as cleanlab does not look for duplicates.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

SWAP, BADLOC, MISSING, DUPLICATE = "swapped class", "badly placed box", "missing box", "duplicate"
DUPLICATE_IOU = 0.8
MIN_PREDICTION_SCORE = 0.05  # detections below this are dropped first: they change no score and cost time
# "Confident" is the model's own scale, not a constant: cleanlab's defaults (0.95 / 0.5) suit a softmax classifier,
# while a detector's scores depend on its head and training (the demo's SSDlite, mAP@0.5 0.96, scores many of its
# correct boxes 0.2-0.6). The high threshold is the lowest score at which the model's detections still agree with
# the labels (same class, IoU >= 0.5) at least AGREEMENT of the time, measured over a window of neighbouring scores;
# a few percent of wrong labels barely move it.
AGREEMENT = 0.5  # "more often right than wrong"
HIGH_RANGE = (0.1, 0.95)  # the calibrated high threshold is kept within these
LOW_PROBABILITY = 0.2  # predictions below this (or half the high threshold) do not count when judging a location
WINDOW = 20  # detections per window (at least; 2 % of them on a large set)


@dataclass(frozen=True)
class Thresholds:
    high: float  # predictions at least this confident can reveal a missing box or a swapped class
    low: float  # predictions below this do not count when judging a box's location
    agreement: float | None = None  # the local precision the high threshold was calibrated to (None: given)


def calibrate(coco: dict, detections: list[dict], images: list[dict], agreement: float = AGREEMENT) -> Thresholds:
    """The model's confidence scale on the audited images. Detections are sorted by score and each is marked by
    whether a label of its class lies under it (IoU >= 0.5); walking down the scores, `high` is the last score
    before the share of agreeing detections in a window of neighbours first falls under `agreement`."""
    ids = {im["id"] for im in images}
    anns: dict[int, list[dict]] = {}
    for a in coco["annotations"]:
        if a["image_id"] in ids:
            anns.setdefault(a["image_id"], []).append(a)
    rows = sorted(((d["score"], any(a["category_id"] == d["category_id"] and _iou(a["bbox"], d["bbox"]) >= 0.5
                                    for a in anns.get(d["image_id"], ())))
                   for d in detections if d["image_id"] in ids and d["score"] >= MIN_PREDICTION_SCORE),
                  key=lambda r: -r[0])
    high = HIGH_RANGE[1]
    if rows:
        scores = np.array([r[0] for r in rows])
        agree = np.concatenate([[0], np.cumsum([r[1] for r in rows])])
        window = max(WINDOW, len(rows) // 50)
        ends = np.arange(1, len(rows) + 1)
        starts = np.maximum(0, ends - window)
        local = (agree[ends] - agree[starts]) / (ends - starts)
        below = np.nonzero(local < agreement)[0]
        high = float(scores[max(0, below[0] - 1)]) if len(below) else float(scores[-1])
    # cleanlab compares float32 scores: a hair under the float32 score, so the detection at `high` counts
    high = float(np.float32(min(max(high, HIGH_RANGE[0]), HIGH_RANGE[1]))) * (1 - 1e-6)
    return Thresholds(high=high, low=min(LOW_PROBABILITY, high / 2), agreement=agreement)


@dataclass
class Item:
    """One entry of the audit: an annotation (ann_id set) or a missing box the model found (ann_id None)."""
    score: float
    reason: str
    image_id: int
    file_name: str
    split: str
    bbox: list[float]  # COCO [x, y, w, h] in image pixels
    category: str  # the annotated class (for a missing box: the predicted class)
    ann_id: int | None = None
    predicted: str | None = None  # the model's class for the box, when it has one
    predicted_score: float | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def _xyxy(b) -> list[float]:
    return [b[0], b[1], b[0] + b[2], b[1] + b[3]]


def _iou(a, b) -> float:
    ax1, ay1, ax2, ay2 = _xyxy(a)
    bx1, by1, bx2, by2 = _xyxy(b)
    iw, ih = max(0.0, min(ax2, bx2) - max(ax1, bx1)), max(0.0, min(ay2, by2) - max(ay1, by1))
    inter = iw * ih
    union = a[2] * a[3] + b[2] * b[3] - inter
    return inter / union if union > 0 else 0.0


def cleanlab_inputs(coco: dict, detections: list[dict], images: list[dict]):
    """(labels, predictions, annotations per image) in cleanlab's format: class index k = position of the
    category sorted by id; boxes x1, y1, x2, y2; predictions[i][k] an (M, 5) array [x1, y1, x2, y2, score]."""
    cats = sorted(c["id"] for c in coco["categories"])
    index = {c: k for k, c in enumerate(cats)}
    anns_of: dict[int, list[dict]] = {im["id"]: [] for im in images}
    for a in coco["annotations"]:
        if a["image_id"] in anns_of and not a.get("iscrowd") and a["category_id"] in index:
            anns_of[a["image_id"]].append(a)
    dets_of: dict[int, list[dict]] = {im["id"]: [] for im in images}
    for d in detections:
        if d["image_id"] in dets_of and d["category_id"] in index:
            dets_of[d["image_id"]].append(d)
    labels, predictions = [], []
    for im in images:
        anns = anns_of[im["id"]]
        labels.append({"bboxes": np.array([_xyxy(a["bbox"]) for a in anns], dtype=np.float32).reshape(-1, 4),
                       "labels": np.array([index[a["category_id"]] for a in anns], dtype=np.int64)})
        per_class = [[] for _ in cats]
        for d in dets_of[im["id"]]:
            per_class[index[d["category_id"]]].append([*_xyxy(d["bbox"]), d["score"]])
        predictions.append([np.array(rows, dtype=np.float32).reshape(-1, 5) for rows in per_class])
    return labels, predictions, anns_of, cats


def score(coco: dict, detections: list[dict], splits=("train", "val"), thresholds: Thresholds | None = None
          ) -> list[Item]:
    """Every annotation of the images in `splits` and every confident unannotated prediction, lowest score first;
    `thresholds` None = `calibrate` on these images and detections."""
    import warnings

    from cleanlab.object_detection.rank import (
        compute_badloc_box_scores,
        compute_overlooked_box_scores,
        compute_swap_box_scores,
    )

    images = [im for im in coco["images"] if im.get("split", "train") in splits]
    detections = [d for d in detections if d["score"] >= MIN_PREDICTION_SCORE]
    labels, predictions, anns_of, cats = cleanlab_inputs(coco, detections, images)
    t = thresholds or calibrate(coco, detections, images)
    name = {c["id"]: c["name"] for c in coco["categories"]}
    with warnings.catch_warnings():  # cleanlab warns about images without boxes; they are normal here
        warnings.simplefilter("ignore")
        swap = compute_swap_box_scores(labels=labels, predictions=predictions,
                                       high_probability_threshold=t.high)
        badloc = compute_badloc_box_scores(labels=labels, predictions=predictions,
                                           low_probability_threshold=t.low)
        overlooked = compute_overlooked_box_scores(labels=labels, predictions=predictions,
                                                   high_probability_threshold=t.high)

    items: list[Item] = []
    for i, im in enumerate(images):
        anns = anns_of[im["id"]]
        preds = [(k, row) for k, arr in enumerate(predictions[i]) for row in arr]
        for j, a in enumerate(anns):
            candidates = [(float(swap[i][j]), SWAP), (float(badloc[i][j]), BADLOC)]
            for other in anns[:j]:  # the later of two near-identical boxes of one class is the duplicate
                if other["category_id"] == a["category_id"]:
                    iou = _iou(a["bbox"], other["bbox"])
                    if iou >= DUPLICATE_IOU:
                        candidates.append((1.0 - iou, DUPLICATE))
            value, reason = min((c for c in candidates if not np.isnan(c[0])), default=(1.0, SWAP))
            best = _best_prediction(a["bbox"], preds, cats, name)
            items.append(Item(value, reason, im["id"], im["file_name"], im.get("split", "train"),
                              [float(v) for v in a["bbox"]], name[a["category_id"]], a["id"], *best))
        flat = [(k, row) for k, row in preds]  # cleanlab's overlooked scores follow predictions[i]'s order
        for (k, row), value in zip(flat, overlooked[i]):
            if np.isnan(value) or row[4] < t.high:
                continue
            x1, y1, x2, y2 = (float(v) for v in row[:4])
            items.append(Item(float(value), MISSING, im["id"], im["file_name"], im.get("split", "train"),
                              [x1, y1, x2 - x1, y2 - y1], name[cats[k]], None, name[cats[k]], float(row[4])))
    items.sort(key=lambda it: (it.score, it.image_id, it.ann_id or 0))
    return items


def _best_prediction(bbox, preds, cats, name) -> tuple[str | None, float | None]:
    """The class and confidence of the most confident prediction overlapping `bbox` (IoU >= 0.5)."""
    best = None
    for k, row in preds:
        x1, y1, x2, y2 = (float(v) for v in row[:4])
        if _iou(bbox, [x1, y1, x2 - x1, y2 - y1]) >= 0.5 and (best is None or row[4] > best[1]):
            best = (name[cats[k]], float(row[4]))
    return best if best else (None, None)


def issue_counts(items: list[Item], threshold: float) -> dict:
    """Items scored below `threshold`, per reason, and the share of annotations among them."""
    flagged = [it for it in items if it.score < threshold]
    annotations = sum(1 for it in items if it.ann_id is not None)
    flagged_anns = sum(1 for it in flagged if it.ann_id is not None)
    per_reason = {r: sum(1 for it in flagged if it.reason == r) for r in (SWAP, BADLOC, MISSING, DUPLICATE)}
    return {"threshold": threshold, "annotations": annotations, "issues": len(flagged), "per_reason": per_reason,
            "rate": (flagged_anns + per_reason[MISSING]) / annotations if annotations else 0.0}
