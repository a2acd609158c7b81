"""Pascal VOC reader (defusedxml): corners, sizes from the image header, bad numbers, unsafe XML."""
from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.errors import InputRejected
from pipeline.formats.voc import read_voc
from tests.helpers import write_image

VOC = """<annotation><filename>{name}</filename><size><width>{w}</width><height>60</height><depth>3</depth></size>
<object><name>{label}</name><difficult>0</difficult>
<bndbox><xmin>{xmin}</xmin><ymin>11</ymin><xmax>30</xmax><ymax>40</ymax></bndbox></object></annotation>"""


def _voc(root: Path, name: str, label: str = "car", xmin="11", w="80") -> None:
    write_image(root / "JPEGImages" / name, 80, 60)
    (root / "Annotations").mkdir(parents=True, exist_ok=True)
    (root / "Annotations" / f"{Path(name).stem}.xml").write_text(VOC.format(name=name, label=label, xmin=xmin, w=w))


def test_voc_boxes_become_coco_boxes(tmp_path):
    _voc(tmp_path, "a.jpg", "car")
    _voc(tmp_path, "b.jpg", "bus", w="0")  # size 0: read from the image header
    ds = read_voc(tmp_path)  # 0-based corners, as labelImg, CVAT and Roboflow write them (the default)
    assert [c["name"] for c in ds.categories] == ["bus", "car"]
    assert ds.annotations[0]["bbox"] == [11.0, 11.0, 19.0, 29.0]
    assert ds.images[1]["width"] == 80
    devkit = read_voc(tmp_path, one_based=True)  # the official devkit's 1-based inclusive pixels
    assert devkit.annotations[0]["bbox"] == [10.0, 10.0, 20.0, 30.0]


def test_voc_bad_number_sets_the_image_aside_naming_file_and_field(tmp_path):
    _voc(tmp_path, "a.jpg", xmin="ten")
    _voc(tmp_path, "b.jpg")
    ds = read_voc(tmp_path, "voc-export")
    assert [i["file_name"] for i in ds.images] == ["b.jpg"]
    q = ds.quarantine[0]
    assert (q["file"], q["field"], q["image"]) == ("voc-export/Annotations/a.xml", "object[0].bndbox.xmin", "a.jpg")


def test_voc_entities_are_refused(tmp_path):
    _voc(tmp_path, "a.jpg")
    (tmp_path / "Annotations" / "a.xml").write_text(
        '<?xml version="1.0"?><!DOCTYPE a [<!ENTITY x SYSTEM "file:///etc/passwd">]><annotation>&x;</annotation>')
    with pytest.raises(InputRejected, match="unsafe XML"):
        read_voc(tmp_path)
