"""A tiny canonical segmentation dataset written by hand, for the segmentation tests of evaluate, export,
promote, the report and the bench (until ingest produces masks itself).

Images: filled discs and squares on a noisy background; every annotation carries its polygon (`segmentation`),
bbox and area, and annotations.json says `"task": "segmentation"`. `predicted_masks` turns the ground truth of
an image into Mask R-CNN-like output for tests that need "perfect" or perturbed detections.
"""
from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import numpy as np

CATEGORIES = [{"id": 1, "name": "disc"}, {"id": 2, "name": "square"}]


def _polygon(kind: str, cx: float, cy: float, r: float) -> list[float]:
    if kind == "square":
        pts = [(cx - r, cy - r), (cx + r, cy - r), (cx + r, cy + r), (cx - r, cy + r)]
    else:
        pts = [(cx + r * math.cos(2 * math.pi * k / 24), cy + r * math.sin(2 * math.pi * k / 24)) for k in range(24)]
    return [round(v, 2) for p in pts for v in p]


def write_dataset(root: str | Path, num_images: int = 6, size: int = 96, seed: int = 0, val: int | None = None,
                  shapes: int = 2) -> dict:
    """Write root/annotations.json and root/images/*.png; the first `val` images (default: half) are val."""
    import torch
    from pycocotools import mask as mask_util
    from torchvision.io import write_png

    root = Path(root)
    (root / "images").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    val = num_images // 2 if val is None else val
    images, annotations = [], []
    for i in range(num_images):
        pixels = rng.integers(0, 60, size=(size, size, 3)).astype(np.uint8)
        for _ in range(shapes):
            cat = int(rng.integers(1, 3))
            kind = "disc" if cat == 1 else "square"
            r = float(rng.uniform(size * 0.1, size * 0.2))
            cx, cy = (float(rng.uniform(r + 1, size - r - 1)) for _ in range(2))
            poly = _polygon(kind, cx, cy, r)
            mask = mask_util.decode(mask_util.frPyObjects([poly], size, size))[:, :, 0].astype(bool)
            pixels[mask] = (200, 80, 40) if cat == 1 else (40, 160, 220)
            x0, y0 = min(poly[0::2]), min(poly[1::2])
            annotations.append({"id": len(annotations) + 1, "image_id": i + 1, "category_id": cat,
                                "bbox": [x0, y0, max(poly[0::2]) - x0, max(poly[1::2]) - y0],
                                "area": float(mask.sum()), "iscrowd": 0, "segmentation": [poly]})
        name = f"img{i:03d}.png"
        write_png(torch.from_numpy(pixels).permute(2, 0, 1).contiguous(), str(root / "images" / name))
        sha1 = hashlib.sha1((root / "images" / name).read_bytes()).hexdigest()
        images.append({"id": i + 1, "file_name": name, "width": size, "height": size,
                       "split": "val" if i < val else "train", "group": f"g{i % 2}", "sha1": sha1})
    coco = {"task": "segmentation", "images": images, "annotations": annotations, "categories": CATEGORIES}
    (root / "annotations.json").write_text(json.dumps(coco))
    return coco


def gt_results(coco: dict, image_ids=None, score: float = 0.9) -> list[dict]:
    """The ground truth as COCO results (RLE masks, bbox, score): what a perfect model would predict."""
    from pycocotools import mask as mask_util

    sizes = {im["id"]: (im["height"], im["width"]) for im in coco["images"]}
    out = []
    for ann in coco["annotations"]:
        if image_ids is not None and ann["image_id"] not in image_ids:
            continue
        h, w = sizes[ann["image_id"]]
        rle = mask_util.merge(mask_util.frPyObjects(ann["segmentation"], h, w))
        out.append({"image_id": ann["image_id"], "category_id": ann["category_id"], "bbox": list(ann["bbox"]),
                    "score": score, "segmentation": {"size": [h, w], "counts": rle["counts"].decode("ascii")}})
    return out
