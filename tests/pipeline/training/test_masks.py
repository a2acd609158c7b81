"""Mask R-CNN masks as COCO RLE on the original image: the encoding, and `predict` on a tiny segmentation set."""
from __future__ import annotations

import numpy as np
import torch

from pipeline.datasets.canonical import CanonicalDataset
from pipeline.training import masks
from pipeline.training.engine import predict
from pipeline.training.models import build_model
from tests.segmentation_data import write_dataset


def test_probabilities_become_rle_at_the_original_size_thresholded_at_half():
    probs = torch.zeros(2, 1, 8, 8)
    probs[0, 0, 2:6, 2:6] = 0.9  # a 4x4 square at 8 px -> 8x8 at 16 px
    probs[1, 0, :, :] = 0.5  # exactly 0.5 is not foreground
    out = masks.rles(probs, 16, 16)
    assert [r["size"] for r in out] == [[16, 16], [16, 16]] and all(isinstance(r["counts"], str) for r in out)
    first = masks.decode(out[0])
    assert first.shape == (16, 16) and first[6:10, 6:10].all() and first.sum() == 64
    assert masks.decode(out[1]).sum() == 0
    assert masks.rles(torch.zeros(0, 1, 8, 8), 5, 7) == []
    # non-square originals: rows are height
    wide = masks.decode(masks.rles(torch.ones(1, 1, 8, 8), 10, 30)[0])
    assert wide.shape == (10, 30) and wide.all()


def test_predict_adds_rle_masks_of_a_mask_rcnn_at_the_original_size(tmp_path):
    write_dataset(tmp_path, num_images=2, size=96, seed=1)
    torch.manual_seed(0)
    model = build_model("maskrcnn_mobilenet_v3_large_fpn", 3, 64)
    model.roi_heads.score_thresh = 0.0  # random weights: keep whatever it finds
    dataset = CanonicalDataset(tmp_path, None, 64)
    results = predict(model, dataset, batch_size=2, progress=False)
    assert results, "a random Mask R-CNN with score_thresh 0 returns detections"
    for det in results:
        assert det["segmentation"]["size"] == [96, 96]
        assert masks.decode(det["segmentation"]).dtype == np.uint8
    # boxes only for a detector: no segmentation key
    detector = build_model("fasterrcnn_mobilenet_v3_large_320_fpn", 3, 64)
    detector.roi_heads.score_thresh = 0.0
    assert all("segmentation" not in d for d in predict(detector, dataset, batch_size=2, progress=False))


class _SquareMaskModel(torch.nn.Module):
    """A stand-in Mask R-CNN: one detection per image, a square mask over the middle half of the S x S input."""

    def forward(self, images):
        out = []
        for im in images:
            s = im.shape[-1]
            masks = torch.zeros(1, 1, s, s)
            masks[0, 0, s // 4: 3 * s // 4, s // 4: 3 * s // 4] = 0.9
            out.append({"boxes": torch.tensor([[s / 4, s / 4, 3 * s / 4, 3 * s / 4]]), "scores": torch.tensor([0.8]),
                        "labels": torch.tensor([1]), "masks": masks})
        return out


def test_predicted_masks_are_resized_to_the_original_image(tmp_path):
    write_dataset(tmp_path, num_images=1, size=96, seed=2)
    (det,) = predict(_SquareMaskModel(), CanonicalDataset(tmp_path, None, 64), progress=False)
    mask = masks.decode(det["segmentation"])
    assert mask.shape == (96, 96) and det["bbox"] == [24.0, 24.0, 48.0, 48.0]
    ys, xs = np.nonzero(mask)
    # the 32 px square at 64 px is the 48 px square at 96 px (bilinear edges may move by a pixel)
    assert abs(ys.min() - 24) <= 1 and abs(ys.max() - 71) <= 1 and abs(xs.min() - 24) <= 1 and abs(xs.max() - 71) <= 1
    assert abs(int(mask.sum()) - 48 * 48) <= 2 * 48


def test_rles_of_many_detections_on_a_large_image_are_made_a_few_at_a_time(monkeypatch):
    """Detections are resized to the original size a chunk at a time (100 masks of a 3000 x 2000 photo at once
    peaked at ~4 GB): the same RLEs, in order, with no chunk over masks.CHUNK_PIXELS."""
    probs = torch.rand(7, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    whole = masks.encode(masks.binary_masks(probs, 30, 40))
    seen = []
    real = masks.binary_masks

    def spy(p, h, w, threshold=masks.MASK_THRESHOLD):
        seen.append(int(p.shape[0]))
        return real(p, h, w, threshold)

    monkeypatch.setattr(masks, "binary_masks", spy)
    monkeypatch.setattr(masks, "CHUNK_PIXELS", 3 * 30 * 40)
    assert masks.rles(probs, 30, 40) == whole
    assert seen == [3, 3, 1]
    assert masks.rles(probs[:0], 30, 40) == []
