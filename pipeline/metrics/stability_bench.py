"""Benchmark the stability suite (slices + paired bootstrap) against the evaluate stage it runs in.

    python -m pipeline.metrics.stability_bench [--run DIR] [--resamples N] [--repeat 3]

The goal (issue 17): the suite adds at most 1x the evaluate stage's time on the demo. The stage's time is
what evaluate recorded in `<run>/evaluate/result.json` (`duration_s`: loading, predicting, scoring, plots,
MLflow) for a run of the demo; `--run` is a run's folder in a file:// artifact store (default: the newest run
under `$NIGHTSHIFT_HOME/artifacts/runs` that has evaluate's detections, e.g. after `make demo`). The suite is
timed in this process on that run's val ground truth and detections: the challenger against a champion that is
the same detections with seeded score noise (what a retrained model of equal quality looks like; the cost
depends on the counts, not on which model wins). A stage that also scored a champion predicted twice and took
longer, so the ratio against a first-night stage is the conservative one.

When the run folder also has train's model.pt, the robustness passes are timed too (`--corruptions`, one
severity): a clean prediction + scoring, then one per corruption, printing each AP; what they add per model
and with a champion, against the stage's time.

Without a demo run the suite is timed on a generated set of the demo's size (40 images of 128 px x 300
detections) and only the suite's own figures are printed. Speed is reported, not enforced: exit 0 unless
something failed to run.
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np

GOAL = 1.0  # suite time / evaluate stage time must be <= this


def latest_run(home: Path) -> Path | None:
    runs = [p.parent.parent for p in (home / "artifacts" / "runs").glob("*/evaluate/detections.json")]
    return max(runs, key=lambda p: (p / "evaluate" / "detections.json").stat().st_mtime) if runs else None


def load_run(run: Path) -> tuple[dict, list[dict], dict]:
    """(val ground truth, the challenger's detections, evaluate's result.json) of a run folder."""
    from pipeline.datasets.canonical import load_coco, split_coco

    result = json.loads((run / "evaluate" / "result.json").read_text())
    gt = split_coco(load_coco(run / "ingest" / "dataset"), result.get("split") or "val")
    return gt, json.loads((run / "evaluate" / "detections.json").read_text()), result


def generated(images: int = 40, detections: int = 300) -> tuple[dict, list[dict]]:
    """A demo-sized stand-in: 128 px images, a few boxes each, `detections` results per image."""
    from pipeline.metrics.bench import make_data

    gt, dt = make_data(images, detections)
    for img in gt["images"]:
        img.update(width=128, height=128)
    for item in (*gt["annotations"], *dt):  # make_data draws on 640x480: scale to 128 px
        item["bbox"] = [v * 0.2 for v in item["bbox"]]
    for ann in gt["annotations"]:
        ann["area"] = ann["bbox"][2] * ann["bbox"][3]
    return gt, dt


def time_suite(gt: dict, dt: list[dict], resamples: int, repeat: int, min_support: int) -> tuple[float, dict]:
    from pipeline.metrics.stability import suite

    rng = np.random.default_rng(0)
    champion = [dict(d, score=float(d["score"] * rng.uniform(0.9, 1.1))) for d in dt]
    best, out = float("inf"), {}
    for _ in range(repeat):
        start = time.perf_counter()
        out = suite(gt, dt, champion, resamples=resamples, min_support=min_support)
        best = min(best, time.perf_counter() - start)
    return best, out


def time_robustness(run: Path, gt: dict, kinds: list[str], severity: int, threads: int = 1) -> list[tuple]:
    """(name, AP, seconds) of the run's model on the split: clean, then under each corruption (what
    `evaluate.corruptions` adds per model: a prediction pass and a scoring each)."""
    import torch

    from pipeline.metrics.coco import score
    from pipeline.training.corruptions import Corrupted
    from pipeline.training.engine import predict
    from pipeline.training.inference import load_for_prediction

    torch.set_num_threads(threads)
    model, _, dataset = load_for_prediction(run / "train" / "model.pt", run / "ingest" / "dataset",
                                            gt["images"][0].get("split", "val"))
    rows = []
    for kind in [None, *kinds]:
        start = time.perf_counter()
        data = dataset if kind is None else Corrupted(dataset, kind, severity)
        ap = score(gt, predict(model, data, batch_size=8, progress=False))["AP"]
        rows.append((kind or "clean", ap, time.perf_counter() - start))
    return rows


def main(argv: list[str] | None = None) -> int:
    from pipeline.config import EvaluateConfig, GatesConfig

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, help="a run folder of a file:// store (default: the newest demo run)")
    parser.add_argument("--resamples", type=int, default=EvaluateConfig().bootstrap_resamples)
    parser.add_argument("--repeat", type=int, default=3, help="best of this many timings")
    parser.add_argument("--corruptions", default="gaussian_noise,blur,brightness_contrast,jpeg",
                        help="robustness passes to time with the run's train/model.pt ('' = none)")
    parser.add_argument("--severity", type=int, default=1)
    args = parser.parse_args(argv)
    home = Path(os.environ.get("NIGHTSHIFT_HOME", ".nightshift"))
    run = args.run or latest_run(home)
    min_support = GatesConfig().slice_min_support
    if run is None:
        gt, dt = generated()
        print(f"no evaluated run under {home}/artifacts/runs (run `make demo`): a generated demo-sized set")
        stage = None
    else:
        gt, dt, result = load_run(run)
        stage = result.get("duration_s")
        print(f"run {run}: evaluate stage {stage:.2f} s (its result.json) on {len(gt['images'])} "
              f"{result.get('split') or 'val'} images, {len(dt)} detections")
    seconds, out = time_suite(gt, dt, args.resamples, args.repeat, min_support)
    print(f"stability suite, challenger vs champion: {seconds:.2f} s (best of {args.repeat}) for "
          f"{len(out['slices'])} slices, per-class and overall drops, {args.resamples} paired resamples of "
          f"{out['images']} images")
    print("slices (GT boxes): " + ", ".join(f"{name} {row['support']}" for name, row in out["slices"].items())
          + f"; groups below {min_support} boxes: {out['skipped']['below_min_support']} of {out['skipped']['groups']}")
    if stage:
        ratio = seconds / stage
        print(f"suite / evaluate stage: {ratio:.2f}x (goal <= {GOAL:g}x): {'ok' if ratio <= GOAL else 'OVER'}")
    kinds = [k for k in args.corruptions.split(",") if k]
    if run is not None and kinds and (run / "train" / "model.pt").exists():
        rows = time_robustness(run, gt, kinds, args.severity)
        for name, ap, secs in rows:
            print(f"robustness: {name:<20} AP {ap:.4f}  predict + score {secs:.2f} s")
        extra = sum(secs for name, _, secs in rows if name != "clean")
        print(f"robustness, {len(kinds)} corruptions at severity {args.severity}: {extra:.2f} s per model, "
              f"{2 * extra:.2f} s with a champion" + (f" = {2 * extra / stage:.2f}x the evaluate stage" if stage else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
