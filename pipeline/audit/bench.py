"""Benchmark: does the label audit find injected label errors with a real, briefly trained detector?

    python -m pipeline.audit.bench [--images 160] [--epochs 14] [--size 64]

Generates the demo data, trains SSDlite on its clean labels (one process, CPU), predicts every image, then for
each kind of error (swapped class, dropped box, shifted box) makes 5 % of the annotations wrong and prints how
many of them the audit ranks within its top 2x as many items, with the time each step took. The acceptance
test (tests/pipeline/audit/test_scoring.py) uses the same functions.
"""
from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

import numpy as np

from pipeline.audit import scoring

SIZE = 64
RATE = 0.05
EPOCHS = 14  # 120 train images, batch 8: 210 steps
NUM_IMAGES = 160
KINDS = (("swap", scoring.SWAP), ("drop", scoring.MISSING), ("shift", scoring.BADLOC))


def train_ssdlite(data: Path, out: Path, epochs: int = EPOCHS, size: int = SIZE) -> Path:
    """SSDlite trained briefly on the clean demo data, saved in train's model.pt format."""
    import torch

    from pipeline.config import TrainConfig
    from pipeline.datasets.canonical import CanonicalDataset
    from pipeline.store import LocalStore
    from pipeline.training.distributed import DistInfo
    from pipeline.training.engine import fit
    from pipeline.training.models import build_model, save_trained

    cfg = TrainConfig(image_size=size, epochs=epochs, batch_size=8, lr=2e-3, warmup_steps=10, nproc_per_node=1,
                      threads_per_rank=2, deterministic=False, seed=3, bn_calibration_images=0)
    train_set = CanonicalDataset(data, "train", size)
    torch.manual_seed(cfg.seed)
    model = build_model(cfg.model, train_set.num_classes + 1, size)
    info = DistInfo(0, 1, 0, torch.device("cpu"), "")
    fit(model, train_set, cfg, info, LocalStore(out / "store"), "ckpt", "audit-test", progress=False)
    path = out / "model.pt"
    save_trained(path, model, cfg.model, size, train_set.categories)
    return path


def demo_data(path: Path, num_images: int = NUM_IMAGES, size: int = SIZE) -> dict:
    """The demo data (3 train : 1 val) at SIZE px."""
    from pipeline.datasets.synthetic import generate

    generate(path, num_images=num_images, image_size=size, seed=3, min_size=size * 3 // 16,
             max_size=size * 13 // 32, max_objects=3)
    coco = json.loads((path / "annotations.json").read_text())
    for i, image in enumerate(coco["images"]):
        image["split"] = "val" if i % 4 == 0 else "train"
        image["group"] = image["file_name"]
    (path / "annotations.json").write_text(json.dumps(coco))
    return coco


def inject(coco: dict, kind: str, seed: int = 0):
    """A copy of `coco` with 5 % of its annotations made wrong; returns (coco, what was injected)."""
    rng = np.random.default_rng(seed)
    out = copy.deepcopy(coco)
    n = max(1, round(RATE * len(out["annotations"])))
    picked = [out["annotations"][i] for i in rng.choice(len(out["annotations"]), n, replace=False)]
    if kind == "swap":
        for a in picked:
            a["category_id"] = int(rng.choice([c["id"] for c in out["categories"] if c["id"] != a["category_id"]]))
    elif kind == "shift":  # half a box off in x and y
        for a in picked:
            x, y, w, h = a["bbox"]
            a["bbox"] = [max(0.0, x + 0.5 * w * rng.choice([-1, 1])), max(0.0, y + 0.5 * h * rng.choice([-1, 1])), w, h]
    elif kind == "drop":
        gone = {a["id"] for a in picked}
        out["annotations"] = [a for a in out["annotations"] if a["id"] not in gone]
    return out, picked


def found(items, kind: str, picked: list[dict]) -> int:
    if kind == "drop":  # a missing-box item on the dropped box
        return sum(any(it.ann_id is None and it.image_id == a["image_id"] and scoring._iou(it.bbox, a["bbox"]) >= 0.5
                       for it in items) for a in picked)
    ids = {it.ann_id for it in items}
    return sum(a["id"] in ids for a in picked)


def recall(coco: dict, detections: list[dict], kind: str) -> tuple[int, int, list]:
    """(injected errors found in the top 2x, injected errors, the top items)."""
    noisy, picked = inject(coco, kind)
    top = scoring.score(noisy, detections)[: 2 * len(picked)]
    return found(top, kind, picked), len(picked), top


def main(argv: list[str] | None = None) -> int:
    import tempfile

    from pipeline.training.inference import predictions

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=NUM_IMAGES)
    parser.add_argument("--epochs", type=int, default=EPOCHS)
    parser.add_argument("--size", type=int, default=SIZE)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        coco = demo_data(root / "data", args.images, args.size)
        t0 = time.perf_counter()
        model = train_ssdlite(root / "data", root, args.epochs, args.size)
        t1 = time.perf_counter()
        detections = predictions(model, root / "data")
        t2 = time.perf_counter()
        print(f"{len(coco['images'])} images, {len(coco['annotations'])} boxes at {args.size} px: training "
              f"{t1 - t0:.1f} s ({args.epochs} epochs), predicting {t2 - t1:.1f} s")
        for kind, _reason in KINDS:
            t3 = time.perf_counter()
            hits, n, _top = recall(coco, detections, kind)
            print(f"{kind:>5}: {hits}/{n} injected errors in the top {2 * n} ({hits / n:.0%}); "
                  f"scoring {time.perf_counter() - t3:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
