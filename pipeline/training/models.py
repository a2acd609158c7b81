"""Models by name: a registry of torchvision builders. Weights are never downloaded.

`build_model(name, num_classes, weights="")` returns an nn.Module with random initialisation, or the state
dict of a local weights file. For detection, `num_classes` counts the background class (K + 1).
`save_trained` writes a trained model's `model.pt` (docs/architecture.md); `load_trained` reads it back.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torchvision.models as tvm
import torchvision.models.detection as tvd
from torchvision.models.detection.anchor_utils import AnchorGenerator, DefaultBoxGenerator
from torchvision.models.detection.transform import GeneralizedRCNNTransform


@dataclass(frozen=True)
class ModelSpec:
    name: str
    task: str  # "detection", "segmentation" (instance masks) or "classification" (pipeline/tasks.py)
    builder: Callable[..., torch.nn.Module]
    default_size: int  # input side the model was designed for


def _det(builder, **extra):
    def build(num_classes: int, image_size: int, anchor_scale: float = 1.0):
        kwargs = dict(weights=None, weights_backbone=None, num_classes=num_classes, **extra)
        if builder is not tvd.ssdlite320_mobilenet_v3_large:
            # the detector's own transform resizes to the configured size (torchvision defaults differ)
            kwargs.update(min_size=image_size, max_size=image_size)
            return _scale_anchors(builder(**kwargs), anchor_scale)
        model = _scale_anchors(builder(**kwargs), anchor_scale)
        if image_size != 320:
            # torchvision fixes SSDlite's transform at 320x320 and skips resizing while training, so a
            # dataset at another size would train at S and predict at 320. Its anchors are relative to the
            # input, so the same network works at S: make the transform resize to S x S.
            t = model.transform
            model.transform = GeneralizedRCNNTransform(image_size, image_size, t.image_mean, t.image_std,
                                                       size_divisible=1, fixed_size=(image_size, image_size),
                                                       _skip_resize=True)
        return model
    return build


def _scale_anchors(model: torch.nn.Module, scale: float) -> torch.nn.Module:
    """Anchor sizes x `scale` (< 1 for small objects): the same number of anchors per location, so the heads and
    every weight file stay the same shape. FCOS has no anchor sizes to scale (its levels are chosen by size)."""
    if scale == 1.0:
        return model
    if isinstance(model, tvd.FCOS):
        raise ValueError("'train.anchor_scale': FCOS has no anchor sizes (it assigns objects to pyramid levels "
                         "by their size); leave it at 1 and raise train.image_size for small objects")
    if isinstance(model, tvd.ssd.SSD):
        # torchvision's SSDlite: DefaultBoxGenerator([[2, 3]] * 6, min_ratio=0.2, max_ratio=0.95)
        model.anchor_generator = DefaultBoxGenerator([[2, 3] for _ in range(6)], min_ratio=0.2 * scale,
                                                     max_ratio=min(0.95 * scale, 1.0))
        return model
    holder = model.rpn if isinstance(model, tvd.FasterRCNN) else model
    old = holder.anchor_generator
    sizes = tuple(tuple(max(1, round(s * scale)) for s in level) for level in old.sizes)
    holder.anchor_generator = AnchorGenerator(sizes, old.aspect_ratios)
    return model


def anchor_range(name: str, image_size: int) -> tuple[float, float] | None:
    """The smallest and largest anchor side in pixels of detector `name` at `image_size` with anchor_scale 1, or
    None for a model without anchor sizes (FCOS, classifiers)."""
    if name == "ssdlite320_mobilenet_v3_large":
        return 0.2 * image_size, 0.95 * image_size  # DefaultBoxGenerator(min_ratio=0.2, max_ratio=0.95)
    if name.startswith(("fasterrcnn", "maskrcnn", "retinanet")):  # Mask R-CNN's RPN anchors are Faster R-CNN's
        sizes = {"retinanet": (32, 812)}.get(name.split("_")[0], (32, 512))  # torchvision's AnchorGenerator sizes
        return float(sizes[0]), float(min(sizes[1], image_size))
    return None


LARGE_HEADROOM = 1.15


def fit_anchor_scale(name: str, image_size: int, sides: list[float]) -> tuple[float, str]:
    """`train.anchor_scale: auto`: the scale that brings the smallest anchor down to the small boxes of the data
    (5th percentile of sqrt(w h) of the train boxes at the input size) while the largest still covers the big
    ones (99th percentile, with 15 % headroom), never above 1 (the model's own anchors) nor under 0.25. Returns
    (scale, why)."""
    span = anchor_range(name, image_size)
    if span is None or not sides:
        return 1.0, "no anchor sizes to fit" if span is None else "no boxes to fit anchors to"
    small, large = (float(v) for v in torch.quantile(torch.tensor(sides), torch.tensor([0.05, 0.99])))
    # the largest anchor a little over the largest boxes: at exactly their size half of them would be bigger
    scale = min(1.0, max(0.25, small / span[0], LARGE_HEADROOM * large / span[1]))
    scale = round(scale, 2)
    return scale, (f"5th / 99th percentile box side {small:.0f} / {large:.0f} px at {image_size} px; anchors "
                   f"{span[0] * scale:.0f}-{span[1] * scale:.0f} px")


IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class Classifier(torch.nn.Module):
    """A torchvision classifier as the pipeline trains, evaluates and exports it.

    Input: float32 [B, 3, S, S] RGB in 0..1 (a tensor, or a list of [3, S, S] tensors), normalised inside with
    ImageNet's mean and std as the detectors' own transforms do, so every consumer feeds the same 0..1 pixels.
    Training with `targets` (dicts with an int `label` 0..K-1) returns {"loss_classifier": cross entropy};
    otherwise the logits [B, K]. Class `i` is `categories[i]` (categories sorted by id; no background class).
    The torchvision network is `net`: a classification state dict loads into it unchanged.
    """

    def __init__(self, net: torch.nn.Module, label_smoothing: float = 0.0):
        super().__init__()
        self.net = net
        self.label_smoothing = float(label_smoothing)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, images, targets: list[dict] | None = None):
        x = torch.stack(list(images)) if isinstance(images, (list, tuple)) else images
        logits = self.net((x - self.mean) / self.std)
        if self.training and targets is not None:
            labels = torch.as_tensor([int(t["label"]) for t in targets], device=logits.device)
            return {"loss_classifier": torch.nn.functional.cross_entropy(logits, labels,
                                                                        label_smoothing=self.label_smoothing)}
        return logits


def _cls(builder):
    def build(num_classes: int, image_size: int, anchor_scale: float = 1.0):
        if anchor_scale != 1.0:
            raise ValueError("'train.anchor_scale': a classifier has no anchors; leave it at 1")
        return Classifier(builder(weights=None, num_classes=num_classes))
    return build


def maskrcnn_mobilenet_v3_large_fpn(weights=None, weights_backbone=None, num_classes: int = 91, **kwargs):
    """Mask R-CNN on torchvision's MobileNetV3-Large FPN (the backbone, anchors and FPN of
    fasterrcnn_mobilenet_v3_large_fpn, plus Mask R-CNN's mask head): the instance-segmentation model a CPU can
    train. torchvision ships no weights for it; a user brings a backbone file (train.init=weights)."""
    from torchvision.models.detection.backbone_utils import _mobilenet_extractor

    backbone = _mobilenet_extractor(tvm.mobilenet_v3_large(weights=None), True, 6)
    anchor_sizes = ((32, 64, 128, 256, 512),) * 3
    # at prediction, 150 proposals as torchvision's fasterrcnn_mobilenet_v3_large_320_fpn keeps (1000 by default):
    # the box and mask heads run per proposal, and at 320 px the extra ones add time, not recall
    kwargs = {"rpn_pre_nms_top_n_test": 150, "rpn_post_nms_top_n_test": 150, "rpn_score_thresh": 0.05, **kwargs}
    return tvd.MaskRCNN(backbone, num_classes,
                        rpn_anchor_generator=AnchorGenerator(anchor_sizes, ((0.5, 1.0, 2.0),) * len(anchor_sizes)),
                        **kwargs)


MODELS: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in [
        ModelSpec("ssdlite320_mobilenet_v3_large", "detection", _det(tvd.ssdlite320_mobilenet_v3_large), 320),
        ModelSpec("fasterrcnn_mobilenet_v3_large_320_fpn", "detection",
                  _det(tvd.fasterrcnn_mobilenet_v3_large_320_fpn), 320),
        ModelSpec("fasterrcnn_mobilenet_v3_large_fpn", "detection", _det(tvd.fasterrcnn_mobilenet_v3_large_fpn), 800),
        ModelSpec("fasterrcnn_resnet50_fpn", "detection", _det(tvd.fasterrcnn_resnet50_fpn), 800),
        ModelSpec("retinanet_resnet50_fpn", "detection", _det(tvd.retinanet_resnet50_fpn), 800),
        ModelSpec("fcos_resnet50_fpn", "detection", _det(tvd.fcos_resnet50_fpn), 800),
        ModelSpec("maskrcnn_mobilenet_v3_large_fpn", "segmentation", _det(maskrcnn_mobilenet_v3_large_fpn), 320),
        ModelSpec("maskrcnn_resnet50_fpn", "segmentation", _det(tvd.maskrcnn_resnet50_fpn), 800),
        ModelSpec("resnet18", "classification", _cls(tvm.resnet18), 224),
        ModelSpec("resnet50", "classification", _cls(tvm.resnet50), 224),
        ModelSpec("mobilenet_v3_large", "classification", _cls(tvm.mobilenet_v3_large), 224),
        ModelSpec("efficientnet_b0", "classification", _cls(tvm.efficientnet_b0), 224),
    ]
}


def build_model(name: str, num_classes: int, image_size: int | None = None, weights: str = "",
                anchor_scale: float = 1.0) -> torch.nn.Module:
    """Build model `name`; `weights` is an optional local file holding a state dict (or {'state_dict': ...});
    `anchor_scale` multiplies a detector's anchor sizes (ValueError for FCOS, which has none)."""
    if name not in MODELS:
        raise KeyError(f"unknown model {name!r}; known: {', '.join(sorted(MODELS))}")
    spec = MODELS[name]
    model = spec.builder(num_classes, image_size or spec.default_size, anchor_scale)
    if weights:
        state = torch.load(weights, map_location="cpu", weights_only=True)
        state = state.get("state_dict", state) if isinstance(state, dict) else state
        model.load_state_dict(state)
    return model


def save_trained(path, model: torch.nn.Module, name: str, image_size: int, categories: list[dict],
                 dataset_hash: str | None = None, anchor_scale: float = 1.0) -> None:
    """Write the `model.pt` that `load_trained` reads (format in docs/architecture.md): the registry `name`,
    the input side, the `categories` ({"id", "name"}; a detector's label i is categories[i-1], 0 background; a
    classifier's class i is categories[i]), the
    weights on the CPU and, when given, the hash of the dataset snapshot trained on and the anchor scale."""
    categories = [{"id": c["id"], "name": c["name"]} for c in categories]
    task = MODELS[name].task
    blob = {
        "model": name,
        "task": task,
        # a classifier's outputs are the K classes; a detector's add the background (label 0)
        "num_classes": len(categories) + (0 if task == "classification" else 1),
        "image_size": image_size,
        "categories": categories,
        "label_to_category": [c["id"] for c in categories],
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
    }
    if dataset_hash is not None:
        blob["dataset_hash"] = dataset_hash
    if anchor_scale != 1.0:  # written only when set: older model.pt files read as 1
        blob["anchor_scale"] = float(anchor_scale)
    torch.save(blob, path)


def load_trained(path: str, map_location: str = "cpu") -> tuple[torch.nn.Module, dict]:
    """Load the `model.pt` the train stage writes: returns (model in eval mode, its metadata dict)."""
    blob = torch.load(path, map_location=map_location, weights_only=False)
    model = build_model(blob["model"], blob["num_classes"], blob["image_size"],
                        anchor_scale=float(blob.get("anchor_scale", 1.0)))
    model.load_state_dict(blob["state_dict"])
    model.eval()
    meta = {k: v for k, v in blob.items() if k != "state_dict"}
    return model, meta
