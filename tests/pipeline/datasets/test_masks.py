"""pipeline.datasets.masks: the tools' mask forms into COCO RLE, the checks validate runs, the training targets."""
from __future__ import annotations

import base64
import io

import numpy as np
import pytest
from PIL import Image

from pipeline.datasets import masks

H, W = 20, 30


def _blob() -> np.ndarray:
    """A 20 x 30 image's mask: an L-shaped object whose crop is 6 wide, 5 high at (x 7, y 4)."""
    m = np.zeros((H, W), dtype=np.uint8)
    m[4:9, 7:9] = 1
    m[7:9, 7:13] = 1
    return m


def _png_b64(crop: np.ndarray) -> str:
    buf = io.BytesIO()
    Image.fromarray(crop.astype(np.uint8) * 255).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def test_labelme_mask_shape_is_pasted_at_its_first_corner():
    full = _blob()
    crop = full[4:9, 7:13]
    shape = {"shape_type": "mask", "points": [[7, 4], [12, 8]], "mask": _png_b64(crop)}
    rle = masks.labelme_mask(shape, H, W)
    assert isinstance(rle["counts"], str) and rle["size"] == [H, W]
    assert np.array_equal(masks.decode(rle, H, W), full)
    assert masks.bbox_area(rle, H, W) == ([7.0, 4.0, 6.0, 5.0], float(full.sum()))


def test_labelme_mask_errors_say_what_is_wrong():
    crop = _blob()[4:9, 7:13]
    assert "2 points" in masks.labelme_mask({"points": [[7, 4]], "mask": _png_b64(crop)}, H, W)
    assert "base64 PNG" in masks.labelme_mask({"points": [[7, 4], [12, 8]], "mask": "bm90IGEgcG5n"}, H, W)
    assert "points span 14 x 5" in masks.labelme_mask({"points": [[7, 4], [20, 8]], "mask": _png_b64(crop)}, H, W)
    assert "outside" in masks.labelme_mask({"points": [[40, 4], [45, 8]], "mask": _png_b64(crop)}, H, W)


def test_cvat_rle_is_row_major_over_its_crop_starting_with_background():
    full = _blob()
    crop = full[4:9, 7:13]
    flat = crop.reshape(-1)  # row-major, as CVAT writes it
    runs, value, count = [], 0, 0
    for v in flat:
        if v == value:
            count += 1
        else:
            runs.append(count)
            value, count = v, 1
    runs.append(count)
    rle = masks.cvat_mask(", ".join(map(str, runs)), 7, 4, 6, 5, H, W)
    assert np.array_equal(masks.decode(rle, H, W), full)
    assert "sum to width * height = 30" in masks.cvat_mask("1, 2", 7, 4, 6, 5, H, W)
    assert "comma-separated" in masks.cvat_mask("1, x", 7, 4, 6, 5, H, W)


def test_polygons_and_both_rle_forms_decode_to_the_same_mask():
    square = [[2.0, 3.0, 12.0, 3.0, 12.0, 13.0, 2.0, 13.0]]
    m = masks.decode(square, H, W)
    compressed = masks.encode(m)
    from pycocotools import mask as mask_utils

    flat = m.reshape(-1, order="F")
    runs = [int(len(list(g))) for _, g in __import__("itertools").groupby(flat)]
    if flat[0]:
        runs = [0] + runs
    uncompressed = {"size": [H, W], "counts": runs}
    assert np.array_equal(masks.decode(compressed, H, W), m)
    assert np.array_equal(masks.decode(uncompressed, H, W), m)
    assert mask_utils.area(masks.to_rle(square, H, W)) == m.sum()


@pytest.mark.parametrize("seg, bbox, field, words", [
    (None, [1, 1, 2, 2], "segmentation", "missing"),
    ([[1, 1, 5, 1]], [1, 1, 4, 0], "segmentation[0]", "at least 3"),
    ([[1, 1, 40, 1, 40, 9]], [1, 1, 39, 8], "segmentation[0]", "outside"),
    ({"size": [10, 10], "counts": "PPYo0"}, [0, 0, 1, 1], "segmentation.size", "not the image's"),
    ({"size": [H, W], "counts": "!!!garbage"}, [0, 0, 1, 1], "segmentation", ""),
    ([[2, 3, 12, 3, 12, 13, 2, 13]], [2, 3, 4, 4], "bbox", "disagrees with its mask's box"),
])
def test_problems_name_the_field(seg, bbox, field, words):
    found = masks.problems(seg, H, W, bbox, tol=2.0)
    assert found and found[0][0].startswith(field) and words in found[0][1]


def test_a_good_polygon_and_rle_have_no_problem():
    square = [[2, 3, 12, 3, 12, 13, 2, 13]]
    assert masks.problems(square, H, W, [2, 3, 10, 10], tol=2.0) == []
    assert masks.problems(masks.encode(masks.decode(square, H, W)), H, W, [2, 3, 10, 10], tol=2.0) == []


def test_rasterise_scales_polygons_and_resizes_rles_to_the_input_size():
    square = [[0, 0, 15, 0, 15, 10, 0, 10]]  # the left half, top half of a 30 x 20 image
    out = masks.rasterise([square, masks.encode(masks.decode(square, H, W))], H, W, 8)
    assert out.shape == (2, 8, 8) and out.dtype.is_floating_point is False
    for m in out:
        ys, xs = np.nonzero(m.numpy())
        assert (xs.min(), ys.min(), xs.max(), ys.max()) == (0, 0, 3, 3)


@pytest.mark.parametrize("h, w, size", [(20, 30, 8), (37, 53, 128), (120, 160, 64), (5, 10, 3)])
def test_rasterise_samples_rles_from_their_runs_as_nearest_resizing_would(h, w, size):
    """An RLE is sampled from its runs (a 3000 x 2000 mask is never decoded whole): the same pixels as decoding
    it and resizing with nearest-neighbour, for compressed and uncompressed counts and the many-runs path."""
    import torch
    import torch.nn.functional as F

    rng = np.random.default_rng(h * w)
    speckled = (rng.random((h, w)) > 0.6).astype(np.uint8)
    blob = np.zeros((h, w), np.uint8)
    blob[h // 4:h // 2 + 1, w // 3:w - 1] = 1
    for m in (speckled, blob):
        compressed = masks.encode(m)
        flat = m.reshape(-1, order="F")
        edges = np.flatnonzero(np.diff(flat)) + 1
        runs = np.diff(np.concatenate([[0], edges, [flat.size]])).tolist()
        uncompressed = {"size": [h, w], "counts": ([0] if flat[0] else []) + runs}
        expected = F.interpolate(torch.from_numpy(m)[None, None].float(), size=(size, size),
                                 mode="nearest")[0, 0].to(torch.uint8)
        out = masks.rasterise([compressed, uncompressed], h, w, size)
        assert torch.equal(out[0], expected) and torch.equal(out[1], expected)


def test_rasterise_takes_the_many_runs_path_for_speckled_masks():
    """Past 20,000 characters of counts, pycocotools' decoder samples the mask (a Python walk would be slow)."""
    import torch

    m = (np.random.default_rng(0).random((200, 300)) > 0.5).astype(np.uint8)
    seg = masks.encode(m)
    assert len(seg["counts"]) > 20_000
    out = masks.rasterise([seg], 200, 300, 50)
    rows, cols = np.floor(np.arange(50) * 4).astype(int), np.floor(np.arange(50) * 6).astype(int)
    assert torch.equal(out[0], torch.from_numpy(m[np.ix_(rows, cols)]))
