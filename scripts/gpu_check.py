"""`make gpu-check`: the GPU path in one prepared run (under 8 minutes on one GPU).

    python scripts/gpu_check.py [--model ssdlite320_mobilenet_v3_large] [--epochs 4] [--size 320]

On a CUDA device it generates make demo's data (480 images), trains the model a few epochs with the GPU recipe and AMP through
the training engine the train stage uses, evaluates on CUDA, exports to ONNX and compares ONNX Runtime (the
CUDA provider when onnxruntime-gpu is installed, else the CPU one) with the CUDA model on the val split: the
raw detections and the mAP, as the export stage's parity gate does. TensorRT is tried when `tensorrt` imports.
It prints what a note about the GPU path needs: device, versions, training images/s and peak memory,
inference images/s, the parity figures. Exit 0 when every check passed, 4 when a parity check failed, 2 when
there is no CUDA device (`--allow-cpu` runs the same steps on the CPU, as a dry run of the script itself).
With two or more GPUs it says so: multi-GPU (NCCL) training is what `train.nproc_per_node` does through
`nightshift train`, not this script.
"""
from __future__ import annotations

import argparse
import copy
import sys
import tempfile
import time
from pathlib import Path


def _data(root: Path) -> Path:
    """make demo's data: the generated set, split by the canonical group-hash rule."""
    from pipeline.audit.bench import make_demo_data

    make_demo_data(root / "data")
    return root / "data"


def _train(args, data: Path, root: Path, device):
    import torch

    from pipeline.config import TrainConfig
    from pipeline.datasets.canonical import CanonicalDataset
    from pipeline.store import LocalStore
    from pipeline.training.distributed import DistInfo
    from pipeline.training.engine import fit, seed_everything
    from pipeline.training.models import build_model

    # the GPU recipe, but no EMA: a few epochs are too few steps for a 0.9998 average to leave the initial weights
    cfg = TrainConfig(model=args.model, recipe="gpu", image_size=args.size, epochs=args.epochs, nproc_per_node=1,
                      num_workers=2, amp=True, eval_every_epochs=0, deterministic=False, ema_decay=0.0)
    seed_everything(cfg.seed, cfg.deterministic)
    train_set = CanonicalDataset(data, "train", cfg.image_size)
    model = build_model(cfg.model, train_set.num_classes + 1, cfg.image_size)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    info = DistInfo(0, 1, 0, device, "")
    result = fit(model, train_set, cfg, info, LocalStore(root / "store"), "ckpt", "gpu-check", progress=True)
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    return model, cfg, result, peak


def _evaluate(model, data: Path, size: int, device) -> tuple[dict, float, list[dict], object]:
    from pipeline.datasets.canonical import CanonicalDataset, load_coco, split_coco
    from pipeline.metrics.coco import score
    from pipeline.training.engine import predict

    val = CanonicalDataset(data, "val", size)
    predict(model, val, batch_size=16, device=device, progress=False)  # warm-up: kernels, cuDNN autotune
    start = time.perf_counter()
    detections = predict(model, val, batch_size=16, device=device, progress=False)
    seconds = time.perf_counter() - start
    return score(split_coco(load_coco(data), "val"), detections), len(val) / seconds, detections, val


def _onnx_parity(model, val, size: int, root: Path, device) -> dict:
    import onnxruntime as ort
    import torch

    from pipeline.datasets.canonical import load_coco, split_coco
    from pipeline.export.onnx_export import OrtDetector, compare_detections, export_onnx
    from pipeline.metrics.coco import score
    from pipeline.training.engine import predict

    path = root / "model.onnx"
    start = time.perf_counter()
    export_onnx(copy.deepcopy(model).cpu().eval(), size, path)  # traced on the CPU, as the export stage does
    export_s = time.perf_counter() - start
    providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in ort.get_available_providers()]
    session = ort.InferenceSession(str(path), providers=providers)
    runtime = OrtDetector(session)
    images = [val[i][0] for i in range(min(16, len(val)))]
    with torch.inference_mode():
        model.eval().to(device)
        reference = [{k: v.cpu() for k, v in d.items()} for d in model([im.to(device) for im in images])]
        reference = [{k: v[d["labels"] > 0] for k, v in d.items()} for d in reference]
        onnx_out = runtime(images)
    gt = split_coco(load_coco(val.root), "val")
    eager = score(gt, predict(model, val, batch_size=16, device=device, progress=False))
    onnx_ap = score(gt, predict(runtime, val, batch_size=16, progress=False))
    return {"export_s": round(export_s, 2), "providers": session.get_providers(),
            "outputs": compare_detections(reference, onnx_out),
            "ap_eager_cuda": eager["AP"], "ap_onnxruntime": onnx_ap["AP"],
            "map_drop": (eager["AP"] or 0.0) - (onnx_ap["AP"] or 0.0)}


def _tensorrt() -> str:
    try:
        import tensorrt  # noqa: F401 - importable is the question
    except ImportError:
        return "not installed (the tensorrt package does not import): skipped"
    return "installed: run `nightshift export --set export.tensorrt=fp16` for the engine and its parity gate"


def main(argv: list[str] | None = None) -> int:
    import torch

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--model", default="ssdlite320_mobilenet_v3_large")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--size", type=int, default=320, help="input side S")
    parser.add_argument("--max-map-drop", type=float, default=0.001, help="parity limit, as export.parity_max_map_drop")
    parser.add_argument("--allow-cpu", action="store_true", help="run on the CPU when there is no CUDA device")
    args = parser.parse_args(argv)
    if torch.cuda.is_available():
        device = torch.device("cuda", 0)
        print(f"device: {torch.cuda.get_device_name(device)} ({torch.cuda.device_count()} visible), torch "
              f"{torch.__version__}, CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}", flush=True)
        if torch.cuda.device_count() > 1:
            print("several GPUs: this script uses one; NCCL training over all of them is `nightshift train` with "
                  "train.nproc_per_node set to their number", flush=True)
    elif args.allow_cpu:
        device = torch.device("cpu")
        print(f"device: CPU (--allow-cpu: a dry run of the script, no GPU figures), torch {torch.__version__}")
    else:
        print("gpu-check: no CUDA device here (torch.cuda.is_available() is False); run it on a GPU node, or add "
              "--allow-cpu for a dry run", file=sys.stderr)
        return 2
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="nightshift-gpu-check-") as tmp:
        root = Path(tmp)
        data = _data(root)
        model, cfg, fit_result, peak = _train(args, data, root, device)
        metrics, infer_ips, _dets, val = _evaluate(model, data, cfg.image_size, device)
        parity = _onnx_parity(model, val, cfg.image_size, root, device)
        trt = _tensorrt()
    passed = parity["map_drop"] <= args.max_map_drop and parity["outputs"]["match_fraction"] >= 0.98
    amp = cfg.amp and device.type == "cuda"
    print("\n".join([
        "",
        f"train     {cfg.model} at {cfg.image_size} px, {fit_result.epochs_run} epochs, batch {cfg.batch_size}, "
        f"AMP {'on' if amp else 'off'}: {fit_result.images_per_s:.1f} images/s, {fit_result.train_seconds:.1f} s, "
        f"final loss {fit_result.final_loss:.3f}",
        f"memory    peak CUDA allocated {peak:.2f} GiB" if peak is not None else "memory    (CPU run: no CUDA figure)",
        f"evaluate  val AP {metrics['AP'] or 0:.4f}, AP50 {metrics['AP50'] or 0:.4f}; "
        f"inference {infer_ips:.1f} images/s on {device.type} (batch 16)",
        f"export    ONNX in {parity['export_s']} s; ONNX Runtime providers {parity['providers']}",
        f"parity    detections matched {parity['outputs']['match_fraction']:.4f} of {parity['outputs']['compared']}; "
        f"AP eager {parity['ap_eager_cuda'] or 0:.4f} vs ONNX Runtime {parity['ap_onnxruntime'] or 0:.4f} "
        f"(drop {parity['map_drop']:.4f}, allowed {args.max_map_drop}) -> {'passed' if passed else 'FAILED'}",
        f"TensorRT  {trt}",
        f"total     {time.perf_counter() - started:.0f} s",
    ]), flush=True)
    return 0 if passed else 4


if __name__ == "__main__":
    sys.exit(main())
