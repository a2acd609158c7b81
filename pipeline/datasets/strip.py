"""The augmented-sample strip as plain data: `pipeline.training.augment.strip` draws it, the dataset card
(`pipeline.datasets.card`) shows it and keeps it in the store. Neither imports the other for it, and reading a
kept strip needs no torch."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Strip:
    """A PNG of augmented training samples with their boxes (`pipeline.training.augment.strip` draws it);
    `tiles[row][col]` is what was drawn where."""

    png: bytes
    caption: str
    tiles: list[list[dict]]  # {"index", "epoch", "boxes" (xyxy, input pixels), "labels", "names"}
    scale: float  # tile pixels per input pixel
