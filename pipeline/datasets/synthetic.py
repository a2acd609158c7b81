"""Generate a small deterministic synthetic dataset of any task (--task): a COCO export (annotations.json +
images/) for detection and segmentation, an ImageFolder tree for classification.

Shapes (circle, square, triangle) of random size, colour and position on a textured, noisy background,
so a detector has something real to learn. With `segmentation=True` the same images are written as COCO
instance segmentation (`"task": "segmentation"`): every annotation also has its shape's outline as a polygon
(exact for squares and triangles, a 32-gon for circles) and the polygon's area. The same arguments always
give byte-identical files, so the DVC hash of the demo dataset is stable from one machine to the next.

`generate_classification` writes the image-classification demo instead: one shape per image, filed in an
ImageFolder tree (`circle/`, `square/`, `triangle/`), also deterministic and byte-identical.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

log = logging.getLogger(__name__)

CLASSES = ("circle", "square", "triangle")


def _draw_shape(draw: ImageDraw.ImageDraw, cls: str, x0: float, y0: float, size: float, colour) -> list[float]:
    x1, y1 = x0 + size, y0 + size
    if cls == "circle":
        draw.ellipse([x0, y0, x1, y1], fill=colour)
    elif cls == "square":
        draw.rectangle([x0, y0, x1, y1], fill=colour)
    else:
        draw.polygon([(x0 + size / 2, y0), (x1, y1), (x0, y1)], fill=colour)
    return [x0, y0, size, size]


CIRCLE_SIDES = 32


def _outline(cls: str, x0: float, y0: float, size: float) -> list[float]:
    """The shape's outline as a flat COCO polygon [x1, y1, x2, y2, ...] in pixels."""
    x1, y1 = x0 + size, y0 + size
    if cls == "square":
        return [x0, y0, x1, y0, x1, y1, x0, y1]
    if cls == "triangle":
        return [x0 + size / 2, y0, x1, y1, x0, y1]
    r, cx, cy = size / 2, x0 + size / 2, y0 + size / 2
    angles = np.arange(CIRCLE_SIDES) * (2 * np.pi / CIRCLE_SIDES)
    return [round(float(v), 3) for a in angles for v in (cx + r * np.cos(a), cy + r * np.sin(a))]


def _polygon_area(poly: list[float]) -> float:
    xs, ys = np.asarray(poly[0::2]), np.asarray(poly[1::2])
    return round(float(abs(np.dot(xs, np.roll(ys, -1)) - np.dot(ys, np.roll(xs, -1))) / 2), 3)


def _boxes_overlap(a: list[float], b: list[float], margin: float = 2.0) -> bool:
    return not (a[0] + a[2] + margin <= b[0] or b[0] + b[2] + margin <= a[0]
                or a[1] + a[3] + margin <= b[1] or b[1] + b[3] + margin <= a[1])


def generate(out: str | Path, num_images: int = 480, image_size: int = 128, seed: int = 0,
             min_size: int = 16, max_size: int = 48, max_objects: int = 4, segmentation: bool = False) -> dict:
    """Write the dataset to `out` (created atomically: written beside it, then renamed). Returns a summary.
    `segmentation`: also the shapes' outlines as COCO polygons (same images and boxes)."""
    out = Path(out)
    rng = np.random.default_rng(seed)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-synthetic-", dir=out.parent if out.parent.exists() else None))
    (tmp / "images").mkdir()
    images, annotations = [], []
    ann_id = 1
    for i in range(num_images):
        w = h = image_size
        base = rng.integers(40, 200, size=3)
        noise = rng.normal(0, 12, size=(h, w, 3))
        gradient = np.linspace(-25, 25, w)[None, :, None] * rng.choice([-1, 1])
        pixels = np.clip(base[None, None, :] + noise + gradient, 0, 255).astype(np.uint8)
        img = Image.fromarray(pixels, "RGB")
        draw = ImageDraw.Draw(img)
        placed: list[list[float]] = []
        for _ in range(int(rng.integers(1, max_objects + 1))):
            for _attempt in range(20):
                size = float(rng.integers(min_size, max_size + 1))
                x0 = float(rng.integers(0, w - size))
                y0 = float(rng.integers(0, h - size))
                box = [x0, y0, size, size]
                if not any(_boxes_overlap(box, p) for p in placed):
                    break
            else:
                continue
            cls_idx = int(rng.integers(0, len(CLASSES)))
            # keep the shape visibly different from the background
            colour = tuple(int(c) for c in (255 - base + rng.integers(-30, 30, size=3)).clip(0, 255))
            bbox = _draw_shape(draw, CLASSES[cls_idx], x0, y0, size, colour)
            placed.append(bbox)
            annotations.append({
                "id": ann_id, "image_id": i + 1, "category_id": cls_idx + 1, "bbox": bbox,
                "area": bbox[2] * bbox[3], "iscrowd": 0,
            })
            if segmentation:
                poly = _outline(CLASSES[cls_idx], x0, y0, size)
                annotations[-1].update(segmentation=[poly], area=_polygon_area(poly))
            ann_id += 1
        name = f"shapes_{i:05d}.jpg"
        img.save(tmp / "images" / name, quality=92)
        images.append({"id": i + 1, "file_name": name, "width": w, "height": h})
    coco = {
        "info": {"description": "Nightshift synthetic shapes", "version": "1", "year": 2026},
        "licenses": [],
        "images": images,
        "annotations": annotations,
        "categories": [{"id": k + 1, "name": c, "supercategory": "shape"} for k, c in enumerate(CLASSES)],
    }
    if segmentation:
        coco["task"] = "segmentation"
    (tmp / "annotations.json").write_text(json.dumps(coco, indent=1))
    if out.exists():
        shutil.rmtree(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    os.replace(tmp, out)
    summary = {"path": str(out), "images": len(images), "annotations": len(annotations), "classes": list(CLASSES)}
    log.info("generated %d images with %d boxes at %s", len(images), len(annotations), out)
    return summary


def generate_classification(out: str | Path, num_images: int = 480, image_size: int = 64, seed: int = 0,
                            min_fraction: float = 0.3, max_fraction: float = 0.75) -> dict:
    """Write an image-classification dataset as an ImageFolder tree `out/<class>/shape_NNNNN.jpg`: one shape
    per image (its class), its side `min_fraction`..`max_fraction` of the image, at a random position and in a
    colour set off from a noisy, graded background. Classes take turns in a seeded shuffle, so they are balanced
    to within one image. Created atomically (written beside `out`, then renamed); the same arguments always give
    byte-identical files. Returns a summary."""
    if num_images < len(CLASSES):
        raise ValueError(f"num_images must be at least {len(CLASSES)} (one image per class), got {num_images}")
    out = Path(out)
    rng = np.random.default_rng(seed)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-synthetic-cls-", dir=out.parent))
    try:
        for cls in CLASSES:
            (tmp / cls).mkdir()
        order = rng.permutation(np.arange(num_images) % len(CLASSES))
        per_class = dict.fromkeys(CLASSES, 0)
        s = image_size
        for i, cls_idx in enumerate(order):
            base = rng.integers(40, 200, size=3)
            noise = rng.normal(0, 12, size=(s, s, 3))
            gradient = np.linspace(-25, 25, s)[None, :, None] * rng.choice([-1, 1])
            img = Image.fromarray(np.clip(base[None, None, :] + noise + gradient, 0, 255).astype(np.uint8), "RGB")
            size = float(rng.integers(int(min_fraction * s), int(max_fraction * s) + 1))
            x0, y0 = float(rng.integers(0, s - size + 1)), float(rng.integers(0, s - size + 1))
            colour = tuple(int(c) for c in (255 - base + rng.integers(-30, 30, size=3)).clip(0, 255))
            cls = CLASSES[int(cls_idx)]
            _draw_shape(ImageDraw.Draw(img), cls, x0, y0, size, colour)
            img.save(tmp / cls / f"shape_{i:05d}.jpg", quality=92)
            per_class[cls] += 1
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("generated %d classification images (%s) at %s", num_images,
             ", ".join(f"{c}: {n}" for c, n in per_class.items()), out)
    return {"path": str(out), "images": num_images, "classes": list(CLASSES), "per_class": per_class,
            "layout": "imagefolder"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, help="directory to write (replaced if it exists)")
    parser.add_argument("--images", type=int, default=480, help="number of images (default 480)")
    parser.add_argument("--size", type=int, default=None, help="image side in pixels (default 128; 64 with "
                                                                "--task classification)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--task", choices=("detection", "classification", "segmentation"), default="detection",
                        help="detection: COCO boxes (default); segmentation: plus polygons; classification: "
                             "class folders, one shape per image")


def main(args: argparse.Namespace) -> int:
    if getattr(args, "task", "detection") == "classification":
        summary = generate_classification(args.out, num_images=args.images, image_size=args.size or 64,
                                          seed=args.seed)
        print(json.dumps(summary))
        return 0
    summary = generate(args.out, num_images=args.images, image_size=args.size or 128, seed=args.seed,
                       segmentation=getattr(args, "task", "detection") == "segmentation")
    print(json.dumps(summary))
    return 0
