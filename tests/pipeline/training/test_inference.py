"""pipeline.training.inference: a model.pt predicting on a canonical dataset through its own label table."""
from __future__ import annotations

import json

import pytest
import torch

from pipeline.datasets.synthetic import generate
from pipeline.training import inference
from pipeline.training.models import build_model

MODEL = "fasterrcnn_mobilenet_v3_large_320_fpn"
SIZE = 64


@pytest.fixture(scope="module")
def model_and_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("inference")
    torch.manual_seed(0)
    # the model's classes are categories 7, 8, 9: not the ids the dataset gives them today (1, 2, 3)
    categories = [{"id": 7, "name": "circle"}, {"id": 8, "name": "square"}, {"id": 9, "name": "triangle"}]
    torch.save({"model": MODEL, "num_classes": 4, "image_size": SIZE, "categories": categories,
                "label_to_category": [7, 8, 9], "state_dict": build_model(MODEL, 4, SIZE).state_dict()},
               root / "model.pt")
    generate(root / "dataset", num_images=6, image_size=SIZE, seed=3, min_size=12, max_size=28)
    return root / "model.pt", root / "dataset"


def test_the_models_own_label_table_names_the_categories(model_and_data, keep_torch_settings):
    model_pt, data = model_and_data
    model, meta, dataset = inference.load_for_prediction(model_pt, data, None)
    assert meta["image_size"] == SIZE and dataset.image_size == SIZE
    assert dataset.label_to_cat == {1: 7, 2: 8, 3: 9}
    images = {img["id"] for img in json.loads((data / "annotations.json").read_text())["images"]}
    assert len(dataset) == len(images)
    detections = inference.predictions(model_pt, data, "cpu", batch_size=4)
    assert detections, "an untrained detector still returns boxes at score threshold 0"
    assert {d["category_id"] for d in detections} <= {7, 8, 9}
    assert {d["image_id"] for d in detections} <= images


def test_resolve_device():
    assert inference.resolve_device("auto") == ("cuda" if torch.cuda.is_available() else "cpu")
    assert inference.resolve_device("cuda:1") == "cuda:1" and inference.resolve_device("cpu") == "cpu"
