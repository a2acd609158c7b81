"""The export stage for a classifier: what `pipeline.stages.export` runs when train/model.pt is one (meta "task").

Same files, same promise as for a detector: `export/model.onnx` (input `images` float32 [B,3,S,S] in 0..1,
output `scores` float32 [B,K] softmax probabilities, dynamic batch; pipeline.export.classifier), `labels.txt`
(line i = class i, what Triton's classification extension reads), `io.json` (with `"task": "classification"`)
and `report.json`; result.json records the sha256 of every deployable file for promote. Nothing leaves
unchecked:

* raw outputs on `export.verify_images` val images: the largest probability difference ORT vs PyTorch and
  batched vs one image at a time (`export.output_max_prob_diff`), and top-1 agreement (`export.output_match_min`);
* parity on the whole val split: accuracy may drop at most `export.parity_max_accuracy_drop`, any class's
  recall at most `export.parity_max_class_recall_drop`;
* `export.int8`: model.int8.onnx under `export.int8_max_accuracy_drop`;
* the gate policy's latency and size budgets on report.json, and TensorRT's operator check.

Every failed check is listed in one refusal (exit 4). The detector-only options (`export.max_detections`, the
`*_map_*` / `*_ap_*` limits) are ignored with a log line when set; `export.tensorrt` is refused (exit 2): its runner
reads a detector's outputs.
"""
from __future__ import annotations

import logging

from pipeline import gates
from pipeline.config import Config
from pipeline.context import RunContext
from pipeline.errors import ConfigError, InputRejected
from pipeline.export.artifacts import FORMAT, log_files, publish, speed_metrics, speed_summary, write_onnx
from pipeline.gates import Failure

log = logging.getLogger(__name__)

DETECTION_ONLY = ("max_detections", "parity_max_map_drop", "parity_max_class_ap_drop", "int8_max_map_drop",
                  "tensorrt_max_map_drop", "tensorrt_opt_batch", "tensorrt_workspace_mb", "calibration_split",
                  "calibration_images", "calibration_batch", "parity_max_segm_ap_drop")  # detectors', segmenters'
CLASSIFIER_ONLY = ("parity_max_accuracy_drop", "parity_max_class_recall_drop", "output_max_prob_diff",
                   "int8_max_accuracy_drop")  # the detector export says so when one is set


def run(cfg: Config, ctx: RunContext, model, meta: dict, model_pt, dataset) -> dict:
    """The export stage for a classifier `model` (loaded from `model_pt`, metadata `meta`) on the val split
    `dataset` (a ClassificationDataset); returns result.json's content or raises GateFailed (exit 4)."""
    from pipeline.export import classifier
    from pipeline.export.bench import benchmark, table
    from pipeline.export.onnx_export import ort_session
    from pipeline.tasks import dataset_task

    where = ctx.url("dataset/annotations.json", "ingest")
    if dataset_task(dataset.coco) != "classification":
        raise InputRejected(f"the model is a classifier but the dataset was ingested for "
                            f"{dataset_task(dataset.coco)}: re-run ingest with data.task=classification",
                            path=where, field="task")
    unlabelled = [dataset.image_infos[i]["file_name"] for i, label in enumerate(dataset.labels()) if label < 0]
    if unlabelled:
        raise InputRejected(f"{len(unlabelled)} val image(s) have no class annotation, e.g. {unlabelled[0]}",
                            path=where, field="annotations[].category_id")
    if cfg.export.tensorrt != "off":
        raise ConfigError(f"'export.tensorrt' is {cfg.export.tensorrt!r}: TensorRT export is built for detectors "
                          "(its runner reads boxes/scores/labels); set export.tensorrt=off for a classifier")
    ignored = sorted(k for k in cfg.export.model_fields_set if k in DETECTION_ONLY)
    if ignored:
        log.warning("export.%s: detector option(s), not used for a classifier", ", export.".join(ignored))

    size = int(meta["image_size"])
    names = [c["name"] for c in meta["categories"]]
    out = ctx.scratch("out")
    onnx_path, io, export_s = write_onnx(cfg, ctx, model, meta, out)
    session = ort_session(onnx_path, cfg.export.threads)

    e = cfg.export
    log.info("checking ONNX Runtime against PyTorch on %d val images", min(e.verify_images, len(dataset)))
    outputs = classifier.check_outputs(model, session, dataset, e.verify_images, e.output_match_min,
                                       e.output_max_prob_diff)
    reference = classifier.val_scores(lambda images: classifier.eager_scores(model, images), dataset)
    parity = classifier.parity(model, dataset, names, e.parity_max_accuracy_drop, e.parity_max_class_recall_drop,
                               session=session, reference=reference)
    log.info("parity on %d val images: accuracy pytorch %.4f, onnxruntime %.4f (drop %.4f, allowed %.4f); "
             "largest probability difference %.2g", parity["images"], parity["pytorch"]["accuracy"],
             parity["onnxruntime"]["accuracy"], parity["accuracy_drop"], parity["max_accuracy_drop"],
             outputs["vs_pytorch"]["max_prob_abs_diff"] or 0.0)
    checks, failures = _optional_formats(cfg, ctx, model, out, dataset, names, reference)

    speed = benchmark(model, session, size, e.benchmark_batches, e.benchmark_repeats, e.benchmark_warmup, e.threads)
    log.info("inference speed (%d thread(s), %dx%d):\n%s", e.threads, size, size, table(speed))
    report = {
        "format": FORMAT, "task": "classification", "opset": io["opset"], "io": io, "export_s": round(export_s, 2),
        "model": meta["model"], "image_size": size, "classes": names,
        "checks": {"outputs": outputs, "parity": parity, **checks}, "speed": speed,
        "size": {"onnx_bytes": onnx_path.stat().st_size, "pytorch_state_dict_bytes": model_pt.stat().st_size},
    }
    deployed = publish(ctx, out, report)
    _log_to_mlflow(cfg, ctx, out, report)
    result = _result(cfg, ctx, report, deployed)
    result["deployment_checks"] = gates.deployment_gate(cfg.gates, report)
    failures = (classifier.output_failures(outputs) + classifier.parity_failures("parity", "ONNX Runtime", parity)
                + failures + gates.failures_of(result["deployment_checks"]))
    if failures:
        raise gates.refuse("ONNX export failed verification", failures, result)
    return result


def _optional_formats(cfg: Config, ctx: RunContext, model, out, dataset, names: list[str],
                      reference: tuple) -> tuple[dict, list[Failure]]:
    """TensorRT's operator check and, when configured, INT8 ONNX: (checks for the report, failures)."""
    from pipeline.export import classifier
    from pipeline.export.onnx_export import ort_session
    from pipeline.export.quantize import quantize_int8
    from pipeline.export.trt_ops import check_model

    checks: dict = {"tensorrt_ops": check_model(out / "model.onnx")}
    failures: list[Failure] = []
    if cfg.export.int8:
        path = quantize_int8(out / "model.onnx", out / "model.int8.onnx")
        parity = classifier.parity(model, dataset, names, cfg.export.int8_max_accuracy_drop, None,
                                   session=ort_session(path, cfg.export.threads), reference=reference)
        checks["int8"] = {"file": path.name, "bytes": path.stat().st_size, "parity": parity}
        log.info("INT8 parity: accuracy %.4f (drop %.4f, allowed %.4f)", parity["onnxruntime"]["accuracy"],
                 parity["accuracy_drop"], parity["max_accuracy_drop"])
        failures += classifier.parity_failures("int8_parity", "INT8 ONNX Runtime", parity)
        ctx.publish(path, path.name)
    return checks, failures


def _log_to_mlflow(cfg: Config, ctx: RunContext, out, report: dict) -> None:
    import mlflow

    from pipeline import tracking

    checks, batches = report["checks"], report["speed"]["batches"]
    parity, outputs = checks["parity"], checks["outputs"]["vs_pytorch"]
    with tracking.active_run(cfg, ctx.run_id):
        mlflow.log_metrics({
            "export_parity_accuracy_pytorch": parity["pytorch"]["accuracy"],
            "export_parity_accuracy_onnxruntime": parity["onnxruntime"]["accuracy"],
            "export_parity_accuracy_drop": parity["accuracy_drop"],
            "export_output_top1_agreement": outputs["top1_agreement"],
            "export_output_max_prob_diff": outputs["max_prob_abs_diff"] if outputs["max_prob_abs_diff"] is not None
            else float("nan"),
            "export_onnx_mb": report["size"]["onnx_bytes"] / 1e6,
            **speed_metrics(batches),
        })
        log_files(out)


def _result(cfg: Config, ctx: RunContext, report: dict, deployed: dict[str, str]) -> dict:
    checks = report["checks"]
    parity = checks["parity"]
    return {
        "format": report["format"], "task": "classification", "onnx": ctx.url("model.onnx"),
        "report": ctx.url("report.json"),
        "parity": {"accuracy_drop": parity["accuracy_drop"], "accuracy_pytorch": parity["pytorch"]["accuracy"],
                   "accuracy_onnxruntime": parity["onnxruntime"]["accuracy"],
                   "per_class_recall_drop": parity["per_class_recall_drop"]},
        "output_match": checks["outputs"]["vs_pytorch"]["top1_agreement"],
        "max_prob_abs_diff": checks["outputs"]["vs_pytorch"]["max_prob_abs_diff"],
        "tensorrt_ops_supported": checks["tensorrt_ops"]["passed"],
        **({"int8_accuracy_drop": checks["int8"]["parity"]["accuracy_drop"]} if "int8" in checks else {}),
        "speed": speed_summary(report, cfg.export.benchmark_batches),
        "onnx_mb": round(report["size"]["onnx_bytes"] / 1e6, 2),
        "sha256": deployed,
    }
