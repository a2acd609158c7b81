"""One small scene exported as COCO, VOC, Labelme, CVAT (task and project), YOLO (CVAT's Darknet) and KITTI gives
the same canonical boxes, box by box; each reader keeps what its format adds (attributes, ignore regions)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipeline import formats
from pipeline.cli import main

SCENE = Path(__file__).resolve().parents[2] / "fixtures" / "formats" / "scene"
EXPECTED = {"scene1": [("car", [10.0, 12.0, 30.0, 20.0]), ("person", [50.0, 5.0, 12.0, 40.0])],
            "scene2": [("car", [4.0, 8.0, 20.0, 16.0])]}
SIZES = {"scene1": (80, 60), "scene2": (64, 48)}
KITTI_NAMES = {"Car": "car", "Pedestrian": "person"}
LAYOUTS = [("coco", "coco"), ("voc", "voc"), ("labelme", "labelme"), ("cvat", "cvat_task"),
           ("cvat", "cvat_project"), ("yolo", "yolo_darknet"), ("kitti", "kitti")]


def boxes_by_image(ds) -> dict[str, list]:
    names = {c["id"]: KITTI_NAMES.get(c["name"], c["name"]) for c in ds.categories}
    files = {im["id"]: Path(im["file_name"]).stem for im in ds.images}
    out: dict[str, list] = {}
    for a in ds.annotations:
        if a["iscrowd"]:
            continue
        out.setdefault(files[a["image_id"]], []).append((names[a["category_id"]], [round(v, 2) for v in a["bbox"]]))
    return {k: sorted(v) for k, v in out.items()}


@pytest.mark.parametrize("fmt,folder", LAYOUTS, ids=[f for _, f in LAYOUTS])
def test_every_format_gives_the_same_boxes(fmt, folder, tmp_path):
    ds = formats.read(fmt, SCENE / folder, origin=folder, scratch=tmp_path)
    assert not ds.quarantine
    assert boxes_by_image(ds) == {k: sorted(v) for k, v in EXPECTED.items()}
    for im in ds.images:
        declared = (im["width"], im["height"])
        assert declared in (SIZES[Path(im["file_name"]).stem], (None, None))  # KITTI declares no size
        assert Path(im["path"]).is_file()


def test_formats_keep_their_own_fields(tmp_path):
    cvat = formats.read("cvat", SCENE / "cvat_task")
    person = next(a for a in cvat.annotations if cvat.categories[a["category_id"] - 1]["name"] == "person")
    assert person["attributes"] == {"occluded": True, "z_order": "0", "source": "manual", "colour": "red"}
    project = formats.read("cvat", SCENE / "cvat_project")
    assert sorted(im["file_name"] for im in project.images) == ["Train/scene1.png", "Train/scene2.png"]

    kitti = formats.read("kitti", SCENE / "kitti")
    assert [c["name"] for c in kitti.categories] == ["Car", "Pedestrian"]
    ignore = [a for a in kitti.annotations if a["iscrowd"]]
    # the DontCare region is an ignore region for every class
    assert sorted(a["category_id"] for a in ignore) == [1, 2]
    assert all(a["bbox"] == [30.0, 40.0, 10.0, 8.0] and a["attributes"]["ignore"] for a in ignore)
    car = next(a for a in kitti.annotations if not a["iscrowd"] and a["category_id"] == 1 and a["image_id"] == 1)
    assert car["attributes"]["truncated"] == 0.0 and car["attributes"]["occluded"] == 0
    assert car["attributes"]["alpha"] == -1.57 and car["attributes"]["rotation_y"] == -1.5

    labelme = formats.read("labelme", SCENE / "labelme", scratch=tmp_path)
    embedded = next(im for im in labelme.images if im["file_name"] == "scene2.png")
    assert embedded["path"] == tmp_path / "scene2.png"  # imageData written out: there is no scene2.png file
    assert embedded["path"].read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize("fmt,folder", [("labelme", "labelme"), ("cvat", "cvat_project"), ("kitti", "kitti"),
                                        ("yolo", "yolo_darknet")])
def test_ingest_each_format_end_to_end(fmt, folder, tmp_path, capsys):
    out = tmp_path / "canonical"
    code = main(["ingest", "--format", fmt, "--source", str(SCENE / folder), "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    coco = json.loads((out / "annotations.json").read_text())
    assert len(coco["images"]) == 2
    assert {(im["width"], im["height"]) for im in coco["images"]} == {(80, 60), (64, 48)}  # from the headers
    for im in coco["images"]:
        assert (out / "images" / im["file_name"]).is_file() and len(im["sha1"]) == 40
    assert sum(1 for a in coco["annotations"] if not a["iscrowd"]) == 3
    assert json.loads(Path(str(out) + ".quarantine.json").read_text())["items"] == []
