"""export: the trained model to ONNX, verified against PyTorch (parity on mAP, or accuracy) and benchmarked.

Reads `train/model.pt` and the val split of `ingest/dataset/`. Writes `export/model.onnx` (input `images`
float32 [B,3,S,S]; outputs `boxes` [B,D,4], `scores` [B,D], `labels` int64 [B,D], padded, dynamic batch),
`export/labels.txt`, `export/io.json` and `export/report.json` (checks, parity, speed); result.json records
the sha256 of every deployable file (`sha256`), which promote checks before shipping. Every exported
artifact is checked before it leaves: ONNX Runtime's raw detections must match PyTorch's on val images,
and its val mAP may not drop more than `export.parity_max_map_drop` below eager PyTorch's. The gate policy's
latency and size budgets are judged here too, on report.json (pipeline.gates.deployment_gate; every check in
result.json's `deployment_checks`). Every failed check is listed in one refusal (exit 4).

The report also records whether TensorRT's ONNX parser supports every operator (`checks.tensorrt_ops`,
pipeline.export.trt_ops). Optional formats, each under the same mAP parity gate: `export.int8` writes
`model.int8.onnx` (onnxruntime dynamic INT8, `checks.int8`), `export.tensorrt=fp16|int8` writes `model.plan`
and `triton_plan.pbtxt` (`checks.tensorrt`; needs TensorRT and a GPU, its timing cache lives in the store).

A classifier's model.pt (meta "task" = classification) goes through pipeline.export.classifier_run instead:
output `scores` [B,K], the same files, its parity gate on val accuracy and per-class recall.

A Mask R-CNN exports one more output, `masks` float32 [B,D,M,M] (each detection's mask probabilities in its
box, pipeline.export.segmenter), listed in io.json; pipeline.export.mask_checks adds the mask checks
(`checks.masks`: pasted masks vs PyTorch's, `checks.segm_parity`: val mask AP within
`export.parity_max_segm_ap_drop`), failing like the mAP parity.
"""
from __future__ import annotations

import logging

from pipeline import gates
from pipeline.config import Config
from pipeline.context import RunContext
from pipeline.errors import InputRejected
from pipeline.gates import Failure
from pipeline.spec import StageSpec

SPEC = StageSpec(upstream=("train",), exclusive=True)  # exclusive: shared scratch space and outputs
from pipeline.export.artifacts import FORMAT, log_files, publish, speed_metrics, speed_summary, write_onnx

log = logging.getLogger(__name__)


def _check_outputs(model, session, dataset, n: int, match_min: float) -> dict:
    """Raw-output check: ONNX Runtime vs the torchvision model on the first `n` val images, as one batch
    and image by image (the batch dimension must really be dynamic and batch-independent)."""
    import torch

    from pipeline.export.onnx_export import OrtDetector, compare_detections

    images = [dataset[i][0] for i in range(min(n, len(dataset)))]
    with torch.inference_mode():
        # a sigmoid head (RetinaNet, FCOS) scores the background column 0 too: the export pads those and every
        # consumer drops label 0, so the reference drops them (else each counted as one the export "missed")
        reference = [{k: v[d["labels"] > 0] for k, v in d.items()} for d in model(images)]
        batched = OrtDetector(session)(images)
        single = [OrtDetector(session)([im])[0] for im in images]
    vs_torch = compare_detections(reference, batched)
    vs_single = compare_detections(single, batched, iou_min=0.99, score_atol=1e-5)
    return {"images": len(images), "vs_pytorch": vs_torch, "batch_vs_single": vs_single,
            "passed": vs_torch["match_fraction"] >= match_min and vs_single["match_fraction"] >= match_min}


def _parity(model, session, dataset, gt: dict, max_drop: float, runtime=None,
            max_class_drop: float | None = None) -> dict:
    """mAP and per-class AP on val: PyTorch vs the exported model (an ONNX Runtime `session`, or any
    detector-like `runtime`); passes when neither drops by more than its limit (per class: when one is given)."""
    from pipeline.export.onnx_export import OrtDetector
    from pipeline.metrics.coco import score
    from pipeline.training.engine import predict

    eager = score(gt, predict(model, dataset, progress=False))
    ort = score(gt, predict(runtime if runtime is not None else OrtDetector(session), dataset, progress=False))
    keys = ("AP", "AP50", "AP75")
    drop = (eager["AP"] or 0.0) - (ort["AP"] or 0.0)
    # per class too: a class the exported graph gets wrong is not hidden by the average over the others
    per_class = {name: round((row.get("AP") or 0.0) - ((ort.get("per_class") or {}).get(name, {}).get("AP") or 0.0), 6)
                 for name, row in (eager.get("per_class") or {}).items()}
    worst_ok = max_class_drop is None or max(per_class.values(), default=0.0) <= max_class_drop
    return {"pytorch": {k: eager[k] for k in keys}, "onnxruntime": {k: ort[k] for k in keys},
            "map_drop": drop, "max_map_drop": max_drop, "per_class_ap_drop": per_class,
            "max_class_ap_drop": max_class_drop, "passed": drop <= max_drop and worst_ok}


def _optional_formats(cfg: Config, ctx: RunContext, model, size: int, out, dataset,
                      gt: dict) -> tuple[dict, list[Failure]]:
    """INT8 ONNX and TensorRT, when configured: (checks for the report, failures); published artifacts."""
    from pipeline.export.onnx_export import ort_session
    from pipeline.export.quantize import quantize_int8
    from pipeline.export.trt_ops import check_model

    checks: dict = {"tensorrt_ops": check_model(out / "model.onnx")}
    failures: list[Failure] = []
    if cfg.export.int8:
        path = quantize_int8(out / "model.onnx", out / "model.int8.onnx")
        parity = _parity(model, ort_session(path, cfg.export.threads), dataset, gt, cfg.export.int8_max_map_drop)
        checks["int8"] = {"file": path.name, "bytes": path.stat().st_size, "parity": parity}
        log.info("INT8 parity: AP %.4f (drop %.4f, allowed %.4f)", parity["onnxruntime"]["AP"] or 0,
                 parity["map_drop"], parity["max_map_drop"])
        if not parity["passed"]:
            failures.extend(_parity_failure("int8_parity", "INT8 ONNX Runtime", parity))
        ctx.publish(path, path.name)
    if cfg.export.tensorrt != "off":
        failures += _tensorrt(cfg, ctx, model, size, out, dataset, gt, checks)
    return checks, failures


def _tensorrt(cfg: Config, ctx: RunContext, model, size: int, out, dataset, gt: dict,
              checks: dict) -> list[Failure]:
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
        return [Failure("tensorrt_ops", "every operator supported by TensorRT's ONNX parser",
                        checks["tensorrt_ops"]["unsupported"] + checks["tensorrt_ops"]["problems"])]
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
    return _parity_failure("tensorrt_parity", "TensorRT", parity)


def run(cfg: Config, ctx: RunContext) -> dict:
    import torch  # here, not at the top: `nightshift export --help` and a skipped export need no torch

    from pipeline.datasets.canonical import split_coco
    from pipeline.export.bench import benchmark, table
    from pipeline.export.onnx_export import ort_session

    torch.set_num_threads(cfg.export.threads)
    model, meta, model_pt, dataset = _inputs(ctx)
    if meta.get("task") == "classification":  # scores [B, K], gated on accuracy: pipeline.export.classifier_run
        from pipeline.export import classifier_run

        return classifier_run.run(cfg, ctx, model, meta, model_pt, dataset)
    _ignored_options(cfg)
    size = int(meta["image_size"])
    out = ctx.scratch("out")
    onnx_path, io, export_s = write_onnx(cfg, ctx, model, meta, out)

    session = ort_session(onnx_path, cfg.export.threads)
    gt = split_coco(dataset.coco, "val")
    outputs, parity = _verify(cfg, model, session, dataset, gt)
    extra_checks, extra_failures = _optional_formats(cfg, ctx, model, size, out, dataset, gt)
    if any(o["name"] == "masks" for o in io["outputs"]):  # Mask R-CNN: mask agreement, mask AP parity
        from pipeline.export.mask_checks import verify_masks

        mask_checks, mask_failures = verify_masks(cfg, model, session, dataset, gt)
        extra_checks, extra_failures = {**extra_checks, **mask_checks}, extra_failures + mask_failures
    elif "parity_max_segm_ap_drop" in cfg.export.model_fields_set:
        log.warning("export.parity_max_segm_ap_drop: a segmentation option, not used for a detector without masks")
    speed = benchmark(model, session, size, cfg.export.benchmark_batches, cfg.export.benchmark_repeats,
                      cfg.export.benchmark_warmup, cfg.export.threads)
    log.info("inference speed (%d thread(s), %dx%d):\n%s", cfg.export.threads, size, size, table(speed))

    report = {
        "format": FORMAT, "opset": io["opset"], "io": io, "export_s": round(export_s, 2), "model": meta["model"],
        "image_size": size, "checks": {"outputs": outputs, "parity": parity, **extra_checks}, "speed": speed,
        "size": {"onnx_bytes": onnx_path.stat().st_size, "pytorch_state_dict_bytes": model_pt.stat().st_size},
    }
    deployed = publish(ctx, out, report)
    _log_to_mlflow(cfg, ctx, out, report)
    result = _result(cfg, ctx, report, deployed)
    # the policy's latency and size budgets: the gate stage runs before export, so they are judged here
    result["deployment_checks"] = gates.deployment_gate(cfg.gates, report)
    failures = _failures(cfg, outputs, parity) + extra_failures + gates.failures_of(result["deployment_checks"])
    if failures:
        raise gates.refuse("ONNX export failed verification", failures, result)
    return result


def _ignored_options(cfg: Config) -> None:
    """Say so when the config sets a classifier's export option for a detector: it has no effect here."""
    from pipeline.export.classifier_run import CLASSIFIER_ONLY

    ignored = sorted(k for k in cfg.export.model_fields_set if k in CLASSIFIER_ONLY)
    if ignored:
        log.warning("export.%s: classifier option(s), not used for a detector", ", export.".join(ignored))


def _inputs(ctx: RunContext) -> tuple:
    """(model, its metadata, the fetched model.pt, the val split) of this run; an empty val split is refused."""
    from pipeline.datasets.canonical import CanonicalDataset, ClassificationDataset
    from pipeline.training.models import load_trained

    model_pt = ctx.fetch("train", "model.pt")
    model, meta = load_trained(str(model_pt))
    kind = ClassificationDataset if meta.get("task") == "classification" else CanonicalDataset
    dataset = kind(ctx.fetch_dir("ingest", "dataset"), "val", int(meta["image_size"]))
    if len(dataset) == 0:
        raise InputRejected("the val split is empty: nothing to check the export on",
                            path=ctx.url("dataset/annotations.json", "ingest"), field="images[].split")
    return model, meta, model_pt, dataset


def _verify(cfg: Config, model, session, dataset, gt: dict) -> tuple[dict, dict]:
    """The raw-output check and the mAP parity of ONNX Runtime against PyTorch on the val split."""
    log.info("checking ONNX Runtime against PyTorch on %d val images", min(cfg.export.verify_images, len(dataset)))
    outputs = _check_outputs(model, session, dataset, cfg.export.verify_images, cfg.export.output_match_min)
    parity = _parity(model, session, dataset, gt, cfg.export.parity_max_map_drop,
                     max_class_drop=cfg.export.parity_max_class_ap_drop)
    log.info("parity on %d val images: AP pytorch %.4f, onnxruntime %.4f (drop %.4f, allowed %.4f)",
             len(dataset), parity["pytorch"]["AP"] or 0, parity["onnxruntime"]["AP"] or 0, parity["map_drop"],
             parity["max_map_drop"])
    return outputs, parity


def _log_to_mlflow(cfg: Config, ctx: RunContext, out, report: dict) -> None:
    import mlflow

    from pipeline import tracking

    checks, batches = report["checks"], report["speed"]["batches"]
    parity = checks["parity"]
    with tracking.active_run(cfg, ctx.run_id):
        mlflow.log_metrics({
            "export_parity_ap_pytorch": parity["pytorch"]["AP"] or 0.0,
            "export_parity_ap_onnxruntime": parity["onnxruntime"]["AP"] or 0.0,
            "export_parity_map_drop": parity["map_drop"],
            "export_output_match": checks["outputs"]["vs_pytorch"]["match_fraction"],
            "export_onnx_mb": report["size"]["onnx_bytes"] / 1e6,
            **({"export_parity_segm_ap_drop": checks["segm_parity"]["segm_ap_drop"],
                "export_mask_agreement": checks["masks"]["agree_fraction"]}
               if (checks.get("segm_parity") or {}).get("segm_ap_drop") is not None else {}),
            **speed_metrics(batches),
        })
        log_files(out)


def _result(cfg: Config, ctx: RunContext, report: dict, deployed: dict[str, str]) -> dict:
    checks = report["checks"]
    parity = checks["parity"]
    return {
        "format": FORMAT, "onnx": ctx.url("model.onnx"), "report": ctx.url("report.json"),
        "parity": {"map_drop": parity["map_drop"], "ap_pytorch": parity["pytorch"]["AP"],
                   "ap_onnxruntime": parity["onnxruntime"]["AP"], "per_class_ap_drop": parity["per_class_ap_drop"]},
        "output_match": checks["outputs"]["vs_pytorch"]["match_fraction"],
        "tensorrt_ops_supported": checks["tensorrt_ops"]["passed"],
        **{f"{fmt}_map_drop": checks[fmt]["parity"]["map_drop"] for fmt in ("int8", "tensorrt") if fmt in checks},
        **({"segm_parity": {k: checks["segm_parity"].get(k) for k in ("segm_ap_drop", "pytorch", "onnxruntime")},
            "mask_agreement": checks["masks"]["agree_fraction"]} if "masks" in checks else {}),
        "speed": speed_summary(report, cfg.export.benchmark_batches),
        "onnx_mb": round(report["size"]["onnx_bytes"] / 1e6, 2),
        "sha256": deployed,
    }


def _failures(cfg: Config, outputs: dict, parity: dict) -> list[Failure]:
    """The ONNX model's own checks that failed: raw outputs (vs PyTorch, batched vs one image) and mAP parity."""
    failures = [Failure.threshold_check("outputs", f"share of detections matched, {what}",
                                        outputs[key]["match_fraction"], ">=", cfg.export.output_match_min)
                for key, what in (("vs_pytorch", "ONNX Runtime vs PyTorch"),
                                  ("batch_vs_single", "ONNX Runtime batched vs one image at a time"))
                if outputs[key]["match_fraction"] < cfg.export.output_match_min]
    if not parity["passed"]:
        failures.extend(_parity_failure("parity", "ONNX Runtime", parity))
    return failures


def _parity_failure(check: str, runtime: str, parity: dict) -> list[Failure]:
    """One Failure for the mAP drop and one per class whose AP dropped past its limit (when one is set)."""
    out = []
    if parity["map_drop"] > parity["max_map_drop"]:
        out.append(Failure.threshold_check(check, f"val mAP drop, PyTorch - {runtime}", parity["map_drop"], "<=",
                                           parity["max_map_drop"]))
    limit = parity.get("max_class_ap_drop")
    for name, drop in sorted((parity.get("per_class_ap_drop") or {}).items()):
        if limit is not None and drop > limit:
            out.append(Failure.threshold_check(check, f"val AP drop, PyTorch - {runtime}", drop, "<=", limit,
                                               class_name=name))
    return out
