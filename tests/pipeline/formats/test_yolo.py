"""YOLO reader (Ultralytics data.yaml): normalised boxes and polygons, unknown classes, empty splits, the CLI."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipeline.cli import main
from pipeline.errors import InputRejected
from pipeline.formats.yolo import read_yolo
from tests.helpers import write_image


def _yolo(root: Path, labels: dict[str, str]) -> None:
    root.mkdir(parents=True, exist_ok=True)
    (root / "data.yaml").write_text("path: /somewhere/on/the/exporting/machine\ntrain: images/train\n"
                                    "val: images/val\nnames:\n  0: person\n  1: bike\n")
    for rel, text in labels.items():
        write_image(root / "images" / f"{rel}.jpg", 100, 50)
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
