"""Training augmentation with torchvision.transforms.v2 on `tv_tensors.BoundingBoxes`.

Each sample's randomness comes from its own seed, a hash of (train.seed, epoch, index): no RNG state of a
process, worker or rank is involved, so a resumed run, any worker count and any world size see exactly the
same augmented images as an uninterrupted run. The v2 transforms draw from torch's global RNG, so they run
inside `torch.random.fork_rng()` seeded with that per-sample seed (the caller's RNG is left untouched).

Order (each step configurable in `train`, off unless its probability or range says otherwise):
photometric distortion -> zoom out -> IoU crop -> scale jitter -> horizontal / vertical flip -> back to S x S,
boxes clipped and degenerate ones dropped. A target with instance `masks` (a segmentation dataset) has them
moved by every geometric step exactly as its boxes (`tv_tensors.Mask`; padding is background), and a box
dropped drops its mask. With the defaults only the horizontal flip is on, decided by the
same hash bit as before, so the default training is unchanged.
"""
from __future__ import annotations

import hashlib
import io

import torch
from torchvision import tv_tensors
from torchvision.transforms import v2

from pipeline.errors import ConfigError


# padding added by zoom out and scale jitter: mid grey in the image, background in instance masks
_FILL = {tv_tensors.Image: 0.5, tv_tensors.Mask: 0}


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
            steps.append(v2.RandomZoomOut(fill=_FILL, side_range=(1.0, float(cfg.aug_zoom_out_max)),
                                          p=1.0 if cfg.aug_zoom_out >= 1 else cfg.aug_zoom_out))
        self.iou_crop = v2.RandomIoUCrop() if cfg.aug_iou_crop > 0 else None
        self.iou_crop_p = float(cfg.aug_iou_crop)
        self.before = v2.Compose(steps) if steps else None
        lo, hi = (float(v) for v in cfg.aug_scale_jitter)
        if not 0 < lo <= hi:
            raise ConfigError(f"'train.aug_scale_jitter': {list(cfg.aug_scale_jitter)}: need 0 < low <= high")
        self.jitter = v2.RandomAffine(degrees=0.0, scale=(lo, hi), fill=_FILL) if (lo, hi) != (1.0, 1.0) else None
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
        if "masks" in target:
            sample["masks"] = tv_tensors.Mask(target["masks"])
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
                img, sample = v2.functional.vertical_flip(img), _flip(sample, v2.functional.vertical_flip)
        if self.flipped(index):
            img, sample = v2.functional.horizontal_flip(img), _flip(sample, v2.functional.horizontal_flip)
        if self.geometric:  # back to S x S, boxes clipped, the ones cropped away dropped
            img, sample = self.finish(img, sample)
        out = {**target, "boxes": sample["boxes"].as_subclass(torch.Tensor).float(),
               "labels": sample["labels"]}
        if "masks" in sample:
            out["masks"] = sample["masks"].as_subclass(torch.Tensor)
        return img.as_subclass(torch.Tensor), out


def _flip(sample: dict, flip) -> dict:
    """`sample` with its boxes (and masks, when it has them) flipped by `flip`."""
    out = {**sample, "boxes": flip(sample["boxes"])}
    if "masks" in sample:
        out["masks"] = flip(sample["masks"])
    return out


def describe(cfg) -> list[str]:
    """The steps `cfg` (a TrainConfig) turns on, with their settings and keys, in the order Augment applies them."""
    steps = []
    if cfg.aug_photometric > 0:
        steps.append(f"photometric distortion p={cfg.aug_photometric:g} (train.aug_photometric)")
    if cfg.aug_zoom_out > 0:
        steps.append(f"zoom out p={cfg.aug_zoom_out:g} up to {cfg.aug_zoom_out_max:g}x "
                     "(train.aug_zoom_out, aug_zoom_out_max)")
    if cfg.aug_iou_crop > 0:
        steps.append(f"IoU crop p={cfg.aug_iou_crop:g} (train.aug_iou_crop)")
    lo, hi = (float(v) for v in cfg.aug_scale_jitter)
    if (lo, hi) != (1.0, 1.0):
        steps.append(f"scale jitter {lo:g}-{hi:g} (train.aug_scale_jitter)")
    if cfg.aug_vflip > 0:
        steps.append(f"vertical flip p={cfg.aug_vflip:g} (train.aug_vflip)")
    if cfg.aug_hflip > 0:
        steps.append(f"horizontal flip p={cfg.aug_hflip:g} (train.aug_hflip)")
    return steps


STRIP_TILE_MAX = 320  # tiles larger than this are drawn scaled down (the PNG is embedded in the dataset card)
STRIP_GAP = 2  # white pixels between tiles
STRIP_COLOURS = ((230, 25, 75), (60, 180, 75), (67, 99, 216), (245, 130, 49), (145, 30, 180), (66, 212, 244),
                 (240, 50, 230), (154, 99, 36))


def strip(dataset, cfg, indices: list[int], epochs: int = 2):
    """A `pipeline.datasets.strip.Strip` (the dataset card embeds it). Rows = epochs 0..epochs-1, columns =
    `indices` of `dataset` (the train split as train loads it), each sample exactly as Augment(dataset, cfg) gives it to training, with the boxes and class names of its
    transformed target drawn (boxes a crop dropped are gone from the target, so they are not drawn)."""
    from PIL import Image, ImageDraw

    from pipeline.datasets.strip import Strip

    aug = Augment(dataset, cfg)
    size = aug.size
    tile = min(size, STRIP_TILE_MAX)
    scale = tile / size
    step = tile + STRIP_GAP
    names = [c["name"] for c in dataset.categories]
    canvas = Image.new("RGB", (step * max(1, len(indices)) - STRIP_GAP, step * epochs - STRIP_GAP), "white")
    draw = ImageDraw.Draw(canvas)
    tiles: list[list[dict]] = []
    for epoch in range(epochs):
        aug.set_epoch(epoch)
        row = []
        for col, index in enumerate(indices):
            image, target = aug[index]
            pixels = image.clamp(0, 1).mul(255).round().to(torch.uint8).permute(1, 2, 0).numpy()
            img = Image.fromarray(pixels, "RGB")
            if tile != size:
                img = img.resize((tile, tile), Image.Resampling.BILINEAR)
            ox, oy = col * step, epoch * step
            canvas.paste(img, (ox, oy))
            boxes, labels = target["boxes"].tolist(), target["labels"].tolist()
            for (x1, y1, x2, y2), label in zip(boxes, labels):
                colour = STRIP_COLOURS[(label - 1) % len(STRIP_COLOURS)]
                left, top = ox + round(x1 * scale), oy + round(y1 * scale)
                draw.rectangle([left, top, ox + round(x2 * scale) - 1, oy + round(y2 * scale) - 1], outline=colour)
                # the class name on a tab of the class colour above the box (inside it at the tile's top edge),
                # cut at the tile's edges
                _, t, r, b = draw.textbbox((left + 1, top), names[label - 1])
                height = b - t + 2
                y = top - height if top - height >= oy else top
                tab = [left, y, min(r + 1, ox + tile - 1), min(y + height - 1, oy + tile - 1)]
                draw.rectangle(tab, fill=colour)
                text = Image.new("RGB", (tab[2] - tab[0] + 1, tab[3] - tab[1] + 1), colour)
                ImageDraw.Draw(text).text((1, top - t + 1), names[label - 1], fill=(255, 255, 255))
                canvas.paste(text, (tab[0], tab[1]))
            row.append({"index": index, "epoch": epoch, "boxes": boxes, "labels": labels,
                        "names": [names[label - 1] for label in labels]})
        tiles.append(row)
    buf = io.BytesIO()
    canvas.save(buf, format="PNG", optimize=False)
    steps = describe(cfg)
    shown = (f"Columns: {len(indices)} training images; rows: epochs 0-{epochs - 1} exactly as train feeds them "
             f"(train.seed={cfg.seed}), at the {size} px train input size"
             + (f" (drawn at {tile} px)" if tile != size else "") + ".")
    if steps:
        caption = "Augmentation: " + "; ".join(steps) + ". " + shown
    else:
        caption = ("Augmentation off (every train.aug_* step is off): these are the plain resized samples. "
                   + shown)
    return Strip(png=buf.getvalue(), caption=caption, tiles=tiles, scale=scale)
