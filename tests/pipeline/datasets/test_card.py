"""The dataset card: counts per split and class, embedded histograms and samples, validation, the hash."""
from __future__ import annotations

import base64
import io
import json
import re

from PIL import Image

from pipeline.cli import main
from pipeline.datasets import card
from pipeline.datasets.synthetic import generate


def test_card_from_a_canonical_dataset(tmp_path, capsys):
    generate(tmp_path / "export", num_images=12, seed=4)
    assert main(["ingest", "--source", str(tmp_path / "export"), "--out", str(tmp_path / "ds")]) == 0
    capsys.readouterr()
    coco = json.loads((tmp_path / "ds" / "annotations.json").read_text())
    validation = {"passed": True, "checks": 23, "failed": [], "warnings": ["class_counts_stable"]}
    page, md = card.build(coco, lambda n: (tmp_path / "ds" / "images" / n).read_bytes(), dataset_hash="d41d.dir",
                          validation=validation, samples=3)
    counts = {s: sum(1 for im in coco["images"] if im["split"] == s) for s in ("train", "val", "test")}
    for s, n in counts.items():
        assert f"| {s} | {n} |" in md and f"<td>{s}</td><td>{n}</td>" in page
    boxes = {c["name"]: sum(1 for a in coco["annotations"] if a["category_id"] == c["id"]) for c in coco["categories"]}
    for name, n in boxes.items():
        assert re.search(rf"\| {name} \| \d+ \| \d+ \| \d+ \| {n} \|", md)
    assert "d41d.dir" in page and "d41d.dir" in md
    assert "passed: 23 checks" in md and "class_counts_stable" in page
    pngs = re.findall(r"data:image/png;base64,([A-Za-z0-9+/=]+)", page)
    jpegs = re.findall(r"data:image/jpeg;base64,([A-Za-z0-9+/=]+)", page)
    assert len(pngs) == 2 and len(jpegs) == 3  # width and height histograms, three samples
    sample = Image.open(io.BytesIO(base64.b64decode(jpegs[0])))
    assert sample.format == "JPEG" and max(sample.size) <= 320
    assert Image.open(io.BytesIO(base64.b64decode(pngs[0]))).format == "PNG"
    assert md.count("data:image/jpeg;base64,") == 3
    assert "<script" not in page and "http" not in page  # reads offline


def test_same_dataset_same_samples(tmp_path):
    coco = {"images": [{"id": i, "file_name": f"{i}.jpg", "sha1": f"{(i * 7) % 10:040d}", "split": "train",
                        "width": 10, "height": 10} for i in range(10)],
            "annotations": [{"id": i, "image_id": i, "category_id": 1, "bbox": [1, 1, 2, 2], "iscrowd": 0}
                            for i in range(10)], "categories": [{"id": 1, "name": "a"}]}
    assert [im["id"] for im in card.pick_samples(coco, 3)] == [0, 3, 6]
