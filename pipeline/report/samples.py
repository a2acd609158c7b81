"""Sample predictions for the report: the best and worst val images by per-image F1, boxes drawn with PIL.

F1 uses the same matching as evaluate's operating point (`pipeline.metrics.matching`: IoU >= 0.5, greedy in
score order, within a class, detections scoring >= the threshold). An image with nothing to find and nothing
found scores 1. Ground truth is drawn in green, detections that match it in blue, false positives in red.
A segmentation run's detections carry masks (COCO RLE): each is laid over the image first, semi-transparent,
in its class's colour (`CLASS_COLOURS`), under the boxes.
"""
from __future__ import annotations

import io
from dataclasses import dataclass

from PIL import Image, ImageDraw

from pipeline.metrics.coco import validate_dt, validate_gt
from pipeline.metrics.matching import by_image, operating_point

GT_COLOUR = (40, 200, 70)
TP_COLOUR = (40, 110, 240)
FP_COLOUR = (230, 40, 40)
DISPLAY_SIDE = 256  # small images are scaled up to this longest side so the boxes stay readable
# mask overlays, by category id (cycled): distinct from the box colours above
CLASS_COLOURS = ((255, 160, 0), (170, 60, 230), (0, 190, 190), (240, 90, 170), (150, 200, 30), (255, 220, 40),
                 (120, 80, 40), (90, 140, 255))
MASK_ALPHA = 0.45


@dataclass
class ImageScore:
    image: dict
    f1: float
    tp: int
    fp: int
    fn: int
    gt: list[dict]
    dt: list[dict]  # detections at or above the threshold


def score_images(gt: dict, detections: list[dict], score_threshold: float) -> list[ImageScore]:
    """Per-image F1 at `score_threshold` for every image in `gt` (a COCO dict of one split)."""
    gt = validate_gt(gt, "ingest/dataset/annotations.json")
    ids = {im["id"] for im in gt["images"]}
    dt = validate_dt([d for d in detections if d.get("image_id") in ids], gt, "evaluate/detections.json")
    gts, dts = by_image(gt, dt, score_threshold)
    scores = []
    for image in gt["images"]:
        one = dict(gt, images=[image], annotations=gts[image["id"]])
        op = operating_point(one, dts[image["id"]], score_threshold)
        f1 = 1.0 if op["f1"] is None else op["f1"]
        scores.append(ImageScore(image, f1, op["tp"], op["fp"], op["fn"], gts[image["id"]], dts[image["id"]]))
    return scores


def pick(scores: list[ImageScore], n: int) -> tuple[list[ImageScore], list[ImageScore]]:
    """(best n, worst n) without overlap; ties broken by fewer errors, then image id (deterministic)."""
    ranked = sorted(scores, key=lambda s: (-s.f1, s.fp + s.fn, s.image["id"]))
    best = ranked[: min(n, len(ranked) // 2 if len(ranked) > 1 else len(ranked))]
    chosen = {s.image["id"] for s in best}
    rest = [s for s in ranked if s.image["id"] not in chosen]
    worst = sorted(rest, key=lambda s: (s.f1, -(s.fp + s.fn), s.image["id"]))[:n]
    return best, worst


def _iou(a, b) -> float:
    ax2, ay2, bx2, by2 = a[0] + a[2], a[1] + a[3], b[0] + b[2], b[1] + b[3]
    iw = max(0.0, min(ax2, bx2) - max(a[0], b[0]))
    ih = max(0.0, min(ay2, by2) - max(a[1], b[1]))
    inter = iw * ih
    union = a[2] * a[3] + b[2] * b[3] - inter
    return inter / union if union > 0 else 0.0


def draw(image_bytes: bytes, sample: ImageScore, names: dict[int, str]) -> bytes:
    """The image with GT and detections drawn, scaled up if small; PNG bytes."""
    img = Image.open(io.BytesIO(image_bytes)).convert("RGB")
    scale = max(1.0, DISPLAY_SIDE / max(img.size))
    if scale > 1:
        img = img.resize((round(img.width * scale), round(img.height * scale)), Image.Resampling.BILINEAR)
    img = overlay_masks(img, [d for d in sample.dt if d.get("segmentation")])
    pen = ImageDraw.Draw(img)

    def rect(bbox, colour, width):
        x, y, w, h = (v * scale for v in bbox)
        pen.rectangle([x, y, x + w, y + h], outline=colour, width=width)
        return x, y, w, h

    for ann in sample.gt:
        rect(ann["bbox"], GT_COLOUR, 2)
    for det in sorted(sample.dt, key=lambda d: d["score"]):
        hit = any(g["category_id"] == det["category_id"] and _iou(det["bbox"], g["bbox"]) >= 0.5 for g in sample.gt)
        colour = TP_COLOUR if hit else FP_COLOUR
        x, y, _, _ = rect(det["bbox"], colour, 1)
        label = f"{names.get(det['category_id'], det['category_id'])} {det['score']:.2f}"
        pen.text((x + 2, max(0, y - 11)), label, fill=colour)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def overlay_masks(img: Image.Image, detections: list[dict], alpha: float = MASK_ALPHA) -> Image.Image:
    """`img` with each detection's mask (COCO RLE at the original image size, which `img` may be a scaled-up
    copy of) blended in its class colour, lowest score first so the surest mask ends on top."""
    if not detections:
        return img
    import numpy as np
    from pycocotools import mask as mask_util  # not pipeline.training.masks: the report needs no torch

    def decode(rle: dict) -> np.ndarray:
        counts = rle["counts"]
        return mask_util.decode({"size": list(rle["size"]),
                                 "counts": counts.encode("ascii") if isinstance(counts, str) else counts})

    pixels = np.asarray(img, dtype=np.float32).copy()
    for det in sorted(detections, key=lambda d: d["score"]):
        mask = Image.fromarray(decode(det["segmentation"]) * 255).resize(img.size, Image.Resampling.NEAREST)
        on = np.asarray(mask) > 127
        colour = np.asarray(CLASS_COLOURS[int(det["category_id"]) % len(CLASS_COLOURS)], dtype=np.float32)
        pixels[on] = pixels[on] * (1 - alpha) + colour * alpha
    return Image.fromarray(pixels.round().astype(np.uint8))
