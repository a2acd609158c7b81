"""Inference benchmark: PyTorch eager (the torchvision model) vs ONNX Runtime (the exported graph).

Used by the export stage for `export/report.json`, and runnable on its own to see the ORT/eager ratio:

    python -m pipeline.export.bench                      # every registered detector + CLASSIFIERS
    python -m pipeline.export.bench --models fcos_resnet50_fpn --size 160
    python -m pipeline.export.bench --models resnet50 efficientnet_b0 --classifier-size 160
    python -m pipeline.export.bench --models maskrcnn_mobilenet_v3_large_fpn --segmenter-size 320
    python -m pipeline.export.bench --model-pt model.pt  # a trained train/model.pt

Latency is per batch call; throughput is images per second at the median latency. Each figure is over
`repeats` timed calls after `warmup` untimed ones, with mean and standard deviation (the spread). Detectors
run at `--size` with representative weights (`representative`), classifiers at `--classifier-size` (128 px by
default, to keep `make bench` short; 224 is their registered size) with torchvision's initialisation, which
times the same as trained weights. SEGMENTERS (Mask R-CNN) run at `--segmenter-size` (160 px by default) for
`--segmenter-repeats` calls at `--segmenter-batches`, with representative weights that keep a few detections
per image, as a trained segmenter does (its mask head runs once per detection).
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def _stats(times_s: list[float], batch: int) -> dict:
    ms = np.array(times_s) * 1e3
    p50 = float(np.percentile(ms, 50))
    return {
        "batch": batch, "repeats": len(ms),
        "latency_ms": {"p50": p50, "p95": float(np.percentile(ms, 95)), "p99": float(np.percentile(ms, 99)),
                       "mean": float(ms.mean()), "std": float(ms.std(ddof=1)) if len(ms) > 1 else 0.0,
                       "min": float(ms.min()), "max": float(ms.max())},
        "throughput_ips": batch / (p50 / 1e3) if p50 > 0 else float("inf"),
    }


def time_calls(fn, batch: int, repeats: int, warmup: int) -> dict:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return _stats(times, batch)


def benchmark(model: torch.nn.Module, session, image_size: int, batches, repeats: int = 20, warmup: int = 3,
              threads: int = 1, seed: int = 0) -> dict:
    """Eager vs ONNX Runtime at each batch size on the same random inputs; the ORT/eager speed ratio. Any
    exported task: ONNX Runtime computes every output of the graph, eager gets the images as a list."""
    torch.set_num_threads(threads)
    feed = session.get_inputs()[0].name
    model.eval()
    gen = torch.Generator().manual_seed(seed)
    rows = {}
    for batch in batches:
        x = torch.rand(batch, 3, image_size, image_size, generator=gen)
        images, arr = list(x), x.numpy()
        with torch.inference_mode():
            eager = time_calls(lambda: model(images), batch, repeats, warmup)
        ort = time_calls(lambda: session.run(None, {feed: arr}), batch, repeats, warmup)
        rows[str(batch)] = {"eager": eager, "onnxruntime": ort,
                            "ort_vs_eager_speedup": eager["latency_ms"]["p50"] / ort["latency_ms"]["p50"]}
    return {"threads": threads, "image_size": image_size, "batches": rows}


def table(report: dict) -> str:
    """A short text table of a benchmark report for the log."""
    lines = [f"{'runtime':<12} {'batch':>5} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} {'mean±std ms':>14} "
             f"{'img/s':>7}"]
    for batch, row in report["batches"].items():
        for name in ("eager", "onnxruntime"):
            r = row[name]
            lat = r["latency_ms"]
            lines.append(f"{name:<12} {batch:>5} {lat['p50']:8.1f} {lat['p95']:8.1f} {lat['p99']:8.1f} "
                         f"{lat['mean']:8.1f}±{lat['std']:<5.1f} {r['throughput_ips']:7.1f}")
        lines.append(f"{'ORT/eager':<12} {batch:>5} {row['ort_vs_eager_speedup']:.2f}x faster at p50")
    return "\n".join(lines)


def representative(name: str, num_classes: int = 4, image_size: int = 320, seed: int = 0) -> torch.nn.Module:
    """Detector `name` (K = num_classes) with random weights that behave like trained ones where it matters
    for timing and output comparison: torchvision's init leaves BatchNorm statistics at 0/1 (features explode
    or vanish) and ties every score, and tied scores make NMS do unrepresentative work and cannot be compared
    element by element. So: BatchNorm statistics from random images, unit-variance class logits with a zero
    bias (scores spread around 0.5), and FCOS's box distances positive (its ReLU would collapse half the boxes)."""
    from pipeline.training.models import build_model

    torch.manual_seed(seed)
    model = build_model(name, num_classes + 1, image_size)
    for mod in model.modules():
        if isinstance(mod, torch.nn.modules.batchnorm._BatchNorm):
            mod.reset_running_stats()
            mod.momentum = None  # a cumulative average over the batches below
    gen = torch.Generator().manual_seed(seed + 1)
    model.train()
    with torch.no_grad():
        for _ in range(3):
            images, _ = model.transform(list(torch.rand(4, 3, image_size, image_size, generator=gen)))
            model.backbone(images.tensors)
    model.eval()
    with torch.no_grad():
        for key, param in model.named_parameters():
            final_class = key.endswith(("cls_logits.weight", "cls_score.weight")) or (
                "classification_head.module_list" in key and key.endswith(".1.weight"))
            if final_class:
                if float(param.std()) == 0:  # a constant init: spread it first
                    param.normal_(generator=gen)
                param.mul_(1.0 / float(param.std() * param[0].numel() ** 0.5))
            elif key.endswith(("cls_logits.bias", "cls_score.bias")) or (
                    "classification_head.module_list" in key and key.endswith(".1.bias")):
                param.zero_()
            elif key == "head.regression_head.bbox_reg.bias":
                param.fill_(1.0)
    if getattr(getattr(model, "roi_heads", None), "has_mask", lambda: False)():
        _few_detections(model, image_size, gen)
    return model


def _few_detections(model: torch.nn.Module, image_size: int, gen: torch.Generator, most: int = 20) -> None:
    """A Mask R-CNN runs its mask head once per detection: spread-out random scores fill all 100 slots, a
    trained model keeps a handful. Raise the background logit until at most `most` (and at least one) detections
    per image remain on random images, so timings and parity see what a trained segmenter does."""
    bias = model.roi_heads.box_predictor.cls_score.bias
    images = list(torch.rand(2, 3, image_size, image_size, generator=gen))
    values = (1.0, 2.0, 2.5, 3.0, 3.25, 3.5, 3.75, 4.0)
    with torch.no_grad():
        for i, value in enumerate(values):
            bias[0] = value
            counts = [len(d["boxes"]) for d in model(images)]
            if max(counts) <= most:
                if min(counts) == 0 and i > 0:  # one step too far: take the previous, denser setting
                    bias[0] = values[i - 1]
                return


DETECTORS = ("ssdlite320_mobilenet_v3_large", "fasterrcnn_mobilenet_v3_large_320_fpn",
             "fasterrcnn_mobilenet_v3_large_fpn", "fasterrcnn_resnet50_fpn", "retinanet_resnet50_fpn",
             "fcos_resnet50_fpn")
CLASSIFIERS = ("resnet18", "mobilenet_v3_large")  # measured by default; any registered classifier may be named
SEGMENTERS = ("maskrcnn_mobilenet_v3_large_fpn",)  # Mask R-CNN: + the mask head per detection


def main(argv: list[str] | None = None) -> int:
    from pipeline.export import classifier
    from pipeline.export.onnx_export import export_onnx, ort_session
    from pipeline.training.models import MODELS, build_model, load_trained

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-pt", help="a train/model.pt (default: representative untrained models, 4 classes)")
    parser.add_argument("--models", nargs="+", default=[*DETECTORS, *CLASSIFIERS, *SEGMENTERS],
                        help="registered detectors and classifiers to measure without --model-pt (default: every "
                             f"detector, {', '.join(CLASSIFIERS)})")
    parser.add_argument("--size", type=int, default=320, help="detectors' input side S without --model-pt")
    parser.add_argument("--classifier-size", type=int, default=128,
                        help="classifiers' input side S (128: a few seconds for both; 224 is their registered size)")
    parser.add_argument("--classifier-repeats", type=int, default=10, help="timed calls per classifier figure")
    parser.add_argument("--segmenter-size", type=int, default=160,
                        help="Mask R-CNN's input side S (160 keeps it to seconds; 320 is its registered size)")
    parser.add_argument("--segmenter-repeats", type=int, default=2, help="timed calls per Mask R-CNN figure")
    parser.add_argument("--segmenter-batches", type=int, nargs="+", default=[1, 2],
                        help="Mask R-CNN's batch sizes (its 1000 RPN proposals per image make batch 8 take seconds)")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.model_pt:
        model, meta = load_trained(args.model_pt)
        runs = [(meta["model"], lambda: (model, int(meta["image_size"]), args.repeats, args.batches))]
    else:
        classifiers = sorted(n for n, spec in MODELS.items() if spec.task == "classification")
        unknown = [m for m in args.models if m not in DETECTORS and m not in classifiers and m not in SEGMENTERS]
        if unknown:
            parser.error(f"unknown model(s) {unknown}; known: {', '.join([*DETECTORS, *classifiers, *SEGMENTERS])}")
        csize, ssize = args.classifier_size, args.segmenter_size
        runs = [(name, lambda name=name: (build_model(name, 4, csize).eval(), csize, args.classifier_repeats,
                                          args.batches))
                if name in classifiers else
                (name, lambda name=name: (representative(name, 4, ssize), ssize, args.segmenter_repeats,
                                          args.segmenter_batches))
                if name in SEGMENTERS else
                (name, lambda name=name: (representative(name, 4, args.size), args.size, args.repeats, args.batches))
                for name in args.models]
    summary = []
    for name, make in runs:
        model, size, repeats, batches = make()
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "model.onnx"
            started = time.perf_counter()
            (classifier.export_onnx if classifier.is_classifier(model) else export_onnx)(model, size, path)
            export_s = time.perf_counter() - started
            report = benchmark(model, ort_session(path, args.threads), size, batches, repeats,
                               min(args.warmup, repeats), args.threads)
        print(f"\n{name} at {size}x{size} (export {export_s:.1f} s)\n{table(report)}", flush=True)
        summary.append((MODELS[name].task if name in MODELS else "?", name, report))
    print("\nORT/eager speed-up at p50 (>1 = ONNX Runtime faster), ONNX Runtime images/s:")
    for task in dict.fromkeys(task for task, _, _ in summary):
        print(f"  {task}")
        for _, name, report in (row for row in summary if row[0] == task):
            print(f"    {name:<38} " + ", ".join(
                f"batch {b}: {row['ort_vs_eager_speedup']:.2f}x ({row['onnxruntime']['throughput_ips']:.0f} vs "
                f"{row['eager']['throughput_ips']:.0f} img/s)" for b, row in report["batches"].items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
