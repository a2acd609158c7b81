"""Pascal VOC (defusedxml) and YOLO (Ultralytics data.yaml) readers."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from pipeline.cli import main
from pipeline.errors import InputRejected
from pipeline.formats.voc import read_voc
from pipeline.formats.yolo import read_yolo

VOC = """<annotation><filename>{name}</filename><size><width>{w}</width><height>60</height><depth>3</depth></size>
<object><name>{label}</name><difficult>0</difficult>
<bndbox><xmin>{xmin}</xmin><ymin>11</ymin><xmax>30</xmax><ymax>40</ymax></bndbox></object></annotation>"""


def _image(path: Path, w: int = 80, h: int = 60) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (w, h), (10, 200, 30)).save(path)


def _voc(root: Path, name: str, label: str = "car", xmin="11", w="80") -> None:
    _image(root / "JPEGImages" / name)
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


def _yolo(root: Path, labels: dict[str, str]) -> None:
    root.mkdir(parents=True, exist_ok=True)
    (root / "data.yaml").write_text("path: /somewhere/on/the/exporting/machine\ntrain: images/train\n"
                                    "val: images/val\nnames:\n  0: person\n  1: bike\n")
    for rel, text in labels.items():
        _image(root / "images" / f"{rel}.jpg", 100, 50)
        (root / "labels" / f"{rel}.txt").parent.mkdir(parents=True, exist_ok=True)
        (root / "labels" / f"{rel}.txt").write_text(text)


def test_yolo_normalised_boxes_and_polygons(tmp_path):
    _yolo(tmp_path, {"train/a": "0 0.5 0.5 0.2 0.4\n", "val/b": "1 0.1 0.1 0.3 0.1 0.3 0.5\n"})
    ds = read_yolo(tmp_path)
    assert [c["name"] for c in ds.categories] == ["person", "bike"]
    assert [i["file_name"] for i in ds.images] == ["train/a.jpg", "val/b.jpg"]
    assert ds.annotations[0]["bbox"] == pytest.approx([40.0, 15.0, 20.0, 20.0])
    assert ds.annotations[1]["bbox"] == pytest.approx([10.0, 5.0, 20.0, 20.0])
    assert ds.annotations[1]["category_id"] == 2 and "segmentation" in ds.annotations[1]


def test_yolo_unknown_class_names_the_label_file_and_line(tmp_path):
    _yolo(tmp_path, {"train/a": "0 0.5 0.5 0.2 0.4\n5 0.5 0.5 0.1 0.1\n", "val/c": ""})
    ds = read_yolo(tmp_path, "y")
    assert [i["file_name"] for i in ds.images] == ["val/c.jpg"]
    q = ds.quarantine[0]
    assert (q["file"], q["field"], q["image"]) == ("y/labels/train/a.txt", "line 2: class", "train/a.jpg")


def test_yolo_empty_split_is_rejected(tmp_path):
    _yolo(tmp_path, {"train/a": "0 0.5 0.5 0.2 0.4\n"})
    (tmp_path / "images" / "val").mkdir(parents=True)
    with pytest.raises(InputRejected) as exc:
        read_yolo(tmp_path, "y")
    assert exc.value.path == "y/data.yaml" and exc.value.field == "val" and "empty split" in str(exc.value)


def test_yolo_ingest_via_the_cli(tmp_path, capsys):
    _yolo(tmp_path / "export", {"train/a": "0 0.5 0.5 0.2 0.4\n", "val/b": "1 0.5 0.5 0.2 0.4\n"})
    code = main(["ingest", "--format", "yolo", "--source", str(tmp_path / "export"), "--out", str(tmp_path / "o")])
    assert code == 0, capsys.readouterr().err
    coco = json.loads((tmp_path / "o" / "annotations.json").read_text())
    assert sorted(i["file_name"] for i in coco["images"]) == ["train/a.jpg", "val/b.jpg"]
    assert (tmp_path / "o" / "images" / "train" / "a.jpg").is_file()
