"""Mask metrics of an instance-segmentation run: COCO's segm evaluation beside the box metrics.

A segmentation run's metrics.json keeps every bbox metric exactly as a detection run writes it (so the box
gates, the stability suite and the report read it unchanged) and adds `segm`: the 12 COCO stats under the
same keys (`AP`, `AP50`, ... `ARl`, mask IoU instead of box IoU) and `per_class` {name: {AP, AP50, AR100,
support}}, scored by faster-coco-eval (pycocotools' numbers; the tests compare the two). Detections carry
their mask as COCO RLE (`segmentation`, written by `pipeline.training.engine.predict`); ground-truth
annotations carry polygons or RLE.

A run is scored on masks when its dataset is a segmentation dataset (`"task": "segmentation"`, every
annotation then needs a mask) and the model is a segmentation model whose detections carry masks
(`has_masks`). A champion that predates masks (a detector) gets no `segm`; the mask regression gate then says
it had nothing to compare with.

With a champion scored on masks, `segm["champion_drop"]` is the mask AP drop (champion - challenger) with its
paired bootstrap interval over the split's images (`paired_drop`), which `segm_max_regression` is judged on.
"""
from __future__ import annotations

import logging
import re

from pipeline.metrics.coco import STAT_KEYS, score

log = logging.getLogger(__name__)


def has_masks(detections: list[dict]) -> bool:
    """Every detection carries a mask (`segmentation`)."""
    return all("segmentation" in d for d in detections)


def segm_metrics(gt: dict, detections: list[dict], *, gt_path: str = "<ground truth>",
                 dt_path: str = "<detections>") -> dict:
    """metrics.json's `segm`: the 12 COCO stats and per class, with mask IoU."""
    from pipeline.metrics.coco import evaluate

    metrics = dict(evaluate(gt, detections, "segm", gt_path=gt_path, dt_path=dt_path,
                            engine="faster-coco-eval").metrics)
    metrics["iou_type"] = "segm"
    return metrics


def section(gt: dict, detections: list[dict], what: str, model_task: str, *,
            gt_path: str = "<ground truth>") -> dict | None:
    """`segm` for one model's detections, or None (logged) when the model (`model_task`) predicts no masks."""
    if model_task != "segmentation" or not has_masks(detections):
        log.warning("%s: a %s model predicts no masks: no mask metrics (segm) for it", what, model_task)
        return None
    metrics = segm_metrics(gt, detections, gt_path=gt_path, dt_path=f"{what} detections")
    log.info("%s: mask AP %s, AP50 %s", what, _fmt(metrics["AP"]), _fmt(metrics["AP50"]))
    return metrics


def drop(metrics: dict) -> float | None:
    """The challenger's mask AP drop against the champion's (None when either was not scored on masks)."""
    ours = (metrics.get("segm") or {}).get("AP")
    theirs = ((metrics.get("champion") or {}).get("segm") or {}).get("AP")
    return None if ours is None or theirs is None else theirs - ours


def _rle(segmentation, height: int, width: int) -> dict:
    """Polygons, uncompressed or compressed RLE -> one compressed RLE (as pycocotools' annToRLE)."""
    from pycocotools import mask as mask_util

    if isinstance(segmentation, list):  # polygons
        return mask_util.merge(mask_util.frPyObjects(segmentation, height, width))
    if isinstance(segmentation.get("counts"), list):  # uncompressed RLE
        return mask_util.frPyObjects(segmentation, height, width)
    counts = segmentation["counts"]
    return {"size": list(segmentation["size"]),
            "counts": counts.encode("ascii") if isinstance(counts, str) else counts}


def mask_matches(gt: dict, detections: list[dict]):
    """COCOeval(segm)'s matching as `boxeval.Matches` (mask IoU, mask areas), so the stability suite's
    re-weighting (`pipeline.metrics.stability`) gives mask AP under bootstrap resamples; with every image
    weighted once it is COCO's segm AP (the tests compare it with faster-coco-eval's)."""
    import numpy as np
    from pycocotools import mask as mask_util

    from pipeline.metrics.boxeval import Boxes, match
    from pipeline.metrics.coco import validate_dt, validate_gt
    from pipeline.metrics.cocojson import gt_boxes

    gt_ok = validate_gt(gt, iou_type="segm")
    dt_ok = validate_dt(detections, gt_ok, iou_type="segm")
    sizes = {im["id"]: (int(im["height"]), int(im["width"])) for im in gt_ok["images"]}
    g_rle = [_rle(a["segmentation"], *sizes[a["image_id"]]) for a in gt_ok["annotations"]]
    d_rle = [_rle(d["segmentation"], *sizes[d["image_id"]]) for d in dt_ok]
    g = gt_boxes(gt_ok)
    d_area = np.asarray([float(mask_util.area(r)) for r in d_rle], dtype=np.float64)
    d_box = np.asarray([mask_util.toBbox(r) for r in d_rle], dtype=np.float64).reshape(-1, 4)
    d = Boxes(np.asarray([x["image_id"] for x in dt_ok], dtype=np.int64),
              np.asarray([x["category_id"] for x in dt_ok], dtype=np.int64), d_box, d_area,
              score=np.asarray([x["score"] for x in dt_ok], dtype=np.float64))

    def pair_iou(di: np.ndarray, gi: np.ndarray, crowd: np.ndarray) -> np.ndarray:
        out = np.zeros(len(di))
        for k, (a, b, c) in enumerate(zip(di.tolist(), gi.tolist(), crowd.tolist())):
            out[k] = mask_util.iou([d_rle[a]], [g_rle[b]], [int(c)])[0][0]
        return out

    return match(g, d, [im["id"] for im in gt_ok["images"]], [c["id"] for c in gt_ok["categories"]], pair_iou)


def paired_drop(gt: dict, challenger: list[dict], champion: list[dict], *, resamples: int = 500,
                confidence: float = 0.95, seed: int = 0) -> dict:
    """The mask AP drop (champion - challenger) on the same images with its paired bootstrap interval over
    images, as `stability.paired_drop` measures the box AP's: {"drop", "ci", "confidence", "resamples"}."""
    import numpy as np

    from pipeline.metrics.stability import _interval, _model_aps, _num, counts, prepare

    models = []
    for detections in (challenger, champion):
        p = prepare(mask_matches(gt, detections))
        models.append((p, counts(p)))
    n = models[0][0].n_images
    ours, theirs = (_model_aps(*m, np.ones((1, n)))[0][0, 0] for m in models)
    out = {"drop": _num(theirs - ours), "ci": None, "confidence": confidence, "resamples": max(resamples, 0)}
    if resamples > 0 and n > 0:
        draws = np.random.default_rng(seed).multinomial(n, np.full(n, 1.0 / n), size=resamples)
        mine, other = (_model_aps(*m, draws)[0][:, 0] for m in models)
        out["ci"] = _interval(other - mine, confidence)
    return out


def mlflow_metrics(metrics: dict) -> dict[str, float]:
    """`eval_segm_AP` ... `eval_segm_ARl`, per class `eval_segm_AP_<class>` / `eval_segm_AP50_<class>`, and
    `eval_champion_segm_AP` / `_AP50` with a champion scored on masks."""
    segm = metrics.get("segm")
    if not segm:
        return {}
    out = {f"eval_segm_{k}": segm.get(k) for k in STAT_KEYS}
    for name, row in (segm.get("per_class") or {}).items():
        safe = re.sub(r"[^A-Za-z0-9_\-./ ]", "_", name)
        out[f"eval_segm_AP_{safe}"] = row.get("AP")
        out[f"eval_segm_AP50_{safe}"] = row.get("AP50")
    champion = (metrics.get("champion") or {}).get("segm")
    if champion:
        out.update(eval_champion_segm_AP=champion.get("AP"), eval_champion_segm_AP50=champion.get("AP50"))
    return {k: float(v) for k, v in out.items() if v is not None}


def quick_score(gt: dict, detections: list[dict]) -> dict:
    """AP and AP50 on masks, for checks that need only those (export's parity)."""
    metrics = score(gt, detections, "segm", engine="faster-coco-eval")
    return {k: metrics[k] for k in ("AP", "AP50", "AP75")} | {"per_class": metrics["per_class"]}


def _fmt(value) -> str:
    return "n/a" if value is None else f"{value:.4f}"
