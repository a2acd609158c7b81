"""COCO detection metrics: pycocotools' numbers, computed on arrays for bbox and by faster-coco-eval for segm.

`score(gt, dt)` returns the 12 standard COCO stats under readable keys plus per-class AP/AP50/AR100.
Values COCO reports as -1 ("nothing to measure", e.g. APs when no small objects exist) become None, so
they read as null in JSON instead of a negative precision.

Inputs are checked before scoring; a bad ground truth or results file raises
`InputRejected(path=<file>, field="[i].bbox")` instead of an assertion deep inside the evaluator.
"""
from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pipeline.errors import InputRejected
from pipeline.metrics.cocojson import category_names, dt_boxes, gt_boxes

log = logging.getLogger(__name__)

IOU_TYPES = ("bbox", "segm")
# the order of COCOeval.stats
STAT_KEYS = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")


def _finite_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _clean(value) -> float | None:
    """COCO's -1 (no ground truth to measure against) and NaN become None."""
    if value is None:
        return None
    value = float(value)
    if math.isnan(value) or value < 0:
        return None
    return value


def load_json(path: str | Path, what: str):
    """Read a JSON file; unreadable or malformed files are rejected naming the file.

    Fast: orjson, with the cyclic garbage collector paused (a results file is millions of new containers, and
    the collections they trigger cost more than the parsing: 47 MB of results take ~0.4 s instead of ~1.8 s).
    Whatever orjson refuses goes through `json` again, so the accepted files (NaN literals included, which the
    validators then reject by field) and the error messages are the standard library's. One difference: an
    integer beyond 64 bits reads as a float, which the validators reject where an integer id is needed.
    """
    import gc

    import orjson

    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise InputRejected(f"cannot read {what}: {exc.strerror or exc}", path=str(path)) from None
    collecting = gc.isenabled()
    gc.disable()
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        pass
    finally:
        if collecting:
            gc.enable()
    try:
        return json.loads(data.decode())
    except UnicodeDecodeError as exc:
        raise InputRejected(f"{what} is not UTF-8 text: {exc.reason} at byte {exc.start}", path=str(path)) from None
    except json.JSONDecodeError as exc:
        raise InputRejected(f"{what} is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}",
                            path=str(path)) from None


# -- input checks ------------------------------------------------------------------------------------

def _check_bbox(bbox, path, where: str) -> None:
    if not (isinstance(bbox, (list, tuple)) and len(bbox) == 4 and all(_finite_number(v) for v in bbox)):
        raise InputRejected(f"bbox must be 4 finite numbers [x, y, w, h], got {bbox!r}", path=path, field=where)
    if bbox[2] < 0 or bbox[3] < 0:
        raise InputRejected(f"bbox width and height must be >= 0, got {bbox!r}", path=path, field=where)


def validate_gt(gt, path: str = "<ground truth>", iou_type: str = "bbox") -> dict:
    """Check a COCO ground-truth dict; return a normalised copy (area filled in, ids renumbered).

    The copy matters twice: the evaluator writes keys into annotation dicts, and pycocotools needs `area`
    and unique annotation ids, which hand-made files often lack. Copying each dict one level deep is enough:
    nothing replaces values nested deeper.
    """
    if iou_type not in IOU_TYPES:
        raise InputRejected(f"iou type must be one of {IOU_TYPES}, got {iou_type!r}", path=path, field="iou_type")
    if not isinstance(gt, dict):
        raise InputRejected("ground truth must be a COCO object with images, annotations, categories",
                            path=path, field="(top level)")
    for key in ("images", "annotations", "categories"):
        if not isinstance(gt.get(key), list):
            raise InputRejected(f"'{key}' must be a list", path=path, field=key)
    gt = dict(gt, images=[dict(x) if isinstance(x, dict) else x for x in gt["images"]],
              annotations=[dict(x) if isinstance(x, dict) else x for x in gt["annotations"]],
              categories=[dict(x) if isinstance(x, dict) else x for x in gt["categories"]])
    image_ids = set()
    for i, img in enumerate(gt["images"]):
        if not isinstance(img, dict) or not isinstance(img.get("id"), int) or isinstance(img.get("id"), bool):
            raise InputRejected("image needs an integer 'id'", path=path, field=f"images[{i}].id")
        if img["id"] in image_ids:
            raise InputRejected(f"duplicate image id {img['id']}", path=path, field=f"images[{i}].id")
        if iou_type == "segm" and not all(_finite_number(img.get(k)) for k in ("height", "width")):
            raise InputRejected("segm evaluation needs image height and width", path=path,
                                field=f"images[{i}].height")
        image_ids.add(img["id"])
    cat_ids = set()
    for i, cat in enumerate(gt["categories"]):
        if not isinstance(cat, dict) or not isinstance(cat.get("id"), int) or isinstance(cat.get("id"), bool):
            raise InputRejected("category needs an integer 'id'", path=path, field=f"categories[{i}].id")
        if cat["id"] in cat_ids:
            raise InputRejected(f"duplicate category id {cat['id']}", path=path, field=f"categories[{i}].id")
        cat.setdefault("name", str(cat["id"]))
        cat_ids.add(cat["id"])
    for i, ann in enumerate(gt["annotations"]):
        if not isinstance(ann, dict):
            raise InputRejected("annotation must be an object", path=path, field=f"annotations[{i}]")
        if ann.get("image_id") not in image_ids:
            raise InputRejected(f"image_id {ann.get('image_id')!r} is not in images", path=path,
                                field=f"annotations[{i}].image_id")
        if ann.get("category_id") not in cat_ids:
            raise InputRejected(f"category_id {ann.get('category_id')!r} is not in categories", path=path,
                                field=f"annotations[{i}].category_id")
        _check_bbox(ann.get("bbox"), path, f"annotations[{i}].bbox")
        if iou_type == "segm" and not ann.get("segmentation"):
            raise InputRejected("segm evaluation needs a segmentation", path=path,
                                field=f"annotations[{i}].segmentation")
        if not _finite_number(ann.get("area")):
            ann["area"] = float(ann["bbox"][2] * ann["bbox"][3])
        ann["iscrowd"] = int(bool(ann.get("iscrowd", 0)))
        ann["id"] = i + 1
    return gt


_NUMBER = {int, float}


def _bbox_columns(dt: list, image_ids: set, cat_ids: set):
    """Whole-list check of bbox results, a few C-speed passes instead of a Python loop per detection; the
    detections as columns when all pass, else None.

    Same rules as the per-item loop in validate_dt, which runs only when this says no, to name the first bad
    item.
    """
    from pipeline.metrics.boxeval import Boxes

    if any(type(d) is not dict for d in dt):
        return None
    keys = {"image_id", "category_id", "score", "bbox"}
    if not all(d.keys() >= keys for d in dt):
        return None
    img = [d["image_id"] for d in dt]
    cat = [d["category_id"] for d in dt]
    score = [d["score"] for d in dt]
    boxes = [d["bbox"] for d in dt]
    if not (set(img) <= image_ids and set(cat) <= cat_ids and set(map(type, img)) <= {int}
            and set(map(type, cat)) <= {int} and set(map(type, score)) <= _NUMBER):
        return None
    if not (set(map(type, boxes)) <= {list, tuple} and set(map(len, boxes)) <= {4}):
        return None
    if not {type(v) for b in boxes for v in b} <= _NUMBER:
        return None
    arr = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    scores = np.asarray(score, dtype=np.float64)
    if not (np.isfinite(arr).all() and (arr[:, 2:] >= 0).all() and np.isfinite(scores).all()):
        return None
    # area as pycocotools' loadRes sets it for box results
    return Boxes(np.asarray(img, dtype=np.int64), np.asarray(cat, dtype=np.int64), arr, arr[:, 2] * arr[:, 3],
                 score=scores)


def validate_dt(dt, gt: dict, path: str = "<detections>", iou_type: str = "bbox") -> list[dict]:
    """Check a COCO results list against its (validated) ground truth; return a copy of the fields used."""
    if not isinstance(dt, list):
        raise InputRejected("detections must be a JSON list of COCO results", path=path, field="(top level)")
    image_ids = {img["id"] for img in gt["images"]}
    cat_ids = {cat["id"] for cat in gt["categories"]}
    if iou_type == "bbox" and _bbox_columns(dt, image_ids, cat_ids) is not None:
        # shallow copies: an evaluator may add keys to each result but never changes a bbox in place
        return list(map(dict, dt))
    out = []
    for i, det in enumerate(dt):
        if not isinstance(det, dict):
            raise InputRejected("detection must be an object", path=path, field=f"[{i}]")
        if det.get("image_id") not in image_ids:
            raise InputRejected(f"image_id {det.get('image_id')!r} is not in the ground truth images",
                                path=path, field=f"[{i}].image_id")
        if det.get("category_id") not in cat_ids:
            raise InputRejected(f"category_id {det.get('category_id')!r} is not in the ground truth categories",
                                path=path, field=f"[{i}].category_id")
        if not _finite_number(det.get("score")):
            raise InputRejected(f"score must be a finite number, got {det.get('score')!r}", path=path,
                                field=f"[{i}].score")
        if iou_type == "bbox":
            _check_bbox(det.get("bbox"), path, f"[{i}].bbox")
            clean = {"image_id": det["image_id"], "category_id": det["category_id"], "bbox": list(det["bbox"]),
                     "score": det["score"]}
        else:
            seg = det.get("segmentation")
            if not (isinstance(seg, dict) and "size" in seg and "counts" in seg):
                raise InputRejected("segm results need an RLE segmentation {size, counts}", path=path,
                                    field=f"[{i}].segmentation")
            clean = {"image_id": det["image_id"], "category_id": det["category_id"], "segmentation": dict(seg),
                     "score": det["score"]}
            if "bbox" in det:
                _check_bbox(det["bbox"], path, f"[{i}].bbox")
                clean["bbox"] = list(det["bbox"])
        out.append(clean)
    return out


# -- COCO evaluation --------------------------------------------------------------------------------

@dataclass
class Evaluation:
    """Everything one COCOeval pass yields: the metrics dict and the precision/recall curves behind it."""

    metrics: dict
    recall_thresholds: list[float] = field(default_factory=list)
    # class name -> interpolated precision at each recall threshold (IoU 0.5, all areas, 100 dets); None = no GT
    pr_curves: dict[str, list[float] | None] = field(default_factory=dict)


ENGINES = ("vectorized", "faster-coco-eval")


def _validated_dt_boxes(dt, gt: dict, path: str):
    """bbox results checked and turned into columns, without a dict copy per detection when all is well."""
    if isinstance(dt, list):
        boxes = _bbox_columns(dt, {img["id"] for img in gt["images"]}, {cat["id"] for cat in gt["categories"]})
        if boxes is not None:
            return boxes
    return dt_boxes(validate_dt(dt, gt, path, "bbox"))  # raises naming the first bad item


def _run_cocoeval(gt: dict, dt, iou_type: str, engine: str = "vectorized"):
    """COCOeval evaluate/accumulate/summarize. bbox goes to `pipeline.metrics.boxeval` (pycocotools' algorithm
    on arrays, several times faster than faster-coco-eval) unless `engine="faster-coco-eval"`; segm always
    goes to faster-coco-eval. `dt` is a list of validated result dicts, or `Boxes` columns for the bbox array
    engine."""
    from pipeline.metrics.boxeval import Boxes

    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {ENGINES}, got {engine!r}")
    if iou_type == "bbox" and engine == "vectorized":
        from pipeline.metrics import boxeval

        return boxeval.evaluate(gt_boxes(gt), dt if isinstance(dt, Boxes) else dt_boxes(dt),
                                [img["id"] for img in gt["images"]], [cat["id"] for cat in gt["categories"]])
    from faster_coco_eval import COCO, COCOeval_faster

    coco_gt = COCO(gt, print_function=log.debug)
    coco_dt = coco_gt.loadRes(dt)
    ev = COCOeval_faster(coco_gt, coco_dt, iouType=iou_type, print_function=log.debug, rle_iou_max_workers=1)
    ev.evaluate()
    ev.accumulate()
    ev.summarize()
    return ev


def evaluate(gt: dict, dt: list[dict], iou_type: str = "bbox", *, gt_path: str = "<ground truth>",
             dt_path: str = "<detections>", engine: str = "vectorized") -> Evaluation:
    """Validate and score; `gt_path`/`dt_path` only name the inputs in rejection messages."""
    gt = validate_gt(gt, gt_path, iou_type)
    if iou_type == "bbox" and engine == "vectorized":
        return _evaluate_valid(gt, _validated_dt_boxes(dt, gt, dt_path), iou_type, engine)
    return _evaluate_valid(gt, validate_dt(dt, gt, dt_path, iou_type), iou_type, engine)


def _evaluate_valid(gt: dict, dt, iou_type: str, engine: str = "vectorized") -> Evaluation:
    """Score inputs that passed validate_gt and validate_dt (or _validated_dt_boxes for bbox). Both validators
    copy what an evaluator might write into."""
    names = category_names(gt)
    cat_ids = sorted(names)
    support = {c: 0 for c in cat_ids}
    for ann in gt["annotations"]:
        if not ann["iscrowd"]:
            support[ann["category_id"]] += 1

    if not gt["images"] or not cat_ids:
        # nothing to evaluate: every stat is undefined
        metrics = {k: None for k in STAT_KEYS}
        metrics["per_class"] = {names[c]: {"AP": None, "AP50": None, "AR100": None, "support": support[c]}
                                for c in cat_ids}
        return Evaluation(metrics, [], {names[c]: None for c in cat_ids})

    ev = _run_cocoeval(gt, dt, iou_type, engine)
    stats = np.asarray(ev.stats, dtype=float)[: len(STAT_KEYS)]
    metrics: dict = {k: _clean(v) for k, v in zip(STAT_KEYS, stats)}

    p = ev.params
    precision = np.asarray(ev.eval["precision"])  # [T iou, R recall, K class, A area, M maxdets]
    recall = np.asarray(ev.eval["recall"])  # [T, K, A, M]
    iou50 = int(np.where(np.isclose(p.iouThrs, 0.5))[0][0])
    area_all = list(p.areaRngLbl).index("all")
    maxdet = len(p.maxDets) - 1  # 100
    eval_cats = list(p.catIds)

    def mean_valid(arr) -> float | None:
        valid = arr[arr > -1]
        return _clean(valid.mean()) if valid.size else None

    per_class, curves = {}, {}
    for k, cat_id in enumerate(eval_cats):
        name = names[cat_id]
        per_class[name] = {
            "AP": mean_valid(precision[:, :, k, area_all, maxdet]),
            "AP50": mean_valid(precision[iou50, :, k, area_all, maxdet]),
            "AR100": mean_valid(recall[:, k, area_all, maxdet]),
            "support": support[cat_id],
        }
        curve = precision[iou50, :, k, area_all, maxdet]
        curves[name] = None if (curve < 0).all() else [max(float(v), 0.0) for v in curve]
    metrics["per_class"] = per_class
    return Evaluation(metrics, [float(r) for r in p.recThrs], curves)


def score(gt: dict, dt: list[dict], iou_type: str = "bbox", engine: str = "vectorized") -> dict:
    """The 12 COCO stats (`AP`, `AP50`, ... `ARl`) and `per_class` {name: {AP, AP50, AR100, support}}."""
    return evaluate(gt, dt, iou_type, engine=engine).metrics


def report(gt: dict, dt: list[dict], iou_type: str = "bbox", score_threshold: float = 0.3, *,
           gt_path: str = "<ground truth>", dt_path: str = "<detections>",
           engine: str = "vectorized") -> tuple[dict, Evaluation]:
    """`score()` plus the operating point at `score_threshold` and the confusion matrix, as written to
    metrics.json by the evaluate stage and the `score` command. Returns (metrics dict, Evaluation)."""
    from pipeline.metrics.boxeval import Boxes
    from pipeline.metrics.matching import confusion_matrix, match, operating_point

    gt_ok = validate_gt(gt, gt_path, iou_type)
    if iou_type == "bbox" and engine == "vectorized":
        dt_ok = _validated_dt_boxes(dt, gt_ok, dt_path)  # columns: no dict copy per detection
    else:
        dt_ok = validate_dt(dt, gt_ok, dt_path, iou_type)
    # for segm, faster-coco-eval fills in each result's bbox from its mask, which the box matching below uses
    ev = _evaluate_valid(gt_ok, dt_ok, iou_type, engine)
    metrics = dict(ev.metrics)
    metrics["iou_type"] = iou_type
    matches = match(gt_boxes(gt_ok), dt_ok if isinstance(dt_ok, Boxes) else dt_boxes(dt_ok), score_threshold)
    metrics["operating_point"] = operating_point(gt_ok, dt_ok, score_threshold, matches)
    metrics["confusion_matrix"] = confusion_matrix(gt_ok, dt_ok, score_threshold, matches)
    return metrics, ev
