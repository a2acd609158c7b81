"""evaluate, for a classifier: accuracy, top-k, macro F1, per class and the confusion matrix, against the champion.

`pipeline.stages.evaluate.run` hands over here when the trained model is a classifier. It predicts the
`evaluate.split` of the ingested classification dataset (`"task": "classification"`, one class per image) and
writes to evaluate/:

- `metrics.json`: `task` "classification", `split`, `images`, `accuracy`, `top_k` ({"5": ...} when there are
  more than 5 classes, else {"2": ...}; `pipeline.metrics.classification`), `macro_f1`, `per_class` (precision,
  recall, F1, support = images of the class in the split, predicted), `confusion_matrix` ({labels, matrix},
  rows true, columns predicted), `champion` (the same metrics of the model behind `promote.alias`, scored on
  the same images in the same run; None without one) and `stability`: the paired bootstrap over the split's
  images (`evaluate.bootstrap_resamples`, `bootstrap_confidence`, `bootstrap_seed`) of the accuracy drop
  against the champion and of each class's recall drop, with their intervals, for the gate;
- `predictions.json` (per image: true and predicted category, the predicted class's probability, top k),
  `champion_predictions.json` with a champion, and `confusion_matrix.png`.

Metrics go to the pipeline run's MLflow run as `eval_accuracy`, `eval_top<k>_accuracy`, `eval_macro_f1`,
`eval_recall_<class>`, `eval_champion_accuracy` and `eval_accuracy_drop_ci_low/high`.

A champion is compared in today's classes: a class it was not trained on scores lowest for it, and a class it
knows that the dataset no longer has is left out of its scores (as detection ignores detections of a dropped
category), both logged. A champion that is not a classifier (the registry name held a detector) is not
comparable: logged, and the run is judged on absolute thresholds only.
"""
from __future__ import annotations

import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.config import Config
from pipeline.context import RunContext
from pipeline.errors import InputRejected

log = logging.getLogger(__name__)

NOT_PREDICTED = -1e9  # the score of a class a champion was not trained on: finite (classify refuses inf), never top


@dataclass
class ScoredClassifier:
    metrics: dict  # pipeline.metrics.classification.classify's dict, in today's classes
    scores: np.ndarray  # [N, K] logits in today's classes
    labels: np.ndarray  # [N] true class index
    predictions: list[dict]  # one row per image, for predictions.json


def top_k_for(num_classes: int) -> int:
    """The k reported beside accuracy: 5 with more than 5 classes, else 2."""
    return 5 if num_classes > 5 else 2


def score_classifier(model_path: Path, data_dir: Path, coco: dict, cfg: Config, what: str) -> ScoredClassifier:
    """Predict the split with the classifier in `model_path` (train's model.pt) and score it in the dataset's
    classes (categories sorted by id)."""
    import torch

    from pipeline.datasets.canonical import ClassificationDataset
    from pipeline.metrics.classification import classify
    from pipeline.training.classify import predict_logits
    from pipeline.training.inference import resolve_device
    from pipeline.training.models import load_trained

    model, meta = load_trained(str(model_path))
    if meta.get("task") != "classification":
        raise InputRejected(f"{what} is a {meta.get('task') or 'detection'} model ({meta['model']}) but the dataset "
                            "was ingested for classification", path=str(model_path), field="task")
    dataset = ClassificationDataset(data_dir, cfg.evaluate.split, meta["image_size"], coco=coco)
    names = [c["name"] for c in dataset.categories]
    log.info("%s: predicting %d %s images with %s at %d px", what, len(dataset), cfg.evaluate.split, meta["model"],
             meta["image_size"])
    logits, labels = predict_logits(model, dataset, batch_size=cfg.evaluate.batch_size,
                                    device=resolve_device(cfg.evaluate.device))
    model_cats = [int(c) for c in meta.get("label_to_category") or [c["id"] for c in meta["categories"]]]
    columns = {cat: i for i, cat in enumerate(model_cats)}
    # the model's columns in today's class order; a class the model does not know never wins
    scores = np.full((len(dataset), dataset.num_classes), NOT_PREDICTED, dtype=np.float64)
    unknown = []
    for j, cat in enumerate(c["id"] for c in dataset.categories):
        if cat in columns:
            scores[:, j] = logits[:, columns[cat]].numpy()
        else:
            unknown.append(names[j])
    dropped = [cat for cat in model_cats if cat not in dataset.cat_to_label]
    if unknown:
        log.warning("%s was not trained on class(es) %s: it never predicts them", what, ", ".join(unknown))
    if dropped:
        log.warning("%s knows %d categor(ies) the dataset no longer has (ids %s): left out of its scores", what,
                    len(dropped), dropped)
    labels_np = labels.numpy()
    bad = np.flatnonzero(labels_np < 0)
    if len(bad):
        raise InputRejected(f"{len(bad)} {cfg.evaluate.split} image(s) without a class annotation, e.g. "
                            f"{dataset.image_infos[int(bad[0])]['file_name']}", path="ingest/dataset/annotations.json",
                            field="annotations[].category_id")
    k = top_k_for(dataset.num_classes)
    metrics = classify(scores, labels_np, top_k=(1, k), class_names=names)
    metrics["top_k"] = {str(k): metrics["top_k"][str(k)]}  # top-1 is `accuracy`
    probs = torch.softmax(torch.from_numpy(scores), dim=1).numpy()
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    cats = [c["id"] for c in dataset.categories]
    predictions = [{"image_id": int(info["id"]), "file_name": info["file_name"], "true_category_id": cats[int(t)],
                    "predicted_category_id": cats[int(order[i, 0])], "score": round(float(probs[i, order[i, 0]]), 5),
                    "top_k": [cats[int(j)] for j in order[i]]}
                   for i, (info, t) in enumerate(zip(dataset.image_infos, labels_np))]
    log.info("%s: accuracy %.4f, top-%d %.4f, macro F1 %.4f on %d images", what, metrics["accuracy"], k,
             metrics["top_k"][str(k)], metrics["macro_f1"], len(dataset))
    return ScoredClassifier(metrics, scores, labels_np, predictions)


def _interval(values: np.ndarray, confidence: float) -> list[float] | None:
    values = values[np.isfinite(values)]
    if not len(values):
        return None
    tail = (1 - confidence) / 2 * 100
    return [float(np.percentile(values, tail)), float(np.percentile(values, 100 - tail))]


def paired_bootstrap(challenger: ScoredClassifier, champion: ScoredClassifier, names: list[str], *, resamples: int,
                     confidence: float, seed: int) -> dict:
    """The accuracy drop (champion - challenger) and each class's recall drop, with their paired bootstrap
    intervals over images: both models are scored on the same draws of the split's images, so the interval is
    that of the drop itself. A class absent from a draw has no recall there; its interval uses the other draws."""
    ours = challenger.scores.argmax(axis=1) == challenger.labels
    theirs = champion.scores.argmax(axis=1) == champion.labels
    labels, n = challenger.labels, len(challenger.labels)
    out = {"resamples": int(resamples), "confidence": confidence, "seed": seed,
           "accuracy": {"challenger": float(ours.mean()), "champion": float(theirs.mean()),
                        "drop": float(theirs.mean() - ours.mean()), "ci": None},
           "per_class": {}}
    weights = None
    if resamples > 0:
        rng = np.random.default_rng(seed)
        draws = rng.integers(0, n, size=(resamples, n))
        # how often each image was drawn in each resample: a draw with replacement is a weighting of the images
        weights = np.stack([np.bincount(row, minlength=n) for row in draws]).astype(np.float64)
        out["accuracy"]["ci"] = _interval((weights @ (theirs.astype(float) - ours.astype(float))) / n, confidence)
    for c, name in enumerate(names):
        member = labels == c
        support = int(member.sum())
        if not support:
            continue
        ours_r, theirs_r = float(ours[member].mean()), float(theirs[member].mean())
        row = {"challenger": ours_r, "champion": theirs_r, "drop": theirs_r - ours_r, "support": support, "ci": None}
        if weights is not None:
            counted = weights @ member.astype(float)
            with np.errstate(divide="ignore", invalid="ignore"):
                drops = (weights @ ((theirs & member).astype(float) - (ours & member).astype(float))) / counted
            row["ci"] = _interval(drops, confidence)
        out["per_class"][name] = row
    return out


def mlflow_metrics(metrics: dict) -> dict[str, float]:
    from pipeline.tracking import metric_name

    out = {"eval_accuracy": metrics["accuracy"], "eval_macro_f1": metrics["macro_f1"]}
    out.update({f"eval_top{k}_accuracy": v for k, v in metrics["top_k"].items()})
    for name, row in metrics["per_class"].items():
        out[f"eval_recall_{metric_name(name)}"] = row["recall"]
        out[f"eval_f1_{metric_name(name)}"] = row["f1"]
    champion = metrics.get("champion")
    if champion:
        out.update(eval_champion_accuracy=champion["accuracy"], eval_champion_macro_f1=champion["macro_f1"])
    ci = ((metrics.get("stability") or {}).get("accuracy") or {}).get("ci")
    if ci:
        out.update(eval_accuracy_drop_ci_low=ci[0], eval_accuracy_drop_ci_high=ci[1])
    return {k: float(v) for k, v in out.items() if v is not None}


def _champion(cfg: Config, ctx: RunContext):
    """(version, model.pt) of the champion when it is a classifier; None (logged) otherwise."""
    import torch

    from pipeline import tracking

    champ = tracking.champion_model(cfg, ctx.scratch("champion"))
    if champ is None:
        log.info("no model holds %s@%s yet: nothing to compare with", cfg.promote.model_name, cfg.promote.alias)
        return None
    version, path = champ
    meta = torch.load(str(path), map_location="cpu", weights_only=False)
    from pipeline.tasks import model_task

    task = meta.get("task") or model_task(meta.get("model", "")) or "detection"
    if task != "classification":
        log.warning("the champion %s v%s is a %s model (%s): not comparable with a classifier; judged on absolute "
                    "thresholds only", cfg.promote.model_name, version.version, task, meta.get("model"))
        return None
    return champ


def run(cfg: Config, ctx: RunContext, model_path: Path, data_dir: Path) -> dict:
    import mlflow

    from pipeline import tracking
    from pipeline.datasets.canonical import load_coco, split_coco
    from pipeline.metrics.plots import confusion_matrix_png

    split = cfg.evaluate.split
    coco = load_coco(data_dir)
    gt = split_coco(coco, split)
    if not gt["images"]:
        raise InputRejected(f"no image is in the {split} split: nothing to evaluate on",
                            path=ctx.url("dataset/annotations.json", "ingest"), field="images[].split")
    challenger = score_classifier(model_path, data_dir, coco, cfg, "challenger")
    names = challenger.metrics["classes"]
    metrics = {"task": "classification", "split": split, "images": len(gt["images"]), **challenger.metrics,
               "confusion_matrix": {"labels": names, "matrix": challenger.metrics["confusion_matrix"]}}

    champ = _champion(cfg, ctx)
    champion = None
    metrics["champion"] = None
    metrics["stability"] = None
    if champ is not None:
        version, path = champ
        champion = score_classifier(path, data_dir, coco, cfg, f"champion v{version.version}")
        metrics["champion"] = {k: champion.metrics[k] for k in ("accuracy", "macro_f1", "top_k", "per_class")}
        metrics["champion"].update(version=str(version.version), run_id=version.run_id)
        ev = cfg.evaluate
        metrics["stability"] = paired_bootstrap(challenger, champion, names, resamples=ev.bootstrap_resamples,
                                                confidence=ev.bootstrap_confidence, seed=ev.bootstrap_seed)
        acc = metrics["stability"]["accuracy"]
        from pipeline.gates import interval_text

        log.info("accuracy drop vs champion v%s: %.4f%s", version.version, acc["drop"],
                 interval_text(acc["ci"], ev.bootstrap_confidence))

    shutil.rmtree(ctx.workdir / "out", ignore_errors=True)  # a previous attempt's files must not be published
    out = ctx.scratch("out")
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    (out / "predictions.json").write_text(json.dumps(challenger.predictions))
    if champion is not None:
        (out / "champion_predictions.json").write_text(json.dumps(champion.predictions))
    confusion_matrix_png(out / "confusion_matrix.png", metrics["confusion_matrix"],
                         title=f"Confusion matrix ({split}, {len(gt['images'])} images, top-1)")
    ctx.publish_dir(out, "")

    with tracking.active_run(cfg, ctx.run_id):
        mlflow.log_metrics(mlflow_metrics(metrics))
        mlflow.set_tags({"nightshift.eval_split": split, "nightshift.task": "classification",
                         "nightshift.champion_version": metrics["champion"]["version"] if champion else "none"})
        for name in ("metrics.json", "confusion_matrix.png"):
            mlflow.log_artifact(str(out / name), artifact_path="evaluate")

    stability = metrics["stability"] or {}
    return {
        "task": "classification",
        "accuracy": metrics["accuracy"],
        "macro_f1": metrics["macro_f1"],
        "top_k": metrics["top_k"],
        "champion": ({k: metrics["champion"][k] for k in ("version", "accuracy", "macro_f1")}
                     if champion else None),
        "images": len(gt["images"]),
        "split": split,
        "stability": {"accuracy_drop": (stability.get("accuracy") or {}).get("drop"),
                      "ci": (stability.get("accuracy") or {}).get("ci"),
                      "resamples": stability.get("resamples")} if champion else None,
    }
