"""`make bench`: every performance figure the project measures, one section after another.

    python -m pipeline.bench                 # all sections
    python -m pipeline.bench --only export   # one section; extra args after -- go to it

Each section is a module with `main(argv) -> int` that prints its own figures; this runner only sequences them
and reports wall time, so a section can also be run on its own (`python -m pipeline.export.bench --help`).
"""
from __future__ import annotations

import argparse
import importlib
import sys
import time

# section -> (module, what it measures)
BENCHES = {
    "train": ("pipeline.training.bench", "DDP step time, 2 gloo ranks against 1 at equal per-rank batch, 128 and 320 px, images/s"),
    "score": ("pipeline.metrics.bench", "COCO scoring of 5,000 images x 100 detections vs faster-coco-eval and pycocotools"),
    "stability": ("pipeline.metrics.stability_bench", "the stability suite (slices + paired bootstrap) against the "
                                                       "evaluate stage's time on the demo (goal <= 1x)"),
    "audit": ("pipeline.audit.bench", "label audit with the demo model on make demo's data: injected errors (5 % "
                                      "swapped / dropped / shifted) found in the top 2x (goal >= 80 %)"),
    "export": ("pipeline.export.bench", "PyTorch eager vs ONNX Runtime latency and throughput per registered detector "
                                        "and the classifiers resnet18 and mobilenet_v3_large (128 px), batch 1 and 8; "
                                        "Mask R-CNN maskrcnn_mobilenet_v3_large_fpn (160 px), batch 1 and 2"),
    "data": ("pipeline.datasets.bench", "ingest + validate of 100k images / 1M boxes and an unchanged snapshot, "
                                        "each stage a process, against the goals (<= 20 s, <= 5 s)"),
}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    extra: list[str] = []
    if "--" in argv:
        argv, extra = argv[: argv.index("--")], argv[argv.index("--") + 1 :]
    parser = argparse.ArgumentParser(prog="python -m pipeline.bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", help="comma-separated sections: " + ", ".join(BENCHES))
    args = parser.parse_args(argv)
    sections = args.only.split(",") if args.only else list(BENCHES)
    unknown = [s for s in sections if s not in BENCHES]
    if unknown:
        parser.error(f"unknown section(s) {unknown}; known: {', '.join(BENCHES)}")
    status = 0
    for name in sections:
        module, what = BENCHES[name]
        print(f"\n### {name}: {what}\n", flush=True)
        started = time.perf_counter()
        code = importlib.import_module(module).main(extra if args.only else [])
        print(f"\n### {name}: done in {time.perf_counter() - started:.1f} s (exit {code})", flush=True)
        status = status or code
    return status


if __name__ == "__main__":
    sys.exit(main())
