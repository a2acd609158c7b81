"""evaluate: the trained model's metrics (COCO mAP; a classifier's accuracy, F1) and the champion's, for the gate.

Predicts on `evaluate.split` of the ingested dataset, scores with COCO mAP (pycocotools' numbers), and writes
`evaluate/metrics.json` (the 12 COCO stats, per class, precision/recall/F1 at `evaluate.score_threshold`,
the confusion matrix, and the champion's metrics under `champion`), `evaluate/detections.json`, and
`pr_curve.png` / `confusion_matrix.png`. When a model holds the registry alias (`promote.alias`), it is
scored on the same images in the same run, so the gate compares like with like. Metrics go to the pipeline
run's MLflow run as `eval_*`.

The stability suite (`pipeline.metrics.stability`) adds `stability` to metrics.json: AP per box-size bucket and
per ingest group (the canonical images' `group`) and, with a champion, every challenger-champion AP drop
(overall, per class, per slice) with its paired bootstrap interval over the split's images, for the gate.
With `evaluate.corruptions` set, each model also predicts on the split under each corruption and severity
(`pipeline.training.corruptions`) and `robustness` records the APs and drops (vs clean, vs the champion).

On a classification dataset (`"task": "classification"`) the classifier is scored by
`pipeline.metrics.classification_run` instead: accuracy, top-k, macro F1, per class, the confusion matrix
and the paired bootstrap of the accuracy drop against the champion.

On a segmentation dataset (`"task": "segmentation"` in annotations.json) every box metric above stays as it is
and `segm` adds the mask metrics (the 12 COCO stats and per class with mask IoU, `pipeline.metrics.segm`), for
the champion too when it predicts masks, with the mask AP drop against it and its paired bootstrap interval
(`segm.champion_drop`, for `gates.segm_max_regression`); MLflow gets them as `eval_segm_*`.
"""
from __future__ import annotations

import json
import logging
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.config import Config
from pipeline.context import RunContext
from pipeline.errors import InputRejected
from pipeline.metrics.coco import STAT_KEYS, Evaluation, report
from pipeline.spec import StageSpec
from pipeline.tasks import dataset_task
from pipeline.tracking import metric_name

SPEC = StageSpec(upstream=("train",), exclusive=True)  # exclusive: shared scratch space and outputs

log = logging.getLogger(__name__)


@dataclass
class Scored:
    metrics: dict
    evaluation: Evaluation
    detections: list[dict]
    corrupted: dict[str, float | None] = field(default_factory=dict)  # "blur@1" -> AP under that corruption
    corrupted_detections: dict[str, list[dict]] = field(default_factory=dict)  # "blur@1" -> detections under it


def score_model(model_path: Path, data_dir: Path, gt: dict, cfg: Config, what: str) -> Scored:
    """Predict with the model in `model_path` (train's model.pt format) on the split in `gt` and score it."""
    from pipeline.training.engine import predict
    from pipeline.training.inference import load_for_prediction, resolve_device

    # the model's own label -> category table, not today's dataset's: the champion may predate a new class
    model, meta, dataset = load_for_prediction(model_path, data_dir, cfg.evaluate.split)
    log.info("%s: predicting %d %s images with %s at %d px", what, len(dataset), cfg.evaluate.split,
             meta["model"], meta["image_size"])
    detections = predict(model, dataset, batch_size=cfg.evaluate.batch_size, device=resolve_device(cfg.evaluate.device))
    known = {c["id"] for c in gt["categories"]}
    dropped = sum(1 for d in detections if d["category_id"] not in known)
    if dropped:
        log.warning("%s: %d detections of categories no longer in the dataset ignored", what, dropped)
        detections = [d for d in detections if d["category_id"] in known]
    metrics, evaluation = report(gt, detections, "bbox", cfg.evaluate.score_threshold,
                                 gt_path="ingest/dataset/annotations.json", dt_path=f"{what} detections")
    log.info("%s: AP %s, AP50 %s on %d images (%d detections)", what, _fmt(metrics["AP"]), _fmt(metrics["AP50"]),
             len(gt["images"]), len(detections))
    if dataset_task(gt) == "segmentation":  # mask metrics beside the box ones (pipeline.metrics.segm)
        from pipeline.metrics import segm
        from pipeline.tasks import model_task

        metrics["segm"] = segm.section(gt, detections, what, meta.get("task") or model_task(meta["model"]),
                                       gt_path="ingest/dataset/annotations.json")
    aps, corrupted = corrupted_aps(model, dataset, gt, cfg, what)
    return Scored(metrics, evaluation, detections, aps, corrupted)


def corrupted_aps(model, dataset, gt: dict, cfg: Config, what: str) -> tuple[dict[str, float | None], dict]:
    """AP of the model on the split under each of `evaluate.corruptions` x `corruption_severities` (seeded,
    the same pixels for every model): ({"gaussian_noise@1": AP, ...}, {"gaussian_noise@1": detections, ...});
    empty when none is configured."""
    from pipeline.metrics.coco import score
    from pipeline.training.corruptions import Corrupted
    from pipeline.training.engine import predict
    from pipeline.training.inference import resolve_device

    known = {c["id"] for c in gt["categories"]}
    out, detections = {}, {}
    for kind in cfg.evaluate.corruptions:
        for severity in cfg.evaluate.corruption_severities:
            dets = predict(model, Corrupted(dataset, kind, severity, seed=cfg.evaluate.bootstrap_seed),
                           batch_size=cfg.evaluate.batch_size, device=resolve_device(cfg.evaluate.device),
                           progress=False)
            name = f"{kind}@{severity}"
            detections[name] = [d for d in dets if d["category_id"] in known]
            out[name] = score(gt, detections[name])["AP"]
            log.info("%s: AP %s under %s (severity %d)", what, _fmt(out[name]), kind, severity)
    return out, detections


def robustness(challenger: Scored, champion: Scored | None, gt: dict | None = None, cfg: Config | None = None
               ) -> dict | None:
    """metrics.json's `robustness`: per corruption the challenger's AP, its drop vs its clean AP and, with a
    champion, the champion's AP under it and the challenger's drop against that, with the drop's paired
    bootstrap interval over images (`ci`, as the stability suite's; given `gt` and `cfg`)."""
    from pipeline.metrics.stability import paired_drop

    if not challenger.corrupted:
        return None

    def minus(a, b):
        return None if a is None or b is None else a - b

    rows = {}
    for name, ap in challenger.corrupted.items():
        row = {"challenger": ap, "drop_vs_clean": minus(challenger.metrics["AP"], ap)}
        if champion is not None:
            theirs = champion.corrupted.get(name)
            row.update(champion=theirs, drop_vs_champion=minus(theirs, ap), ci=None)
            ours_d, theirs_d = challenger.corrupted_detections.get(name), champion.corrupted_detections.get(name)
            if gt is not None and cfg is not None and ours_d is not None and theirs_d is not None:
                ev = cfg.evaluate
                row["ci"] = paired_drop(gt, ours_d, theirs_d, resamples=ev.bootstrap_resamples,
                                        confidence=ev.bootstrap_confidence, seed=ev.bootstrap_seed,
                                        size_buckets=ev.size_buckets)["ci"]
        rows[name] = row
    out = {"clean": challenger.metrics["AP"], "corruptions": rows}
    if champion is not None and cfg is not None:
        out["confidence"] = cfg.evaluate.bootstrap_confidence
    return out


def _fmt(value) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def mlflow_metrics(metrics: dict) -> dict[str, float]:
    out = {f"eval_{k}": metrics[k] for k in STAT_KEYS}
    op = metrics["operating_point"]
    out.update(eval_precision=op["precision"], eval_recall=op["recall"], eval_f1=op["f1"])
    for name, row in metrics["per_class"].items():
        out[f"eval_AP_{metric_name(name)}"] = row["AP"]
        out[f"eval_AP50_{metric_name(name)}"] = row["AP50"]
    champion = metrics.get("champion")
    if champion:
        out.update(eval_champion_AP=champion["AP"], eval_champion_AP50=champion["AP50"])
    stability = metrics.get("stability") or {}
    for name, row in (stability.get("slices") or {}).items():
        out[f"eval_slice_AP_{metric_name(name)}"] = row.get("challenger")
    ci = (stability.get("AP") or {}).get("ci")
    if ci:
        out.update(eval_AP_drop_ci_low=ci[0], eval_AP_drop_ci_high=ci[1])
    for name, row in ((metrics.get("robustness") or {}).get("corruptions") or {}).items():
        out[f"eval_corrupted_AP_{metric_name(name)}"] = row.get("challenger")
    if metrics.get("segm"):
        from pipeline.metrics.segm import mlflow_metrics as segm_mlflow_metrics

        out.update(segm_mlflow_metrics(metrics))
    return {k: float(v) for k, v in out.items() if v is not None}


def stability_suite(cfg: Config, gt: dict, challenger: list[dict], champion: list[dict] | None) -> dict:
    """Slices and bootstrap intervals of the challenger against the champion (see the module docstring)."""
    import time

    from pipeline import gates
    from pipeline.metrics.stability import suite

    policy = gates.load_policy(cfg.gates)
    ev = cfg.evaluate
    start = time.perf_counter()
    out = suite(gt, challenger, champion, resamples=ev.bootstrap_resamples, confidence=ev.bootstrap_confidence,
                seed=ev.bootstrap_seed, size_buckets=ev.size_buckets, min_support=policy["slice_min_support"],
                max_groups=ev.max_group_slices)
    out["duration_s"] = round(time.perf_counter() - start, 3)
    skipped = out["skipped"]
    if skipped["over_max_groups"]:
        log.warning("stability: %d ingest groups with enough boxes left out (evaluate.max_group_slices = %d)",
                    skipped["over_max_groups"], ev.max_group_slices)
    ap = out["AP"]
    log.info("stability: %d slices (%d of %d groups below %d boxes)%s in %.2f s", len(out["slices"]),
             skipped["below_min_support"], skipped["groups"], policy["slice_min_support"],
             "" if ap.get("drop") is None else
             f"; AP drop vs champion {ap['drop']:.4f}{gates.interval_text(ap.get('ci'), out['confidence'])}",
             out["duration_s"])
    return out


def run(cfg: Config, ctx: RunContext) -> dict:
    from pipeline import tracking
    from pipeline.datasets.canonical import load_coco, split_coco

    split = cfg.evaluate.split
    model_path = ctx.fetch("train", "model.pt")
    data_dir = ctx.fetch_dir("ingest", "dataset")
    if dataset_task(load_coco(data_dir)) == "classification":  # accuracy, not mAP: its own module
        from pipeline.metrics import classification_run

        return classification_run.run(cfg, ctx, model_path, data_dir)
    gt = split_coco(load_coco(data_dir), split)
    if not gt["images"]:
        raise InputRejected(f"no image is in the {split} split: nothing to evaluate on",
                            path=ctx.url("dataset/annotations.json", "ingest"), field="images[].split")

    challenger = score_model(model_path, data_dir, gt, cfg, "challenger")
    metrics = dict(challenger.metrics, split=split, images=len(gt["images"]))
    if dataset_task(gt) == "segmentation":
        metrics["task"] = "segmentation"  # the gate judges the mask gates too (pipeline.gates.segm_checks)

    champ = tracking.champion_model(cfg, ctx.scratch("champion"))
    champion = None
    if champ is None:
        log.info("no model holds %s@%s yet: nothing to compare with", cfg.promote.model_name, cfg.promote.alias)
        metrics["champion"] = None
    else:
        version, path = champ
        champion = score_model(path, data_dir, gt, cfg, f"champion v{version.version}")
        metrics["champion"] = dict(champion.metrics, version=str(version.version), run_id=version.run_id)
    metrics["stability"] = stability_suite(cfg, gt, challenger.detections,
                                           champion.detections if champion else None)
    metrics["robustness"] = robustness(challenger, champion, gt, cfg)
    if metrics.get("segm") and champion is not None and champion.metrics.get("segm"):
        from pipeline.metrics.segm import paired_drop

        ev = cfg.evaluate  # the mask AP drop with its interval, for segm_max_regression
        metrics["segm"] = dict(metrics["segm"], champion_drop=paired_drop(
            gt, challenger.detections, champion.detections, resamples=ev.bootstrap_resamples,
            confidence=ev.bootstrap_confidence, seed=ev.bootstrap_seed))

    _write_outputs(cfg, ctx, metrics, challenger, champion, gt)
    return _result(metrics, challenger, champion, gt, split)


def _write_outputs(cfg: Config, ctx: RunContext, metrics: dict, challenger: Scored, champion: Scored | None,
                   gt: dict) -> None:
    """metrics.json, the detections, the PR curve and the confusion matrix into evaluate/, and into MLflow."""
    import mlflow

    from pipeline import tracking
    from pipeline.metrics.plots import confusion_matrix_png, pr_curve_png

    split = metrics["split"]
    shutil.rmtree(ctx.workdir / "out", ignore_errors=True)  # a previous attempt's files must not be published
    out = ctx.scratch("out")
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    (out / "detections.json").write_text(json.dumps(challenger.detections))
    if champion is not None:
        (out / "champion_detections.json").write_text(json.dumps(champion.detections))
    pr_curve_png(out / "pr_curve.png", challenger.evaluation.recall_thresholds, challenger.evaluation.pr_curves,
                 champion.evaluation.pr_curves if champion else None,
                 title=f"Precision-recall at IoU 0.5 ({split}, {len(gt['images'])} images)")
    confusion_matrix_png(out / "confusion_matrix.png", metrics["confusion_matrix"])
    ctx.publish_dir(out, "")
    with tracking.active_run(cfg, ctx.run_id):
        mlflow.log_metrics(mlflow_metrics(metrics))
        mlflow.set_tags({"nightshift.eval_split": split,
                         "nightshift.champion_version": metrics["champion"]["version"] if champion else "none"})
        for name in ("metrics.json", "pr_curve.png", "confusion_matrix.png"):
            mlflow.log_artifact(str(out / name), artifact_path="evaluate")


def _result(metrics: dict, challenger: Scored, champion: Scored | None, gt: dict, split: str) -> dict:
    """result.json's content: the headline figures of metrics.json."""
    op = metrics["operating_point"]
    return {
        "AP": metrics["AP"],
        "AP50": metrics["AP50"],
        "champion": {k: metrics["champion"][k] for k in ("version", "AP", "AP50")} if champion else None,
        "images": len(gt["images"]),
        "split": split,
        "precision": op["precision"],
        "recall": op["recall"],
        "f1": op["f1"],
        "detections": len(challenger.detections),
        "stability": {"slices": len(metrics["stability"]["slices"]), "AP_drop": metrics["stability"]["AP"].get("drop"),
                      "ci": metrics["stability"]["AP"].get("ci"), "resamples": metrics["stability"]["resamples"],
                      "duration_s": metrics["stability"]["duration_s"]},
        "robustness": dict(challenger.corrupted) or None,
        **({"segm": {"AP": metrics["segm"]["AP"], "AP50": metrics["segm"]["AP50"],
                     "champion_AP": ((metrics["champion"] or {}).get("segm") or {}).get("AP")}}
           if metrics.get("segm") else {}),
    }
