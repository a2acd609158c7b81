"""The canonical dataset (COCO `annotations.json` + `images/`, each image tagged with its `split`) as a
torch Dataset, and the COCO helpers the train, evaluate and export stages share.

Images are decoded with torchvision.io (fast, no PIL), converted to RGB float32 in 0..1 and resized to
S x S without preserving the aspect ratio: the same input the deployed model receives. Boxes come back as
xyxy in resized pixels; `orig_size` lets predictions be mapped back onto the original image.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.io import ImageReadMode, decode_image, read_file

SPLITS = ("train", "val", "test")


def load_coco(root: str | Path) -> dict:
    path = Path(root) / "annotations.json"
    return json.loads(path.read_text())


def split_coco(coco: dict, split: str | None) -> dict:
    """COCO ground truth restricted to one split (`None` = everything), for scoring with COCOeval."""
    if split is not None and split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS} or None, got {split!r}")
    images = [im for im in coco["images"] if split is None or im.get("split") == split]
    ids = {im["id"] for im in images}
    out = {k: v for k, v in coco.items() if k not in ("images", "annotations")}
    out["images"] = images
    out["annotations"] = [a for a in coco.get("annotations", []) if a["image_id"] in ids]
    out["categories"] = sorted(coco["categories"], key=lambda c: c["id"])
    return out


def read_rgb(path: str | Path) -> Tensor:
    """uint8 [3, H, W] RGB; grey, palette, RGBA, CMYK and 16-bit images become 8-bit RGB.

    torchvision.io decodes JPEG, PNG, WebP and GIF; BMP and TIFF, which exports hold and ingest accepts
    (formats.base.IMAGE_SUFFIXES), go through Pillow. A 16-bit grey keeps its high byte (Pillow's own RGB
    conversion would clip it at 255).
    """
    try:
        img = decode_image(read_file(str(path)), mode=ImageReadMode.RGB)
    except RuntimeError as exc:
        if "Unsupported image file" not in str(exc):
            raise
        return _read_rgb_pillow(path)
    if img.dtype == torch.uint16:
        img = (img.to(torch.int32) >> 8).to(torch.uint8)
    return img


def _read_rgb_pillow(path: str | Path) -> Tensor:
    import numpy as np
    from PIL import Image

    with Image.open(path) as im:
        if im.mode.startswith("I;16") or im.mode == "I":  # 16-bit grey: Pillow's convert("RGB") would clip it
            grey = (np.asarray(im, dtype=np.int64) >> 8).clip(0, 255).astype(np.uint8)
            return torch.from_numpy(grey)[None].expand(3, -1, -1).contiguous()
        return torch.from_numpy(np.array(im.convert("RGB"))).permute(2, 0, 1).contiguous()


def to_input(img: Tensor, image_size: int) -> Tensor:
    """uint8 [3, H, W] -> the model's input: float32 [3, S, S] RGB in 0..1 (aspect ratio not preserved)."""
    out = img.float().div_(255.0)
    if tuple(out.shape[-2:]) != (image_size, image_size):
        out = F.interpolate(out[None], size=(image_size, image_size), mode="bilinear", align_corners=False,
                            antialias=True)[0].clamp_(0.0, 1.0)
    return out


def load_image(path: str | Path, image_size: int) -> Tensor:
    """float32 [3, S, S] RGB in 0..1: exactly what CanonicalDataset feeds the model."""
    return to_input(read_rgb(path), image_size)


class CanonicalDataset(torch.utils.data.Dataset):
    """One split of a canonical dataset directory.

    `categories` are sorted by id; model label `i` (1..K) is `categories[i-1]`, 0 is background.
    `transforms(image, target) -> (image, target)` is applied after resizing, when given. `coco`, when given,
    is root's annotations.json already read (images are still read from root/images/).
    """

    def __init__(self, root: str | Path, split: str | None, image_size: int, transforms=None,
                 coco: dict | None = None):
        self.root = Path(root)
        self.split = split
        self.image_size = int(image_size)
        self.transforms = transforms
        self.coco = load_coco(self.root) if coco is None else coco
        self.categories: list[dict] = sorted(self.coco["categories"], key=lambda c: c["id"])
        self.cat_to_label: dict[int, int] = {c["id"]: i + 1 for i, c in enumerate(self.categories)}
        self.label_to_cat: dict[int, int] = {v: k for k, v in self.cat_to_label.items()}
        # a segmentation dataset (annotations.json "task"): targets also carry "masks" uint8 [N, S, S]
        self.segmentation = self.coco.get("task") == "segmentation"
        subset = split_coco(self.coco, split)
        self.image_infos: list[dict] = subset["images"]
        self._anns: dict[int, list[dict]] = {im["id"]: [] for im in self.image_infos}
        for ann in subset["annotations"]:
            self._anns[ann["image_id"]].append(ann)

    @property
    def num_classes(self) -> int:
        """K, the number of object categories (the model is built with K + 1)."""
        return len(self.categories)

    def __len__(self) -> int:
        return len(self.image_infos)

    def annotations(self, i: int) -> list[dict]:
        return self._anns[self.image_infos[i]["id"]]

    def target(self, i: int, orig_h: int, orig_w: int) -> dict:
        """Training target for image i: non-crowd boxes as xyxy in resized pixels, degenerate ones dropped."""
        info = self.image_infos[i]
        sx, sy = self.image_size / orig_w, self.image_size / orig_h
        boxes, labels, segs = [], [], []
        for ann in self.annotations(i):
            if ann.get("iscrowd", 0):
                continue
            x, y, w, h = (float(v) for v in ann["bbox"])
            x1, y1 = max(x, 0.0) * sx, max(y, 0.0) * sy
            x2, y2 = min(x + w, orig_w) * sx, min(y + h, orig_h) * sy
            if x2 - x1 < 1e-3 or y2 - y1 < 1e-3:
                continue
            boxes.append([x1, y1, x2, y2])
            labels.append(self.cat_to_label[ann["category_id"]])
            segs.append(ann.get("segmentation"))
        target = {
            "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
            "labels": torch.tensor(labels, dtype=torch.int64),
            "image_id": int(info["id"]),
            "orig_size": (int(orig_h), int(orig_w)),
        }
        if self.segmentation:  # instance masks, aligned with the boxes kept (pipeline/datasets/masks.py)
            from pipeline.datasets.masks import rasterise

            target["masks"] = rasterise(segs, orig_h, orig_w, self.image_size)
        return target

    def __getitem__(self, i: int) -> tuple[Tensor, dict]:
        info = self.image_infos[i]
        raw = read_rgb(self.root / "images" / info["file_name"])
        orig_h, orig_w = int(raw.shape[-2]), int(raw.shape[-1])
        img = to_input(raw, self.image_size)
        target = self.target(i, orig_h, orig_w)
        if self.transforms is not None:
            img, target = self.transforms(img, target)
        return img, target


def collate(batch) -> tuple[list[Tensor], list[dict]]:
    """Detection batches are lists: images may carry different numbers of boxes."""
    images, targets = zip(*batch) if batch else ((), ())
    return list(images), list(targets)


class ClassificationDataset(CanonicalDataset):
    """One split of a canonical classification dataset (`"task": "classification"` in annotations.json): every
    image carries one annotation `{"id", "image_id", "category_id"}` and no box.

    Class `i` (0..K-1) is `categories[i]` (sorted by id; no background class): `cat_to_label` / `label_to_cat`
    map between them. Items are (image float32 [3, S, S] in 0..1, {"label", "image_id", "orig_size"}); an
    image with no annotation has label -1 (ingest never writes one; the cross entropy would refuse it).
    """

    def __init__(self, root: str | Path, split: str | None, image_size: int, transforms=None,
                 coco: dict | None = None):
        super().__init__(root, split, image_size, transforms, coco)
        self.cat_to_label = {c["id"]: i for i, c in enumerate(self.categories)}
        self.label_to_cat = {v: k for k, v in self.cat_to_label.items()}

    def label(self, i: int) -> int:
        anns = self.annotations(i)
        return self.cat_to_label[anns[0]["category_id"]] if anns else -1

    def labels(self) -> list[int]:
        return [self.label(i) for i in range(len(self))]

    def target(self, i: int, orig_h: int, orig_w: int) -> dict:
        return {"label": self.label(i), "image_id": int(self.image_infos[i]["id"]),
                "orig_size": (int(orig_h), int(orig_w))}
