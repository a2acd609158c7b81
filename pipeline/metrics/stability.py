"""The model stability suite's numbers: AP per slice (box-size bucket, ingest group) and a paired bootstrap
over images of every challenger-champion AP drop, on the vectorised COCO evaluation (`boxeval`).

Matching (which detection matches which box) depends only on the image it is in, so it runs once per model;
a bootstrap resample only changes how often each image counts. Drawing images with replacement is the same as
weighting each image by how many times it was drawn, so each resample re-accumulates pycocotools' precision
and recall with those weights (true positives, false positives and the ground-truth count summed with
weights) instead of rescoring. With every weight 1 the AP is pycocotools' to the last bit (the tests check);
with repeated images the order among their tied detections can differ from scoring a duplicated dataset,
which only moves intermediate points of a precision-recall curve, not the counts.

Challenger and champion are resampled with the same draws (a paired bootstrap): the interval is that of the
drop itself, which is much narrower than two independent intervals because most of the image-to-image noise
is shared.

Box-size buckets: COCO's small / medium / large (area < 32², < 96², larger) were chosen for COCO's ~640x480
images. With `size_buckets="image"` each box's area is first scaled by 640*480 / (image width * height), so the
buckets mean the same share of the picture on any image size (on the 128 px demo: small < 7.4 px, medium
< 22 px on a side); "absolute" keeps COCO's pixel areas.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from pipeline.metrics.boxeval import AREA_LBL, IOU_THRS, REC_THRS, Boxes, Matches, match

log = logging.getLogger(__name__)

COCO_IMAGE_AREA = 640 * 480
SIZE_BUCKETS = ("image", "absolute")


@dataclass
class Prepared:
    """What every re-accumulation of one model's matches needs, computed once."""

    n_images: int
    n_cats: int
    g_img: np.ndarray  # image index of each ground truth
    g_cat: np.ndarray
    g_kept: np.ndarray  # [A, G] counted ground truth (not crowd, inside the area range)
    d_img: np.ndarray  # image index of each detection, in accumulation order
    d_cat: np.ndarray  # category index, in accumulation order (non-decreasing)
    cat_first: np.ndarray  # index of the first detection of each detection's category
    tp: np.ndarray  # [A*T, D] true positive
    fp: np.ndarray  # [A*T, D] false positive (unmatched, inside the range)


def prepare(mt: Matches) -> Prepared:
    T = len(IOU_THRS)
    order = np.lexsort((-mt.dt.score, mt.d_cat))  # per category, score descending (as COCOeval.accumulate)
    d_cat = mt.d_cat[order]
    matched, ignored = mt.matched[:, order], mt.match_ignored[:, order]
    outside = np.repeat(mt.d_outside[:, order], T, axis=0)
    tp, fp = matched & ~ignored, ~matched & ~outside
    # only detections up to the last true positive of their category can move a precision; detections every
    # row ignores count nowhere. Dropping the rest keeps the order of what stays (most are low-score misses).
    last_tp = np.full(len(mt.cat_ids), -1)
    any_tp = np.flatnonzero(tp.any(axis=0))
    np.maximum.at(last_tp, d_cat[any_tp], any_tp)
    keep = (np.arange(len(d_cat)) <= last_tp[d_cat]) & (tp | fp).any(axis=0)
    d_cat, tp, fp = d_cat[keep], tp[:, keep], fp[:, keep]
    starts = np.searchsorted(d_cat, np.arange(len(mt.cat_ids)))
    return Prepared(len(mt.img_ids), len(mt.cat_ids), np.searchsorted(mt.img_ids, mt.gt.image_id), mt.g_cat,
                    ~mt.g_ignore, np.searchsorted(mt.img_ids, mt.dt.image_id)[order][keep], d_cat,
                    starts[d_cat] if len(d_cat) else d_cat, tp, fp)


def weighted_ap(p: Prepared, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """AP (IoU .5:.95, 100 detections) with image i counted `weights[i]` times: ([A] per area range,
    [K, A] per class); NaN where nothing is measured (no counted ground truth)."""
    T, R, A, K = len(IOU_THRS), len(REC_THRS), len(AREA_LBL), p.n_cats
    w = weights.astype(np.float64)
    npig = np.zeros((A, K))
    for a in range(A):
        npig[a] = np.bincount(p.g_cat, weights=w[p.g_img] * p.g_kept[a], minlength=K)
    q = np.zeros((A * T * K, R))
    if p.tp.shape[1]:
        wd = w[p.d_img]
        ctp = np.cumsum(p.tp * wd, axis=1)
        cfp = np.cumsum(p.fp * wd, axis=1)
        before = np.concatenate([np.zeros((A * T, 1)), ctp], axis=1)[:, p.cat_first]
        ctp -= before
        cfp -= np.concatenate([np.zeros((A * T, 1)), cfp], axis=1)[:, p.cat_first]
        row, pos = np.nonzero(p.tp & (wd > 0))  # precision rises and recall moves only at a true positive
        cat = p.d_cat[pos]
        c, f = ctp[row, pos], cfp[row, pos]
        rc = c / npig[row // T, cat]
        pr = c / (f + c + np.spacing(1))
        # threshold j reads the best precision at any recall >= REC_THRS[j] (pycocotools' searchsorted + envelope)
        j = np.searchsorted(REC_THRS, rc, side="right") - 1
        np.maximum.at(q, (row * K + cat, j), pr)
        q = np.maximum.accumulate(q[:, ::-1], axis=1)[:, ::-1]
    q = q.reshape(A, T, K, R)
    valid = npig > 0  # [A, K]
    # COCO's means over the measured entries in its own [T, R(, K)] order, so the sums round the same way
    per_class = np.asarray([[q[a, :, k].mean() if valid[a, k] else np.nan for a in range(A)] for k in range(K)])
    per_class = per_class.reshape(K, A)
    overall = np.asarray([q[a].transpose(0, 2, 1)[:, :, valid[a]].mean() if valid[a].any() else np.nan
                          for a in range(A)])
    return overall, per_class


@dataclass
class Counts:
    """A model's matches as per-image counts, so that a batch of image weightings is two matrix products:
    for every true positive (row a*T + t, position p in its category's score order), how many true and false
    positives each image has at or before p in that category; and each image's counted boxes per (area,
    category)."""

    rows: np.ndarray  # [P] row of each true positive
    cats: np.ndarray  # [P] its category index
    tp_before: np.ndarray  # [P, I]
    fp_before: np.ndarray  # [P, I]
    gt_counts: np.ndarray  # [I, A*K]
    n_cats: int


MAX_COUNT_CELLS = 40_000_000  # [positions x images] past this, resamples are accumulated one at a time


def counts(p: Prepared) -> Counts | None:
    """The Counts of prepared matches, or None when the matrices would be too large (see MAX_COUNT_CELLS)."""
    rows_n, n = p.tp.shape
    I, K, A = p.n_images, p.n_cats, len(AREA_LBL)
    row, pos = np.nonzero(p.tp)
    if len(row) * I > MAX_COUNT_CELLS or n * I > MAX_COUNT_CELLS:
        return None
    tp_before = np.zeros((len(row), I))
    fp_before = np.zeros((len(row), I))
    bounds = np.searchsorted(row, np.arange(rows_n + 1))
    for r in range(rows_n):
        at = pos[bounds[r]:bounds[r + 1]]
        if not len(at):
            continue
        for mask, out in ((p.tp[r], tp_before), (p.fp[r], fp_before)):
            cum = np.zeros((n + 1, I))
            cum[np.arange(1, n + 1), p.d_img] = mask
            np.cumsum(cum, axis=0, out=cum)  # cum[q]: per image, flagged detections before position q
            out[bounds[r]:bounds[r + 1]] = cum[at + 1] - cum[p.cat_first[at]]
    gt_counts = np.zeros((I, A * K))
    for a in range(A):
        np.add.at(gt_counts, (p.g_img, a * K + p.g_cat), p.g_kept[a])
    return Counts(row, p.d_cat[pos], tp_before, fp_before, gt_counts, K)


def batched_ap(c: Counts, weights: np.ndarray, areas: int = len(AREA_LBL)) -> tuple[np.ndarray, np.ndarray]:
    """`weighted_ap` for many weightings at once: weights [B, I] -> ([B, A], [B, K, A]), for the first
    `areas` area ranges (1 = "all" only, what a group slice needs)."""
    T, R, A, K = len(IOU_THRS), len(REC_THRS), areas, c.n_cats
    B = len(weights)
    n = np.searchsorted(c.rows, A * T)  # the true positives of rows < A*T (rows are sorted)
    rows, cats = c.rows[:n], c.cats[:n]
    w = weights.astype(np.float64)
    npig = (w @ c.gt_counts[:, :A * K]).reshape(B, A, K)
    tp = w @ c.tp_before[:n].T  # [B, P]
    fp = w @ c.fp_before[:n].T
    with np.errstate(divide="ignore", invalid="ignore"):
        rc = tp / npig[:, rows // T, cats]
    pr = tp / (fp + tp + np.spacing(1))
    # a true positive of an image drawn 0 times repeats the previous recall at a lower precision: harmless
    j = np.searchsorted(REC_THRS, np.nan_to_num(rc, nan=0.0), side="right") - 1
    q = np.zeros((B, A * T * K, R))
    b = np.repeat(np.arange(B), n)
    np.maximum.at(q, (b, np.tile(rows * K + cats, B), j.ravel()), pr.ravel())
    q = np.maximum.accumulate(q[:, :, ::-1], axis=2)[:, :, ::-1].reshape(B, A, T, K, R)
    valid = npig > 0  # [B, A, K]
    means = q.mean(axis=(2, 4))  # [B, A, K]
    n = valid.sum(axis=2)
    overall = np.where(n > 0, np.where(valid, means, 0).sum(axis=2) / np.maximum(n, 1), np.nan)
    return overall, np.where(valid, means, np.nan).transpose(0, 2, 1)


def size_scaled(boxes: Boxes, img_ids: np.ndarray, image_area: np.ndarray) -> Boxes:
    """The boxes with each area scaled to a COCO-sized image (see the module docstring)."""
    scale = COCO_IMAGE_AREA / image_area[np.searchsorted(img_ids, boxes.image_id)]
    return Boxes(boxes.image_id, boxes.category_id, boxes.bbox, boxes.area * scale, boxes.iscrowd, boxes.score)


# -- the suite: slices and the paired bootstrap ---------------------------------------------------------

@dataclass
class Slice:
    name: str  # "size:small", "group:cam3"
    kind: str  # "size" or "group"
    area: int  # area range index (0 = all)
    images: np.ndarray  # [I] bool: images in the slice
    support: int  # counted ground-truth boxes in the slice


def model_matches(gt: dict, detections: list[dict], size_buckets: str = "image") -> Matches:
    """One model's matches on a ground truth (validated as `coco.report` does), with areas scaled for the size
    buckets."""
    from pipeline.metrics.coco import _validated_dt_boxes, validate_gt
    from pipeline.metrics.cocojson import gt_boxes

    if size_buckets not in SIZE_BUCKETS:
        raise ValueError(f"size_buckets must be one of {SIZE_BUCKETS}, got {size_buckets!r}")
    gt_ok = validate_gt(gt)
    g, d = gt_boxes(gt_ok), _validated_dt_boxes(detections, gt_ok, "<detections>")
    img_ids = np.unique(np.asarray([im["id"] for im in gt_ok["images"]], dtype=np.int64))
    if size_buckets == "image":
        by_id = {im["id"]: im for im in gt_ok["images"]}
        area = np.asarray([float(by_id[i].get("width") or 0) * float(by_id[i].get("height") or 0)
                           for i in img_ids.tolist()])
        if (area > 0).all():
            g, d = size_scaled(g, img_ids, area), size_scaled(d, img_ids, area)
        else:
            log.warning("images without width/height: size buckets use COCO's absolute pixel areas")
    return match(g, d, img_ids, [c["id"] for c in gt_ok["categories"]])


def slices(gt: dict, mt: Matches, min_support: int, max_groups: int) -> tuple[list[Slice], dict]:
    """The size buckets and the ingest groups (the canonical images' `group`) with at least `min_support`
    counted boxes (at most `max_groups` groups, the largest); and what was left out, for the record."""
    kept = ~mt.g_ignore  # [A, G]
    g_img = np.searchsorted(mt.img_ids, mt.gt.image_id)
    everything = np.ones(len(mt.img_ids), dtype=bool)
    out = [Slice(f"size:{AREA_LBL[a]}", "size", a, everything, int(kept[a].sum())) for a in range(1, len(AREA_LBL))]
    group_of = {im["id"]: str(im.get("group") or "") for im in gt["images"]}
    groups = np.asarray([group_of.get(i, "") for i in mt.img_ids.tolist()])
    names, inverse = np.unique(groups, return_inverse=True)
    support = np.bincount(inverse[g_img[kept[0]]], minlength=len(names))
    big = [k for k in np.argsort(-support, kind="stable") if names[k] and support[k] >= max(min_support, 1)]
    skipped = {"groups": len(names), "below_min_support": int(sum(1 for s in support if s < max(min_support, 1))),
               "over_max_groups": max(len(big) - max_groups, 0)}
    for k in big[:max_groups]:
        out.append(Slice(f"group:{names[k]}", "group", 0, inverse == k, int(support[k])))
    return out, skipped


def _interval(values: np.ndarray, confidence: float) -> list[float] | None:
    values = values[np.isfinite(values)]
    if not len(values):
        return None
    lo, hi = np.quantile(values, [(1 - confidence) / 2, (1 + confidence) / 2])
    return [float(lo), float(hi)]


def _num(x) -> float | None:
    return None if x is None or not np.isfinite(x) else float(x)


def _model_aps(p: Prepared, c: Counts | None, weights: np.ndarray,
               areas: int = len(AREA_LBL)) -> tuple[np.ndarray, np.ndarray]:
    """([B, A], [B, K, A]) for weights [B, I], batched when the count matrices fit (a single weighting, a point
    estimate, is accumulated alone: its AP rounds exactly as COCO's)."""
    if c is not None and len(weights) > 1:
        out = [batched_ap(c, weights[i:i + BATCH], areas) for i in range(0, len(weights), BATCH)]
        return np.concatenate([o[0] for o in out]), np.concatenate([o[1] for o in out])
    each = [weighted_ap(p, w) for w in weights]
    return np.asarray([e[0] for e in each]), np.asarray([e[1] for e in each])


BATCH = 64  # weightings per batched_ap call: bounds its [B, rows*K, 101] buffer


def _all_aps(model: tuple[Prepared, Counts | None], weights: np.ndarray, sl: list[Slice]):
    """(AP [B], per-class AP [B, K], per-slice AP [B, S]) for image weightings [B, I]."""
    overall, per_class = _model_aps(*model, weights)
    by_slice = []
    for s in sl:
        by_slice.append(overall[:, s.area] if s.kind == "size" else
                        _model_aps(*model, weights * s.images, areas=1)[0][:, 0])
    by_slice = np.stack(by_slice, axis=1) if sl else np.zeros((len(weights), 0))
    return overall[:, 0], per_class[:, :, 0], by_slice


def suite(gt: dict, challenger: list[dict], champion: list[dict] | None = None, *, resamples: int = 500,
          confidence: float = 0.95, seed: int = 0, size_buckets: str = "image", min_support: int = 1,
          max_groups: int = 20) -> dict:
    """The stability section of metrics.json: AP per slice for the challenger and, with a champion's
    detections on the same images, every challenger-champion AP drop (overall, per class, per slice) with its
    paired bootstrap interval over images (`resamples` draws from a generator seeded with `seed`; 0 = no
    intervals). A drop is champion AP - challenger AP: positive means the challenger is worse."""
    from pipeline.metrics.cocojson import category_names

    mt = model_matches(gt, challenger, size_buckets)
    sl, skipped = slices(gt, mt, min_support, max_groups)
    names = category_names(gt)
    classes = [names[int(c)] for c in mt.cat_ids]
    class_support = np.bincount(mt.g_cat[~mt.g_ignore[0]], minlength=len(classes))
    ones = np.ones((1, len(mt.img_ids)))
    p = prepare(mt)
    ours = (p, counts(p))
    (ap,), (x_class,), (slice_ap,) = _all_aps(ours, ones, sl)
    out = {"size_buckets": size_buckets, "resamples": resamples if champion is not None else 0,
           "confidence": confidence, "seed": seed, "images": len(mt.img_ids), "skipped": skipped,
           "AP": {"challenger": _num(ap)}, "per_class": {}, "slices": {}}
    for s, v in zip(sl, slice_ap):
        out["slices"][s.name] = {"kind": s.kind, "support": s.support, "images": int(s.images.sum()),
                                 "challenger": _num(v)}
    if champion is None:
        return out
    pc = prepare(model_matches(gt, champion, size_buckets))
    theirs = (pc, counts(pc))
    (c_ap,), (c_class,), (c_slice,) = _all_aps(theirs, ones, sl)
    boot = _bootstrap(ours, theirs, sl, len(mt.img_ids), resamples, seed)
    ci = (lambda v: _interval(v, confidence)) if boot is not None else (lambda v: None)
    out["AP"] = {"challenger": _num(ap), "champion": _num(c_ap), "drop": _num(c_ap - ap),
                 "ci": ci(boot[0]) if boot else None}
    for k, name in enumerate(classes):
        out["per_class"][name] = {"support": int(class_support[k]), "challenger": _num(x_class[k]),
                                  "champion": _num(c_class[k]), "drop": _num(c_class[k] - x_class[k]),
                                  "ci": ci(boot[1][:, k]) if boot else None}
    for i, s in enumerate(sl):
        out["slices"][s.name].update(champion=_num(c_slice[i]), drop=_num(c_slice[i] - slice_ap[i]),
                                     ci=ci(boot[2][:, i]) if boot else None)
    return out


def paired_drop(gt: dict, challenger: list[dict], champion: list[dict], *, resamples: int = 500,
                confidence: float = 0.95, seed: int = 0, size_buckets: str = "image") -> dict:
    """The overall AP drop (champion - challenger) of two models' detections on the same images (e.g. both under
    one corruption) with its paired bootstrap interval over images: {"drop", "ci"} (ci None for 0 resamples)."""
    models = []
    for detections in (challenger, champion):
        p = prepare(model_matches(gt, detections, size_buckets))
        models.append((p, counts(p)))
    n = models[0][0].n_images
    ours, theirs = (_model_aps(*m, np.ones((1, n)))[0][0, 0] for m in models)
    out = {"drop": _num(theirs - ours), "ci": None}
    if resamples > 0:
        draws = np.random.default_rng(seed).multinomial(n, np.full(n, 1.0 / n), size=resamples)
        mine, other = (_model_aps(*m, draws)[0][:, 0] for m in models)
        out["ci"] = _interval(other - mine, confidence)
    return out


def _bootstrap(ours, theirs, sl: list[Slice], n_images: int, resamples: int, seed: int):
    """Drops (champion - challenger) per resample: overall [B], per class [B, K], per slice [B, S]; both
    models weighted by the same draws of images with replacement."""
    if resamples <= 0:
        return None
    rng = np.random.default_rng(seed)
    draws = rng.multinomial(n_images, np.full(n_images, 1.0 / n_images), size=resamples)
    mine, other = _all_aps(ours, draws, sl), _all_aps(theirs, draws, sl)
    return tuple(b - a for a, b in zip(mine, other))
