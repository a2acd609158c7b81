"""Inference benchmark: PyTorch eager (the torchvision detector) vs ONNX Runtime (the exported graph).

Used by the export stage for `export/report.json`, and runnable on its own to see the ORT/eager ratio:

    python -m pipeline.export.bench                      # untrained default detector (see below)
    python -m pipeline.export.bench --model-pt model.pt  # a trained train/model.pt

Latency is per batch call; throughput is images per second at the median latency. Each figure is over
`repeats` timed calls after `warmup` untimed ones, with mean and standard deviation (the spread).
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
    """Eager vs ONNX Runtime at each batch size on the same random inputs; the ORT/eager speed ratio."""
    from pipeline.export.onnx_export import run_session

    torch.set_num_threads(threads)
    model.eval()
    gen = torch.Generator().manual_seed(seed)
    rows = {}
    for batch in batches:
        x = torch.rand(batch, 3, image_size, image_size, generator=gen)
        images, arr = list(x), x.numpy()
        with torch.inference_mode():
            eager = time_calls(lambda: model(images), batch, repeats, warmup)
        ort = time_calls(lambda: run_session(session, arr), batch, repeats, warmup)
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


def _untrained_default(num_classes: int = 4):
    """The default detector with random weights; backbone convs re-initialised (He) so that features do
    not vanish and scores are not all tied, which would make NMS do unrepresentative work."""
    from pipeline.training.models import build_model

    torch.manual_seed(0)
    model = build_model("ssdlite320_mobilenet_v3_large", num_classes + 1, 320).eval()
    with torch.no_grad():
        for mod in model.backbone.modules():
            if isinstance(mod, torch.nn.Conv2d):
                torch.nn.init.kaiming_normal_(mod.weight, mode="fan_in", nonlinearity="relu")
    return model, 320


def main(argv: list[str] | None = None) -> int:
    from pipeline.export.onnx_export import export_onnx, ort_session
    from pipeline.training.models import load_trained

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-pt", help="a train/model.pt (default: the untrained default detector, 4 classes)")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    if args.model_pt:
        model, meta = load_trained(args.model_pt)
        size = int(meta["image_size"])
    else:
        model, size = _untrained_default()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.onnx"
        export_onnx(model, size, path)
        report = benchmark(model, ort_session(path, args.threads), size, args.batches, args.repeats, args.warmup,
                           args.threads)
    print(table(report))
    print("ORT/eager speed-up: " + ", ".join(
        f"batch {b}: {row['ort_vs_eager_speedup']:.2f}x" for b, row in report["batches"].items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
