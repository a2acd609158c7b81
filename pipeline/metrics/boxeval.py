"""COCO bbox evaluation on whole arrays: pycocotools' `COCOeval` algorithm, step for step, without a Python
loop per image, category or detection.

pycocotools spends its time in per-(image, category) Python code, and faster-coco-eval still builds a Python
dict per detection and reads it back from C++. Here the inputs are columns (image id, category id, box,
score, area, crowd flag) and every step runs on all image/category groups at once:

1. detections are ordered by (image, category, score descending; ties keep file order, as pycocotools'
   stable mergesort does) and cut to `maxDets[-1]` per image and category;
2. IoU is computed for every detection/ground-truth pair of the same image and category with the arithmetic
   of pycocotools' `bbIou` (crowd regions: intersection over the detection's area);
3. greedy matching runs detection rank by detection rank, for all groups, 4 area ranges and 10 IoU thresholds
   at once. For each detection it takes the unmatched ground truth with the highest IoU at or above the
   threshold, ties to the later one, a non-ignored one before any ignored one, crowd regions reusable;
4. accumulation and summarising are pycocotools' formulas with the monotone-precision loop as a reversed
   running maximum.

The result equals pycocotools' to the last bit on the tests' generated sets (ties, crowd regions, areas at
range edges, more than 100 detections per image, empty images and classes). Segmentation is not handled
here: `pipeline.metrics.coco` sends segm to faster-coco-eval.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

# pycocotools' Params for bbox, built with the same expressions so the floats are the same
IOU_THRS = np.linspace(.5, 0.95, int(np.round((0.95 - .5) / .05)) + 1, endpoint=True)
REC_THRS = np.linspace(.0, 1.00, int(np.round((1.00 - .0) / .01)) + 1, endpoint=True)
MAX_DETS = [1, 10, 100]
AREA_RNG = [[0 ** 2, 1e5 ** 2], [0 ** 2, 32 ** 2], [32 ** 2, 96 ** 2], [96 ** 2, 1e5 ** 2]]
AREA_LBL = ["all", "small", "medium", "large"]


@dataclass
class Boxes:
    """Annotations or detections as columns. `bbox` is [N, 4] xywh; `area` is the annotation's area for
    ground truth and w*h for detections (what pycocotools' loadRes sets); `score` is for detections only."""

    image_id: np.ndarray
    category_id: np.ndarray
    bbox: np.ndarray
    area: np.ndarray
    iscrowd: np.ndarray | None = None
    score: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.image_id)

    def take(self, index: np.ndarray) -> "Boxes":
        pick = lambda a: None if a is None else a[index]  # noqa: E731
        return Boxes(self.image_id[index], self.category_id[index], self.bbox[index], self.area[index],
                     pick(self.iscrowd), pick(self.score))


@dataclass
class Params:
    """The fields of pycocotools' Params that callers read back."""

    imgIds: list
    catIds: list
    iouThrs: np.ndarray = field(default_factory=lambda: IOU_THRS.copy())
    recThrs: np.ndarray = field(default_factory=lambda: REC_THRS.copy())
    maxDets: list = field(default_factory=lambda: list(MAX_DETS))
    areaRng: list = field(default_factory=lambda: [list(r) for r in AREA_RNG])
    areaRngLbl: list = field(default_factory=lambda: list(AREA_LBL))
    iouType: str = "bbox"


@dataclass
class BoxEval:
    """What COCOeval leaves behind after evaluate/accumulate/summarize: params, eval and stats."""

    params: Params
    eval: dict
    stats: np.ndarray


def box_iou(d: np.ndarray, g: np.ndarray, crowd: np.ndarray) -> np.ndarray:
    """IoU of paired boxes (row i of `d` with row i of `g`), with the operations of pycocotools' bbIou."""
    w = np.minimum(d[:, 2] + d[:, 0], g[:, 2] + g[:, 0]) - np.maximum(d[:, 0], g[:, 0])
    h = np.minimum(d[:, 3] + d[:, 1], g[:, 3] + g[:, 1]) - np.maximum(d[:, 1], g[:, 1])
    overlap = (w > 0) & (h > 0)
    inter = w * h
    da = d[:, 2] * d[:, 3]
    union = np.where(crowd, da, da + g[:, 2] * g[:, 3] - inter)
    out = np.zeros(len(d))
    np.divide(inter, union, out=out, where=overlap)
    return out


def _segment_starts(keys: np.ndarray) -> np.ndarray:
    """Start index of each run of equal values in a sorted array."""
    if len(keys) == 0:
        return np.zeros(0, dtype=np.int64)
    return np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]])


@dataclass
class Matches:
    """COCOeval's evaluate step for every (image, category) at once: ground truth grouped by (image, category),
    detections by (image, category, score descending) cut to maxDets[-1], and for every area range a and IoU
    threshold t (row a*T + t) which detection matched and whether that match is ignored."""

    img_ids: np.ndarray  # sorted unique image ids
    cat_ids: np.ndarray  # sorted unique category ids
    gt: Boxes
    dt: Boxes
    g_cat: np.ndarray  # category index of each ground truth
    g_ignore: np.ndarray  # [A, G] crowd or outside the area range
    d_cat: np.ndarray  # category index of each detection
    d_outside: np.ndarray  # [A, D] detection area outside the range
    rank: np.ndarray  # detection rank inside its (image, category)
    matched: np.ndarray  # [A*T, D]
    match_ignored: np.ndarray  # [A*T, D] matched to an ignored ground truth


def evaluate(gt: Boxes, dt: Boxes, img_ids, cat_ids) -> BoxEval:
    """COCOeval(bbox) evaluate + accumulate + summarize. Every gt/dt image and category id must be in
    `img_ids` / `cat_ids` (the callers validate that first)."""
    m = match(gt, dt, img_ids, cat_ids)
    params = Params(imgIds=m.img_ids.tolist(), catIds=m.cat_ids.tolist())
    precision, recall = _accumulate(m)
    evaluation = {"params": params, "counts": [len(IOU_THRS), len(REC_THRS), len(m.cat_ids), len(AREA_RNG),
                                               len(MAX_DETS)], "precision": precision, "recall": recall}
    return BoxEval(params, evaluation, _summarize(params, precision, recall))


def match(gt: Boxes, dt: Boxes, img_ids, cat_ids, pair_iou=None) -> Matches:
    """Group, rank, compute IoUs and match greedily (COCOeval.evaluate), for all groups at once.

    `pair_iou(dt_index, gt_index, crowd) -> iou`, when given, replaces the box IoU of each candidate pair
    (indices into the `dt` and `gt` passed in): mask IoU for segm (`pipeline.metrics.segm`)."""
    img_ids = np.unique(np.asarray(img_ids, dtype=np.int64))
    cat_ids = np.unique(np.asarray(cat_ids, dtype=np.int64))
    T, K, A = len(IOU_THRS), len(cat_ids), len(AREA_RNG)
    max_det = MAX_DETS[-1]

    # -- group by (image, category); ground truth keeps file order inside a group ------------------------
    g_group = np.searchsorted(img_ids, gt.image_id) * K + np.searchsorted(cat_ids, gt.category_id)
    order = np.argsort(g_group, kind="stable")
    gt, g_group, g_src = gt.take(order), g_group[order], order
    g_crowd = gt.iscrowd.astype(bool)
    g_cat = g_group % K

    # -- detections by (image, category, score descending, file order); rank inside the group -------------
    d_group = np.searchsorted(img_ids, dt.image_id) * K + np.searchsorted(cat_ids, dt.category_id)
    order = np.lexsort((-dt.score, d_group))
    dt, d_group, d_src = dt.take(order), d_group[order], order
    rank = np.arange(len(dt)) - np.searchsorted(d_group, d_group, side="left")
    keep = rank < max_det
    dt, d_group, rank, d_src = dt.take(keep), d_group[keep], rank[keep], d_src[keep]
    d_cat = d_group % K
    n_dt = len(dt)

    # -- IoU of every detection with every ground truth of its group --------------------------------------
    g_start = np.searchsorted(g_group, d_group, side="left")
    g_count = np.searchsorted(g_group, d_group, side="right") - g_start
    pair_dt = np.repeat(np.arange(n_dt), g_count)
    first = np.repeat(np.cumsum(g_count) - g_count, g_count)
    pair_gt = np.repeat(g_start, g_count) + (np.arange(len(pair_dt)) - first)
    if pair_iou is None:
        pair_iou = box_iou(dt.bbox[pair_dt], gt.bbox[pair_gt], g_crowd[pair_gt])
    else:
        pair_iou = np.asarray(pair_iou(d_src[pair_dt], g_src[pair_gt], g_crowd[pair_gt]), dtype=np.float64)
    # a pair below the lowest threshold can never match; dropping it keeps the relative order of the rest
    close = pair_iou >= min(IOU_THRS.min(), 1 - 1e-10)
    pair_dt, pair_gt, pair_iou = pair_dt[close], pair_gt[close], pair_iou[close]

    # -- greedy matching, all groups x area ranges x IoU thresholds per detection rank ---------------------
    lo = np.array([r[0] for r in AREA_RNG])[:, None]
    hi = np.array([r[1] for r in AREA_RNG])[:, None]
    g_ignore = g_crowd[None, :] | (gt.area[None, :] < lo) | (gt.area[None, :] > hi)  # [A, G]
    d_outside = (dt.area[None, :] < lo) | (dt.area[None, :] > hi)  # [A, D]
    rows_ignore = np.repeat(g_ignore, T, axis=0)  # row a*T + t
    thr = np.tile(np.minimum(IOU_THRS, 1 - 1e-10), A)[:, None]
    taken = np.zeros((A * T, len(gt)), dtype=bool)
    matched = np.zeros((A * T, n_dt), dtype=bool)
    # a matched detection is ignored when its ground truth is; an unmatched one when outside the area range
    match_ignored = np.zeros((A * T, n_dt), dtype=bool)

    pair_rank = rank[pair_dt]
    by_rank = np.argsort(pair_rank, kind="stable")  # pairs of rank r: contiguous, by detection then gt
    bounds = np.searchsorted(pair_rank[by_rank], np.arange(max_det + 1))
    for r in range(max_det):
        sl = by_rank[bounds[r]:bounds[r + 1]]
        if len(sl) == 0:
            continue
        p_dt, p_gt, iou = pair_dt[sl], pair_gt[sl], pair_iou[sl]
        seg = _segment_starts(p_dt)
        seg_of = np.repeat(np.arange(len(seg)), np.diff(np.r_[seg, len(sl)]))
        ig = rows_ignore[:, p_gt]
        ok = (iou[None, :] >= thr) & (~taken[:, p_gt] | g_crowd[p_gt][None, :])
        best_kept = np.maximum.reduceat(np.where(ok & ~ig, iou, -1.0), seg, axis=1)
        best_ign = np.maximum.reduceat(np.where(ok & ig, iou, -1.0), seg, axis=1)
        use_kept = best_kept >= 0  # a non-ignored match wins over any ignored one
        target = np.where(use_kept, best_kept, best_ign)
        cand = ok & (ig != use_kept[:, seg_of]) & (iou[None, :] == target[:, seg_of])
        pos = np.maximum.reduceat(np.where(cand, np.arange(len(sl))[None, :], -1), seg, axis=1)  # ties: last
        r_idx, s_idx = np.nonzero(pos >= 0)
        chosen = p_gt[pos[r_idx, s_idx]]
        det = p_dt[seg[s_idx]]
        taken[r_idx, chosen] = True  # crowd regions stay available: `ok` ignores `taken` for them
        matched[r_idx, det] = True
        match_ignored[r_idx, det] = rows_ignore[r_idx, chosen]
    return Matches(img_ids, cat_ids, gt, dt, g_cat, g_ignore, d_cat, d_outside, rank, matched, match_ignored)


def _accumulate(mt: Matches) -> tuple[np.ndarray, np.ndarray]:
    """COCOeval.accumulate: precision [T, R, K, A, M] and recall [T, K, A, M]."""
    T, R, K, A, M = len(IOU_THRS), len(REC_THRS), len(mt.cat_ids), len(AREA_RNG), len(MAX_DETS)
    dt, g_cat, g_ignore, d_cat, rank = mt.dt, mt.g_cat, mt.g_ignore, mt.d_cat, mt.rank
    matched, match_ignored, d_outside = mt.matched, mt.match_ignored, mt.d_outside
    # -- accumulate ------------------------------------------------------------------------------------
    # pycocotools builds running TP/FP sums over every detection and takes a running maximum of precision.
    # Precision only rises at a true positive and recall only changes there, so the same numbers come from
    # the true positives alone: at each, the TP and FP counts so far in its (row, category) list. The FP count
    # is "counted detections so far" minus TPs, where a detection counts unless it is ignored: an unmatched one
    # when outside the area range (4 rows, one per range), a matched one when its ground truth is ignored (a
    # sparse correction on the matched entries of each of the 40 rows).
    precision = -np.ones((T, R, K, A, M))
    recall = -np.ones((T, K, A, M))
    npig = np.zeros((K, A), dtype=np.int64)
    for a in range(A):
        npig[:, a] = np.bincount(g_cat[~g_ignore[a]], minlength=K)
    has_any = np.zeros(K, dtype=bool)  # pycocotools skips a category with neither gt nor dt
    has_any[g_cat] = True
    has_any[d_cat] = True
    inside = ~d_outside
    by_score = np.lexsort((-dt.score, d_cat))  # per category: score descending, ties in (image, rank) order
    eps = np.spacing(1)
    for m, cap in enumerate(MAX_DETS):
        idx = by_score[rank[by_score] < cap]
        n = len(idx)
        cats = d_cat[idx]
        cat_start = np.searchsorted(cats, np.arange(K + 1))
        inside_so_far = np.zeros((A, n + 1), dtype=np.int64)  # column p: detections before position p
        np.cumsum(inside[:, idx], axis=1, out=inside_so_far[:, 1:])
        m_row, m_pos = np.nonzero(matched[:, idx])  # row-major: sorted by (row, position)
        m_key = m_row * n + m_pos
        m_kept = ~match_ignored[m_row, idx[m_pos]]
        fix = np.zeros(len(m_key) + 1, dtype=np.int64)
        np.cumsum(m_kept.astype(np.int64) - inside[m_row // T, idx[m_pos]], out=fix[1:])

        def counted_before(row, pos):
            return inside_so_far[row // T, pos] + fix[np.searchsorted(m_key, row * n + pos)]

        tp_row, tp_pos = m_row[m_kept], m_pos[m_kept]
        tp_key = m_key[m_kept]
        tp_cat = cats[tp_pos]
        start = cat_start[tp_cat]
        c = np.arange(len(tp_key)) - np.searchsorted(tp_key, tp_row * n + start) + 1
        f = (counted_before(tp_row, tp_pos + 1) - counted_before(tp_row, start) - c).astype(float)
        c = c.astype(float)
        with np.errstate(divide="ignore", invalid="ignore"):
            rc = c / npig[tp_cat, tp_row // T]
        pr = c / (f + c + eps)
        ev_bounds = np.searchsorted(tp_row * K + tp_cat, np.arange(A * T * K + 1))
        for k in np.flatnonzero(has_any):
            nd = cat_start[k + 1] - cat_start[k]
            for a in range(A):
                if npig[k, a] == 0:
                    continue
                for t in range(T):
                    seg = (a * T + t) * K + k
                    s, e = ev_bounds[seg], ev_bounds[seg + 1]
                    recall[t, k, a, m] = np.float64(e - s) / npig[k, a] if nd else 0
                    if e == s:
                        precision[t, :, k, a, m] = 0
                        continue
                    best_after = np.maximum.accumulate(pr[s:e][::-1])[::-1]
                    at = np.searchsorted(rc[s:e], REC_THRS, side="left")
                    precision[t, :, k, a, m] = np.where(at < e - s, best_after[np.minimum(at, e - s - 1)], 0)
    return precision, recall


def _summarize(p: Params, precision: np.ndarray, recall: np.ndarray) -> np.ndarray:
    """COCOeval.summarize for bbox, the same indexing and means."""

    def one(ap: bool, iou_thr=None, area="all", max_dets=100) -> float:
        aind = [i for i, lbl in enumerate(p.areaRngLbl) if lbl == area]
        mind = [i for i, m in enumerate(p.maxDets) if m == max_dets]
        if ap:
            s = precision
            if iou_thr is not None:
                s = s[np.where(iou_thr == p.iouThrs)[0]]
            s = s[:, :, :, aind, mind]
        else:
            s = recall
            if iou_thr is not None:
                s = s[np.where(iou_thr == p.iouThrs)[0]]
            s = s[:, :, aind, mind]
        return -1.0 if len(s[s > -1]) == 0 else float(np.mean(s[s > -1]))

    md = p.maxDets[2]
    return np.array([
        one(True), one(True, .5, max_dets=md), one(True, .75, max_dets=md),
        one(True, area="small", max_dets=md), one(True, area="medium", max_dets=md),
        one(True, area="large", max_dets=md),
        one(False, max_dets=p.maxDets[0]), one(False, max_dets=p.maxDets[1]), one(False, max_dets=md),
        one(False, area="small", max_dets=md), one(False, area="medium", max_dets=md),
        one(False, area="large", max_dets=md),
    ])
