"""Training augmentation with torchvision.transforms.v2 on `tv_tensors.BoundingBoxes`.

Each sample's randomness comes from its own seed, a hash of (train.seed, epoch, index): no RNG state of a
process, worker or rank is involved, so a resumed run, any worker count and any world size see exactly the
same augmented images as an uninterrupted run. The v2 transforms draw from torch's global RNG, so they run
inside `torch.random.fork_rng()` seeded with that per-sample seed (the caller's RNG is left untouched).

Order (each step configurable in `train`, off unless its probability or range says otherwise):
photometric distortion -> zoom out -> IoU crop -> scale jitter -> horizontal / vertical flip -> back to S x S,
boxes clipped and degenerate ones dropped. With the defaults only the horizontal flip is on, decided by the
same hash bit as before, so the default training is unchanged.
"""
from __future__ import annotations

import hashlib

import torch
from torchvision import tv_tensors
from torchvision.transforms import v2

from pipeline.errors import ConfigError


def sample_seed(seed: int, epoch: int, index: int) -> int:
    return int.from_bytes(hashlib.blake2b(f"{seed}:{epoch}:{index}".encode(), digest_size=8).digest(), "little")


class Augment(torch.utils.data.Dataset):
    """A CanonicalDataset with the configured augmentation; `set_epoch(e)` before each epoch."""

    def __init__(self, dataset, cfg):
        self.dataset = dataset
        self.seed = int(cfg.seed)
        self.epoch = 0
        self.size = int(dataset.image_size)
        self.hflip = float(cfg.aug_hflip)
        self.vflip = float(cfg.aug_vflip)
        steps = []
        if cfg.aug_photometric > 0:
            steps.append(v2.RandomPhotometricDistort(p=cfg.aug_photometric))
        if cfg.aug_zoom_out > 0:
            steps.append(v2.RandomZoomOut(fill=0.5, side_range=(1.0, float(cfg.aug_zoom_out_max)),
                                          p=1.0 if cfg.aug_zoom_out >= 1 else cfg.aug_zoom_out))
        self.iou_crop = v2.RandomIoUCrop() if cfg.aug_iou_crop > 0 else None
        self.iou_crop_p = float(cfg.aug_iou_crop)
        self.before = v2.Compose(steps) if steps else None
        lo, hi = (float(v) for v in cfg.aug_scale_jitter)
        if not 0 < lo <= hi:
            raise ConfigError(f"'train.aug_scale_jitter': {list(cfg.aug_scale_jitter)}: need 0 < low <= high")
        self.jitter = v2.RandomAffine(degrees=0.0, scale=(lo, hi), fill=0.5) if (lo, hi) != (1.0, 1.0) else None
        self.geometric = bool(cfg.aug_zoom_out > 0 or cfg.aug_iou_crop > 0 or self.jitter is not None)
        self.finish = v2.Compose([v2.Resize((self.size, self.size), antialias=True), v2.ClampBoundingBoxes(),
                                  v2.SanitizeBoundingBoxes(min_size=1.0)])

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.dataset)

    def flipped(self, index: int) -> bool:
        """The horizontal flip decision: the first hash bit at the default 1/2 (as it always was)."""
        digest = hashlib.blake2b(f"{self.seed}:{self.epoch}:{index}".encode(), digest_size=1).digest()
        if self.hflip == 0.5:
            return bool(digest[0] & 1)
        return digest[0] / 256.0 < self.hflip

    def __getitem__(self, index: int):
        image, target = self.dataset[index]
        boxes = tv_tensors.BoundingBoxes(target["boxes"], format="XYXY", canvas_size=tuple(image.shape[-2:]))
        img = tv_tensors.Image(image)
        sample = {"boxes": boxes, "labels": target["labels"]}
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(sample_seed(self.seed, self.epoch, index))
            if self.before is not None:
                img, sample = self.before(img, sample)
            if self.iou_crop is not None and len(sample["boxes"]) and float(torch.rand(())) < self.iou_crop_p:
                img, sample = self.iou_crop(img, sample)
                img, sample = v2.SanitizeBoundingBoxes(min_size=1.0)(img, sample)
            if self.jitter is not None:
                img, sample = self.jitter(img, sample)
            if self.vflip > 0 and float(torch.rand(())) < self.vflip:
                img, sample = v2.functional.vertical_flip(img), {**sample, "boxes": v2.functional.vertical_flip(
                    sample["boxes"])}
        if self.flipped(index):
            img, sample = v2.functional.horizontal_flip(img), {**sample, "boxes": v2.functional.horizontal_flip(
                sample["boxes"])}
        if self.geometric:  # back to S x S, boxes clipped, the ones cropped away dropped
            img, sample = self.finish(img, sample)
        out = {**target, "boxes": sample["boxes"].as_subclass(torch.Tensor).float(),
               "labels": sample["labels"]}
        return img.as_subclass(torch.Tensor), out
