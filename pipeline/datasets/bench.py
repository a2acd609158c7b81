"""Benchmark the data stages: ingest + validate of 100k images / 1M boxes, and an unchanged snapshot.

    python -m pipeline.datasets.bench [--images 100000] [--boxes-per-image 10] [--rounds 2] [--profile 12]

Writes a synthetic COCO export of N small but real JPEG files (a few distinct images, each copy made unique by
a JPEG comment segment so every file has its own sha1; declared sizes match the headers) with K boxes per
image, or reuses the one a previous run left in `--export-cache` (default `$NIGHTSHIFT_HOME/bench/`). Then, in
a throw-away NIGHTSHIFT_HOME, each round runs the stages the nightly DAG runs, each as its own process (what
an Airflow task pays, imports included): ingest, validate with header-only image checks
(`validate.image_check=header`), and snapshot. Round 1's snapshot is the first one (dvc add + push); every
later round ingests the same export again under a new run id, so its snapshot is the nightly "nothing
changed" case, timed `--snapshot-repeats` times (its result is removed between repeats so the stage really
runs). MLflow tagging is left out (the tracking server's cost, not the data's).

Prints the medians against the goals (2 cores, 100k images / 1M boxes: ingest + validate <= 20 s, unchanged
snapshot <= 5 s) and, with `--profile N`, the N functions each stage spends most time in (cProfile, which
slows Python-heavy code down: read it for proportions, not totals). Speed on a shared machine is reported,
not enforced: the exit status is 0 unless a stage fails.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from pipeline import results

CLASSES = ("car", "person", "bike", "sign")
GOAL_INGEST_VALIDATE_S = 20.0
GOAL_SNAPSHOT_UNCHANGED_S = 5.0
EXPORT_VERSION = 1  # bump when write_export's output changes, so cached exports are rebuilt


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


def cached_export(cache: Path | None, workdir: Path, images: int, boxes_per_image: int) -> tuple[Path, dict, float]:
    """(export dir, sizes, seconds spent writing it): the cached export when a complete one is there (its
    marker is written last, so a half-written export is never reused), else a new one."""
    if cache is None:
        started = time.perf_counter()
        sizes = write_export(workdir / "export", images, boxes_per_image)
        return workdir / "export", sizes, time.perf_counter() - started
    export = Path(cache) / f"coco-{images}x{boxes_per_image}-v{EXPORT_VERSION}"
    marker = export / ".complete.json"
    if marker.is_file():
        return export, json.loads(marker.read_text()), 0.0
    shutil.rmtree(export, ignore_errors=True)
    started = time.perf_counter()
    sizes = write_export(export, images, boxes_per_image)
    marker.write_text(json.dumps(sizes))
    return export, sizes, time.perf_counter() - started


def _child(argv: list[str]) -> int:
    """One stage in this process, as `nightshift` runs it, with MLflow tagging left out."""
    from pipeline import tracking
    from pipeline.cli import main

    tracking.run_for = lambda cfg, run_id, tags=None: ""  # MLflow is not what this measures
    return main(argv)


def _stage(argv: list[str], env: dict, cwd: Path, profile: int, label: str, profiles: dict) -> float:
    """Wall seconds of one stage in a fresh process (with --profile: under cProfile, top functions kept)."""
    cmd = [sys.executable]
    prof_file = cwd / f"profile-{label}.out"
    if profile:
        cmd += ["-m", "cProfile", "-o", str(prof_file)]
    cmd += ["-m", "pipeline.datasets.bench", "--child", "--", *argv]
    started = time.perf_counter()
    done = subprocess.run(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"bench: `nightshift {' '.join(argv)}` exited {done.returncode}:\n{done.stdout[-3000:]}")
    if profile:
        import pstats

        text = io.StringIO()
        pstats.Stats(str(prof_file), stream=text).sort_stats("cumulative").print_stats(profile)
        lines = text.getvalue().splitlines()
        start = next((i for i, line in enumerate(lines) if line.lstrip().startswith("ncalls")), 0)
        profiles[label] = "\n".join(line for line in lines[start:] if line.strip())
    return seconds


# what the data stages import: compiled once before timing when the environment has no bytecode
STAGE_IMPORTS = ("pipeline.stages.ingest", "pipeline.stages.validate", "pipeline.stages.snapshot",
                 "pipeline.datasets.card", "pipeline.training.augment", "great_expectations", "pandas",
                 "matplotlib.pyplot", "dvc.cli", "PIL.Image")


def has_bytecode(module: str = "great_expectations") -> bool:
    """Whether the installed packages come byte-compiled (uv installs without unless told --compile-bytecode)."""
    import importlib.util

    spec = importlib.util.find_spec(module)
    return bool(spec and spec.origin and (Path(spec.origin).parent / "__pycache__").is_dir())


def bytecode_env(env: dict, prefix: Path, out=sys.stdout) -> dict:
    """The child environment, with a bytecode cache when the packages have none and Python may not write one.

    Without bytecode every process compiles each module it imports from source, every time (Great Expectations
    alone: tens of seconds on a busy 2-core machine): that is an installation defect, fixed where environments
    are built (`uv pip sync --compile-bytecode`), not a property of the stages. So the stages are timed against
    a byte-compiled install, and the one-off compile is timed and printed beside the figures.
    """
    if has_bytecode() or not (env.get("PYTHONDONTWRITEBYTECODE") or sys.flags.dont_write_bytecode):
        return env
    env = {k: v for k, v in env.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env["PYTHONPYCACHEPREFIX"] = str(prefix)
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import " + ", ".join(STAGE_IMPORTS)], env=env, check=True,
                   stdout=subprocess.DEVNULL)
    print(f"the installed packages carry no bytecode and PYTHONDONTWRITEBYTECODE is set: every process would "
          f"compile what it imports; the stages run with a bytecode cache in {env['PYTHONPYCACHEPREFIX']} "
          f"(filled in {time.perf_counter() - started:.1f} s)", file=out, flush=True)
    return env


def run(images: int, boxes_per_image: int, workdir: Path, rounds: int = 2, snapshot_repeats: int = 3,
        cache: Path | None = None, profile: int = 0, keep: bool = False, out=sys.stdout,
        bytecode_cache: Path | None = None) -> dict:
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    export, sizes, generated = cached_export(cache, workdir, images, boxes_per_image)
    print(f"export: {sizes['images']} images, {sizes['boxes']} boxes in {export} "
          + (f"(written in {generated:.1f} s)" if generated else "(cached)"), file=out, flush=True)
    env = dict(os.environ, NIGHTSHIFT_HOME=str(workdir / "home"), PYTHONPATH=os.pathsep.join(
        p for p in (str(Path(__file__).resolve().parents[2]), os.environ.get("PYTHONPATH")) if p))
    env = bytecode_env(env, bytecode_cache or Path(cache or workdir) / "pycache", out)
    low = ["--set", "validate.min_images_per_split={train: 1, val: 1}", "--set", "validate.image_check=header"]
    common = ["--set", "data.perceptual_hash=false", "--set", f"snapshot.repo_dir={workdir / 'dvc'}",
              "--set", f"snapshot.remote={workdir / 'remote'}"]
    times: dict = {"ingest": [], "validate": [], "ingest_plus_validate": [], "snapshot_first": [],
                   "snapshot_unchanged": []}
    profiles: dict = {}
    try:
        for r in range(1, rounds + 1):
            run_id = f"bench{r}"
            ingest = _stage(["ingest", "--run-id", run_id, "--source", str(export), *common], env, workdir,
                            0, "ingest", profiles)
            validate = _stage(["validate", "--run-id", run_id, *common, *low], env, workdir, 0, "validate",
                              profiles)
            times["ingest"].append(ingest)
            times["validate"].append(validate)
            times["ingest_plus_validate"].append(ingest + validate)
            line = f"round {r}: ingest {ingest:.1f} s + validate {validate:.1f} s = {ingest + validate:.1f} s"
            snap = ["snapshot", "--run-id", run_id, *common]
            if r == 1:
                times["snapshot_first"].append(_stage(snap, env, workdir, 0, "snapshot_first", profiles))
                line += f"; first snapshot {times['snapshot_first'][-1]:.1f} s"
            else:
                result = workdir / "home" / "artifacts" / "runs" / run_id / "snapshot" / "result.json"
                for k in range(snapshot_repeats):
                    result.unlink(missing_ok=True)  # else the stage skips itself as already done
                    times["snapshot_unchanged"].append(_stage(snap, env, workdir, 0, "snapshot_unchanged",
                                                              profiles))
                    # what was timed must be the nightly no-op, not a skip or a new snapshot
                    if results.loads("snapshot", result.read_bytes(), str(result)).changed is not False:
                        raise SystemExit(f"bench: snapshot of {run_id} did not find the dataset unchanged")
                last = times["snapshot_unchanged"][-snapshot_repeats:]
                line += "; unchanged snapshot " + ", ".join(f"{t:.1f}" for t in last) + " s"
            print(line, file=out, flush=True)
        if profile:  # one more nightly round under cProfile, untimed: it slows Python-heavy code down
            common_p = ["--run-id", "benchprofile", *common]
            _stage(["ingest", *common_p, "--source", str(export)], env, workdir, profile, "ingest", profiles)
            _stage(["validate", *common_p, *low], env, workdir, profile, "validate", profiles)
            _stage(["snapshot", *common_p], env, workdir, profile, "snapshot_unchanged", profiles)
    finally:
        if not keep:
            shutil.rmtree(workdir, ignore_errors=True)
    median = {k: round(statistics.median(v), 2) for k, v in times.items() if v}
    report = {**sizes, "rounds": rounds, "seconds": {k: [round(x, 2) for x in v] for k, v in times.items()},
              "median_s": median, "cpus": os.cpu_count(), "load_average": [round(x, 1) for x in os.getloadavg()],
              "goals_s": {"ingest_plus_validate": GOAL_INGEST_VALIDATE_S,
                          "snapshot_unchanged": GOAL_SNAPSHOT_UNCHANGED_S}}
    report["met"] = {k: median[k] <= goal for k, goal in report["goals_s"].items() if k in median}
    report["profiles"] = profiles
    return report


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--child"]:
        return _child(argv[2:] if argv[1:2] == ["--"] else argv[1:])
    parser = argparse.ArgumentParser(prog="python -m pipeline.datasets.bench", description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=100_000)
    parser.add_argument("--boxes-per-image", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=2,
                        help="nightly rounds (default 2: the first snapshot, then one unchanged night)")
    parser.add_argument("--snapshot-repeats", type=int, default=3,
                        help="unchanged snapshots timed per later round (default 3)")
    parser.add_argument("--export-cache", default=None,
                        help="where generated exports are kept for the next run (default $NIGHTSHIFT_HOME/bench)")
    parser.add_argument("--no-cache", action="store_true", help="write a fresh export in the workdir")
    parser.add_argument("--bytecode-cache", help="PYTHONPYCACHEPREFIX for the stages when the environment has no "
                                                 "bytecode (default: <export cache>/pycache)")
    parser.add_argument("--profile", type=int, default=0, metavar="N",
                        help="print the N functions each stage spends most time in (one more, untimed round "
                             "under cProfile)")
    parser.add_argument("--workdir", help="where to build the workspace (default: a temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep the workdir afterwards")
    parser.add_argument("--json", help="also write the figures to this JSON file")
    args = parser.parse_args(argv)
    if args.images < 1 or args.boxes_per_image < 0 or args.rounds < 2 or args.snapshot_repeats < 1:
        parser.error("--images >= 1, --boxes-per-image >= 0, --rounds >= 2 (the first snapshot, then unchanged "
                     "ones), --snapshot-repeats >= 1")
    from pipeline.config import nightshift_home

    cache = None if args.no_cache else Path(args.export_cache or nightshift_home() / "bench")
    workdir = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="nightshift-bench-"))
    report = run(args.images, args.boxes_per_image, workdir, args.rounds, args.snapshot_repeats, cache,
                 args.profile, keep=args.keep,
                 bytecode_cache=Path(args.bytecode_cache) if args.bytecode_cache else None)
    m, goals = report["median_s"], report["goals_s"]
    print(f"{report['images']} images, {report['boxes']} boxes on {report['cpus']} CPUs "
          f"(load average now {report['load_average'][0]}: a shared machine's figures vary), each stage a process:")
    print(f"  ingest {m['ingest']} s + validate (header checks) {m['validate']} s = {m['ingest_plus_validate']} s, "
          f"median of {report['rounds']} (goal <= {goals['ingest_plus_validate']:g} s: "
          f"{'met' if report['met']['ingest_plus_validate'] else 'NOT met'})")
    print(f"  first snapshot {m['snapshot_first']} s; unchanged snapshot {m['snapshot_unchanged']} s, median of "
          f"{len(report['seconds']['snapshot_unchanged'])} (goal <= {goals['snapshot_unchanged']:g} s: "
          f"{'met' if report['met']['snapshot_unchanged'] else 'NOT met'})")
    for label, text in report["profiles"].items():
        print(f"\n  where {label} spends its time (cProfile, top {args.profile} by cumulative time):\n{text}")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2, sort_keys=True))
    print("BENCH " + json.dumps({k: v for k, v in report.items() if k != "profiles"}, sort_keys=True), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
