"""The dataset card of a classification dataset: images per class per split, samples captioned with their class
(classes taking turns, nothing drawn on them), and no augmentation strip, saying why."""
from __future__ import annotations

import base64
import io
import json

from PIL import Image

from pipeline.cli import main
from pipeline.config import TrainConfig
from pipeline.datasets import card
from pipeline.datasets.synthetic import generate_classification
from tests.html_page import assert_self_contained, parse


def test_card_of_a_classification_dataset(tmp_path, capsys):
    generate_classification(tmp_path / "export", num_images=15, image_size=40, seed=2)
    assert main(["ingest", "--source", str(tmp_path / "export"), "--out", str(tmp_path / "ds"),
                 "--set", "data.task=classification"]) == 0
    capsys.readouterr()
    coco = json.loads((tmp_path / "ds" / "annotations.json").read_text())
    images = tmp_path / "ds" / "images"
    strip = card.augmentation_strip(coco, lambda n: (images / n).read_bytes(), TrainConfig(recipe="none"))
    assert strip.startswith("no augmentation strip:") and "classification dataset" in strip
    page, md = card.build(coco, lambda n: (images / n).read_bytes(), dataset_hash="abc.dir", samples=4,
                          augmentation=strip)
    parsed = parse(page)
    assert "15 images, 15 class labels, 3 classes" in parsed.text and "## Classes (images)" in md
    assert "Classes (images)" in parsed.text and "| split | images | labels |" in md
    counts = {c["name"]: {s: 0 for s in ("train", "val", "test")} for c in coco["categories"]}
    names = {c["id"]: c["name"] for c in coco["categories"]}
    split = {im["id"]: im["split"] for im in coco["images"]}
    for a in coco["annotations"]:
        counts[names[a["category_id"]]][split[a["image_id"]]] += 1
    class_rows = [r for r in parsed.rows() if r and r[0] in counts]
    assert class_rows == [[n, str(v["train"]), str(v["val"]), str(v["test"]), str(sum(v.values()))]
                          for n, v in counts.items()]
    # four samples, the classes taking turns, each captioned with its class; the thumbnails are the images
    captions = [c for c in md.splitlines() if c.startswith("![") and "class " in c]
    assert [c.split("class ")[1].split(")")[0] for c in captions] == ["circle", "square", "triangle", "circle"]
    label = {im["file_name"]: names[a["category_id"]] for im in coco["images"] for a in coco["annotations"]
             if a["image_id"] == im["id"]}
    for line in captions:
        name = line[2:].split(" (")[0]
        uri = line.split("](")[1].rstrip(")")
        thumb = Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1])))
        assert thumb.size == Image.open(images / name).size == (40, 40)
        assert line.endswith(f"class {label[name]})]({uri})") and name.startswith(f"{label[name]}/")
    assert strip in parsed.text and strip in md
    assert_self_contained(page)


def test_class_samples_take_turns_and_are_stable():
    coco = {"categories": [{"id": 2, "name": "b"}, {"id": 1, "name": "a"}],
            "images": [{"id": i, "file_name": f"{i}.jpg", "sha1": f"{9 - i}"} for i in range(6)],
            "annotations": [{"id": i, "image_id": i, "category_id": 1 if i < 4 else 2} for i in range(6)]}
    picked = card.pick_class_samples(coco, 5)
    assert [(im["id"], name) for im, name in picked] == [(3, "a"), (5, "b"), (2, "a"), (4, "b"), (1, "a")]
    assert card.pick_class_samples(coco, 5) == picked
