"""audit: rank every train and val annotation by how likely it is wrong (missing, swapped, misplaced, duplicate).

`nightshift audit --run-id ID [--model PATH]` predicts the run's ingested dataset with the champion (the model
behind `promote.alias`) or with a given train-format model.pt, scores each annotation against the predictions
(pipeline/audit/scoring.py: cleanlab's object-detection label-quality scores plus a duplicate rule), and
writes under runs/<run_id>/audit/: report.json (every item, counts per reason), queue.html (the top
`audit.queue_size` items with an image crop each) and cvat/annotations.xml (the same images for CVAT, flagged
boxes with a `review` attribute). With `validate.max_label_issue_rate` set, a rate of items scored below
`audit.issue_threshold` per annotation above it rejects the data (exit 3) after the queue is written.
Without a champion and without --model there is nothing to predict with: the audit is skipped, and says so.
"""
from __future__ import annotations

import argparse
import json
import logging
import shutil
from pathlib import Path

from pipeline.config import Config
from pipeline.context import RunContext
from pipeline.errors import InputRejected
from pipeline.spec import StageSpec

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="",
                        help="a train-format model.pt to predict with (default: the registry's champion)")


def run_kwargs(args: argparse.Namespace) -> dict:
    return {"model": args.model}


def reproduce_args(args: argparse.Namespace) -> list[str]:
    return ["--model", args.model] if args.model else []


# the champion moves between runs: always audit with the current one
SPEC = StageSpec(upstream=("ingest",), skip_if_done=False, add_arguments=add_arguments, run_kwargs=run_kwargs,
                 reproduce_args=reproduce_args)


def predictions(model_path: Path, data_dir: Path, device: str = "cpu", batch_size: int = 8) -> list[dict]:
    """COCO detections of the model on every image of the dataset (all splits; the scorer picks)."""
    from pipeline.training import inference

    return inference.predictions(model_path, data_dir, device, batch_size)


def audit(coco: dict, detections: list[dict], read_image, out: Path, cfg: Config, model: str,
          title: str = "Label audit") -> dict:
    """Score, write the queue under `out`, and return the summary (counts, the top items, the policy check)."""
    from pipeline.audit import queue, scoring

    a = cfg.audit
    audited = [im for im in coco["images"] if im.get("split", "train") in a.splits]
    thresholds = scoring.calibrate(coco, detections, audited, a.confidence_agreement)
    log.info("the model's confidence scale: its detections agree with the labels at least %.0f %% of the time down "
             "to score %.3f (confident from there); below %.3f they do not count when judging a box's place",
             100 * a.confidence_agreement, thresholds.high, thresholds.low)
    items = scoring.score(coco, detections, tuple(a.splits), thresholds)
    counts = scoring.issue_counts(items, a.issue_threshold)
    top = items[: a.queue_size]
    paths = queue.write(out, coco, top, counts, read_image, title, model)
    (out / "report.json").write_text(json.dumps({"model": model, "counts": counts,
                                                 "items": [it.to_dict() for it in items]}, indent=1))
    limit = cfg.validate_.max_label_issue_rate
    summary = {**counts, "model": model, "queue": len(top), "max_label_issue_rate": limit,
               "passed": limit is None or counts["rate"] <= limit,
               "top": [it.to_dict() for it in top[:10]], "files": {k: str(v) for k, v in paths.items()},
               "confidence": {"high": thresholds.high, "low": thresholds.low, "agreement": thresholds.agreement}}
    return summary


def run(cfg: Config, ctx: RunContext, model: str = "") -> dict:
    from pipeline import tracking
    from pipeline.datasets import canonical_io
    from pipeline.datasets.canonical import load_coco
    from pipeline.tasks import dataset_task
    from pipeline.training.inference import resolve_device

    if model:
        model_path, what = Path(model), f"model {model}"
        if not model_path.is_file():
            raise InputRejected(f"--model {model}: no such file", path=model, field="--model")
    else:
        champ = tracking.champion_model(cfg, ctx.scratch("champion"))
        if champ is None:
            log.warning("audit skipped: no model holds %s@%s and no --model was given", cfg.promote.model_name,
                        cfg.promote.alias)
            return {"skipped": True, "reason": f"no {cfg.promote.model_name}@{cfg.promote.alias} and no --model"}
        version, model_path = champ
        what = f"champion {cfg.promote.model_name} v{version.version}"
    data_dir = ctx.fetch_dir("ingest", "dataset")
    coco = load_coco(data_dir)
    if dataset_task(coco) == "classification":
        raise InputRejected("nightshift audit ranks box annotations (missing, swapped, misplaced, duplicate) from a "
                            "detector's predictions; a classification dataset has none to rank",
                            path=ctx.url("dataset/annotations.json", "ingest"), field="task")
    log.info("auditing %d annotations of run %s with %s", len(coco["annotations"]), ctx.run_id, what)
    detections = predictions(model_path, data_dir, resolve_device(cfg.evaluate.device), cfg.evaluate.batch_size)

    def read_image(name: str) -> bytes | None:
        path = data_dir / canonical_io.IMAGES / name
        return path.read_bytes() if path.is_file() else None

    out = ctx.workdir / "out"
    shutil.rmtree(out, ignore_errors=True)  # a previous attempt's files must not be published
    summary = audit(coco, detections, read_image, out, cfg, what, title=f"Label audit: run {ctx.run_id}")
    ctx.publish_dir(out, "")
    summary["files"] = {"report": ctx.url("report.json"), "queue": ctx.url("queue.html"),
                        "cvat": ctx.url("cvat/annotations.xml")}
    log.info("audit: %d of %d annotations below %.2f (rate %.3f): %s; queue %s", summary["issues"],
             summary["annotations"], summary["threshold"], summary["rate"], summary["per_reason"],
             summary["files"]["queue"])
    if not summary["passed"]:
        exc = InputRejected(f"label-issue rate {summary['rate']:.3f} is above validate.max_label_issue_rate "
                            f"{summary['max_label_issue_rate']}: review {summary['files']['queue']}",
                            path=ctx.url("report.json"), field="counts.rate")
        exc.result = summary
        raise exc
    return summary
