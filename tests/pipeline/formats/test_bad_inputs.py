"""Bad input across formats: each case exits 3, names the file (and the field or line) and writes nothing.

Per-item defects are set aside (quarantine) and reject the export only beyond validate.max_bad_fraction; the
two-image scene makes one bad image 50 %, so they reject here, and the quarantine test shows the other side.
"""
from __future__ import annotations

import json
import os
import shutil
import struct
import tarfile
import zipfile
import zlib
from pathlib import Path

import pytest

from pipeline.cli import main
from pipeline.datasets.synthetic import generate
from tests.helpers import result_line

SCENE = Path(__file__).resolve().parents[2] / "fixtures" / "formats" / "scene"


def _png_header(w: int, h: int) -> bytes:
    """A PNG whose IHDR declares w x h (a decompression bomb's header; no pixel data needed to see it)."""
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    chunk = lambda t, d: struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d))  # noqa: E731
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 16)) + \
        chunk(b"IEND", b"")


def _edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, (path, old)
    path.write_text(text.replace(old, new, 1))


def _json(path: Path, fn) -> None:
    doc = json.loads(path.read_text())
    fn(doc)
    path.write_text(json.dumps(doc))


XXE = '<?xml version="1.0"?>\n<!DOCTYPE a [<!ENTITY x SYSTEM "file:///etc/passwd">]>\n<annotations>&x;</annotations>'
LAUGHS = ('<?xml version="1.0"?>\n<!DOCTYPE l [<!ENTITY a "lol"><!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;">'
          '<!ENTITY c "&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;">]>\n<annotations>&c;</annotations>')


def case(name, folder, fmt, mutate, expected, extra=()):
    return pytest.param(folder, fmt, mutate, expected, list(extra), id=name)


CASES = [
    # XML: entities, DTDs, garbage, the wrong CVAT flavour, unsafe names
    case("cvat_external_entity", "cvat_task", "cvat", lambda r: (r / "annotations.xml").write_text(XXE),
         ["cvat_task/annotations.xml", "unsafe XML"]),
    case("cvat_entity_expansion", "cvat_task", "cvat", lambda r: (r / "annotations.xml").write_text(LAUGHS),
         ["cvat_task/annotations.xml", "unsafe XML"]),
    case("voc_external_entity", "voc", "voc",
         lambda r: (r / "Annotations" / "scene1.xml").write_text(XXE.replace("annotations", "annotation")),
         ["voc/Annotations/scene1.xml", "unsafe XML"]),
    case("cvat_not_xml", "cvat_task", "cvat", lambda r: (r / "annotations.xml").write_text("<annotations><image"),
         ["cvat_task/annotations.xml", "not valid XML"]),
    case("cvat_video_export", "cvat_task", "cvat",
         lambda r: _edit(r / "annotations.xml", "</annotations>", '<track id="0" label="car"></track></annotations>'),
         ["cvat_task/annotations.xml: track", "CVAT for video"]),
    case("cvat_dotdot_name", "cvat_task", "cvat",
         lambda r: _edit(r / "annotations.xml", 'name="scene1.png"', 'name="../../etc/passwd"'),
         ["cvat_task/annotations.xml: image[0].name", "relative path"]),
    case("cvat_absolute_name", "cvat_project", "cvat",
         lambda r: _edit(r / "annotations.xml", 'name="scene2.png"', 'name="/etc/passwd"'),
         ["cvat_project/annotations.xml: image[1].name"]),
    case("cvat_unknown_label", "cvat_task", "cvat",
         lambda r: _edit(r / "annotations.xml", 'label="person"', 'label="unicorn"'),
         ["cvat_task/annotations.xml: image[0] (id 0, scene1.png).box[1].label", "unknown label 'unicorn'"]),
    case("cvat_bad_coordinate", "cvat_task", "cvat",
         lambda r: _edit(r / "annotations.xml", 'xtl="4.00"', 'xtl="four"'),
         ["cvat_task/annotations.xml: image[1] (id 1, scene2.png).box[0]", "finite numbers"]),
    # Labelme
    case("labelme_imagepath_escapes", "labelme", "labelme",
         lambda r: ((r / "scene1.png").unlink(),
                    _json(r / "scene1.json", lambda d: d.update(imagePath="..\\..\\..\\etc\\passwd"))),
         ["labelme/scene1.json: imagePath", "no such image file", "no imageData"]),
    case("labelme_absolute_imagepath", "labelme", "labelme",
         lambda r: ((r / "scene1.png").unlink(), _json(r / "scene1.json", lambda d: d.update(imagePath="/etc/passwd"))),
         ["labelme/scene1.json: imagePath", "no such image file"]),
    case("labelme_bad_json", "labelme", "labelme", lambda r: (r / "scene2.json").write_text('{"shapes": [,]}'),
         ["labelme/scene2.json: line 1 column", "not valid JSON"]),
    case("labelme_not_labelme", "labelme", "labelme", lambda r: (r / "scene2.json").write_text('{"a": 1}'),
         ["labelme/scene2.json", "not a Labelme file"]),
    case("labelme_rectangle_one_point", "labelme", "labelme",
         lambda r: _json(r / "scene1.json", lambda d: d["shapes"][0].update(points=[[1, 2]])),
         ["labelme/scene1.json: shapes[0].points", "exactly 2 points"]),
    case("labelme_bad_base64", "labelme", "labelme",
         lambda r: _json(r / "scene2.json", lambda d: d.update(imageData="not base64 !!")),
         ["labelme/scene2.json: imageData", "base64"]),
    # KITTI
    case("kitti_field_count", "kitti", "kitti",
         lambda r: _edit(r / "training/label_2/scene2.txt", "Car 0.00 0", "Car 0.00"),
         ["kitti/training/label_2/scene2.txt: line 1", "expected 15 fields"]),
    case("kitti_text_number", "kitti", "kitti",
         lambda r: _edit(r / "training/label_2/scene1.txt", "Pedestrian 0.00 1 -1.57 50.00",
                         "Pedestrian 0.00 1 -1.57 fifty"),
         ["kitti/training/label_2/scene1.txt: line 2", "must be numbers"]),
    case("kitti_empty_split", "kitti", "kitti",
         lambda r: [p.unlink() for p in (r / "training/label_2").glob("*.txt")],
         ["kitti/training/label_2", "empty split"]),
    case("kitti_corrupt_image", "kitti", "kitti",
         lambda r: (r / "training/image_2/scene2.png").write_bytes(b"this is not a png"),
         ["kitti/training/image_2/scene2.png: image", "not a readable image"]),
    # YOLO as CVAT exports it
    case("darknet_unknown_class", "yolo_darknet", "yolo",
         lambda r: (r / "obj_train_data/scene2.txt").write_text("7 0.5 0.5 0.1 0.1\n"),
         ["yolo_darknet/obj_train_data/scene2.txt: line 1: class"]),
    case("darknet_list_escapes", "yolo_darknet", "yolo",
         lambda r: (r / "train.txt").write_text("data/obj_train_data/scene1.png\n../../outside.png\n"),
         ["yolo_darknet/train.txt: line 2", "leaves the export"]),
    case("darknet_empty_split", "yolo_darknet", "yolo",
         lambda r: ((r / "valid.txt").write_text("\n"),
                    _edit(r / "obj.data", "backup", "valid = data/valid.txt\nbackup")),
         ["yolo_darknet/valid.txt", "empty split"]),
    # images: bombs, truncation, sizes, symlinks
    case("png_decompression_bomb", "coco", "coco",
         lambda r: ((r / "images/scene2.png").write_bytes(_png_header(100_000, 100_000)),
                    _json(r / "annotations.json",
                          lambda d: d["images"][1].update(width=100_000, height=100_000))),
         ["coco/images/scene2.png: size", "decompression bomb"]),
    case("truncated_png", "coco", "coco",
         lambda r: (r / "images/scene1.png").write_bytes((r / "images/scene1.png").read_bytes()[:-20]),
         ["coco/images/scene1.png: image", "truncated PNG"]),
    case("wrong_declared_size", "coco", "coco",
         lambda r: _json(r / "annotations.json", lambda d: d["images"][0].update(width=81)),
         ["coco/annotations.json: scene1.png: width", "declared width 81 differs from the image's real width 80"]),
    case("symlink_leaves_dataset", "coco", "coco",
         lambda r: os.symlink("/etc/hostname", r / "images" / "scene3.png"),
         ["coco: images/scene3.png", "symlink to '/etc/hostname' leaves the dataset"]),
    case("empty_dataset", "coco", "coco",
         lambda r: _json(r / "annotations.json", lambda d: d.update(images=[], annotations=[])),
         ["annotations.json: images", "empty"]),
    case("coco_empty_split_file", "coco", "coco",
         lambda r: ((r / "annotations").mkdir(), shutil.move(r / "annotations.json",
                                                               r / "annotations/instances_train.json"),
                    (r / "annotations/instances_val.json").write_text(
                        json.dumps({"images": [], "annotations": [], "categories": []}))),
         ["coco/annotations/instances_val.json: images", "empty split"]),
    # archives beyond the configured limits
    case("archive_too_large", "coco", "coco", "zip", ["scene.zip: size", "data.max_archive_bytes=1000"],
         ["--set", "data.max_archive_bytes=1000"]),
    case("archive_too_many_members", "coco", "coco", "tar", ["scene.tar: members", "data.max_archive_members=3"],
         ["--set", "data.max_archive_members=3"]),
]


@pytest.mark.parametrize("folder,fmt,mutate,expected,extra", CASES)
def test_bad_input_is_rejected(folder, fmt, mutate, expected, extra, tmp_path, capsys, monkeypatch):
    src = tmp_path / folder
    shutil.copytree(SCENE / folder, src)
    monkeypatch.chdir(tmp_path)  # the source is named relative to here, as a user would type it
    source = folder
    if mutate == "zip":
        source = "scene.zip"
        with zipfile.ZipFile(tmp_path / source, "w", zipfile.ZIP_DEFLATED) as zf:
            for p in sorted(src.rglob("*")):
                zf.write(p, p.relative_to(src).as_posix())
    elif mutate == "tar":
        source = "scene.tar"
        with tarfile.open(tmp_path / source, "w") as tf:
            tf.add(src, arcname=".")
    else:
        mutate(src)
    out = tmp_path / "canonical"
    code = main(["ingest", "--format", fmt, "--source", source, "--out", str(out), *extra])
    err = capsys.readouterr().err
    assert code == 3, err
    for text in expected:
        assert text in err
    assert "Traceback" not in err
    assert not out.exists() and not list(tmp_path.glob(".canonical.tmp-*"))
    assert not (tmp_path / "canonical.quarantine.json").exists()


def test_few_defects_are_quarantined_and_the_rest_ingested(tmp_path, capsys, nightshift_home):
    generate(tmp_path / "export", num_images=120, seed=3)
    coco = json.loads((tmp_path / "export" / "annotations.json").read_text())
    bad = coco["images"][7]["file_name"]
    path = tmp_path / "export" / "images" / bad
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])  # truncated: 1 of 120 = 0.83 %
    code = main(["ingest", "--run-id", "q", "--source", str(tmp_path / "export")])
    out, err = capsys.readouterr()
    assert code == 0, err
    result = result_line(out)
    assert result["images"] == 119 and result["quarantined"] == 1
    stage = nightshift_home / "artifacts" / "runs" / "q" / "ingest"
    report = json.loads((stage / "quarantine.json").read_text())
    assert report["quarantined_images"] == 1 and report["listed_images"] == 120
    assert report["items"] == [{"file": f"{tmp_path / 'export'}/images/{bad}", "field": "image",
                                "reason": "truncated JPEG (no end-of-image marker)", "image": bad}]
    names = {im["file_name"] for im in json.loads((stage / "dataset" / "annotations.json").read_text())["images"]}
    assert bad not in names and len(names) == 119 and not (stage / "dataset" / "images" / bad).exists()
    # a stricter tolerance rejects the same export, naming the file
    code = main(["ingest", "--run-id", "q2", "--source", str(tmp_path / "export"),
                 "--set", "validate.max_bad_fraction=0.005"])
    err = capsys.readouterr().err
    assert code == 3 and f"images/{bad}: image: truncated JPEG" in err and "1 of 120 items" in err
