"""Fixtures of the report's tests: a small synthetic dataset with train/val splits and a tmp artifact store."""
from __future__ import annotations

import json

import pytest

from pipeline.datasets.synthetic import generate
from pipeline.store import LocalStore

SIZE = 64


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("report-data")
    generate(root / "dataset", num_images=12, image_size=SIZE, seed=5, min_size=12, max_size=28)
    coco = json.loads((root / "dataset" / "annotations.json").read_text())
    for image in coco["images"]:
        image["split"] = "val" if image["id"] % 2 else "train"
        image["group"] = image["file_name"]
    (root / "dataset" / "annotations.json").write_text(json.dumps(coco))
    val = dict(coco, images=[i for i in coco["images"] if i["split"] == "val"])
    ids = {i["id"] for i in val["images"]}
    val["annotations"] = [a for a in coco["annotations"] if a["image_id"] in ids]
    return {"dir": root / "dataset", "val": val}


@pytest.fixture
def store(tmp_path):
    return LocalStore(tmp_path / "artifacts")
