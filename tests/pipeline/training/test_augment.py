"""Augmentation: boxes move with the image, every configured step runs, and each sample depends on
(seed, epoch, index) alone, so a resumed run, any worker count and any rank see the same images."""
from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch
from PIL import Image

from pipeline.config import TrainConfig
from pipeline.datasets.canonical import CanonicalDataset
from pipeline.training.augment import Augment

SIZE = 64


@pytest.fixture
def boxes_dataset(tmp_path):
    """Three 64 px images with textured boxes (the photometric steps need some contrast)."""
    root = tmp_path / "ds"
    (root / "images").mkdir(parents=True)
    rng = np.random.default_rng(0)
    images, anns = [], []
    for i in range(3):
        Image.fromarray(rng.integers(0, 255, (SIZE, SIZE, 3), dtype=np.uint8)).save(root / "images" / f"{i}.png")
        images.append({"id": i + 1, "file_name": f"{i}.png", "width": SIZE, "height": SIZE, "split": "train"})
        anns += [{"id": 10 * i + 1, "image_id": i + 1, "category_id": 1, "bbox": [8, 10, 20, 24], "iscrowd": 0},
                 {"id": 10 * i + 2, "image_id": i + 1, "category_id": 2, "bbox": [36, 30, 18, 22], "iscrowd": 0}]
    coco = {"images": images, "annotations": anns,
            "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}]}
    (root / "annotations.json").write_text(json.dumps(coco))
    return CanonicalDataset(root, "train", SIZE)


def test_default_is_the_horizontal_flip_alone(boxes_dataset):
    aug = Augment(boxes_dataset, TrainConfig())
    flips = {}
    for epoch in range(8):
        aug.set_epoch(epoch)
        flips[epoch] = aug.flipped(0)
        image, target = aug[0]
        plain_image, plain = boxes_dataset[0]
        if flips[epoch]:
            assert torch.equal(image, plain_image.flip(-1))
            x1, y1, x2, y2 = plain["boxes"][0].tolist()
            assert target["boxes"][0].tolist() == pytest.approx([SIZE - x2, y1, SIZE - x1, y2])
        else:
            assert torch.equal(image, plain_image) and torch.equal(target["boxes"], plain["boxes"])
    assert set(flips.values()) == {True, False}  # both happen over a few epochs
    aug.set_epoch(3)
    first = aug.flipped(0)
    random.seed(1234), torch.manual_seed(99)
    assert aug.flipped(0) == first


ALL_ON = dict(aug_vflip=0.5, aug_photometric=1.0, aug_zoom_out=1.0, aug_zoom_out_max=2.0, aug_iou_crop=1.0,
              aug_scale_jitter=(0.8, 1.2))


def test_every_step_keeps_boxes_on_their_objects_at_size_s(boxes_dataset):
    aug = Augment(boxes_dataset, TrainConfig(**ALL_ON))
    changed = 0
    for epoch in range(6):
        aug.set_epoch(epoch)
        for i in range(len(boxes_dataset)):
            image, target = aug[i]
            assert image.shape == (3, SIZE, SIZE) and image.dtype == torch.float32
            boxes = target["boxes"]
            assert len(boxes) == len(target["labels"]) and boxes.dtype == torch.float32
            assert (boxes[:, 2:] - boxes[:, :2] >= 1.0).all() and (boxes >= 0).all() and (boxes <= SIZE).all()
            assert set(target["labels"].tolist()) <= {1, 2}
            changed += not torch.equal(image, boxes_dataset[i][0])
    assert changed == 6 * len(boxes_dataset)


def test_each_sample_depends_on_seed_epoch_and_index_alone(boxes_dataset):
    """What makes resume exact: the same (seed, epoch, index) gives the same sample whatever the RNG state,
    and another epoch gives another sample."""
    cfg = TrainConfig(**ALL_ON)
    a, b = Augment(boxes_dataset, cfg), Augment(boxes_dataset, cfg)
    a.set_epoch(2)
    b.set_epoch(2)
    torch.manual_seed(1)
    first = a[1]
    torch.manual_seed(12345), random.seed(7), np.random.seed(3)
    state = torch.get_rng_state()
    again = b[1]
    assert torch.equal(torch.get_rng_state(), state)  # the caller's RNG is left alone
    assert torch.equal(first[0], again[0]) and torch.equal(first[1]["boxes"], again[1]["boxes"])
    b.set_epoch(3)
    assert not torch.equal(b[1][0], first[0])


def test_bad_augmentation_values_name_the_key():
    from pipeline.config import load_config
    from pipeline.errors import ConfigError

    with pytest.raises(ConfigError, match="aug_photometric"):
        load_config(None, ["train.aug_photometric=1.5"])


def test_an_empty_or_reversed_scale_range_names_the_key(boxes_dataset):
    from pipeline.errors import ConfigError

    with pytest.raises(ConfigError, match="'train.aug_scale_jitter'"):
        Augment(boxes_dataset, TrainConfig(aug_scale_jitter=(1.2, 0.8)))
