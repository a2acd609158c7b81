"""What training and evaluating an image classifier needs beyond the detectors' machinery.

The train loop (`pipeline.training.engine.fit`) is the same for every task: DDP, resume, checkpoints, EMA,
BatchNorm recalibration and MLflow logging do not care what the model predicts. A classifier differs in three
places, kept here:

- augmentation (`ClassificationAugment`): the detectors' `Augment` steps that move pixels without boxes to
  follow (photometric distortion, zoom out, scale jitter, flips), with the same per-sample seeds, so a resumed
  run sees the same images; the SSD IoU crop needs boxes and does not apply (`not_applicable` names it);
- prediction (`predict_logits`): the logits [N, K] of a split and its true class indices, in dataset order;
- the class table: class i of a classifier is `categories[i]` (sorted by id; no background class).
"""
from __future__ import annotations

import logging

import torch
from torch.utils.data import DataLoader
from torchvision import tv_tensors
from torchvision.transforms import v2

from pipeline.datasets.canonical import collate
from pipeline.training.augment import Augment, sample_seed
from pipeline.training.progress import progress as progress_bar

log = logging.getLogger(__name__)

# train.* options that only mean something for boxes: (key, its "off" value, why)
BOX_ONLY_OPTIONS = (("aug_iou_crop", 0.0, "the SSD IoU crop keeps crops by their overlap with boxes"),)


def not_applicable(tc) -> list[str]:
    """One line per train option set to something a classifier cannot use (the train stage logs them)."""
    lines = [f"train.{key}={getattr(tc, key):g} does not apply to classification ({why}): off"
             for key, off, why in BOX_ONLY_OPTIONS if getattr(tc, key) != off]
    if tc.anchor_scale == "auto":
        lines.append("train.anchor_scale auto means nothing for a classifier (no anchors): 1 is used")
    return lines


class ClassificationAugment(Augment):
    """A ClassificationDataset with the configured augmentation: photometric distortion -> zoom out -> scale
    jitter -> vertical / horizontal flip -> back to S x S, seeded per sample exactly as `Augment` is. The
    target (the class index) is never changed."""

    def __getitem__(self, index: int):
        image, target = self.dataset[index]
        img = tv_tensors.Image(image)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(sample_seed(self.seed, self.epoch, index))
            if self.before is not None:
                img = self.before(img)
            if self.jitter is not None:
                img = self.jitter(img)
            if self.vflip > 0 and float(torch.rand(())) < self.vflip:
                img = v2.functional.vertical_flip(img)
        if self.flipped(index):
            img = v2.functional.horizontal_flip(img)
        if tuple(img.shape[-2:]) != (self.size, self.size):  # zoom out made a larger canvas
            img = v2.functional.resize(img, [self.size, self.size], antialias=True)
        return img.as_subclass(torch.Tensor).clamp(0.0, 1.0), target


@torch.inference_mode()
def predict_logits(model: torch.nn.Module, dataset, batch_size: int = 32, device="cpu",
                   progress: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits float32 [N, K] on the CPU, true class indices int64 [N]) of every image of `dataset` (a
    ClassificationDataset), in dataset order."""
    device = torch.device(device)
    was_training = model.training
    model.eval().to(device)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=0, collate_fn=collate,
                        pin_memory=device.type == "cuda")
    logits, labels = [], []
    try:
        for images, targets in progress_bar(loader, desc="predict", unit="batch", disable=not progress, leave=False):
            logits.append(model(torch.stack(images).to(device)).float().cpu())
            labels += [int(t["label"]) for t in targets]
    finally:
        model.train(was_training)
    out = torch.cat(logits) if logits else torch.zeros(0, 0)
    return out, torch.as_tensor(labels, dtype=torch.int64)
