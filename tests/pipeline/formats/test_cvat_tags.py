"""CVAT for images 1.1 tags read as image-level classes (data.task: classification): exactly one class per
image; none skips the image (reported), several or an undeclared label set it aside naming the file and field."""
from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from pipeline import formats
from pipeline.errors import InputRejected


def image(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (20, 10), (90, 120, 30)).save(path)
    return path


CVAT = """<?xml version="1.0" encoding="utf-8"?>
<annotations>
  <version>1.1</version>
  <meta><task><labels>
    <label><name>cat</name></label><label><name>dog</name></label><label><name>bird</name></label>
  </labels></task></meta>
  <image id="0" name="a.jpg" width="20" height="10"><tag label="cat" source="manual">
    <attribute name="pose">sitting</attribute></tag></image>
  <image id="1" name="b.jpg" width="20" height="10"><tag label="dog"/>
    <box label="dog" xtl="1" ytl="1" xbr="5" ybr="5" occluded="0"/></image>
  <image id="2" name="c.jpg" width="20" height="10"></image>
  <image id="3" name="d.jpg" width="20" height="10"><tag label="cat"/><tag label="dog"/></image>
  <image id="4" name="e.jpg" width="20" height="10"><tag label="fish"/></image>
  <image id="5" name="f.jpg" width="20" height="10"><tag label="dog"/><tag label="dog"/></image>
</annotations>
"""


def test_cvat_tags(tmp_path):
    root = tmp_path / "cvat"
    for n in "abcdef":
        image(root / "images" / f"{n}.jpg")
    (root / "annotations.xml").write_text(CVAT)
    ds = formats.read("cvat", root, origin="cvat", task="classification")
    assert [im["file_name"] for im in ds.images] == ["a.jpg", "b.jpg", "f.jpg"]
    assert ds.categories == [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}]  # bird never tagged: no class
    assert [a["category_id"] for a in ds.annotations] == [1, 2, 2]
    assert ds.annotations[0]["attributes"] == {"pose": "sitting"} and "bbox" not in ds.annotations[1]
    assert ds.annotations[0]["source"] == {"file": "cvat/annotations.xml", "item": "image[0] (id 0, a.jpg).tag[0]"}
    assert [(q["field"], q["reason"]) for q in ds.quarantine] == [
        ("image[3] (id 3, d.jpg).tag", "2 classes tagged (cat, dog): exactly one tag per image"),
        ("image[4] (id 4, e.jpg).tag[0].label", "unknown label 'fish' (not in <meta> labels)")]
    assert [(s["field"], s["image"]) for s in ds.skipped] == [("image[2] (id 2, c.jpg).tag", "c.jpg")]
    assert ds.listed_images == 6
    # for detection the same file still gives its one box and skips the tags
    det = formats.read("cvat", root, origin="cvat")
    assert len(det.annotations) == 1 and det.annotations[0]["bbox"] == [1.0, 1.0, 4.0, 4.0]


def test_cvat_without_a_readable_xml_is_rejected_as_before(tmp_path):
    root = tmp_path / "cvat"
    image(root / "images" / "a.jpg")
    (root / "annotations.xml").write_text("<annotations><image")
    with pytest.raises(InputRejected, match="not valid XML"):
        formats.read("cvat", root, origin="cvat", task="classification")
