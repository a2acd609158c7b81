"""Detection metrics at one operating point: precision/recall/F1 and a confusion matrix at a score threshold.

Both match boxes at IoU >= 0.5, greedily in descending score order, the way COCOeval does: a detection takes
the unmatched ground-truth box it overlaps most; a detection that only overlaps a crowd region is ignored
(neither true nor false positive), and crowd regions never count as missed objects.

- `operating_point` matches within each class (a detection can only be right about its own class).
- `confusion_matrix` matches across classes, preferring a same-class box, so a detection on the right object
  with the wrong label lands off the diagonal instead of counting as one false positive plus one miss.
  Rows are ground truth, columns predictions, each over the classes (sorted by id) then `background`.

`match()` does both matchings in one vectorised pass over all images (the k-th best detection of every image
in one step), so `report()` pays for the pairing and IoU once and never loops per image in Python.

Inputs are the validated copies from `pipeline.metrics.coco` (bbox always present).
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

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


@dataclass
class Matches:
    """One greedy matching pass over every image at once, in both modes (see the module docstring).

    Detections are those scoring >= the threshold, in (image, score descending, file order) order: `dt_index`
    their positions in the input, `dt_cat` their category ids. For each mode, `*_gt` is the index into the
    ground truth of the box a detection matched (-1: none) and `*_ignored` marks an unmatched detection that
    overlaps a crowd region of its own class. `gt_cat` and `gt_crowd` are the ground truth's columns in their original order.
    """

    gt_cat: np.ndarray
    gt_crowd: np.ndarray
    dt_index: np.ndarray
    dt_cat: np.ndarray
    same_gt: np.ndarray  # within a class (operating point)
    same_ignored: np.ndarray
    any_gt: np.ndarray  # across classes, a same-class box first (confusion matrix)
    any_ignored: np.ndarray


def _corners(xywh: np.ndarray):
    """x1, y1, x2, y2 and area of xywh rows, computed as `box_iou` computes them (so the same floats)."""
    x1, y1 = xywh[:, 0].copy(), xywh[:, 1].copy()
    x2, y2 = x1 + xywh[:, 2], y1 + xywh[:, 3]
    return x1, y1, x2, y2, (x2 - x1) * (y2 - y1)


def _near_pairs(d_box, g_box, g_crowd, pair_dt, pair_gt):
    """The (detection, ground truth) pairs with IoU >= IOU_MATCH and their IoU, with exactly the arithmetic of
    `box_iou`. Pairs that do not overlap along x, then y, are dropped first (their IoU is 0), so the full
    computation runs on the few that might match."""
    dx1, dy1, dx2, dy2, d_area = _corners(d_box)
    gx1, gy1, gx2, gy2, g_area = _corners(g_box)
    w = np.minimum(dx2[pair_dt], gx2[pair_gt]) - np.maximum(dx1[pair_dt], gx1[pair_gt])
    keep = w > 0
    pair_dt, pair_gt, w = pair_dt[keep], pair_gt[keep], w[keep]
    h = np.minimum(dy2[pair_dt], gy2[pair_gt]) - np.maximum(dy1[pair_dt], gy1[pair_gt])
    keep = h > 0
    pair_dt, pair_gt, inter = pair_dt[keep], pair_gt[keep], w[keep] * h[keep]
    area_d = d_area[pair_dt]
    union = np.where(g_crowd[pair_gt], area_d, area_d + g_area[pair_gt] - inter)
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = np.where(union > 0, inter / union, 0.0)
    near = iou >= IOU_MATCH  # every matching rule needs IoU >= 0.5: other pairs never count
    return pair_dt[near], pair_gt[near], iou[near]


def match(gt, dt, score_threshold: float) -> Matches:
    """Greedy matching of the detections scoring >= `score_threshold`, all images at once.

    `gt` and `dt` are `pipeline.metrics.boxeval.Boxes` columns (ground truth with `iscrowd`, detections with
    `score`). The loop runs over detection ranks (the k-th best detection of every image in one step), so
    its length is the most detections any image has, not the number of images or detections.
    """
    keep = np.flatnonzero(dt.score >= score_threshold)
    order = keep[np.lexsort((-dt.score[keep], dt.image_id[keep]))]  # stable: ties keep file order
    d_img, d_cat, d_box = dt.image_id[order], dt.category_id[order], dt.bbox[order]
    n_dt = len(order)
    g_order = np.argsort(gt.image_id, kind="stable")  # ground truth of an image in file order
    g_img = gt.image_id[g_order]
    g_cat, g_crowd = np.asarray(gt.category_id), np.asarray(gt.iscrowd, dtype=bool)
    out = Matches(g_cat, g_crowd, order, d_cat, np.full(n_dt, -1, np.int64), np.zeros(n_dt, bool),
                  np.full(n_dt, -1, np.int64), np.zeros(n_dt, bool))
    if n_dt == 0 or len(g_img) == 0:
        return out

    # every (detection, ground truth) pair of the same image, detection-major, ground truth in file order
    start = np.searchsorted(g_img, d_img, side="left")
    count = np.searchsorted(g_img, d_img, side="right") - start
    pair_dt = np.repeat(np.arange(n_dt), count)
    within = np.arange(len(pair_dt)) - np.repeat(np.cumsum(count) - count, count)  # 0.. per detection
    pair_gt = g_order[np.repeat(start, count) + within]
    pair_dt, pair_gt, iou = _near_pairs(d_box, np.asarray(gt.bbox, dtype=np.float64).reshape(-1, 4), g_crowd,
                                        pair_dt, pair_gt)
    same = g_cat[pair_gt] == d_cat[pair_dt]
    crowd = g_crowd[pair_gt]
    # on a crowd region of its own class, an unmatched detection is ignored (in both modes)
    on_crowd = np.zeros(n_dt, dtype=bool)
    on_crowd[pair_dt[crowd & same]] = True

    d_first = np.r_[True, d_img[1:] != d_img[:-1]]
    rank = np.arange(n_dt) - np.maximum.accumulate(np.where(d_first, np.arange(n_dt), 0))
    pair_rank = rank[pair_dt]
    by_rank = np.argsort(pair_rank, kind="stable")  # pairs of one rank together, still detection-major
    bounds = np.searchsorted(pair_rank[by_rank], np.arange(int(rank.max()) + 2))
    taken = {"same": np.zeros(len(g_cat), bool), "any": np.zeros(len(g_cat), bool)}
    for r in range(len(bounds) - 1):
        sl = by_rank[bounds[r]:bounds[r + 1]]
        if len(sl) == 0:
            continue
        p_dt, p_gt, p_iou, p_same, p_crowd = pair_dt[sl], pair_gt[sl], iou[sl], same[sl], crowd[sl]
        seg = np.flatnonzero(np.r_[True, p_dt[1:] != p_dt[:-1]])  # one segment per detection (one per image)
        seg_of = np.cumsum(np.r_[True, p_dt[1:] != p_dt[:-1]]) - 1
        for mode, result in (("same", out.same_gt), ("any", out.any_gt)):
            free = ~p_crowd & ~taken[mode][p_gt]
            ok = p_same & free
            if mode == "any":  # another class's box only when no box of its own class is free
                ok = np.where(np.logical_or.reduceat(ok, seg)[seg_of], ok, free)
            best = np.maximum.reduceat(np.where(ok, p_iou, -1.0), seg)
            pick = ok & (p_iou == best[seg_of])
            # the first of equal IoUs, as np.argmax over the image's ground truth in file order
            pos = np.minimum.reduceat(np.where(pick, np.arange(len(sl)), len(sl)), seg)
            hit = pos < len(sl)
            chosen = p_gt[pos[hit]]
            taken[mode][chosen] = True
            result[p_dt[seg[hit]]] = chosen
    out.same_ignored[:] = (out.same_gt < 0) & on_crowd
    out.any_ignored[:] = (out.any_gt < 0) & on_crowd
    return out


def _columns(gt: dict, dt):
    """Matching columns of a validated ground truth and validated results (dicts, or Boxes already)."""
    from pipeline.metrics.boxeval import Boxes
    from pipeline.metrics.cocojson import dt_boxes, gt_boxes

    return gt_boxes(gt), dt if isinstance(dt, Boxes) else dt_boxes(dt)


def _prf(tp: int, fp: int, fn: int) -> dict:
    precision = tp / (tp + fp) if tp + fp else None
    recall = tp / (tp + fn) if tp + fn else None
    f1 = 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else None  # = harmonic mean of P and R; 0 if no tp
    return {"precision": precision, "recall": recall, "f1": f1, "tp": tp, "fp": fp, "fn": fn}


def operating_point(gt: dict, dt, score_threshold: float, matches: Matches | None = None) -> dict:
    """Micro-averaged precision/recall/F1 (and per class) of the detections scoring >= `score_threshold`.

    `dt`: validated result dicts or their `Boxes` columns; `matches`: `match()`'s result when the caller
    already has it. A ratio with nothing to count (no detections for precision, no ground truth for recall)
    is None.
    """
    from pipeline.metrics.cocojson import category_names

    names = category_names(gt)
    order = np.array(sorted(names), dtype=np.int64)
    m = matches if matches is not None else match(*_columns(gt, dt), score_threshold)
    per_cat = lambda ids: np.bincount(np.searchsorted(order, ids), minlength=len(order))  # noqa: E731
    tp = per_cat(m.dt_cat[m.same_gt >= 0])
    fp = per_cat(m.dt_cat[(m.same_gt < 0) & ~m.same_ignored])
    taken = np.zeros(len(m.gt_cat), dtype=bool)
    taken[m.same_gt[m.same_gt >= 0]] = True
    fn = per_cat(m.gt_cat[~taken & ~m.gt_crowd])
    out = {"score_threshold": score_threshold, "iou_threshold": IOU_MATCH,
           **_prf(int(tp.sum()), int(fp.sum()), int(fn.sum()))}
    out["per_class"] = {names[c]: _prf(int(tp[k]), int(fp[k]), int(fn[k])) for k, c in enumerate(order.tolist())}
    return out


def confusion_matrix(gt: dict, dt, score_threshold: float, matches: Matches | None = None) -> dict:
    """{"labels": [class names..., "background"], "matrix": rows = ground truth, columns = predicted}."""
    from pipeline.metrics.cocojson import category_names

    names = category_names(gt)
    order = np.array(sorted(names), dtype=np.int64)
    bg = len(order)
    m = matches if matches is not None else match(*_columns(gt, dt), score_threshold)
    hit = m.any_gt >= 0
    rows = np.r_[np.searchsorted(order, m.gt_cat[m.any_gt[hit]]),  # matched: gt class x predicted class
                 np.full(int(((~hit) & ~m.any_ignored).sum()), bg)]  # unmatched, not on a crowd: background
    cols = np.r_[np.searchsorted(order, m.dt_cat[hit]), np.searchsorted(order, m.dt_cat[~hit & ~m.any_ignored])]
    taken = np.zeros(len(m.gt_cat), dtype=bool)
    taken[m.any_gt[hit]] = True
    missed = np.searchsorted(order, m.gt_cat[~taken & ~m.gt_crowd])  # missed objects: predicted background
    rows, cols = np.r_[rows, missed], np.r_[cols, np.full(len(missed), bg)]
    matrix = np.bincount(rows.astype(np.int64) * (bg + 1) + cols.astype(np.int64),
                         minlength=(bg + 1) ** 2).reshape(bg + 1, bg + 1)
    return {
        "labels": [names[c] for c in order.tolist()] + ["background"],
        "matrix": matrix.tolist(),
        "score_threshold": score_threshold,
        "iou_threshold": IOU_MATCH,
    }
