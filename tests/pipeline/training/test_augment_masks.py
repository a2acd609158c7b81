"""Augmentation of a segmentation dataset: every geometric step moves the instance masks exactly as their boxes,
a box cropped away takes its mask with it, and a detection dataset's targets stay mask-free."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from pipeline.config import TrainConfig
from pipeline.datasets.canonical import CanonicalDataset
from pipeline.training.augment import Augment

SIZE = 64


def _dataset(root, segmentation: bool = True) -> CanonicalDataset:
    """Four 64 px images, each with an axis-aligned square and rectangle given as polygons (so each mask's box is
    exactly its bbox, and stays so under flips, crops, zooms and scaling)."""
    (root / "images").mkdir(parents=True)
    rng = np.random.default_rng(0)
    images, anns = [], []
    for i in range(4):
        Image.fromarray(rng.integers(0, 255, (SIZE, SIZE, 3), dtype=np.uint8)).save(root / "images" / f"{i}.png")
        images.append({"id": i + 1, "file_name": f"{i}.png", "width": SIZE, "height": SIZE, "split": "train"})
        for k, (x, y, w, h) in enumerate(((6, 10, 20, 24), (36, 30, 18, 22))):
            ann = {"id": 10 * i + k, "image_id": i + 1, "category_id": k + 1, "bbox": [x, y, w, h], "iscrowd": 0}
            if segmentation:
                ann["segmentation"] = [[x, y, x + w, y, x + w, y + h, x, y + h]]
            anns.append(ann)
    coco = {"images": images, "annotations": anns, "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}]}
    if segmentation:
        coco["task"] = "segmentation"
    (root / "annotations.json").write_text(json.dumps(coco))
    return CanonicalDataset(root, "train", SIZE)


def _mask_box(mask: torch.Tensor) -> list[int]:
    ys, xs = torch.nonzero(mask, as_tuple=True)
    return [int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1]


def _assert_masks_match_boxes(target: dict, slack: float) -> None:
    assert target["masks"].dtype == torch.uint8
    assert target["masks"].shape == (len(target["boxes"]), SIZE, SIZE)
    for mask, box in zip(target["masks"], target["boxes"].tolist()):
        assert mask.any()
        assert max(abs(a - b) for a, b in zip(_mask_box(mask), box)) <= slack, (_mask_box(mask), box)


def test_the_dataset_gives_masks_aligned_with_its_boxes(tmp_path):
    ds = _dataset(tmp_path / "ds")
    _, target = ds[0]
    _assert_masks_match_boxes(target, slack=0)
    assert _mask_box(target["masks"][0]) == [6, 10, 26, 34]


def test_a_flipped_mask_still_matches_its_flipped_box(tmp_path):
    ds = _dataset(tmp_path / "ds")
    aug = Augment(ds, TrainConfig(recipe="none", aug_hflip=1.0, aug_vflip=1.0))
    _, target = aug[0]
    _, plain = ds[0]
    assert not torch.equal(target["masks"], plain["masks"])
    assert torch.equal(target["masks"], plain["masks"].flip(-1).flip(-2))
    _assert_masks_match_boxes(target, slack=0)
    assert target["boxes"][0].tolist() == [SIZE - 26, SIZE - 34, SIZE - 6, SIZE - 10]


@pytest.mark.parametrize("steps", [
    {"aug_zoom_out": 1.0, "aug_zoom_out_max": 2.0},
    {"aug_iou_crop": 1.0},
    {"aug_scale_jitter": (0.6, 1.4)},
    {"aug_zoom_out": 0.5, "aug_iou_crop": 0.5, "aug_scale_jitter": (0.7, 1.3), "aug_vflip": 0.5,
     "aug_photometric": 0.5},
])
def test_every_geometric_step_moves_masks_with_their_boxes(tmp_path, steps):
    ds = _dataset(tmp_path / "ds")
    aug = Augment(ds, TrainConfig(recipe="none", **steps))
    moved = 0
    for epoch in range(3):
        aug.set_epoch(epoch)
        for i in range(len(ds)):
            _, target = aug[i]
            _, plain = ds[i]
            moved += not torch.equal(target["boxes"], plain["boxes"])
            # masks are resampled nearest-neighbour, boxes exactly: after a crop is enlarged back to 64 px a mask
            # edge may sit up to one source pixel times the enlargement away (a step that forgot the masks would
            # leave them tens of pixels from their boxes)
            _assert_masks_match_boxes(target, slack=3.0)
            assert len(target["masks"]) == len(target["labels"])  # a dropped box drops its mask
    assert moved


def test_zoom_out_pads_masks_with_background(tmp_path):
    ds = _dataset(tmp_path / "ds")
    aug = Augment(ds, TrainConfig(recipe="none", aug_zoom_out=1.0, aug_zoom_out_max=3.0, aug_hflip=0.0))
    _, target = aug[1]
    assert set(target["masks"].unique().tolist()) <= {0, 1}
    area = target["masks"].flatten(1).sum(1).float()
    boxes = target["boxes"]
    assert torch.allclose(area, (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]), rtol=0.25)


def test_a_detection_dataset_has_no_masks(tmp_path):
    ds = _dataset(tmp_path / "ds", segmentation=False)
    aug = Augment(ds, TrainConfig(recipe="none", aug_zoom_out=1.0))
    assert "masks" not in ds[0][1] and "masks" not in aug[0][1]
