"""Augmentation: boxes move with the image, every configured step runs, and each sample depends on
(seed, epoch, index) alone, so a resumed run, any worker count and any rank see the same images."""
from __future__ import annotations

import io
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


def test_without_a_recipe_the_default_is_the_horizontal_flip_alone(boxes_dataset):
    aug = Augment(boxes_dataset, TrainConfig(recipe="none"))
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
    aug = Augment(boxes_dataset, TrainConfig(recipe="none", **ALL_ON))
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
    cfg = TrainConfig(recipe="none", **ALL_ON)
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
        Augment(boxes_dataset, TrainConfig(recipe="none", aug_scale_jitter=(1.2, 0.8)))


GREY = 128  # what the zoom-out and scale-jitter fill (0.5) gives too: a drawn pixel is the only other colour


@pytest.fixture
def grey_dataset(tmp_path):
    """Three flat grey 64 px images with two boxes each: in the strip, only what is drawn is not grey."""
    root = tmp_path / "grey"
    (root / "images").mkdir(parents=True)
    images, anns = [], []
    for i in range(3):
        Image.new("RGB", (SIZE, SIZE), (GREY,) * 3).save(root / "images" / f"{i}.png")
        images.append({"id": i + 1, "file_name": f"{i}.png", "width": SIZE, "height": SIZE, "split": "train"})
        anns += [{"id": 10 * i + 1, "image_id": i + 1, "category_id": 1, "bbox": [4, 16, 18, 20], "iscrowd": 0},
                 {"id": 10 * i + 2, "image_id": i + 1, "category_id": 2, "bbox": [40, 30, 16, 22], "iscrowd": 0}]
    coco = {"images": images, "annotations": anns,
            "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}]}
    (root / "annotations.json").write_text(json.dumps(coco))
    return CanonicalDataset(root, "train", SIZE)


def _tile(png: bytes, row: int, col: int) -> np.ndarray:
    from pipeline.training.augment import STRIP_GAP

    step = SIZE + STRIP_GAP
    full = np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(int)
    return full[row * step:row * step + SIZE, col * step:col * step + SIZE]


def test_strip_draws_exactly_the_transformed_targets(grey_dataset):
    """Each tile's boxes are the target Augment gives train for that (epoch, index); their outlines are in the
    PNG in the class colour, and nothing else is drawn: a box the IoU crop dropped leaves no trace."""
    from pipeline.training.augment import STRIP_COLOURS, strip

    cfg = TrainConfig(recipe="none", **{**ALL_ON, "aug_vflip": 0.0, "aug_photometric": 0.0})  # grey stays grey
    epochs, indices = 4, [2, 0, 1]
    out = strip(grey_dataset, cfg, indices, epochs=epochs)
    reference = Augment(grey_dataset, cfg)
    dropped = 0
    for row in range(epochs):
        reference.set_epoch(row)
        for col, index in enumerate(indices):
            drawn = out.tiles[row][col]
            _, target = reference[index]
            assert drawn["index"] == index and drawn["epoch"] == row
            assert drawn["boxes"] == target["boxes"].tolist() and drawn["labels"] == target["labels"].tolist()
            assert drawn["names"] == [{1: "a", 2: "b"}[label] for label in drawn["labels"]]
            dropped += 2 - len(drawn["boxes"])
            tile = _tile(out.png, row, col)
            allowed = np.zeros((SIZE, SIZE), bool)
            for (x1, y1, x2, y2), label in zip(drawn["boxes"], drawn["labels"]):
                colour = STRIP_COLOURS[label - 1]
                x1, y1, x2, y2 = round(x1), round(y1), round(x2) - 1, round(y2) - 1
                assert tile[y2, (x1 + x2) // 2].tolist() == list(colour)  # the bottom edge
                assert tile[(y1 + y2) // 2, x1].tolist() == list(colour)  # the left edge
                allowed[max(0, y1 - 14):y2 + 1, x1:x2 + 1] = True  # the outline, the inside, the name's tab
                allowed[max(0, y1 - 14):min(SIZE, y1 + 14), x1:min(SIZE, x1 + 12)] = True
            assert (np.abs(tile[~allowed] - GREY) <= 1).all()  # nothing drawn anywhere else
    assert out.scale == 1.0
    assert dropped > 0  # the crops did drop boxes here, and those were not drawn


def test_strip_is_the_same_for_a_seed_and_says_what_is_on(grey_dataset, boxes_dataset):
    from pipeline.training.augment import strip

    cfg = TrainConfig(recipe="none", **ALL_ON)
    torch.manual_seed(0)
    first = strip(boxes_dataset, cfg, [0, 1, 2])
    torch.manual_seed(999), random.seed(5), np.random.seed(5)
    assert strip(boxes_dataset, cfg, [0, 1, 2]).png == first.png  # the global RNG plays no part
    assert strip(boxes_dataset, TrainConfig(recipe="none", **ALL_ON, seed=7), [0, 1, 2]).png != first.png
    assert first.caption.startswith("Augmentation: photometric distortion p=1 (train.aug_photometric); "
                                    "zoom out p=1 up to 2x")
    for words in ("IoU crop p=1", "scale jitter 0.8-1.2", "vertical flip p=0.5", "horizontal flip p=0.5",
                  "train.seed=42", "64 px"):
        assert words in first.caption


def test_strip_with_augmentation_off_shows_the_plain_resized_samples(boxes_dataset):
    from pipeline.training.augment import strip

    out = strip(boxes_dataset, TrainConfig(recipe="none", aug_hflip=0.0), [1, 2], epochs=2)
    assert out.caption.startswith("Augmentation off") and "plain resized samples" in out.caption
    for row in out.tiles:
        for drawn in row:
            image, plain = boxes_dataset[drawn["index"]]
            assert drawn["boxes"] == plain["boxes"].tolist()
    plain_pixels = boxes_dataset[1][0].mul(255).round().permute(1, 2, 0).numpy().astype(int)
    tile = _tile(out.png, 1, 0)
    assert (tile[SIZE - 4:, :] == plain_pixels[SIZE - 4:, :]).all()  # below the boxes: the image itself


def test_large_inputs_are_drawn_scaled_down(tmp_path):
    from pipeline.training.augment import STRIP_TILE_MAX, strip

    root = tmp_path / "big"
    (root / "images").mkdir(parents=True)
    Image.new("RGB", (100, 80), (GREY,) * 3).save(root / "images" / "0.png")
    coco = {"images": [{"id": 1, "file_name": "0.png", "width": 100, "height": 80, "split": "train"}],
            "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [10, 10, 50, 40], "iscrowd": 0}],
            "categories": [{"id": 1, "name": "a"}]}
    (root / "annotations.json").write_text(json.dumps(coco))
    out = strip(CanonicalDataset(root, "train", 640), TrainConfig(recipe="none", image_size=640), [0], epochs=1)
    assert Image.open(io.BytesIO(out.png)).size == (STRIP_TILE_MAX, STRIP_TILE_MAX)
    assert out.scale == STRIP_TILE_MAX / 640 and "drawn at 320 px" in out.caption and "640 px" in out.caption
