"""Real exports written by real tools, ingested and validated as they are published, box by box against an
independent converter written here (stdlib XML / JSON / YAML + Pillow for sizes, nothing from pipeline.formats).

The exports are public data sets (images included) that are not committed to this repository: the folder named
by NIGHTSHIFT_REAL_EXPORTS (else `shared/fixtures/real/` in or beside the checkout; tests/fixtures/real/README.md
says how to lay it out) holds one sub-folder per entry of
REAL below, laid out exactly as its source repository publishes it (see REAL's provenance). Entries that are
absent are skipped, each with a reason naming the folder it expected.

Each export: `nightshift ingest` with the default config (format auto, no renaming) and then `nightshift
validate` must both pass (or, where REAL says so, validation must fail only on the named checks that the data
really breaks), every canonical box must be within 1 px of the converter's, and a label broken on purpose in
one source file must be named (file and item) by validation.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import yaml
from PIL import Image

from pipeline.cli import main

ROOT = Path(__file__).resolve().parents[3]
REAL_DIR = Path(os.environ.get("NIGHTSHIFT_REAL_EXPORTS") or next(
    (p for p in (ROOT / "shared" / "fixtures" / "real", ROOT.parent / "shared" / "fixtures" / "real") if p.is_dir()),
    ROOT / "shared" / "fixtures" / "real"))

TINY = ("min_images_per_split",)  # the per-class minimum and balance only warn by default
# folder: (format, export inside the folder, provenance, checks that fail on the real data under the defaults)
REAL = {
    "bccd": ("voc", "BCCD", "github.com/Shenggan/BCCD_Dataset @ d272fb14 (MIT), whole repository: labelImg VOC one "
                            "folder down, ImageSets/Main splits", ()),
    "raccoon-labelimg-voc": ("voc", ".", "github.com/datitran/raccoon_dataset @ 93938849 (MIT): labelImg VOC as "
                                         "lowercase annotations/ + images/ beside data/*.csv (data/*.record left out: "
                                         "over the snapshot size limit)", ()),
    "kangaroo-labelimg-voc": ("voc", ".", "github.com/experiencor/kangaroo @ 882bbbd7 (no licence stated): labelImg "
                                          "VOC as annots/ + images/, one truncated JPEG", ()),
    "coco128-yolo": ("yolo", ".", "github.com/lightly-ai/coco128_yolo @ 6d6f7a05, object_detection/ with its images "
                                  "symlink resolved: Ultralytics config.yaml, names as a dict",
                     ()),
    "raccoon-roboflow-coco": ("coco", ".", "github.com/Ikwus/raccoon @ 67a03b8a (MIT, Roboflow export): "
                                           "_annotations.coco.json with the unused supercategory class", ()),
    # Labelme's examples are 1 to 3 images: too few for the default split and per-class minimums
    "labelme-bbox": ("labelme", ".", "github.com/wkentaro/labelme @ 51e50e43 (GPL-3.0) "
                                     "examples/bbox_detection/data_annotated", TINY),
    "labelme-voc": ("voc", ".", "github.com/wkentaro/labelme @ 51e50e43 examples/bbox_detection/data_dataset_voc "
                                "(labelme2voc output)", TINY),
    "cvat-project": ("cvat", ".", "github.com/openvinotoolkit/datumaro @ 3d533b9c (MIT) tests/assets/cvat_dataset/"
                                  "for_images/export_project: a CVAT server's project export, Train/Validation/Test "
                                  "subsets with the same image names, polylines and points", ("min_images_per_split",)),
    "cvat-task": ("cvat", ".", "github.com/openvinotoolkit/datumaro @ 3d533b9c (MIT) tests/assets/cvat_dataset/"
                               "for_images/export_task: train.xml with shapes whose label is empty", TINY),
    "kitti-datumaro": ("kitti", ".", "github.com/openvinotoolkit/datumaro @ 3d533b9c (MIT) tests/assets/kitti_dataset/"
                                     "kitti_detection: training/image_2 + label_2", TINY),
    "labelme-imagedata": ("labelme", ".", "github.com/wkentaro/labelme @ 51e50e43 examples/tutorial/"
                                          "apc2016_obj3.json alone "
                                          "(tests/data/annotated_with_data links to it): "
                                          "imagePath names the JSON itself, the picture is in imageData", TINY),
}


def _key(name: str) -> str:
    """An image's file name without its extension: the key both sides are compared by."""
    return Path(name.replace("\\", "/")).with_suffix("").as_posix()


# -- independent converters: {image stem: sorted [(class, [x, y, w, h])]} -------------------------------------
def voc_boxes(export: Path) -> dict:
    ann = next(p for p in export.iterdir() if p.is_dir() and p.name.lower() in ("annotations", "annots"))
    out: dict = {}
    for xml in sorted(ann.glob("*.xml")):
        node = ET.parse(xml).getroot()
        boxes = out.setdefault(_key(node.findtext("filename") or xml.stem), [])
        for obj in node.iter("object"):
            b = obj.find("bndbox")
            x1, y1, x2, y2 = (float(b.findtext(t)) for t in ("xmin", "ymin", "xmax", "ymax"))
            if x2 > x1 and y2 > y1:  # labelImg's 0-based corners; no-area boxes are reported, not boxes
                boxes.append((obj.findtext("name").strip(), [x1, y1, x2 - x1, y2 - y1]))
    return out


def coco_boxes(export: Path) -> dict:
    doc = json.loads(next(export.glob("*.json")).read_text())
    names = {c["id"]: c["name"] for c in doc["categories"]}
    files = {im["id"]: _key(im["file_name"]) for im in doc["images"]}
    out: dict = {s: [] for s in files.values()}
    for a in doc["annotations"]:
        if a["bbox"][2] > 0 and a["bbox"][3] > 0:
            out[files[a["image_id"]]].append((names[a["category_id"]], [float(v) for v in a["bbox"]]))
    return out


def yolo_boxes(export: Path) -> dict:
    spec = yaml.safe_load(next(export.glob("*.yaml")).read_text())
    names = spec["names"] if isinstance(spec["names"], dict) else dict(enumerate(spec["names"]))
    out: dict = {}
    for image in sorted((export / "images").rglob("*.jpg")):
        w, h = Image.open(image).size
        label = export / "labels" / image.relative_to(export / "images").with_suffix(".txt")
        boxes = out.setdefault(image.relative_to(export / "images").with_suffix("").as_posix(), [])
        for line in (label.read_text().splitlines() if label.is_file() else []):
            if line.strip():
                c, cx, cy, bw, bh = line.split()[:5]
                cx, cy, bw, bh = float(cx) * w, float(cy) * h, float(bw) * w, float(bh) * h
                boxes.append((names[int(c)], [cx - bw / 2, cy - bh / 2, bw, bh]))
    return out


def labelme_boxes(export: Path) -> dict:
    out: dict = {}
    for path in sorted(export.glob("*.json")):
        doc = json.loads(path.read_text())
        boxes = out.setdefault(path.stem, [])
        for s in doc["shapes"]:
            xs, ys = [p[0] for p in s["points"]], [p[1] for p in s["points"]]
            boxes.append((s["label"], [min(xs), min(ys), max(xs) - min(xs), max(ys) - min(ys)]))
    return out


def cvat_boxes(export: Path) -> dict:
    xml = export / "annotations.xml" if (export / "annotations.xml").is_file() else next(export.glob("*.xml"))
    out: dict = {}
    for image in ET.parse(xml).getroot().iter("image"):
        subset = image.get("subset")
        boxes = out.setdefault(_key(f"{subset}/{image.get('name')}" if subset else image.get("name")), [])
        for el in image:
            if not el.get("label"):  # CVAT's label="": not a box to learn
                continue
            if el.tag == "box":
                x1, y1, x2, y2 = (float(el.get(k)) for k in ("xtl", "ytl", "xbr", "ybr"))
                boxes.append((el.get("label"), [x1, y1, x2 - x1, y2 - y1]))
            elif el.tag == "polygon":
                pts = [[float(v) for v in p.split(",")] for p in el.get("points").split(";")]
                xs, ys = [p[0] for p in pts], [p[1] for p in pts]
                boxes.append((el.get("label"), [min(xs), min(ys), max(xs) - min(xs), max(ys) - min(ys)]))
    return out


def kitti_boxes(export: Path) -> dict:
    out: dict = {}
    for label in sorted((export / "training" / "label_2").glob("*.txt")):
        boxes = out.setdefault(f"image_2/{label.stem}", [])
        for line in label.read_text().splitlines():
            f = line.split()
            if f and f[0] != "DontCare":
                left, top, right, bottom = (float(v) for v in f[4:8])
                boxes.append((f[0], [left, top, right - left, bottom - top]))
    return out


CONVERTERS = {"voc": voc_boxes, "coco": coco_boxes, "yolo": yolo_boxes, "labelme": labelme_boxes,
              "cvat": cvat_boxes, "kitti": kitti_boxes}


def canonical_boxes(dataset: Path) -> dict:
    coco = json.loads((dataset / "annotations.json").read_text())
    names = {c["id"]: c["name"] for c in coco["categories"]}
    files = {im["id"]: _key(im["file_name"]) for im in coco["images"]}
    out: dict = {s: [] for s in files.values()}
    for a in coco["annotations"]:
        if not a.get("iscrowd"):
            out[files[a["image_id"]]].append((names[a["category_id"]], a["bbox"]))
    return out


def assert_same_boxes(got: dict, want: dict, quarantined: set[str]) -> int:
    """Every image within 1 px of the converter, except those ingest set aside (each named in its report)."""
    want = {k: v for k, v in want.items() if k not in quarantined}
    assert sorted(got) == sorted(want), set(got) ^ set(want)
    n = 0
    for stem in want:
        g, w = sorted(got[stem]), sorted(want[stem])
        assert [c for c, _ in g] == [c for c, _ in w], stem
        for (cls, gb), (_, wb) in zip(g, w):
            assert max(abs(a - b) for a, b in zip(gb, wb)) <= 1.0, (stem, cls, gb, wb)
            n += 1
    return n


def _break_one_label(fmt: str, export: Path) -> tuple[str, str]:
    """Move the first box of one source file far outside its image; returns (file, item) a message must name."""
    if fmt == "voc":
        ann = next(p for p in export.iterdir() if p.is_dir() and p.name.lower() in ("annotations", "annots"))
        xml = sorted(ann.glob("*.xml"))[0]
        xml.write_text(re.sub(r"<xmax>\s*[\d.]+\s*</xmax>", "<xmax>99999</xmax>", xml.read_text(), count=1))
        return xml.relative_to(export).as_posix(), "object[0]"
    if fmt == "yolo":
        label = sorted(p for p in (export / "labels").rglob("*.txt") if p.read_text().strip())[0]
        lines = label.read_text().splitlines()
        c, _, *rest = lines[0].split()
        label.write_text("\n".join([" ".join([c, "7.5", *rest]), *lines[1:]]) + "\n")  # cx not normalised
        return label.relative_to(export).as_posix(), "line 1"
    if fmt == "coco":
        path = next(export.glob("*.json"))
        doc = json.loads(path.read_text())
        doc["annotations"][0]["bbox"][0] = 99999.0
        path.write_text(json.dumps(doc))
        return path.name, f"annotations[0] (id {doc['annotations'][0]['id']})"
    if fmt == "cvat":
        xml = export / "annotations.xml" if (export / "annotations.xml").is_file() else next(export.glob("*.xml"))
        xml.write_text(re.sub(r'xbr="[\d.]+"', 'xbr="99999"', xml.read_text(), count=1))
        return xml.name, "image[0] (id 0, img0.jpg).box[0]"
    if fmt == "kitti":
        label = sorted((export / "training" / "label_2").glob("*.txt"))[0]
        lines = label.read_text().splitlines()
        f = lines[0].split()
        f[6] = "99999"  # right
        label.write_text("\n".join([" ".join(f), *lines[1:]]) + "\n")
        return label.relative_to(export).as_posix(), "line 1"
    path = sorted(export.glob("*.json"))[0]
    doc = json.loads(path.read_text())
    doc["shapes"][0]["points"][0][0] = 99999.0
    path.write_text(json.dumps(doc))
    return path.name, "shapes[0]"


@pytest.mark.parametrize("name", sorted(REAL))
def test_real_export_ingests_validates_and_matches_box_by_box(name, tmp_path, capsys, nightshift_home):
    src = REAL_DIR / name
    if not src.is_dir():
        pytest.skip(f"real export {name!r} not here: expected {src} ({REAL[name][2]})")
    fmt, inner, _, failing = REAL[name]
    out = tmp_path / "canonical"
    code = main(["ingest", "--source", str(src), "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 0, err
    assert f"as {fmt} (detected" in err  # format auto, and the log says why
    report = json.loads(Path(f"{out}.quarantine.json").read_text())
    assert report["bad_fraction"] <= 0.01
    n = assert_same_boxes(canonical_boxes(out), CONVERTERS[fmt](src / inner),
                          {_key(q["image"]) for q in report["items"] if q.get("image")})
    assert n > 0

    code = main(["validate", "--dataset", str(out), "--report-dir", str(tmp_path / "report")])
    err = capsys.readouterr().err
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    assert sorted(report["failed_checks"]) == sorted(failing), err
    assert code == (3 if failing else 0)

    # a label broken on purpose: validation names the export's own file and item
    broken = tmp_path / "broken"
    shutil.copytree(src, broken, symlinks=True)
    rel, item = _break_one_label(fmt, broken / inner)
    out2 = tmp_path / "canonical2"
    assert main(["ingest", "--source", str(broken), "--out", str(out2)]) == 0, capsys.readouterr().err
    capsys.readouterr()
    code = main(["validate", "--dataset", str(out2), "--report-dir", str(tmp_path / "report2"),
                 "--set", "validate.max_bad_fraction=0"])
    err = capsys.readouterr().err
    assert code == 3
    # named relative to the source the user gave (the dataset's hash must not depend on where it lay)
    expected = (f"{inner}/{rel}" if inner != "." else rel) + f": {item}"
    assert expected in err, err
