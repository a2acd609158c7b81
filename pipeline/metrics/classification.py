"""Classification metrics: accuracy, top-k accuracy, macro F1, per-class precision/recall/F1, confusion matrix.

`classify(scores, labels)` takes one row of class scores per sample (logits or probabilities: both rank the
classes the same way, so every metric here is identical for either) and the true class index of each sample.
The prediction is the highest-scoring class; a tie goes to the lower class index (numpy's argmax), and top-k
breaks ties the same way, so top-1 accuracy always equals accuracy.

Conventions follow scikit-learn's defaults so the numbers can be checked against it:
- confusion matrix rows are true classes, columns predicted classes;
- a precision with no predictions of the class, or a recall with no samples of it, is 0 (zero_division=0);
- macro F1 is the unweighted mean over the classes that occur in the labels or the predictions; a class that
  appears in neither says nothing about the model and is left out (sklearn's `f1_score(average="macro")`).

Bad inputs (wrong shapes, non-finite scores, labels outside 0..C-1) raise `InputRejected` naming the field.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from pipeline.errors import InputRejected


def _array(values, what: str) -> np.ndarray:
    if hasattr(values, "detach"):  # a torch tensor, possibly on the GPU or requiring grad
        values = values.detach().cpu().numpy()
    try:
        return np.asarray(values)
    except (TypeError, ValueError) as exc:
        raise InputRejected(f"not an array: {exc}", path="<classification>", field=what) from None


def _inputs(scores, labels) -> tuple[np.ndarray, np.ndarray]:
    """Checked (scores [N, C] float64, labels [N] int64)."""
    scores, labels = _array(scores, "scores"), _array(labels, "labels")
    where = "<classification>"
    if scores.ndim != 2 or scores.shape[0] == 0 or scores.shape[1] < 2:
        raise InputRejected(f"must be [samples, classes] with at least 1 sample and 2 classes, got shape "
                            f"{list(scores.shape)}", path=where, field="scores")
    if not np.issubdtype(scores.dtype, np.number) or np.issubdtype(scores.dtype, np.complexfloating):
        raise InputRejected(f"must be real numbers, got dtype {scores.dtype}", path=where, field="scores")
    scores = scores.astype(np.float64, copy=False)
    if not np.isfinite(scores).all():
        bad = int(np.argwhere(~np.isfinite(scores))[0, 0])
        raise InputRejected(f"must be finite (NaN or inf in row {bad})", path=where, field="scores")
    if labels.shape != (scores.shape[0],):
        raise InputRejected(f"must be one class index per sample: shape {list(labels.shape)} for "
                            f"{scores.shape[0]} score rows", path=where, field="labels")
    if not np.issubdtype(labels.dtype, np.integer):
        if not (np.issubdtype(labels.dtype, np.floating) and np.all(labels == np.round(labels))):
            raise InputRejected(f"must be integer class indices, got dtype {labels.dtype}", path=where,
                                field="labels")
    labels = labels.astype(np.int64)
    outside = (labels < 0) | (labels >= scores.shape[1])
    if outside.any():
        i = int(np.argmax(outside))
        raise InputRejected(f"labels[{i}] = {labels[i]} is not a class index 0..{scores.shape[1] - 1}", path=where,
                            field="labels")
    return scores, labels


def top_k_hits(scores: np.ndarray, labels: np.ndarray, k: int) -> np.ndarray:
    """[N] bool: the true class is among the k highest scores (ties: lower index ranks first)."""
    k = min(int(k), scores.shape[1])
    # stable sort of the negated scores: equal scores keep index order, matching argmax
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return (order == labels[:, None]).any(axis=1)


def confusion_matrix(labels, predictions, num_classes: int) -> np.ndarray:
    """[C, C] int64 counts: row = true class, column = predicted class."""
    labels = np.asarray(labels, dtype=np.int64)
    predictions = np.asarray(predictions, dtype=np.int64)
    return np.bincount(labels * num_classes + predictions, minlength=num_classes * num_classes).reshape(
        num_classes, num_classes)


def per_class(cm: np.ndarray) -> dict[str, np.ndarray]:
    """precision, recall, f1, support, predicted per class from a confusion matrix (0 where undefined)."""
    tp = np.diag(cm).astype(np.float64)
    support = cm.sum(axis=1)
    predicted = cm.sum(axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = np.where(predicted > 0, tp / predicted, 0.0)
        recall = np.where(support > 0, tp / support, 0.0)
        f1 = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)
    return {"precision": precision, "recall": recall, "f1": f1, "support": support, "predicted": predicted}


def classify(scores, labels, *, top_k: Sequence[int] = (1, 5), class_names: Sequence[str] | None = None) -> dict:
    """Every classification metric for one evaluation, as small JSON-able values.

    `scores`: [N, C] logits or probabilities (numpy array, nested lists or a torch tensor); `labels`: [N]
    class indices 0..C-1; `top_k`: the k values to report (a k >= C is trivially 1.0); `class_names`: C names
    for the per-class table (default: "0".."C-1").

    Returns {num_samples, num_classes, accuracy, macro_f1, top_k: {"k": accuracy}, classes, confusion_matrix
    (rows true, columns predicted), per_class: {name: {precision, recall, f1, support, predicted}}}.
    """
    scores, labels = _inputs(scores, labels)
    n, c = scores.shape
    ks = sorted({int(k) for k in top_k})
    if not ks or ks[0] < 1:
        raise InputRejected(f"every k must be >= 1, got {list(top_k)}", path="<classification>", field="top_k")
    names = [str(i) for i in range(c)] if class_names is None else [str(x) for x in class_names]
    if len(names) != c or len(set(names)) != c:
        raise InputRejected(f"need {c} distinct class names, got {len(names)} ({len(set(names))} distinct)",
                            path="<classification>", field="class_names")

    predictions = scores.argmax(axis=1)
    cm = confusion_matrix(labels, predictions, c)
    table = per_class(cm)
    seen = (table["support"] > 0) | (table["predicted"] > 0)
    return {
        "num_samples": int(n),
        "num_classes": int(c),
        "accuracy": float(np.trace(cm) / n),
        "macro_f1": float(table["f1"][seen].mean()),
        "top_k": {str(k): float(top_k_hits(scores, labels, k).mean()) for k in ks},
        "classes": names,
        "confusion_matrix": cm.tolist(),
        "per_class": {
            name: {"precision": float(table["precision"][i]), "recall": float(table["recall"][i]),
                   "f1": float(table["f1"][i]), "support": int(table["support"][i]),
                   "predicted": int(table["predicted"][i])}
            for i, name in enumerate(names)
        },
    }


__all__ = ["classify", "confusion_matrix", "per_class", "top_k_hits"]
