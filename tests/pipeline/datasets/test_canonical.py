"""CanonicalDataset: resizing, box conversion, split filter, crowd handling, COCO split helper."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

from pipeline.datasets.canonical import CanonicalDataset, collate, read_rgb, split_coco


@pytest.fixture
def canonical(tmp_path):
    """Three images of different sizes and modes, two categories with ids out of order, one crowd box."""
    root = tmp_path / "dataset"
    (root / "images").mkdir(parents=True)
    red = np.zeros((100, 200, 3), np.uint8)
    red[..., 0] = 255
    Image.fromarray(red).save(root / "images" / "a.png")
    Image.fromarray(np.full((50, 40), 128, np.uint8), "L").save(root / "images" / "b.png")  # greyscale
    Image.fromarray(np.zeros((60, 60, 4), np.uint8), "RGBA").save(root / "images" / "c.png")
    coco = {
        "images": [
            {"id": 10, "file_name": "a.png", "width": 200, "height": 100, "split": "train"},
            {"id": 11, "file_name": "b.png", "width": 40, "height": 50, "split": "val"},
            {"id": 12, "file_name": "c.png", "width": 60, "height": 60, "split": "train"},
        ],
        "annotations": [
            {"id": 1, "image_id": 10, "category_id": 7, "bbox": [20, 10, 40, 50], "area": 2000, "iscrowd": 0},
            {"id": 2, "image_id": 10, "category_id": 3, "bbox": [100, 0, 100, 100], "area": 1e4, "iscrowd": 1},
            {"id": 3, "image_id": 10, "category_id": 3, "bbox": [150, 50, 60, 60], "area": 3600, "iscrowd": 0},
            {"id": 4, "image_id": 11, "category_id": 3, "bbox": [0, 0, 40, 50], "area": 2000, "iscrowd": 0},
        ],
        "categories": [{"id": 7, "name": "dog"}, {"id": 3, "name": "cat"}],
    }
    (root / "annotations.json").write_text(json.dumps(coco))
    return root


def test_labels_follow_sorted_category_ids(canonical):
    ds = CanonicalDataset(canonical, None, 64)
    assert [c["id"] for c in ds.categories] == [3, 7]
    assert ds.cat_to_label == {3: 1, 7: 2}
    assert ds.label_to_cat == {1: 3, 2: 7}
    assert len(ds) == 3


def test_image_is_resized_rgb_float(canonical):
    ds = CanonicalDataset(canonical, None, 64)
    for i in range(len(ds)):
        image, target = ds[i]
        assert image.shape == (3, 64, 64) and image.dtype == torch.float32
        assert 0.0 <= float(image.min()) and float(image.max()) <= 1.0
    red, _ = ds[0]
    assert torch.allclose(red[0], torch.ones(64, 64)) and float(red[1:].abs().max()) == 0.0
    grey, target = ds[1]
    assert torch.allclose(grey, torch.full_like(grey, 128 / 255), atol=1e-3)
    assert target["orig_size"] == (50, 40)


def test_boxes_become_xyxy_in_resized_pixels_and_crowds_are_dropped(canonical):
    ds = CanonicalDataset(canonical, "train", 100)
    image, target = ds[0]
    assert target["image_id"] == 10 and target["orig_size"] == (100, 200)
    # x scaled by 100/200, y by 100/100; the box sticking out on the right is clipped at the image edge
    expected = torch.tensor([[10.0, 10.0, 30.0, 60.0], [75.0, 50.0, 100.0, 100.0]])
    assert torch.allclose(target["boxes"], expected)
    assert target["labels"].tolist() == [2, 1]
    assert target["boxes"].dtype == torch.float32 and target["labels"].dtype == torch.int64


def test_image_without_boxes_has_empty_targets(canonical):
    ds = CanonicalDataset(canonical, "train", 32)
    _, target = ds[1]
    assert target["boxes"].shape == (0, 4) and target["labels"].shape == (0,)


def test_split_filter(canonical):
    assert [im["id"] for im in CanonicalDataset(canonical, "train", 32).image_infos] == [10, 12]
    assert [im["id"] for im in CanonicalDataset(canonical, "val", 32).image_infos] == [11]
    assert CanonicalDataset(canonical, "test", 32).image_infos == []


def test_split_coco_keeps_only_the_split(canonical):
    coco = json.loads((canonical / "annotations.json").read_text())
    val = split_coco(coco, "val")
    assert [im["id"] for im in val["images"]] == [11]
    assert [a["id"] for a in val["annotations"]] == [4]
    assert [c["id"] for c in val["categories"]] == [3, 7]
    assert len(split_coco(coco, None)["annotations"]) == 4
    with pytest.raises(ValueError):
        split_coco(coco, "training")


def test_collate_keeps_lists(canonical):
    ds = CanonicalDataset(canonical, "train", 32)
    images, targets = collate([ds[0], ds[1]])
    assert len(images) == 2 and len(targets) == 2
    assert targets[0]["boxes"].shape == (2, 4)


@pytest.mark.parametrize("fmt, mode", [("BMP", "RGB"), ("BMP", "P"), ("TIFF", "RGB"), ("TIFF", "I;16"), ("PNG", "I;16"),
                                       ("JPEG", "CMYK"), ("PNG", "P"), ("PNG", "LA"), ("WEBP", "RGBA")])
def test_every_image_kind_ingest_accepts_reads_as_8_bit_rgb(tmp_path, fmt, mode):
    """BMP and TIFF (which torchvision.io cannot decode) and 16-bit greys from real exports: uint8 RGB, the
    picture's own values, never a crash in train or values above 1 in the model's input."""
    rgb = np.zeros((30, 40, 3), np.uint8)
    rgb[:, :20] = (200, 100, 50)
    grey16 = mode == "I;16"
    picture = Image.fromarray(rgb[..., 0].astype(np.uint16) * 257) if grey16 else Image.fromarray(rgb).convert(mode)
    path = tmp_path / f"image.{fmt.lower()}"
    picture.save(path, fmt, **({"lossless": True} if fmt == "WEBP" else {}))
    img = read_rgb(path)
    assert img.dtype == torch.uint8 and tuple(img.shape) == (3, 30, 40)
    with Image.open(path) as im:  # what Pillow shows: the 16-bit grey's high byte, else its RGB conversion
        expected = np.repeat(rgb[..., :1], 3, axis=2) if grey16 else np.asarray(im.convert("RGB"))
    diff = np.abs(img.permute(1, 2, 0).numpy().astype(int) - expected.astype(int))
    assert int(diff.max()) <= (2 if fmt == "JPEG" else 0)  # two JPEG decoders may round differently
    if mode in ("RGB", "RGBA", "I;16"):  # lossless and not quantised: the picture's own colour
        assert tuple(img[:, 0, 0].tolist()) == ((200,) * 3 if grey16 else (200, 100, 50))
