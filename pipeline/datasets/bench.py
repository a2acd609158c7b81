"""Benchmark the data stages: `python -m pipeline.datasets.bench [--images N] [--boxes-per-image K]`.

Writes a synthetic COCO export of N small but real JPEG files (a few distinct images, each copy made unique by
a JPEG comment segment so every file has its own sha1; declared sizes match the headers) with K boxes per image,
then times, in a throw-away NIGHTSHIFT_HOME: ingest, validate with header-only image checks
(`validate.image_check=header`), a first snapshot, and the snapshot of the same dataset ingested again by a
second run (the nightly "nothing changed" case). Goals on 2 cores for 100k images / 1M boxes: ingest +
validate <= 60 s, unchanged snapshot <= 10 s. MLflow tagging is left out of the snapshot timings (it is the
tracking server's cost, not the data's).
"""
from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import struct
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

CLASSES = ("car", "person", "bike", "sign")


def _variants(n: int = 8) -> list[tuple[bytes, int, int]]:
    from PIL import Image

    out = []
    for k in range(n):
        w, h = 64 + 16 * (k % 4), 48 + 16 * (k // 4)
        arr = (np.random.default_rng(k).integers(0, 255, size=(h, w, 3))).astype(np.uint8)
        buf = io.BytesIO()
        Image.fromarray(arr).save(buf, format="JPEG", quality=70)
        out.append((buf.getvalue(), w, h))
    return out


def write_export(out: Path, images: int, boxes_per_image: int, seed: int = 0) -> dict:
    """The synthetic COCO export; returns its sizes."""
    out = Path(out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    variants = _variants()
    rng = np.random.default_rng(seed)
    pick = rng.integers(0, len(variants), size=images)
    imgs, anns = [], []
    k = boxes_per_image
    fx, fy = rng.random((images, k)), rng.random((images, k))
    fw, fh = rng.uniform(0.05, 0.4, (images, k)), rng.uniform(0.05, 0.4, (images, k))
    cats = rng.integers(1, len(CLASSES) + 1, size=(images, k))
    for i in range(images):
        data, w, h = variants[pick[i]]
        name = f"{i // 1000:03d}/img_{i:06d}.jpg"
        comment = f"nightshift bench {i}".encode()
        unique = data[:2] + b"\xff\xfe" + struct.pack(">H", len(comment) + 2) + comment + data[2:]
        path = out / "images" / name
        if i % 1000 == 0:
            path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(unique)
        imgs.append({"id": i + 1, "file_name": name, "width": w, "height": h})
        bw, bh = fw[i] * w, fh[i] * h
        x, y = fx[i] * (w - bw), fy[i] * (h - bh)
        for j in range(k):
            anns.append({"id": i * k + j + 1, "image_id": i + 1, "category_id": int(cats[i, j]),
                         "bbox": [round(float(x[j]), 2), round(float(y[j]), 2), round(float(bw[j]), 2),
                                  round(float(bh[j]), 2)], "iscrowd": 0})
    coco = {"images": imgs, "annotations": anns,
            "categories": [{"id": c + 1, "name": n} for c, n in enumerate(CLASSES)]}
    (out / "annotations.json").write_text(json.dumps(coco))
    return {"images": images, "boxes": len(anns)}


def _timed(label: str, argv: list[str], timings: dict) -> dict:
    from pipeline.cli import main

    started = time.perf_counter()
    code = main(argv)
    timings[label] = round(time.perf_counter() - started, 2)
    if code != 0:
        raise SystemExit(f"bench: `nightshift {' '.join(argv)}` exited {code}")
    return timings


def run(images: int, boxes_per_image: int, workdir: Path, keep: bool = False) -> dict:
    from pipeline import tracking

    workdir.mkdir(parents=True, exist_ok=True)
    home = workdir / "home"
    os.environ["NIGHTSHIFT_HOME"] = str(home)
    tracking.run_for = lambda cfg, run_id, tags=None: ""  # MLflow is not what this measures
    timings: dict = {}
    started = time.perf_counter()
    sizes = write_export(workdir / "export", images, boxes_per_image)
    timings["generate"] = round(time.perf_counter() - started, 2)
    low = ["--set", "validate.min_images_per_split={train: 1, val: 1}", "--set", "validate.image_check=header"]
    common = ["--set", "data.perceptual_hash=false", "--set", f"snapshot.repo_dir={workdir / 'dvc'}",
              "--set", f"snapshot.remote={workdir / 'remote'}"]
    cwd = os.getcwd()
    os.chdir(workdir)  # no dvc.yaml above: the snapshot uses the configured DVC project
    try:
        _timed("ingest", ["ingest", "--run-id", "b1", "--source", str(workdir / "export"), *common], timings)
        _timed("validate", ["validate", "--run-id", "b1", *common, *low], timings)
        _timed("snapshot_first", ["snapshot", "--run-id", "b1", *common], timings)
        _timed("ingest_again", ["ingest", "--run-id", "b2", "--source", str(workdir / "export"), *common], timings)
        _timed("snapshot_unchanged", ["snapshot", "--run-id", "b2", *common], timings)
    finally:
        os.chdir(cwd)
        if not keep:
            shutil.rmtree(workdir, ignore_errors=True)
    timings["ingest_plus_validate"] = round(timings["ingest"] + timings["validate"], 2)
    return {**sizes, "seconds": timings, "cpus": os.cpu_count(),
            "goals": {"ingest_plus_validate_s": 60, "snapshot_unchanged_s": 10},
            "met": {"ingest_plus_validate": timings["ingest_plus_validate"] <= 60,
                    "snapshot_unchanged": timings["snapshot_unchanged"] <= 10}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.datasets.bench", description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=100_000)
    parser.add_argument("--boxes-per-image", type=int, default=10)
    parser.add_argument("--workdir", help="where to build the export and the workspace (default: a temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep the workdir afterwards")
    args = parser.parse_args(argv)
    import logging

    logging.basicConfig(level=logging.WARNING)
    workdir = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="nightshift-bench-"))
    report = run(args.images, args.boxes_per_image, workdir, keep=args.keep)
    s = report["seconds"]
    print(f"{report['images']} images, {report['boxes']} boxes on {report['cpus']} CPUs "
          f"(export written in {s['generate']} s)")
    print(f"  ingest {s['ingest']} s + validate (header checks) {s['validate']} s = {s['ingest_plus_validate']} s "
          f"(goal <= 60 s: {'met' if report['met']['ingest_plus_validate'] else 'NOT met'})")
    print(f"  first snapshot {s['snapshot_first']} s; unchanged snapshot {s['snapshot_unchanged']} s "
          f"(goal <= 10 s: {'met' if report['met']['snapshot_unchanged'] else 'NOT met'})")
    print("BENCH " + json.dumps(report, sort_keys=True), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
