"""A trained model.pt on a canonical dataset, the way evaluate and audit predict with it: the torch device
(`"auto"` = cuda when available, else cpu) and the model with the dataset read through the model's own
label -> category table (a champion may predate a class the dataset has today), and its detections."""
from __future__ import annotations

from pathlib import Path

import torch

from pipeline.datasets.canonical import CanonicalDataset
from pipeline.training.engine import predict
from pipeline.training.models import load_trained


def resolve_device(name: str) -> str:
    """`evaluate.device` as a torch device name."""
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return name


def load_for_prediction(model_path: str | Path, data_dir: str | Path,
                        split: str | None) -> tuple[torch.nn.Module, dict, CanonicalDataset]:
    """(model, its metadata, the dataset's `split` (None: every image) at the model's input size)."""
    model, meta = load_trained(str(model_path))
    dataset = CanonicalDataset(data_dir, split, meta["image_size"])
    if meta.get("label_to_category"):
        dataset.label_to_cat = {i + 1: int(c) for i, c in enumerate(meta["label_to_category"])}
    return model, meta, dataset


def predictions(model_path: str | Path, data_dir: str | Path, device: str = "cpu", batch_size: int = 8) -> list[dict]:
    """COCO detections of the model on every image of the dataset (all splits)."""
    model, _meta, dataset = load_for_prediction(model_path, data_dir, None)
    return predict(model, dataset, batch_size=batch_size, device=device, progress=False)
