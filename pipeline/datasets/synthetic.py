"""Generate a small deterministic synthetic detection dataset as a COCO export (annotations.json + images/).

Shapes (circle, square, triangle) of random size, colour and position on a textured, noisy background,
so a detector has something real to learn. The same arguments always give byte-identical files, so the
DVC hash of the demo dataset is stable from one machine to the next.
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


def _boxes_overlap(a: list[float], b: list[float], margin: float = 2.0) -> bool:
    return not (a[0] + a[2] + margin <= b[0] or b[0] + b[2] + margin <= a[0]
                or a[1] + a[3] + margin <= b[1] or b[1] + b[3] + margin <= a[1])


def generate(out: str | Path, num_images: int = 480, image_size: int = 128, seed: int = 0,
             min_size: int = 16, max_size: int = 48, max_objects: int = 4) -> dict:
    """Write the dataset to `out` (created atomically: written beside it, then renamed). Returns a summary."""
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
    (tmp / "annotations.json").write_text(json.dumps(coco, indent=1))
    if out.exists():
        shutil.rmtree(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    os.replace(tmp, out)
    summary = {"path": str(out), "images": len(images), "annotations": len(annotations), "classes": list(CLASSES)}
    log.info("generated %d images with %d boxes at %s", len(images), len(annotations), out)
    return summary


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, help="directory to write (replaced if it exists)")
    parser.add_argument("--images", type=int, default=480, help="number of images (default 480)")
    parser.add_argument("--size", type=int, default=128, help="image side in pixels (default 128)")
    parser.add_argument("--seed", type=int, default=0)


def main(args: argparse.Namespace) -> int:
    summary = generate(args.out, num_images=args.images, image_size=args.size, seed=args.seed)
    print(json.dumps(summary))
    return 0
