"""Check the ingested dataset with Great Expectations; any failed check rejects it (exit 3).

Runs on runs/<run_id>/ingest/dataset/: ids unique, every image decodes at its declared size, boxes finite,
non-empty and inside their image (within validate.box_tolerance_px), category ids known, enough images per
split, enough train boxes per class, classes balanced; and, against the statistics the last snapshot left in
the store (state/dataset_stats.json), no class added or removed, per-class counts and image-size histograms
within bounds (warnings or failures, as `validate.vocabulary_change` / `validate.drift_action` say).
Thresholds come from the `validate` config section. Classes the export declares but never uses are a named
warning (`declared_classes_used`) and stay out of the per-class minimum and the balance ratio. Every message
about a box or an image names the export's own file and item (line, object index, shape) that produced the
canonical row, from the provenance ingest keeps in annotations.json (`source`).
Writes validate/report.json (every check, its result and observed values) and validate/data_docs/index.html
(a self-contained page that reads offline). A classification dataset (annotations.json `"task":
"classification"`) runs the same image, split and drift checks and, instead of the box checks, one label per
image, the class minimum and balance counted in train images, and identical images agreeing on their class
(pipeline/validation/classification.py); the log says which.

Standalone: `nightshift validate --dataset DIR [--report-dir OUT]` checks a canonical dataset on disk.
"""
from __future__ import annotations

import argparse
import json
import logging
import shutil
from pathlib import Path

from pipeline.config import Config
from pipeline.datasets import canonical_io
from pipeline.store import open_store
from pipeline.errors import ConfigError, InputRejected
from pipeline.gates import Failure
from pipeline.spec import StageSpec
from pipeline.validation import validate_dataset, write_report

log = logging.getLogger(__name__)

def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dataset", help="without --run-id: a canonical dataset directory (annotations.json + "
                                          "images/) to check")
    parser.add_argument("--report-dir", help="without --run-id: where report.json and data_docs/ go "
                                             "(default: <DATASET>-validation beside the dataset)")
    parser.add_argument("--previous-stats", help="without --run-id: a dataset_stats.json to compare with "
                                                 "(default: the store's state/dataset_stats.json, if any)")


def _rejection(report: dict, where: str, result: dict) -> InputRejected:
    failed = [r for r in report["results"] if not r["success"] and r.get("severity", "failure") == "failure"]
    lines = []
    for r in failed:
        obs = r["observed"]
        count = f" ({obs['unexpected_count']} of {obs.get('element_count', '?')} rows)" if "unexpected_count" in obs \
            else ""
        if r["table"] == "classes" and r["examples"]:  # every class below the minimum, with its counts
            example = ": " + "; ".join(r["examples"])
        else:
            example = f", e.g. {r['examples'][0]}" if r["examples"] else ""
        lines.append(f"{r['name']}: {r['description']}{count}{example}")
    exc = InputRejected(f"{len(failed)} of {report['checks']} checks failed:\n  " + "\n  ".join(lines), path=where)
    exc.result = result
    exc.failures = [Failure(r["name"], r["description"], r["observed"], message=line).to_dict()
                    for r, line in zip(failed, lines)]
    return exc


def _result(report: dict) -> dict:
    return {"passed": report["passed"], "checks": report["checks"], "failed": report["failed_checks"],
            "warnings": report.get("warnings", []), "unused_classes": report.get("unused_classes", []),
            "previous_snapshot": report.get("previous_snapshot"),
            "rows": report["tables"]}


def previous_stats(store) -> dict | None:
    """The statistics the last successful snapshot left in the store (None before the first one)."""
    if not store.exists(canonical_io.STATS_KEY):
        return None
    return store.get_json(canonical_io.STATS_KEY)


def run(cfg: Config, ctx) -> dict:
    local = ctx.workdir / "dataset"
    shutil.rmtree(local, ignore_errors=True)
    dataset, fetched = canonical_io.ingested_dataset(ctx, local)
    previous = previous_stats(ctx.store)
    report = validate_dataset(dataset, cfg.validate_, previous)
    report["dataset"] = ctx.url("dataset", stage="ingest")
    out = write_report(report, ctx.workdir / "report")
    ctx.publish(out / "report.json", "report.json")
    ctx.store.delete_prefix(ctx.key("data_docs"))
    ctx.publish_dir(out / "data_docs", "data_docs")
    if fetched:
        shutil.rmtree(local, ignore_errors=True)
    result = _result(report)
    result.update(report=ctx.url("report.json"), data_docs=ctx.url("data_docs/index.html"))
    if not report["passed"]:
        raise _rejection(report, ctx.url("dataset", stage="ingest"), result)
    if report["warnings"]:  # each with its first example, so the log says which class or image
        examples = {r["name"]: r.get("examples") or [] for r in report["results"]}
        log.warning("warnings (drift ones compared with the last snapshot %s): %s", report["previous_snapshot"],
                    "; ".join(f"{w} (e.g. {examples[w][0]})" if examples.get(w) else w for w in report["warnings"]))
    log.info("all %d checks passed (%d warnings)", report["checks"], len(report["warnings"]))
    return result


def run_standalone(cfg: Config, args: argparse.Namespace) -> int:
    if not getattr(args, "dataset", None):
        raise ConfigError("validate without --run-id needs --dataset DIR")
    dataset = Path(args.dataset).resolve()
    if not dataset.is_dir():
        raise InputRejected("no such dataset directory", path=str(dataset))
    out = Path(args.report_dir) if args.report_dir else dataset.with_name(dataset.name + "-validation")
    if getattr(args, "previous_stats", None):
        previous = json.loads(Path(args.previous_stats).read_text())
    else:
        previous = previous_stats(open_store(cfg.store.uri, cfg.store.s3_endpoint_url))
    report = validate_dataset(dataset, cfg.validate_, previous)
    write_report(report, out)
    result = _result(report)
    result.update(report=str(out / "report.json"), data_docs=str(out / "data_docs" / "index.html"))
    if not report["passed"]:
        raise _rejection(report, str(dataset), result)
    print("NIGHTSHIFT_RESULT " + json.dumps(dict(result, status="ok"), sort_keys=True), flush=True)
    return 0


# exclusive: one run of this stage per run id at a time (shared scratch space and outputs)
SPEC = StageSpec(upstream=("ingest",), exclusive=True, add_arguments=add_arguments, standalone=run_standalone)
