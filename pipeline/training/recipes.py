"""Training recipes: the `train.*` values a model gets on a kind of machine when the config leaves them out.

`train.recipe` names one, `cpu` (the default) or `gpu`; `none` leaves TrainConfig's own field defaults. A key
set anywhere (the config file, `--set`, the trigger form) always wins over the recipe, and the train stage
logs which keys the recipe filled (`applied()`), so nothing is changed silently. The choice is the config's,
never the machine's: every stage of one run must see the same `image_size`, whatever node it lands on.

How the CPU recipes were chosen (a 2-core machine, a few hundred real images, from scratch, about 15 minutes
of training) and what they measured is in docs/recipes.md, with the GPU recipes' sources. The demo's toy values
(128 px, 6 epochs) are not a recipe: they live in configs/demo.yaml, which sets `recipe: none`.
"""
from __future__ import annotations

from typing import Any

RECIPES = ("cpu", "gpu")

# What every detector shares on a kind of machine (the classifiers' base is `_CLASSIFIER_COMMON` below); the per-model tables below override it.
_COMMON: dict[str, dict[str, Any]] = {
    "cpu": {
        "batch_size": 8, "weight_decay": 1e-4, "warmup_steps": 50, "grad_clip": 10.0,
        "aug_hflip": 0.5, "aug_photometric": 0.5, "aug_scale_jitter": (0.75, 1.25),
        "bn_calibration_images": 256, "eval_every_epochs": 0, "anchor_scale": "auto",
    },
    "gpu": {
        "batch_size": 16, "weight_decay": 1e-4, "warmup_steps": 300, "grad_clip": 10.0,
        "aug_hflip": 0.5, "aug_photometric": 0.5, "aug_zoom_out": 0.5, "aug_iou_crop": 0.5,
        "aug_scale_jitter": (0.5, 1.5), "bn_calibration_images": 512, "ema_decay": 0.9998,
        "eval_every_epochs": 5, "num_workers": 4, "threads_per_rank": 4, "anchor_scale": "auto",
    },
}

# Measured on real data: SSDlite's CPU recipe (docs/recipes.md). The others follow torchvision's reference recipes
# (input size, schedule length) cut to a CPU budget or moved to AdamW; they are not measured on real data here.
_RESNET50_FPN = {  # the three ResNet-50 FPN detectors train alike
    "cpu": {"image_size": 512, "epochs": 16, "lr": 2e-4, "batch_size": 2},
    "gpu": {"image_size": 800, "epochs": 36, "lr": 2e-4, "batch_size": 4},
}

_MODELS: dict[str, dict[str, dict[str, Any]]] = {
    "ssdlite320_mobilenet_v3_large": {
        "cpu": {"image_size": 320, "epochs": 24, "lr": 4e-3},
        # torchvision's reference trains 600 epochs with SGD 0.15 on 8 GPUs; AdamW from scratch gets most of it
        # in far fewer on a team's few thousand images
        "gpu": {"image_size": 320, "epochs": 150, "lr": 4e-3, "batch_size": 32, "aug_zoom_out_max": 4.0},
    },
    "fasterrcnn_mobilenet_v3_large_320_fpn": {
        "cpu": {"image_size": 320, "epochs": 30, "lr": 1e-3},
        "gpu": {"image_size": 320, "epochs": 60, "lr": 1e-3},
    },
    "fasterrcnn_mobilenet_v3_large_fpn": {
        "cpu": {"image_size": 512, "epochs": 24, "lr": 1e-3, "batch_size": 4},
        "gpu": {"image_size": 800, "epochs": 40, "lr": 1e-3, "batch_size": 8},
    },
    **{name: _RESNET50_FPN for name in ("fasterrcnn_resnet50_fpn", "retinanet_resnet50_fpn", "fcos_resnet50_fpn")},
    # Mask R-CNN (instance segmentation): the Faster R-CNN recipes of the same backbone, the batch halved for the
    # mask head's per-RoI 28 x 28 targets; not measured on real data here
    "maskrcnn_mobilenet_v3_large_fpn": {
        "cpu": {"image_size": 320, "epochs": 30, "lr": 1e-3, "batch_size": 4},
        "gpu": {"image_size": 512, "epochs": 60, "lr": 1e-3, "batch_size": 8},
    },
    "maskrcnn_resnet50_fpn": _RESNET50_FPN,
}


# The classifiers share their own base: no anchors, no box-only augmentation; AdamW with decoupled weight decay,
# warm-up then cosine (fit's schedule), label smoothing 0.1 and a val accuracy every epoch (one cheap pass).
# Sizes and schedules follow torchvision's classification references cut to a CPU budget (128-160 px); they are
# not measured on real data here.
_CLASSIFIER_COMMON: dict[str, dict[str, Any]] = {
    "cpu": {
        "batch_size": 32, "weight_decay": 0.05, "warmup_steps": 50, "grad_clip": 5.0, "label_smoothing": 0.1,
        "aug_hflip": 0.5, "aug_photometric": 0.5, "aug_scale_jitter": (0.8, 1.2), "bn_calibration_images": 256,
        "eval_every_epochs": 1,
    },
    "gpu": {
        "batch_size": 64, "weight_decay": 0.05, "warmup_steps": 500, "grad_clip": 5.0, "label_smoothing": 0.1,
        "aug_hflip": 0.5, "aug_photometric": 0.5, "aug_scale_jitter": (0.6, 1.4), "bn_calibration_images": 512,
        "ema_decay": 0.9998, "eval_every_epochs": 1, "num_workers": 4, "threads_per_rank": 4,
    },
}
_CLASSIFIERS: dict[str, dict[str, dict[str, Any]]] = {
    "resnet18": {"cpu": {"image_size": 128, "epochs": 30, "lr": 2e-3},
                 "gpu": {"image_size": 224, "epochs": 90, "lr": 2e-3}},
    "resnet50": {"cpu": {"image_size": 160, "epochs": 24, "lr": 1e-3, "batch_size": 16},
                 "gpu": {"image_size": 224, "epochs": 90, "lr": 1e-3}},
    "mobilenet_v3_large": {"cpu": {"image_size": 128, "epochs": 40, "lr": 2e-3},
                           "gpu": {"image_size": 224, "epochs": 150, "lr": 2e-3}},
    "efficientnet_b0": {"cpu": {"image_size": 128, "epochs": 40, "lr": 2e-3},
                        "gpu": {"image_size": 224, "epochs": 150, "lr": 2e-3}},
}


# Starting from trained weights (train.init weights / champion): a third of the epochs at a quarter of the peak
# rate. On the blood-cell set a warm start from the champion reached its mAP@0.5 so (docs/recipes.md).
WARM_EPOCHS_FRACTION = 1 / 3
WARM_LR_FACTOR = 0.25


def recipe(model: str, kind: str, init: str = "scratch") -> dict[str, Any]:
    """The recipe's values for `model` on `kind` ("cpu" / "gpu") starting from `init`; {} for "none" or a model
    without one."""
    if kind not in RECIPES or model not in _MODELS and model not in _CLASSIFIERS:
        return {}
    if model in _CLASSIFIERS:
        values = {**_CLASSIFIER_COMMON[kind], **_CLASSIFIERS[model][kind]}
    else:
        values = {**_COMMON[kind], **_MODELS[model][kind]}
    if init != "scratch":
        values.update(epochs=max(1, round(values["epochs"] * WARM_EPOCHS_FRACTION)),
                      lr=values["lr"] * WARM_LR_FACTOR, warmup_steps=min(values["warmup_steps"], 20))
    return values


def models_with_recipes() -> list[str]:
    return sorted([*_MODELS, *_CLASSIFIERS])


def applied(tc) -> dict[str, Any]:
    """The keys of `tc` (a TrainConfig) that its recipe filled, with their values: those not set by the user."""
    values = recipe(tc.model, tc.recipe, tc.init)
    return {k: getattr(tc, k) for k in values if k not in tc.model_fields_set}


def describe(tc) -> str:
    """One log line: the recipe and what it filled; the keys the user set are named as theirs."""
    if tc.recipe == "none":
        return "train.recipe none: TrainConfig's defaults and the values you set"
    values = recipe(tc.model, tc.recipe, tc.init)
    if not values:
        return f"train.recipe {tc.recipe}: no recipe for {tc.model}; TrainConfig's defaults and the values you set"
    filled = applied(tc)
    mine = sorted(k for k in values if k in tc.model_fields_set)
    text = ", ".join(f"{k}={_fmt(v)}" for k, v in filled.items()) or "nothing"
    start = {"weights": " from train.weights", "champion": " from the champion"}.get(tc.init, "")
    line = f"train.recipe {tc.recipe} for {tc.model}{start} filled {text}"
    if mine:
        line += f"; yours: {', '.join(f'{k}={_fmt(getattr(tc, k))}' for k in mine)}"
    return line


def _fmt(value: Any) -> str:
    if isinstance(value, tuple):
        return "[" + ", ".join(_fmt(v) for v in value) + "]"
    return f"{value:g}" if isinstance(value, float) else str(value)
