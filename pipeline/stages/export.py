"""export: the trained detector to ONNX, verified against PyTorch and benchmarked.

Reads `train/model.pt` and the val split of `ingest/dataset/`. Writes `export/model.onnx` (input `images`
float32 [B,3,S,S]; outputs `boxes` [B,D,4], `scores` [B,D], `labels` int64 [B,D], padded, dynamic batch),
`export/labels.txt`, `export/io.json` and `export/report.json` (checks, parity, speed); result.json records
the sha256 of every deployable file (`sha256`), which promote checks before shipping. Every exported
artifact is checked before it leaves: ONNX Runtime's raw detections must match PyTorch's on val images,
and its val mAP may not drop more than `export.parity_max_map_drop` below eager PyTorch's (else exit 4).

The report also records whether TensorRT's ONNX parser supports every operator (`checks.tensorrt_ops`,
pipeline.export.trt_ops). Optional formats, each under the same mAP parity gate: `export.int8` writes
`model.int8.onnx` (onnxruntime dynamic INT8, `checks.int8`), `export.tensorrt=fp16|int8` writes `model.plan`
and `triton_plan.pbtxt` (`checks.tensorrt`; needs TensorRT and a GPU, its timing cache lives in the store).
"""
from __future__ import annotations

import json
import logging
import time

from pipeline.config import Config
from pipeline.context import RunContext
from pipeline.errors import GateFailed, InputRejected
from pipeline.spec import StageSpec

SPEC = StageSpec(upstream=("train",), exclusive=True)  # exclusive: shared scratch space and outputs
FORMAT = "onnx"
# files a deployment may ship; their sha256 goes into result.json (promote refuses any other bytes)
DEPLOYED = ("model.onnx", "labels.txt", "io.json", "model.int8.onnx", "model.plan", "triton_plan.pbtxt")

log = logging.getLogger(__name__)


def _check_outputs(model, session, dataset, n: int, match_min: float) -> dict:
    """Raw-output check: ONNX Runtime vs the torchvision model on the first `n` val images, as one batch
    and image by image (the batch dimension must really be dynamic and batch-independent)."""
    import torch

    from pipeline.export.onnx_export import OrtDetector, compare_detections

    images = [dataset[i][0] for i in range(min(n, len(dataset)))]
    with torch.inference_mode():
        reference = model(images)
        batched = OrtDetector(session)(images)
        single = [OrtDetector(session)([im])[0] for im in images]
    vs_torch = compare_detections(reference, batched)
    vs_single = compare_detections(single, batched, iou_min=0.99, score_atol=1e-5)
    return {"images": len(images), "vs_pytorch": vs_torch, "batch_vs_single": vs_single,
            "passed": vs_torch["match_fraction"] >= match_min and vs_single["match_fraction"] >= match_min}


def _parity(model, session, dataset, gt: dict, max_drop: float, runtime=None) -> dict:
    """mAP on val: PyTorch vs the exported model (an ONNX Runtime `session`, or any detector-like `runtime`)."""
    from pipeline.export.onnx_export import OrtDetector
    from pipeline.metrics.coco import score
    from pipeline.training.engine import predict

    eager = score(gt, predict(model, dataset, progress=False))
    ort = score(gt, predict(runtime if runtime is not None else OrtDetector(session), dataset, progress=False))
    keys = ("AP", "AP50", "AP75")
    drop = (eager["AP"] or 0.0) - (ort["AP"] or 0.0)
    return {"pytorch": {k: eager[k] for k in keys}, "onnxruntime": {k: ort[k] for k in keys},
            "map_drop": drop, "max_map_drop": max_drop, "passed": drop <= max_drop}


def _optional_formats(cfg: Config, ctx: RunContext, model, size: int, out, dataset, gt: dict) -> tuple[dict, list]:
    """INT8 ONNX and TensorRT, when configured: (checks for the report, failures); published artifacts."""
    from pipeline.export.onnx_export import ort_session
    from pipeline.export.quantize import quantize_int8
    from pipeline.export.trt_ops import check_model

    checks: dict = {"tensorrt_ops": check_model(out / "model.onnx")}
    failures: list = []
    if cfg.export.int8:
        path = quantize_int8(out / "model.onnx", out / "model.int8.onnx")
        parity = _parity(model, ort_session(path, cfg.export.threads), dataset, gt, cfg.export.int8_max_map_drop)
        checks["int8"] = {"file": path.name, "bytes": path.stat().st_size, "parity": parity}
        log.info("INT8 parity: AP %.4f (drop %.4f, allowed %.4f)", parity["onnxruntime"]["AP"] or 0,
                 parity["map_drop"], parity["max_map_drop"])
        if not parity["passed"]:
            failures.append({"check": "int8_parity", "expected": f"mAP drop <= {parity['max_map_drop']}",
                             "actual": parity["map_drop"]})
        ctx.publish(path, path.name)
    if cfg.export.tensorrt != "off":
        failures += _tensorrt(cfg, ctx, model, size, out, dataset, gt, checks)
    return checks, failures


def _tensorrt(cfg: Config, ctx: RunContext, model, size: int, out, dataset, gt: dict, checks: dict) -> list:
    """Build model.plan, gate it on mAP like ONNX Runtime, write its Triton config; returns failures."""
    from pipeline.datasets.canonical import CanonicalDataset
    from pipeline.export import EXPORTERS, export
    from pipeline.export.onnx_export import io_spec
    from pipeline.export.tensorrt import TrtDetector, TrtRunner, calibration_batches, timing_cache_key
    from pipeline.triton.config import render_plan

    if "tensorrt" not in EXPORTERS:
        raise InputRejected(f"export.tensorrt={cfg.export.tensorrt} needs TensorRT, which does not import here",
                            field="export.tensorrt")
    if not checks["tensorrt_ops"]["passed"]:
        return [{"check": "tensorrt_ops", "expected": "every operator supported by TensorRT's ONNX parser",
                 "actual": checks["tensorrt_ops"]["unsupported"] + checks["tensorrt_ops"]["problems"]}]
    calibration = None
    if cfg.export.tensorrt == "int8" and not (out / "calibration.cache").exists():
        split = CanonicalDataset(ctx.fetch_dir("ingest", "dataset"), cfg.export.calibration_split, size)
        calibration = calibration_batches(split, cfg.export.calibration_images, cfg.export.calibration_batch)
    cache_key, cache = timing_cache_key(), ctx.scratch("tensorrt") / "timing.cache"
    if ctx.store.exists(cache_key):
        ctx.store.get_file(cache_key, cache)
    path = export("tensorrt", model, size, out, cfg, calibration=calibration, timing_cache=cache)
    ctx.store.put_file(cache, cache_key)  # the next build on this GPU model starts from these timings
    max_drop = cfg.export.int8_max_map_drop if cfg.export.tensorrt == "int8" else cfg.export.tensorrt_max_map_drop
    parity = _parity(model, None, dataset, gt, max_drop, runtime=TrtDetector(TrtRunner(path)))
    parity["tensorrt"] = parity.pop("onnxruntime")
    checks["tensorrt"] = {"precision": cfg.export.tensorrt, "bytes": path.stat().st_size, "parity": parity,
                          "timing_cache": ctx.store.url(cache_key)}
    (out / "triton_plan.pbtxt").write_text(render_plan(io_spec(out / "model.onnx"), cfg.promote.model_name,
                                                       cfg.promote.max_batch_size, cfg.promote.instance_count,
                                                       cfg.promote.max_queue_delay_us))
    for name in ("model.plan", "triton_plan.pbtxt", "calibration.cache"):
        if (out / name).exists():
            ctx.publish(out / name, name)
    if parity["passed"]:
        return []
    return [{"check": "tensorrt_parity", "expected": f"mAP drop <= {max_drop}", "actual": parity["map_drop"]}]


def run(cfg: Config, ctx: RunContext) -> dict:
    import torch  # here, not at the top: `nightshift export --help` and a skipped export need no torch

    from pipeline import tracking
    from pipeline.datasets.canonical import CanonicalDataset, split_coco
    from pipeline.export import export
    from pipeline.export.bench import benchmark, table
    from pipeline.export.detector import UnsupportedModel
    from pipeline.export.onnx_export import io_spec, ort_session, write_io, write_labels
    from pipeline.stages.gate import deployment_checks, resolve_thresholds
    from pipeline.training.models import load_trained
    from pipeline.triton.repository import sha256_file

    torch.set_num_threads(cfg.export.threads)
    model_pt = ctx.fetch("train", "model.pt")
    model, meta = load_trained(str(model_pt))
    size = int(meta["image_size"])
    dataset_dir = ctx.fetch_dir("ingest", "dataset")
    dataset = CanonicalDataset(dataset_dir, "val", size)
    if len(dataset) == 0:
        raise InputRejected("the val split is empty: nothing to check the export on",
                            path=ctx.url("dataset/annotations.json", "ingest"), field="images[].split")

    out = ctx.scratch("out")
    started = time.perf_counter()
    try:
        onnx_path = export(FORMAT, model, size, out, cfg)
    except UnsupportedModel as exc:
        raise InputRejected(str(exc), path=ctx.url("model.pt", "train"), field="model") from None
    export_s = time.perf_counter() - started
    io = io_spec(onnx_path)
    write_io(io, out / "io.json")
    write_labels(meta["categories"], out / "labels.txt")

    session = ort_session(onnx_path, cfg.export.threads)
    log.info("checking ONNX Runtime against PyTorch on %d val images", min(cfg.export.verify_images, len(dataset)))
    outputs = _check_outputs(model, session, dataset, cfg.export.verify_images, cfg.export.output_match_min)
    parity = _parity(model, session, dataset, split_coco(dataset.coco, "val"), cfg.export.parity_max_map_drop)
    log.info("parity on %d val images: AP pytorch %.4f, onnxruntime %.4f (drop %.4f, allowed %.4f)",
             len(dataset), parity["pytorch"]["AP"] or 0, parity["onnxruntime"]["AP"] or 0, parity["map_drop"],
             parity["max_map_drop"])

    extra_checks, extra_failures = _optional_formats(cfg, ctx, model, size, out, dataset,
                                                     split_coco(dataset.coco, "val"))

    speed = benchmark(model, session, size, cfg.export.benchmark_batches, cfg.export.benchmark_repeats,
                      cfg.export.benchmark_warmup, cfg.export.threads)
    log.info("inference speed (%d thread(s), %dx%d):\n%s", cfg.export.threads, size, size, table(speed))
    sizes = {"onnx_bytes": onnx_path.stat().st_size, "pytorch_state_dict_bytes": model_pt.stat().st_size}
    largest = str(max(cfg.export.benchmark_batches))
    report = {
        "format": FORMAT, "opset": io["opset"], "io": io, "export_s": round(export_s, 2), "model": meta["model"],
        "image_size": size, "checks": {"outputs": outputs, "parity": parity, **extra_checks}, "speed": speed,
        "size": sizes,
    }
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    for name in ("model.onnx", "labels.txt", "io.json", "report.json"):
        ctx.publish(out / name, name)
    # the bytes this run checked: promote ships a file only if its sha256 is the one recorded here
    deployed = {name: sha256_file(out / name) for name in DEPLOYED if (out / name).is_file()}

    ratios = {b: row["ort_vs_eager_speedup"] for b, row in speed["batches"].items()}
    with tracking.active_run(cfg, ctx.run_id):
        import mlflow

        mlflow.log_metrics({
            "export_parity_ap_pytorch": parity["pytorch"]["AP"] or 0.0,
            "export_parity_ap_onnxruntime": parity["onnxruntime"]["AP"] or 0.0,
            "export_parity_map_drop": parity["map_drop"],
            "export_output_match": outputs["vs_pytorch"]["match_fraction"],
            "export_onnx_mb": sizes["onnx_bytes"] / 1e6,
            **{f"export_ort_speedup_b{b}": r for b, r in ratios.items()},
            **{f"export_ort_p50_ms_b{b}": row["onnxruntime"]["latency_ms"]["p50"]
               for b, row in speed["batches"].items()},
            **{f"export_eager_p50_ms_b{b}": row["eager"]["latency_ms"]["p50"] for b, row in speed["batches"].items()},
        })
        for name in ("report.json", "io.json", "labels.txt"):
            mlflow.log_artifact(str(out / name), artifact_path="export")

    result = {
        "format": FORMAT, "onnx": ctx.url("model.onnx"), "report": ctx.url("report.json"),
        "parity": {"map_drop": parity["map_drop"], "ap_pytorch": parity["pytorch"]["AP"],
                   "ap_onnxruntime": parity["onnxruntime"]["AP"]},
        "output_match": outputs["vs_pytorch"]["match_fraction"],
        "tensorrt_ops_supported": extra_checks["tensorrt_ops"]["passed"],
        **{f"{fmt}_map_drop": extra_checks[fmt]["parity"]["map_drop"] for fmt in ("int8", "tensorrt")
           if fmt in extra_checks},
        "speed": {"ort_vs_eager_batch1": ratios.get("1"), f"ort_vs_eager_batch{largest}": ratios.get(largest)},
        "onnx_mb": round(sizes["onnx_bytes"] / 1e6, 2),
        "sha256": deployed,
    }
    failures = []
    if not outputs["passed"]:
        failures.append({"check": "outputs", "expected": f">= {cfg.export.output_match_min} matched",
                         "actual": outputs["vs_pytorch"]["match_fraction"],
                         "batch_vs_single": outputs["batch_vs_single"]["match_fraction"]})
    if not parity["passed"]:
        failures.append({"check": "parity", "expected": f"mAP drop <= {parity['max_map_drop']}",
                         "actual": parity["map_drop"]})
    failures += extra_failures
    # the policy's latency and size budgets: the gate stage runs before export, so they are judged here
    deployment = deployment_checks(resolve_thresholds(cfg.gates)[0], report)
    result["deployment_checks"] = deployment
    failures += [{"check": c["name"], "expected": f"{c['direction']} {c['threshold']:g}",
                  "actual": c["value"] if c["value"] is not None else c.get("note")}
                 for c in deployment if not c["passed"]]
    if failures:
        raise GateFailed("ONNX export failed verification: " + "; ".join(
            f"{f['check']} expected {f['expected']}, got {f['actual']}" for f in failures), failures, result)
    return result
