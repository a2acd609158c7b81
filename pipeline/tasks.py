"""The three tasks a run can be: what the labels are, what the model predicts, what the gates judge.

- `detection`: boxes per image (COCO bbox), the registered detectors, COCO box mAP.
- `classification`: one class per image, the registered classifiers, accuracy / top-k / macro F1.
- `segmentation`: instance masks per image (COCO polygons or RLE), Mask R-CNN, COCO mask and box mAP.

`data.task` chooses it; `auto` (the default) takes the task of `train.model`. Setting `data.task` without
`train.model` picks that task's default model (`DEFAULT_MODELS`); a `data.task` that disagrees with the model's
task is refused by the check stage before anything runs. The canonical dataset records its task in
`annotations.json` (`"task"`, absent = detection).
"""
from __future__ import annotations

TASKS = ("detection", "classification", "segmentation")
DEFAULT_MODELS = {"detection": "ssdlite320_mobilenet_v3_large", "classification": "resnet18",
                  "segmentation": "maskrcnn_mobilenet_v3_large_fpn"}


def model_task(model: str) -> str | None:
    """The task of registered model `model`, None for an unknown name."""
    from pipeline.training.models import MODELS

    spec = MODELS.get(model)
    return spec.task if spec is not None else None


def task_of(cfg) -> str:
    """The run's task: `data.task`, or with `auto` the task of `train.model` (detection for an unknown model,
    which the check stage refuses anyway)."""
    if cfg.data.task != "auto":
        return cfg.data.task
    return model_task(cfg.train.model) or "detection"


def mismatch(cfg) -> str | None:
    """Why `data.task` and `train.model` disagree, or None when they agree (or the model is unknown)."""
    wanted, has = cfg.data.task, model_task(cfg.train.model)
    if wanted == "auto" or has is None or has == wanted:
        return None
    from pipeline.training.models import MODELS

    fitting = ", ".join(sorted(n for n, s in MODELS.items() if s.task == wanted))
    return (f"'data.task' is {wanted!r} but 'train.model' {cfg.train.model!r} is a {has} model: set train.model "
            f"to one of {fitting}, or data.task to {has!r} (or auto)")


def dataset_task(coco: dict) -> str:
    """The task a canonical annotations.json was ingested for."""
    return coco.get("task") or "detection"


def default_model_first(raw: dict) -> dict:
    """A raw config dict with `train.model` set to the task's default when `data.task` names a task and the
    config leaves the model out (before the train section is built, so its recipe is the right model's)."""
    data, train = raw.get("data"), raw.get("train")
    task = data.get("task") if isinstance(data, dict) else None
    if task in DEFAULT_MODELS and (train is None or isinstance(train, dict)) and "model" not in (train or {}):
        raw = dict(raw)
        raw["train"] = {**(train or {}), "model": DEFAULT_MODELS[task]}
    return raw
