"""The deployable form of a classifier, and the checks every exported classifier passes before it ships.

Graph: input `images` float32 [B, 3, S, S] RGB in 0..1 (the same pixels the canonical dataset feeds the model;
ImageNet normalisation is inside `Classifier`), output `scores` float32 [B, K]: softmax probabilities, class
`i` = categories[i] sorted by id (no background), so `labels.txt` line i names column i, as Triton's
classification extension reads it. The batch dimension is dynamic; the ONNX file records
`nightshift.task = classification` in its metadata, which `onnx_export.io_spec` reports as `io["task"]` (Triton
configs and smoke tests read the task from the file itself, not from what the export stage said).

Checks, each against eager PyTorch on the val split:

* raw outputs (`compare_scores`): the largest absolute probability difference and top-1 agreement, ONNX
  Runtime vs PyTorch and ONNX Runtime batched vs one image at a time. A top-1 disagreement on a near tie (the
  two classes' PyTorch probabilities within `prob_atol`) is a tie breaking the other way, not an error.
* parity (`parity`): accuracy and per-class recall (pipeline.metrics.classification) of both runtimes; the
  export fails when accuracy drops by more than `export.parity_max_accuracy_drop` or any class's recall by more
  than `export.parity_max_class_recall_drop`.
"""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from pipeline.gates import Failure

INPUT_NAMES = ("images",)
OUTPUT_NAMES = ("scores",)
TASK_KEY = "nightshift.task"  # ONNX metadata_props key naming the task the graph was exported for


class ClassifierExport(torch.nn.Module):
    """`Classifier` with a softmax on its logits: images [B, 3, S, S] in 0..1 -> probabilities [B, K]."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model.eval()

    def forward(self, images: Tensor) -> Tensor:
        return torch.softmax(self.model(images), dim=1)


def is_classifier(model: torch.nn.Module) -> bool:
    from pipeline.training.models import Classifier

    return isinstance(model, Classifier)


def export_onnx(model: torch.nn.Module, image_size: int, path: str | Path, opset: int = 17) -> dict:
    """Export a trained `Classifier` to `path` (see the module docstring); returns the io spec."""
    import onnx

    from pipeline.export.onnx_export import io_spec

    # eval, wrapper included: the exporter puts the wrapper back in its own mode afterwards, and a wrapper left in
    # training mode would switch the caller's model (BatchNorm on batch statistics) with it
    wrapper = ClassifierExport(model).eval()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sample = torch.rand(2, 3, image_size, image_size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad(), warnings.catch_warnings():
        # torch.onnx's TorchScript exporter is deprecated in favour of dynamo; the detectors need it, and one
        # exporter for every task keeps the graphs comparable
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        torch.onnx.export(wrapper, (sample,), str(path), dynamo=False, opset_version=opset,
                          input_names=list(INPUT_NAMES), output_names=list(OUTPUT_NAMES),
                          dynamic_axes={name: {0: "batch"} for name in INPUT_NAMES + OUTPUT_NAMES})
    proto = onnx.load(str(path))
    entry = proto.metadata_props.add()
    entry.key, entry.value = TASK_KEY, "classification"
    onnx.checker.check_model(proto, full_check=True)
    onnx.save(proto, str(path))
    return io_spec(path)


def run_session(session, images: np.ndarray) -> np.ndarray:
    """Probabilities [B, K] from an ONNX Runtime session of an exported classifier."""
    (scores,) = session.run(list(OUTPUT_NAMES), {INPUT_NAMES[0]: np.ascontiguousarray(images, np.float32)})
    return scores


def eager_scores(model: torch.nn.Module, images: Tensor) -> np.ndarray:
    """PyTorch's probabilities for a batch [B, 3, S, S], computed exactly as the exported graph does."""
    with torch.inference_mode():
        return torch.softmax(model(images), dim=1).float().numpy()


class OrtClassifier:
    """An ONNX Runtime session behind the same call as eager: images [B, 3, S, S] tensor -> probabilities."""

    def __init__(self, session):
        self.session = session

    def __call__(self, images: Tensor) -> np.ndarray:
        return run_session(self.session, images.detach().cpu().float().numpy())


def _eager(model):
    return lambda images: eager_scores(model, images)


def val_scores(predict, dataset, batch_size: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """(probabilities [N, K], true classes [N]) over every image of `dataset` (a ClassificationDataset)."""
    scores, labels = [], []
    for start in range(0, len(dataset), batch_size):
        items = [dataset[i] for i in range(start, min(start + batch_size, len(dataset)))]
        scores.append(predict(torch.stack([im for im, _ in items])))
        labels.extend(int(t["label"]) for _, t in items)
    return np.concatenate(scores), np.asarray(labels, dtype=np.int64)


def compare_scores(reference: np.ndarray, candidate: np.ndarray, prob_atol: float = 1e-4) -> dict:
    """How well `candidate` probabilities [N, K] reproduce `reference` ones: the largest absolute difference,
    and top-1 agreement (a different top-1 counts as agreeing when its reference probability is within
    `prob_atol` of the reference's best: a near tie that broke the other way). `passed` is not decided here."""
    reference, candidate = np.asarray(reference, np.float64), np.asarray(candidate, np.float64)
    if reference.shape != candidate.shape:
        return {"compared": len(reference), "top1_agree": 0, "top1_agreement": 0.0, "exact_top1": 0,
                "max_prob_abs_diff": None, "shape": [list(reference.shape), list(candidate.shape)]}
    n = len(reference)
    ref_top, cand_top = reference.argmax(1), candidate.argmax(1)
    rows = np.arange(n)
    tie = (reference[rows, ref_top] - reference[rows, cand_top]) <= prob_atol
    agree = (ref_top == cand_top) | tie
    return {"compared": int(n), "top1_agree": int(agree.sum()), "top1_agreement": float(agree.mean()) if n else 1.0,
            "exact_top1": int((ref_top == cand_top).sum()),
            "max_prob_abs_diff": float(np.abs(reference - candidate).max()) if n else 0.0}


def check_outputs(model, session, dataset, n: int, match_min: float, prob_atol: float) -> dict:
    """Raw-output check on the first `n` val images: ONNX Runtime vs PyTorch (as one batch), and ONNX Runtime
    batched vs one image at a time (the batch dimension must really be dynamic and batch-independent)."""
    images = torch.stack([dataset[i][0] for i in range(min(n, len(dataset)))])
    reference = eager_scores(model, images)
    ort = OrtClassifier(session)
    batched = ort(images)
    single = np.concatenate([ort(images[i:i + 1]) for i in range(len(images))])
    vs_torch = compare_scores(reference, batched, prob_atol)
    vs_single = compare_scores(single, batched, prob_atol)

    def ok(stats):
        diff = stats["max_prob_abs_diff"]
        return diff is not None and diff <= prob_atol and stats["top1_agreement"] >= match_min

    return {"images": len(images), "vs_pytorch": vs_torch, "batch_vs_single": vs_single,
            "max_prob_abs_diff": prob_atol, "top1_agreement_min": match_min,
            "passed": ok(vs_torch) and ok(vs_single)}


def metrics(scores: np.ndarray, labels: np.ndarray, class_names: list[str]) -> dict:
    from pipeline.metrics.classification import classify

    return classify(scores, labels, top_k=(1,), class_names=class_names)


def parity(model, dataset, class_names: list[str], max_drop: float, max_class_drop: float | None,
           runtime=None, session=None, reference: tuple | None = None) -> dict:
    """Accuracy and per-class recall on val: PyTorch vs the exported model (an ONNX Runtime `session`, or any
    `runtime(images [B,3,S,S]) -> probabilities`). Passes when the accuracy drop is at most `max_drop` and
    (when given) no class's recall drops by more than `max_class_drop`. `reference`: PyTorch's (scores,
    labels) already computed on the same dataset."""
    eager_s, labels = reference if reference is not None else val_scores(_eager(model), dataset)
    got_s, _ = val_scores(runtime if runtime is not None else OrtClassifier(session), dataset)
    eager, got = metrics(eager_s, labels, class_names), metrics(got_s, labels, class_names)
    drop = eager["accuracy"] - got["accuracy"]
    # per class too: a class the exported graph gets wrong is not hidden by the average over the others
    per_class = {name: round(eager["per_class"][name]["recall"] - got["per_class"][name]["recall"], 6)
                 for name in class_names}
    worst_ok = max_class_drop is None or max(per_class.values(), default=0.0) <= max_class_drop
    keys = ("accuracy", "macro_f1")
    return {"images": len(labels), "pytorch": {k: eager[k] for k in keys},
            "onnxruntime": {k: got[k] for k in keys}, "accuracy_drop": drop, "max_accuracy_drop": max_drop,
            "per_class_recall_drop": per_class, "max_class_recall_drop": max_class_drop,
            "top1_agreement": compare_scores(eager_s, got_s)["top1_agreement"],
            "passed": drop <= max_drop and worst_ok}


def output_failures(outputs: dict) -> list[Failure]:
    """One Failure per raw-output comparison that failed (probability difference, top-1 agreement)."""
    out = []
    for key, what in (("vs_pytorch", "ONNX Runtime vs PyTorch"),
                      ("batch_vs_single", "ONNX Runtime batched vs one image at a time")):
        stats = outputs[key]
        if stats["max_prob_abs_diff"] is None:
            out.append(Failure("outputs", f"scores of shape {stats['shape'][0]}", stats["shape"][1],
                               message=f"outputs: {what}: scores shape {stats['shape'][1]}, expected "
                                       f"{stats['shape'][0]}"))
            continue
        if stats["max_prob_abs_diff"] > outputs["max_prob_abs_diff"]:
            out.append(Failure.threshold_check("outputs", f"largest probability difference, {what}",
                                               stats["max_prob_abs_diff"], "<=", outputs["max_prob_abs_diff"]))
        if stats["top1_agreement"] < outputs["top1_agreement_min"]:
            out.append(Failure.threshold_check("outputs", f"share of images with the same top-1 class, {what}",
                                               stats["top1_agreement"], ">=", outputs["top1_agreement_min"]))
    return out


def parity_failures(check: str, runtime: str, result: dict) -> list[Failure]:
    """One Failure for the accuracy drop and one per class whose recall dropped past its limit."""
    out = []
    if result["accuracy_drop"] > result["max_accuracy_drop"]:
        out.append(Failure.threshold_check(check, f"val accuracy drop, PyTorch - {runtime}", result["accuracy_drop"],
                                           "<=", result["max_accuracy_drop"]))
    limit = result.get("max_class_recall_drop")
    for name, drop in sorted(result["per_class_recall_drop"].items()):
        if limit is not None and drop > limit:
            out.append(Failure.threshold_check(check, f"val recall drop, PyTorch - {runtime}", drop, "<=", limit,
                                               class_name=name))
    return out
