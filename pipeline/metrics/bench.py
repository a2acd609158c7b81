"""Benchmark `pipeline.metrics.coco.score` against faster-coco-eval used directly and against pycocotools.

    python -m pipeline.metrics.bench [--images 5000] [--detections 100] [--repeat 2] [--no-pycocotools]

Generates a deterministic COCO ground truth (640x480 images, 3-15 boxes each over 10 classes, sizes from
small to large) and `--detections` results per image (jittered copies of the ground truth, some with the wrong
class, and random boxes), then times each evaluator on the same inputs in the same process: our `score()`
(input validation + `pipeline.metrics.boxeval` + per-class metrics), faster-coco-eval's COCOeval_faster on
its own, and pycocotools' COCOeval. Each evaluator gets its own copy of the inputs (the evaluators write into them);
copying is not timed. The fast two take the best of `--repeat` runs, pycocotools runs once.

Then the whole-process comparison a user feels: the same ground truth and results written as JSON files,
`nightshift score --gt --dt --out` against a script that does what faster-coco-eval's README does (COCO(file),
loadRes(file), evaluate, accumulate, summarize), both as fresh subprocesses, alternating for `--rounds`
rounds; medians of wall time and of CPU time (user + system, less sensitive to a busy machine).

Prints the times, the ratios against the goals (`score` no slower than faster-coco-eval, in process and as a
whole process, at least 8x faster than pycocotools) and whether the 12 stats are identical to pycocotools'
(to 1e-12: faster-coco-eval sums in a different order). Exits 1 only if the stats differ: speed on a shared
machine is reported, not enforced.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from pipeline.metrics.coco import STAT_KEYS

GOAL_VS_FASTER = 1.0  # score() time / faster-coco-eval time must be <= this
GOAL_VS_PYCOCOTOOLS = 8.0  # pycocotools time / score() time must be >= this
STATS_ATOL = 1e-12  # "identical": equal up to floating-point summation order
WIDTH, HEIGHT, CLASSES = 640, 480, 10


def make_data(images: int, detections: int, seed: int = 0) -> tuple[dict, list[dict]]:
    """A COCO ground truth dict and a results list, identical for identical arguments."""
    rng = np.random.default_rng(seed)
    gt_images, annotations, results = [], [], []
    for image_id in range(1, images + 1):
        gt_images.append({"id": image_id, "width": WIDTH, "height": HEIGHT, "file_name": f"{image_id:06d}.jpg"})
        n = int(rng.integers(3, 16))
        side = np.exp(rng.uniform(np.log(8), np.log(300), size=(n, 2)))  # small, medium and large objects
        xy = rng.uniform(0, 1, size=(n, 2)) * (np.array([WIDTH, HEIGHT]) - side)
        cats = rng.integers(1, CLASSES + 1, size=n)
        boxes = np.round(np.concatenate([xy, side], axis=1), 2)
        for box, cat in zip(boxes, cats):
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": int(cat),
                                "bbox": [float(v) for v in box], "area": float(box[2] * box[3]), "iscrowd": 0})
        # up to two jittered copies per GT box (10 % with the wrong class), the rest random boxes
        copies = min(detections, 2 * n)
        src = rng.integers(0, n, size=copies)
        jitter = rng.normal(0, 0.08, size=(copies, 4)) * np.repeat(side[src], 2, axis=1)
        near = boxes[src] + jitter
        near[:, 2:] = np.maximum(near[:, 2:], 1.0)
        near_cats = np.where(rng.uniform(size=copies) < 0.1, rng.integers(1, CLASSES + 1, size=copies), cats[src])
        rand_side = np.exp(rng.uniform(np.log(8), np.log(300), size=(detections - copies, 2)))
        rand_xy = rng.uniform(0, 1, size=(detections - copies, 2)) * (np.array([WIDTH, HEIGHT]) - rand_side)
        far = np.concatenate([rand_xy, rand_side], axis=1)
        all_boxes = np.round(np.concatenate([near, far]), 2)
        all_cats = np.concatenate([near_cats, rng.integers(1, CLASSES + 1, size=detections - copies)])
        scores = np.round(np.concatenate([rng.uniform(0.3, 1.0, size=copies),
                                          rng.uniform(0.0, 0.7, size=detections - copies)]), 4)
        for box, cat, s in zip(all_boxes.tolist(), all_cats.tolist(), scores.tolist()):
            results.append({"image_id": image_id, "category_id": int(cat), "bbox": box, "score": s})
    gt = {"images": gt_images, "annotations": annotations,
          "categories": [{"id": c, "name": f"class{c}"} for c in range(1, CLASSES + 1)]}
    return gt, results


def _copy(gt: dict, dt: list[dict]) -> tuple[dict, list[dict]]:
    return (dict(gt, images=[dict(x) for x in gt["images"]], annotations=[dict(x) for x in gt["annotations"]],
                 categories=[dict(x) for x in gt["categories"]]), [dict(x) for x in dt])


def run_ours(gt: dict, dt: list[dict]) -> list[float]:
    from pipeline.metrics.coco import score

    metrics = score(gt, dt)
    return [-1.0 if metrics[k] is None else metrics[k] for k in STAT_KEYS]


def run_faster(gt: dict, dt: list[dict]) -> list[float]:
    from faster_coco_eval import COCO, COCOeval_faster

    quiet = lambda *a, **k: None  # noqa: E731
    coco_gt = COCO(gt, print_function=quiet)
    ev = COCOeval_faster(coco_gt, coco_gt.loadRes(dt), iouType="bbox", print_function=quiet)
    ev.evaluate()
    ev.accumulate()
    ev.summarize()
    return [float(v) for v in ev.stats[: len(STAT_KEYS)]]


def pycocotools_eval(gt: dict, dt: list[dict], iou_type: str = "bbox", cat_ids: list[int] | None = None,
                     copy: bool = True):
    """pycocotools' COCOeval after evaluate/accumulate/summarize, quietly: the reference every evaluator here
    is held to. `copy=False` hands it the inputs themselves, which it writes into; `cat_ids` restricts it."""
    import copy as copying

    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    if copy:
        gt, dt = copying.deepcopy(gt), copying.deepcopy(dt)
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = gt
        coco_gt.createIndex()
        if dt:
            coco_dt = coco_gt.loadRes(dt)
        else:  # pycocotools' loadRes cannot take an empty list
            coco_dt = COCO()
            coco_dt.dataset = {"images": gt["images"], "annotations": [], "categories": gt["categories"]}
            coco_dt.createIndex()
        ev = COCOeval(coco_gt, coco_dt, iouType=iou_type)
        if cat_ids is not None:
            ev.params.catIds = cat_ids
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return ev


def run_pycocotools(gt: dict, dt: list[dict]) -> list[float]:
    return [float(v) for v in pycocotools_eval(gt, dt, copy=False).stats[: len(STAT_KEYS)]]


def timed(fn, gt: dict, dt: list[dict], repeat: int) -> tuple[float, list[float]]:
    """Best wall time over `repeat` runs, each on a fresh copy; and the stats of the last run."""
    best, stats = float("inf"), []
    for _ in range(repeat):
        gt_copy, dt_copy = _copy(gt, dt)
        start = time.perf_counter()
        stats = fn(gt_copy, dt_copy)
        best = min(best, time.perf_counter() - start)
    return best, stats


# faster-coco-eval as its README uses it, from files: what `nightshift score` is compared with as a process
FASTER_SCRIPT = """
import json, sys
from faster_coco_eval import COCO, COCOeval_faster
quiet = lambda *a, **k: None
coco_gt = COCO(sys.argv[1], print_function=quiet)
ev = COCOeval_faster(coco_gt, coco_gt.loadRes(sys.argv[2]), iouType="bbox", print_function=quiet)
ev.evaluate()
ev.accumulate()
ev.summarize()
with open(sys.argv[3], "w") as fh:
    json.dump([float(v) for v in ev.stats[:12]], fh)
"""


def _run_child(argv: list[str]) -> tuple[float, float]:
    """(wall, CPU user+system) seconds of one subprocess, which must exit 0."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    done = subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv[:4])} ... exited {done.returncode}: {done.stderr[-2000:]}")
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def bench_process(gt: dict, dt: list[dict], rounds: int, out=sys.stdout) -> dict:
    """`nightshift score` and faster-coco-eval as whole processes on the same files; medians over rounds."""
    with tempfile.TemporaryDirectory(prefix="nightshift-score-bench-") as tmp:
        gt_path, dt_path = Path(tmp) / "gt.json", Path(tmp) / "dt.json"
        gt_path.write_text(json.dumps(gt))
        dt_path.write_text(json.dumps(dt))
        commands = {
            "nightshift score": [sys.executable, "-m", "pipeline", "score", "--gt", str(gt_path), "--dt",
                                 str(dt_path), "--out", str(Path(tmp) / "nightshift.json")],
            "faster-coco-eval": [sys.executable, "-c", FASTER_SCRIPT, str(gt_path), str(dt_path),
                                 str(Path(tmp) / "faster.json")],
        }
        walls: dict = {name: [] for name in commands}
        cpus: dict = {name: [] for name in commands}
        for _ in range(rounds):  # alternating, so a burst of load elsewhere hits both
            for name, argv in commands.items():
                wall, cpu = _run_child(argv)
                walls[name].append(wall)
                cpus[name].append(cpu)
        ours = json.loads((Path(tmp) / "nightshift.json").read_text())
        stats = {"nightshift score": [-1.0 if ours[k] is None else ours[k] for k in STAT_KEYS],
                 "faster-coco-eval": json.loads((Path(tmp) / "faster.json").read_text())}
    wall = {name: statistics.median(v) for name, v in walls.items()}
    cpu = {name: statistics.median(v) for name, v in cpus.items()}
    print(f"\nwhole process, {rounds} alternating rounds (median; all rounds in parentheses):", file=out)
    for name in commands:
        print(f"{name:<17} {wall[name]:8.2f} s wall ({', '.join(f'{v:.2f}' for v in walls[name])}), "
              f"{cpu[name]:.2f} s CPU", file=out)
    ratio = wall["nightshift score"] / wall["faster-coco-eval"]
    cpu_ratio = cpu["nightshift score"] / cpu["faster-coco-eval"]
    print(f"nightshift score / faster-coco-eval, whole process: {ratio:.2f} wall, {cpu_ratio:.2f} CPU "
          f"(goal <= {GOAL_VS_FASTER:g}: {'met' if ratio <= GOAL_VS_FASTER else 'missed'})", file=out, flush=True)
    return {"rounds": rounds, "wall_s": wall, "cpu_s": cpu, "all_wall_s": walls, "ratio_wall": ratio,
            "ratio_cpu": cpu_ratio, "stats": stats}


def bench(images: int, detections: int, repeat: int = 3, pycocotools: bool = True, seed: int = 0,
          out=sys.stdout, rounds: int = 3) -> dict:
    start = time.perf_counter()
    gt, dt = make_data(images, detections, seed)
    print(f"generated {images} images, {len(gt['annotations'])} GT boxes, {len(dt)} detections "
          f"in {time.perf_counter() - start:.1f}s", file=out, flush=True)
    times, stats = {}, {}
    for _ in range(repeat):  # alternate the two fast ones so drift on a shared machine hits both alike
        for name, fn in (("score", run_ours), ("faster-coco-eval", run_faster)):
            t, s = timed(fn, gt, dt, 1)
            times[name] = min(times.get(name, float("inf")), t)
            stats[name] = s
    if pycocotools:
        times["pycocotools"], stats["pycocotools"] = timed(run_pycocotools, gt, dt, 1)
    print("in process, best of each:", file=out)
    for name, t in times.items():
        print(f"{name:<17} {t:8.2f} s", file=out)
    process = bench_process(gt, dt, rounds, out) if rounds else None
    if process:
        stats.update({f"{name} (process)": v for name, v in process["stats"].items()})

    reference = "pycocotools" if pycocotools else "faster-coco-eval"
    ref = np.array(stats[reference])
    # faster-coco-eval and pycocotools average in a different order: the last bits may differ
    max_diff = {name: float(np.abs(np.array(s) - ref).max()) for name, s in stats.items()}
    identical = {name: d <= STATS_ATOL for name, d in max_diff.items()}
    vs_faster = times["score"] / times["faster-coco-eval"]
    line = (f"score / faster-coco-eval time: {vs_faster:.2f} (goal <= {GOAL_VS_FASTER:g}: "
            f"{'met' if vs_faster <= GOAL_VS_FASTER else 'missed'})")
    print(line, file=out)
    result = {"images": images, "detections": len(dt), "gt_boxes": len(gt["annotations"]), "times_s": times,
              "score_vs_faster": vs_faster, "stats": dict(zip(STAT_KEYS, stats["score"])),
              "identical": identical, "max_abs_diff": max_diff}
    if process:
        result["process"] = {k: v for k, v in process.items() if k != "stats"}
    if pycocotools:
        speedup = times["pycocotools"] / times["score"]
        result["speedup_vs_pycocotools"] = speedup
        print(f"pycocotools / score time: {speedup:.1f}x (goal >= {GOAL_VS_PYCOCOTOOLS:g}x: "
              f"{'met' if speedup >= GOAL_VS_PYCOCOTOOLS else 'missed'})", file=out)
    result["all_identical"] = all(identical.values())
    print(f"12 stats identical to {reference} (within {STATS_ATOL:g}): " + ", ".join(
        f"{name} {'yes' if same else 'NO'} (max diff {max_diff[name]:.2g})" for name, same in identical.items()
        if name != reference), file=out)
    print("stats: " + " ".join(f"{k}={v:.4f}" for k, v in result["stats"].items()), file=out)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=5000, help="images to generate (default 5000)")
    parser.add_argument("--detections", type=int, default=100, help="detections per image (default 100)")
    parser.add_argument("--repeat", type=int, default=2, help="best of N for score and faster-coco-eval")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-pycocotools", dest="pycocotools", action="store_false",
                        help="skip pycocotools (the slow one)")
    parser.add_argument("--rounds", type=int, default=3,
                        help="whole-process rounds of nightshift score vs faster-coco-eval (0: skip; default 3)")
    parser.add_argument("--json", help="also write the figures to this JSON file")
    args = parser.parse_args(argv)
    if args.images < 1 or args.detections < 1 or args.repeat < 1 or args.rounds < 0:
        parser.error("--images, --detections and --repeat must be at least 1, --rounds at least 0")
    result = bench(args.images, args.detections, args.repeat, args.pycocotools, args.seed, rounds=args.rounds)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(result, fh, indent=2)
    return 0 if result["all_identical"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
