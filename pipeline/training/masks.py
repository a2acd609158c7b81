"""Instance masks as COCO results: a Mask R-CNN's mask probabilities at its S x S input, back on the
original image as compact COCO RLE.

torchvision's Mask R-CNN returns `masks` float [N, 1, S, S]: each detection's 28 x 28 mask-head probability
already pasted into its box at the model's input size. `predict` (pipeline.training.engine) scores boxes in
original image pixels; the masks follow them there: resized bilinearly to H x W, thresholded at 0.5 (the
threshold torchvision's references and COCO's Mask R-CNN results use) and run-length encoded with
pycocotools, `counts` as a str so the result is plain JSON.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

MASK_THRESHOLD = 0.5


def binary_masks(probs: torch.Tensor, height: int, width: int, threshold: float = MASK_THRESHOLD) -> np.ndarray:
    """[N, 1, S, S] (or [N, S, S]) probabilities -> uint8 [H, W, N] 0/1 masks at the original size, Fortran
    order as pycocotools' encoder wants them."""
    if probs.ndim == 3:
        probs = probs[:, None]
    n = int(probs.shape[0])
    if n == 0:
        return np.zeros((height, width, 0), dtype=np.uint8, order="F")
    probs = probs.float().cpu()
    if tuple(probs.shape[-2:]) != (height, width):
        probs = F.interpolate(probs, size=(int(height), int(width)), mode="bilinear", align_corners=False)
    binary = (probs[:, 0] > threshold).to(torch.uint8).numpy()  # [N, H, W]
    return np.asfortranarray(binary.transpose(1, 2, 0))


def encode(masks: np.ndarray) -> list[dict]:
    """uint8 [H, W, N] 0/1 masks -> N COCO RLEs {"size": [H, W], "counts": str}."""
    from pycocotools import mask as mask_util

    if masks.shape[-1] == 0:
        return []
    rles = mask_util.encode(np.asfortranarray(masks, dtype=np.uint8))
    return [{"size": [int(r["size"][0]), int(r["size"][1])], "counts": r["counts"].decode("ascii")} for r in rles]


CHUNK_PIXELS = 1 << 25  # masks resized at once: 32 M float pixels, 128 MB (five masks of a 3000 x 2000 photo)


def rles(probs: torch.Tensor, height: int, width: int, threshold: float = MASK_THRESHOLD) -> list[dict]:
    """One COCO RLE per detection of `probs` ([N, 1, S, S] mask probabilities) at the original H x W, a few
    detections at a time: 100 detections on a 3000 x 2000 photo resized at once would take 2.4 GB of floats
    (plus 600 MB of 0/1 masks), per image of the evaluation."""
    step = max(1, CHUNK_PIXELS // max(1, int(height) * int(width)))
    return [r for i in range(0, max(int(probs.shape[0]), 1), step)
            for r in encode(binary_masks(probs[i:i + step], height, width, threshold))]


def decode(rle: dict) -> np.ndarray:
    """A COCO RLE (counts as str or bytes) -> uint8 [H, W] 0/1."""
    from pycocotools import mask as mask_util

    counts = rle["counts"]
    return mask_util.decode({"size": list(rle["size"]),
                             "counts": counts.encode("ascii") if isinstance(counts, str) else counts})
