"""COCO JSON as the evaluators read it: display names of the categories, and validated ground truth and
results as `Boxes` columns. Shared by `coco` (the COCO stats) and `matching` (operating point, confusion
matrix): `coco` calls `matching`, never the other way round."""
from __future__ import annotations

import numpy as np

from pipeline.metrics.boxeval import Boxes


def category_names(gt: dict) -> dict[int, str]:
    """category id -> a unique display name (the name, or `name#id` when names repeat)."""
    cats = sorted(gt["categories"], key=lambda c: c["id"])
    counts: dict[str, int] = {}
    for c in cats:
        counts[c["name"]] = counts.get(c["name"], 0) + 1
    return {c["id"]: c["name"] if counts[c["name"]] == 1 else f"{c['name']}#{c['id']}" for c in cats}


def gt_boxes(gt: dict):
    """The columns of a validated ground truth."""
    anns = gt["annotations"]
    return Boxes(np.fromiter((a["image_id"] for a in anns), np.int64, len(anns)),
                 np.fromiter((a["category_id"] for a in anns), np.int64, len(anns)),
                 np.asarray([a["bbox"] for a in anns], dtype=np.float64).reshape(-1, 4),
                 np.fromiter((a["area"] for a in anns), np.float64, len(anns)),
                 iscrowd=np.fromiter((a["iscrowd"] for a in anns), bool, len(anns)))


def dt_boxes(dt: list[dict]):
    """The columns of validated bbox results."""
    box = np.asarray([d["bbox"] for d in dt], dtype=np.float64).reshape(-1, 4)
    return Boxes(np.fromiter((d["image_id"] for d in dt), np.int64, len(dt)),
                 np.fromiter((d["category_id"] for d in dt), np.int64, len(dt)), box, box[:, 2] * box[:, 3],
                 score=np.fromiter((d["score"] for d in dt), np.float64, len(dt)))
