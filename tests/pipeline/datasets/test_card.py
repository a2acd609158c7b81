"""The dataset card: counts per split and class, embedded histograms and samples, validation, the hash."""
from __future__ import annotations

import base64
import io
import json
import re

import pytest
from PIL import Image

from pipeline.cli import main
from pipeline.datasets import card
from pipeline.datasets.synthetic import generate
from tests.html_page import assert_self_contained, browser_problems, chromium, parse


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


EVIL = "<script>alert('x')</script>"


@pytest.fixture(scope="module")
def ingested(tmp_path_factory):
    root = tmp_path_factory.mktemp("card")
    generate(root / "export", num_images=12, seed=4)
    assert main(["ingest", "--source", str(root / "export"), "--out", str(root / "ds")]) == 0
    return json.loads((root / "ds" / "annotations.json").read_text()), root / "ds" / "images"


def test_card_page_tables_match_the_markdown(ingested):
    coco, images = ingested
    page, md = card.build(coco, lambda n: (images / n).read_bytes(), dataset_hash="d41d.dir", samples=2,
                          title="Dataset card: run r1")
    parsed = parse(page)
    assert parsed.title == "Dataset card: run r1"
    assert "Dataset hash d41d.dir" in parsed.text
    for heading in ("Validation", "Label audit", "Splits", "Classes (boxes)", "Image sizes", "Samples"):
        assert f"## {heading}" in md and heading in parsed.text
    # every Markdown table row is a row of the page, cell for cell
    md_rows = [[c.strip() for c in line.strip("|").split("|")] for line in md.splitlines()
               if line.startswith("| ") and not line.startswith("|---")]
    assert md_rows == parsed.rows()
    assert "not validated in this run" in parsed.text and "not audited in this run" in parsed.text
    assert_self_contained(page)


def test_class_and_file_names_are_escaped(ingested):
    coco, images = ingested
    coco = json.loads(json.dumps(coco))
    coco["categories"][0]["name"] = EVIL
    on_disk = {}
    for im in coco["images"]:
        on_disk[f"{EVIL}{im['file_name']}"] = im["file_name"]
        im["file_name"] = f"{EVIL}{im['file_name']}"
    page, _ = card.build(coco, lambda n: (images / on_disk[n]).read_bytes(), dataset_hash=EVIL, samples=2,
                         title=f"Card of {EVIL}", validation={"passed": False, "checks": 3, "failed_checks": [EVIL]})
    assert "<script" not in page
    parsed = parse(page)
    assert parsed.title == f"Card of {EVIL}" and f"Dataset hash {EVIL}" in parsed.text
    assert [row[0] for row in parsed.rows()].count(EVIL) == 1  # the class row
    assert f"FAILED: 3 checks, failed: {EVIL}" in parsed.text
    assert sum(img["alt"].startswith(EVIL) for img in parsed.imgs) == 2  # the samples' file names
    assert_self_contained(page)


@pytest.mark.skipif(chromium() is None, reason="no chromium (make browser installs it)")
def test_card_renders_in_a_browser_without_errors(ingested, tmp_path):
    coco, images = ingested
    page, _ = card.build(coco, lambda n: (images / n).read_bytes(), samples=3)
    assert browser_problems(page, tmp_path) == ["images: 5"]  # two histograms, three samples


def test_card_embeds_the_augmentation_strip_train_uses(ingested, tmp_path):
    """The strip's samples are the train split's own (index, epoch) samples through train's Augment, the PNG is
    embedded (the page stays self-contained), written beside the card and named by the Markdown, and the
    caption lists every active step with its setting."""
    from pipeline.config import TrainConfig
    from pipeline.datasets.canonical import CanonicalDataset
    from pipeline.training.augment import Augment

    coco, images = ingested
    train = TrainConfig(recipe="none", aug_photometric=0.5, aug_iou_crop=0.8, aug_scale_jitter=(0.9, 1.1),
                        image_size=96)
    strip = card.augmentation_strip(coco, lambda n: (images / n).read_bytes(), train)
    reference = Augment(CanonicalDataset(images.parent, "train", 96), train)
    picked = card.pick_samples({"images": [im for im in coco["images"] if im["split"] == "train"],
                                "annotations": coco["annotations"]}, 4)
    assert len(strip.tiles) == 2 and len(strip.tiles[0]) == len(picked) > 0
    for epoch, row in enumerate(strip.tiles):
        reference.set_epoch(epoch)
        for drawn, im in zip(row, picked):
            assert reference.dataset.image_infos[drawn["index"]]["id"] == im["id"]
            assert drawn["boxes"] == reference[drawn["index"]][1]["boxes"].tolist()

    page, md = card.build(coco, lambda n: (images / n).read_bytes(), samples=2, augmentation=strip)
    parsed = parse(page)
    assert "Augmentation" in parsed.text and "## Augmentation" in md
    embedded = [img["src"] for img in parsed.imgs if "aug_strip.png" in img["alt"]]
    assert len(embedded) == 1 and base64.b64decode(embedded[0].split(",", 1)[1]) == strip.png
    for words in ("photometric distortion p=0.5", "IoU crop p=0.8", "scale jitter 0.9-1.1", "horizontal flip p=0.5",
                  "train.seed=42", "96 px"):
        assert words in parsed.text and words in md
    assert "zoom out" not in parsed.text and "vertical flip" not in parsed.text  # off: not listed
    assert "![augmented training samples](aug_strip.png)" in md
    assert_self_contained(page)

    html_path, md_path = card.write(tmp_path / "out", coco, images, train=train, samples=2)
    assert (tmp_path / "out" / "aug_strip.png").read_bytes() == strip.png  # reproducible: the same PNG again
    assert "](aug_strip.png)" in md_path.read_text()


def test_card_says_when_augmentation_is_off_or_there_is_no_strip(ingested):
    from pipeline.config import TrainConfig

    coco, images = ingested
    off = TrainConfig(recipe="none", aug_hflip=0.0)
    strip = card.augmentation_strip(coco, lambda n: (images / n).read_bytes(), off)
    page, md = card.build(coco, lambda n: (images / n).read_bytes(), samples=1, augmentation=strip)
    assert "Augmentation off" in parse(page).text and "plain resized samples" in md
    none = card.augmentation_strip(coco, lambda n: None, off)
    assert none == "no augmentation strip: none of the picked train images could be read"
    page, md = card.build(coco, lambda n: None, samples=1, augmentation=none)
    assert none in parse(page).text and none in md and "aug_strip.png" not in page + md
    assert card.outputs(page, md, none).keys() == {"card.html", "card.md"}
    _, md = card.build(coco, lambda n: None, samples=1)
    assert "Augmentation" not in md  # no train config given: no such section


def test_a_strip_of_the_same_inputs_is_reused_from_the_store(ingested, tmp_path, monkeypatch):
    """The nightly unchanged dataset: the strip comes back from state/aug_strip/ without drawing (no torch);
    another augmentation setting or other images draw a new one; 0 images switches it off, saying so."""
    from pipeline.config import TrainConfig
    from pipeline.store import LocalStore

    coco, images = ingested
    store = LocalStore(tmp_path / "store")
    read = lambda n: (images / n).read_bytes()  # noqa: E731
    first = card.augmentation_strip(coco, read, TrainConfig(recipe="none"), store=store)
    assert len(store.list("state/aug_strip/")) == 1
    drawn = []
    real = card._draw_strip
    monkeypatch.setattr(card, "_draw_strip", lambda *a: drawn.append(a) or real(*a))
    again = card.augmentation_strip(coco, read, TrainConfig(recipe="none"), store=store)
    assert drawn == [] and again == first  # png, caption, tiles and scale, from the store
    other = card.augmentation_strip(coco, read, TrainConfig(recipe="none", aug_iou_crop=0.5), store=store)
    assert len(drawn) == 1 and other.png != first.png and "IoU crop p=0.5" in other.caption
    card.augmentation_strip(coco, read, TrainConfig(recipe="none"), images=3, store=store)
    assert len(drawn) == 2  # other images: drawn anew
    assert card.augmentation_strip(coco, read, TrainConfig(recipe="none"), images=0) == \
        "no augmentation strip: snapshot.card_strip_images=0"
