"""Benchmark: does the label audit find injected label errors with a real trained detector?

    python -m pipeline.audit.bench [--epochs 12] [--quick]

Generates the demo data exactly as `make demo` does (480 images at 128 px, the same split rule), trains SSDlite on
its clean train split with configs/demo.yaml's train section (one process, CPU), predicts every image, then for
each kind of error (swapped class, dropped box, shifted box) makes 5 % of the annotations wrong and prints how
many of them the audit ranks within its top 2x as many items, with the time each step took. `--quick` is the
small variant (160 images at 64 px, 14 epochs) the acceptance test can afford. The acceptance test
(tests/pipeline/audit/test_scoring.py) uses the same functions.
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


def train_ssdlite(data: Path, out: Path, epochs: int = EPOCHS, size: int = SIZE, recipe: str = "quick") -> Path:
    """SSDlite trained on the clean data, saved in train's model.pt format: "quick" = a brief training at
    `size`; "demo" = configs/demo.yaml's train section (its image size, epochs unless `epochs` is given)."""
    import torch

    from pipeline.config import TrainConfig, load_config
    from pipeline.datasets.canonical import CanonicalDataset
    from pipeline.store import LocalStore
    from pipeline.training.distributed import DistInfo
    from pipeline.training.engine import fit
    from pipeline.training.models import build_model, save_trained

    if recipe == "demo":
        demo = load_config(Path(__file__).resolve().parents[2] / "configs" / "demo.yaml").train
        # one process with the demo's global batch (its ranks x per-rank batch): the same steps and schedule
        cfg = demo.model_copy(update={"nproc_per_node": 1, "threads_per_rank": torch.get_num_threads(),
                                      "batch_size": demo.batch_size * demo.nproc_per_node,
                                      **({"epochs": epochs} if epochs else {})})
        size = cfg.image_size
    else:
        cfg = TrainConfig(recipe="none", image_size=size, epochs=epochs, batch_size=8, lr=2e-3, warmup_steps=10,
                          nproc_per_node=1, threads_per_rank=2, deterministic=False, seed=3, bn_calibration_images=0)
    train_set = CanonicalDataset(data, "train", size)
    torch.manual_seed(cfg.seed)
    model = build_model(cfg.model, train_set.num_classes + 1, size)
    info = DistInfo(0, 1, 0, torch.device("cpu"), "")
    fit(model, train_set, cfg, info, LocalStore(out / "store"), "ckpt", "audit-test", progress=False)
    path = out / "model.pt"
    save_trained(path, model, cfg.model, size, train_set.categories)
    return path


def make_demo_data(path: Path) -> dict:
    """`make demo`'s data: the generated set with data.* defaults, split by the canonical group-hash rule."""
    from pipeline.config import DataConfig
    from pipeline.datasets.canonical_io import assign_split
    from pipeline.datasets.synthetic import generate

    d = DataConfig()
    generate(path, num_images=d.demo_images, seed=d.demo_seed)
    coco = json.loads((path / "annotations.json").read_text())
    for image in coco["images"]:
        image["group"] = Path(image["file_name"]).stem
        image["split"] = assign_split(image["group"], d.split_salt, d.split_ratios)
    (path / "annotations.json").write_text(json.dumps(coco))
    return coco


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
    parser.add_argument("--epochs", type=int, default=0, help="training epochs (default: the demo's, or 14 --quick)")
    parser.add_argument("--quick", action="store_true", help="160 images at 64 px, a brief training")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        coco = demo_data(root / "data") if args.quick else make_demo_data(root / "data")
        t0 = time.perf_counter()
        model = train_ssdlite(root / "data", root, args.epochs or EPOCHS, SIZE, "quick") if args.quick else \
            train_ssdlite(root / "data", root, args.epochs, recipe="demo")
        t1 = time.perf_counter()
        detections = predictions(model, root / "data")
        t2 = time.perf_counter()
        print(f"{len(coco['images'])} images, {len(coco['annotations'])} boxes: training {t1 - t0:.1f} s, "
              f"predicting {t2 - t1:.1f} s")
        for kind, _reason in KINDS:
            t3 = time.perf_counter()
            hits, n, _top = recall(coco, detections, kind)
            print(f"{kind:>5}: {hits}/{n} injected errors in the top {2 * n} ({hits / n:.0%}); "
                  f"scoring {time.perf_counter() - t3:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
