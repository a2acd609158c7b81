"""Labelme flags read as image-level classes (data.task: classification): exactly one true flag per file; none
(or __ignore__) skips the image (reported), several set it aside naming the file and field."""
from __future__ import annotations

import json
from pathlib import Path

from PIL import Image

from pipeline import formats


def image(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (20, 10), (90, 120, 30)).save(path)
    return path


def labelme(root: Path, name: str, flags, shapes=()) -> None:
    image(root / f"{name}.jpg")
    (root / f"{name}.json").write_text(json.dumps({
        "version": "5.2.1", "flags": flags, "shapes": list(shapes), "imagePath": f"{name}.jpg", "imageData": None,
        "imageHeight": 10, "imageWidth": 20}))


def test_labelme_flags(tmp_path, caplog):
    root = tmp_path / "lm"
    labelme(root, "a", {"__ignore__": False, "cat": True, "dog": False})
    labelme(root, "b", {"__ignore__": False, "cat": False, "dog": True},
            shapes=[{"label": "dog", "points": [[1, 1], [5, 5]], "shape_type": "rectangle"}])
    labelme(root, "c", {"__ignore__": False, "cat": False, "dog": False})  # nothing flagged: skipped
    labelme(root, "d", {"__ignore__": False, "cat": True, "dog": True})  # two: set aside
    labelme(root, "e", {"__ignore__": True, "cat": True, "dog": False})  # ignored: skipped
    labelme(root, "f", {"cat": "yes"})  # not a boolean: set aside
    caplog.set_level("INFO")
    ds = formats.read("labelme", root, origin="lm", task="classification")
    assert [im["file_name"] for im in ds.images] == ["a.jpg", "b.jpg"]
    assert ds.categories == [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}]
    assert [(a["category_id"], a["source"]) for a in ds.annotations] == [
        (1, {"file": "lm/a.json", "item": "flags.cat"}), (2, {"file": "lm/b.json", "item": "flags.dog"})]
    assert [(q["file"], q["field"], q["reason"]) for q in ds.quarantine] == [
        ("lm/d.json", "flags", "2 classes flagged true (cat, dog): exactly one must be"),
        ("lm/f.json", "flags.cat", "must be true or false, got 'yes'")]
    assert [(s["file"], s["field"]) for s in ds.skipped] == [("lm/c.json", "flags"), ("lm/e.json", "flags.__ignore__")]
    assert ds.listed_images == 6
    assert "1 files also have shapes: not read for classification" in caplog.text
    # the same export read for detection keeps its one box, as before
    det = formats.read("labelme", root, origin="lm")
    assert len(det.annotations) == 1 and "bbox" in det.annotations[0]


def test_labelme_flags_found_by_auto_for_classification(tmp_path):
    root = tmp_path / "lm"
    labelme(root, "a", {"cat": True, "dog": False})
    labelme(root, "b", {"cat": False, "dog": True})
    ds, found = formats.locate_and_read("auto", root, origin="lm", task="classification")
    assert found.format == "labelme" and [a["category_id"] for a in ds.annotations] == [1, 2]
