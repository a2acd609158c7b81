"""The files an export writes and publishes, for every task: model.onnx with io.json and labels.txt beside it,
report.json, and the sha256 of every deployable file (promote ships a file only if its sha256 is the one the
export recorded)."""
from __future__ import annotations

import json
import time

from pipeline.config import Config
from pipeline.context import RunContext
from pipeline.errors import InputRejected

FORMAT = "onnx"
# files a deployment may ship; their sha256 goes into result.json (promote refuses any other bytes)
DEPLOYED = ("model.onnx", "labels.txt", "io.json", "model.int8.onnx", "model.plan", "triton_plan.pbtxt")


def write_onnx(cfg: Config, ctx: RunContext, model, meta: dict, out) -> tuple:
    """Write model.onnx, io.json and labels.txt into `out`: (onnx path, its io spec, seconds the export took)."""
    from pipeline.export import export
    from pipeline.export.detector import UnsupportedModel
    from pipeline.export.onnx_export import io_spec, write_io, write_labels

    started = time.perf_counter()
    try:
        onnx_path = export(FORMAT, model, int(meta["image_size"]), out, cfg)
    except UnsupportedModel as exc:
        raise InputRejected(str(exc), path=ctx.url("model.pt", "train"), field="model") from None
    export_s = time.perf_counter() - started
    io = io_spec(onnx_path)
    write_io(io, out / "io.json")
    write_labels(meta["categories"], out / "labels.txt")
    return onnx_path, io, export_s


def publish(ctx: RunContext, out, report: dict) -> dict[str, str]:
    """Write report.json, publish the artifacts; the sha256 of every deployable file this run checked
    (promote ships a file only if its sha256 is the one recorded here)."""
    from pipeline.checksums import sha256_file

    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    for name in ("model.onnx", "labels.txt", "io.json", "report.json"):
        ctx.publish(out / name, name)
    return {name: sha256_file(out / name) for name in DEPLOYED if (out / name).is_file()}


def speed_metrics(batches: dict) -> dict[str, float]:
    """The benchmark's figures per batch size as MLflow metrics: ORT vs eager speed-up and both p50 latencies."""
    out = {}
    for b, row in batches.items():
        out.update({f"export_ort_speedup_b{b}": row["ort_vs_eager_speedup"],
                    f"export_ort_p50_ms_b{b}": row["onnxruntime"]["latency_ms"]["p50"],
                    f"export_eager_p50_ms_b{b}": row["eager"]["latency_ms"]["p50"]})
    return out


def speed_summary(report: dict, batches) -> dict:
    """result.json's `speed`: the ORT vs eager speed-up at batch 1 and at the largest benchmarked batch."""
    ratios = {b: row["ort_vs_eager_speedup"] for b, row in report["speed"]["batches"].items()}
    largest = str(max(batches))
    return {"ort_vs_eager_batch1": ratios.get("1"), f"ort_vs_eager_batch{largest}": ratios.get(largest)}


def log_files(out) -> None:
    """report.json, io.json and labels.txt into the active MLflow run (artifact path `export`)."""
    import mlflow

    for name in ("report.json", "io.json", "labels.txt"):
        mlflow.log_artifact(str(out / name), artifact_path="export")
