"""ingest with data.task=segmentation: COCO polygons and RLE, Labelme polygons and masks, CVAT polygons and masks,
YOLO-seg polygons; plain boxes skipped and reported, bad masks quarantined naming file and field, the demo set
with masks, and detection ingest of the same exports unchanged."""
from __future__ import annotations

import base64
import io
import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline.cli import main
from pipeline.datasets import masks
from pipeline.datasets.synthetic import generate
from tests.helpers import result_line, write_image

SEG = ["--set", "data.task=segmentation"]
ROOT = Path(__file__).resolve().parents[3]
REAL_DIR = Path(os.environ.get("NIGHTSHIFT_REAL_EXPORTS") or next(
    (p for p in (ROOT / "shared" / "fixtures" / "real", ROOT.parent / "shared" / "fixtures" / "real") if p.is_dir()),
    ROOT / "shared" / "fixtures" / "real"))  # tests/fixtures/real/README.md: public exports, not committed


def real(folder: str) -> Path:
    src = REAL_DIR / folder
    if not src.is_dir():
        pytest.skip(f"real export {folder!r} not here: expected {src} (tests/fixtures/real/README.md)")
    return src


def ingest(capsys, source: Path, out: Path, *args: str) -> tuple[int, dict | None, str]:
    code = main(["ingest", "--source", str(source), "--out", str(out), *args])
    stdout, err = capsys.readouterr()
    return code, result_line(stdout, required=False), err


def canonical(out: Path) -> dict:
    return json.loads((out / "annotations.json").read_text())


def quarantine(out: Path) -> dict:
    return json.loads(out.with_name(out.name + ".quarantine.json").read_text())


def test_coco_polygons_and_both_rles_kept_plain_boxes_skipped_bad_rle_quarantined(tmp_path, capsys):
    src = tmp_path / "coco"
    generate(src, num_images=8, image_size=64, seed=2, segmentation=True)
    coco = json.loads((src / "annotations.json").read_text())
    anns = coco["annotations"]
    img = {im["id"]: im for im in coco["images"]}
    first = img[anns[0]["image_id"]]
    m = masks.decode(anns[0]["segmentation"], first["height"], first["width"])
    anns[0]["segmentation"] = masks.encode(m)  # compressed RLE
    flat = m.reshape(-1, order="F")
    edges = np.flatnonzero(np.diff(flat)) + 1
    runs = np.diff(np.concatenate([[0], edges, [flat.size]])).tolist()
    anns[1]["segmentation"] = {"size": [64, 64], "counts": ([0] if flat[0] else []) + runs}  # uncompressed
    del anns[2]["segmentation"]  # a plain box
    bad_image = img[anns[-1]["image_id"]]["file_name"]
    anns[-1]["segmentation"] = {"size": [64, 64], "counts": "!!garbage"}
    (src / "annotations.json").write_text(json.dumps(coco))

    out = tmp_path / "out"
    code, result, err = ingest(capsys, src, out, *SEG, "--set", "validate.max_bad_fraction=0.5")
    assert code == 0, err
    assert result["task"] == "segmentation"
    data = canonical(out)
    assert data["task"] == "segmentation"
    assert all(a.get("segmentation") for a in data["annotations"])
    assert bad_image not in {im["file_name"] for im in data["images"]}
    kinds = {type(a["segmentation"]).__name__ for a in data["annotations"]}
    assert kinds == {"list", "dict"}
    by_source = {a["source"]["item"]: a for a in data["annotations"]}
    rle = next(a for item, a in by_source.items() if item.startswith("annotations[0]"))
    assert rle["area"] == float(m.sum())  # the mask's area, as COCO's mask evaluation wants
    report = quarantine(out)
    assert any(s["field"].startswith("annotations[2]") and "plain box" in s["reason"] for s in report["skipped"])
    bad = [q for q in report["items"] if q["image"] == bad_image]
    assert bad and bad[0]["field"].endswith(".segmentation") and "cannot be rasterised" in bad[0]["reason"]
    assert bad[0]["file"].endswith("annotations.json")


def test_an_export_with_no_masks_at_all_is_refused_for_segmentation(tmp_path, capsys):
    src = tmp_path / "boxes"
    generate(src, num_images=4, image_size=64, seed=1)
    code, _, err = ingest(capsys, src, tmp_path / "out", *SEG)
    assert code == 3
    assert "annotations.json" in err and "segmentation" in err and "data.task=detection" in err
    assert not (tmp_path / "out").exists()


def _png_b64(crop: np.ndarray) -> str:
    buf = io.BytesIO()
    Image.fromarray(crop.astype(np.uint8) * 255).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def _labelme(root: Path, mask_png: str) -> None:
    root.mkdir(parents=True)
    for name in ("a", "b"):
        write_image(root / f"{name}.jpg", 40, 30)
        shapes = [{"label": "cell", "shape_type": "polygon", "points": [[2, 2], [12, 2], [12, 10]]},
                  {"label": "cell", "shape_type": "mask", "points": [[20, 5], [25, 8]], "mask": mask_png},
                  {"label": "cell", "shape_type": "rectangle", "points": [[30, 20], [38, 28]]},
                  {"label": "cell", "shape_type": "circle", "points": [[8, 20], [12, 20]]}]
        (root / f"{name}.json").write_text(json.dumps({
            "version": "5.5.0", "shapes": shapes, "imagePath": f"{name}.jpg", "imageData": None,
            "imageHeight": 30, "imageWidth": 40}))


def test_labelme_polygons_and_masks(tmp_path, capsys):
    crop = np.zeros((4, 6), dtype=bool)
    crop[1:3, 1:5] = True
    _labelme(tmp_path / "lm", _png_b64(crop))
    out = tmp_path / "out"
    code, result, err = ingest(capsys, tmp_path / "lm", out, "--format", "labelme", *SEG)
    assert code == 0, err
    data = canonical(out)
    assert len(data["annotations"]) == 8  # polygon, mask, rectangle and circle per image
    circles = [a for a in data["annotations"] if isinstance(a["segmentation"], list)
               and len(a["segmentation"][0]) == 64]
    assert len(circles) == 2 and circles[0]["bbox"] == [4.0, 16.0, 8.0, 8.0]
    assert abs(circles[0]["area"] - 3.14159 * 16) < 4  # the filled circle's pixels
    # Labelme fills a rectangle (labelme2coco writes its 4 corners): a box-shaped mask, not a skipped plain box
    rects = [a for a in data["annotations"] if a["bbox"] == [30.0, 20.0, 8.0, 8.0]]
    assert len(rects) == 2 and rects[0]["segmentation"] == [[30.0, 20.0, 38.0, 20.0, 38.0, 28.0, 30.0, 28.0]]
    assert 60 <= rects[0]["area"] <= 81  # the filled square's pixels
    rles = [a for a in data["annotations"] if isinstance(a["segmentation"], dict)]
    assert len(rles) == 2
    full = masks.decode(rles[0]["segmentation"], 30, 40)
    expected = np.zeros((30, 40), dtype=np.uint8)
    expected[6:8, 21:25] = 1
    assert np.array_equal(full, expected)
    assert rles[0]["bbox"] == [21.0, 6.0, 4.0, 2.0] and rles[0]["area"] == 8.0
    assert not quarantine(out)["skipped"]

    # the same export for detection: as before, the mask shape is skipped and the rectangle is a box
    det = tmp_path / "det"
    code, _, err = ingest(capsys, tmp_path / "lm", det, "--format", "labelme")
    assert code == 0, err
    assert "task" not in canonical(det) and len(canonical(det)["annotations"]) == 6
    assert any("mask" in s["reason"] for s in quarantine(det)["skipped"])


def test_labelme_mask_that_does_not_fit_its_points_sets_the_image_aside(tmp_path, capsys):
    _labelme(tmp_path / "lm", _png_b64(np.ones((9, 9), dtype=bool)))
    code, _, err = ingest(capsys, tmp_path / "lm", tmp_path / "out", "--format", "labelme", *SEG)
    assert code == 3
    assert "a.json" in err and "shapes[1].mask" in err and "points span 6 x 4" in err


CVAT = """<?xml version="1.0" encoding="utf-8"?>
<annotations>
  <version>1.1</version>
  <meta><task><labels><label><name>leaf</name></label></labels></task></meta>
  <image id="0" name="p.jpg" width="40" height="30">
    <polygon label="leaf" occluded="0" points="2,2;12,2;12,10"/>
    <mask label="leaf" source="manual" occluded="0" rle="{rle}" left="20" top="5" width="6" height="4" z_order="0"/>
    <box label="leaf" occluded="0" xtl="30" ytl="20" xbr="38" ybr="28"/>
  </image>
  <image id="1" name="q.jpg" width="40" height="30">
    <polygon label="leaf" occluded="0" points="5,5;15,5;15,15;5,15"/>
  </image>
</annotations>
"""


def test_cvat_polygons_and_masks(tmp_path, capsys):
    root = tmp_path / "cvat"
    for name in ("p", "q"):
        write_image(root / "images" / f"{name}.jpg", 40, 30)
    # the 6 x 4 crop row by row: row 0 empty, rows 1-2 columns 1-4 set, row 3 empty
    (root / "annotations.xml").write_text(CVAT.format(rle="7, 4, 2, 4, 7"))
    out = tmp_path / "out"
    code, _, err = ingest(capsys, root, out, "--format", "cvat", *SEG)
    assert code == 0, err
    data = canonical(out)
    assert len(data["annotations"]) == 3
    rle = next(a for a in data["annotations"] if isinstance(a["segmentation"], dict))
    expected = np.zeros((30, 40), dtype=np.uint8)
    expected[6:8, 21:25] = 1
    assert np.array_equal(masks.decode(rle["segmentation"], 30, 40), expected)
    assert any(s["field"].endswith("box[2]") and "plain box" in s["reason"] for s in quarantine(out)["skipped"])

    (root / "annotations.xml").write_text(CVAT.format(rle="7, 4, 2"))
    code, _, err = ingest(capsys, root, tmp_path / "bad", "--format", "cvat", *SEG,
                          "--set", "validate.max_bad_fraction=0")
    assert code == 3
    assert "annotations.xml" in err and "mask[1]" in err and "sum to width * height = 24" in err


def test_yolo_seg_polygons(tmp_path, capsys):
    root = tmp_path / "yolo"
    root.mkdir()
    (root / "data.yaml").write_text("train: images/train\nval: images/val\nnames:\n  0: blob\n")
    for rel, line in (("train/a", "0 0.1 0.1 0.5 0.1 0.5 0.5\n"), ("val/b", "0 0.2 0.2 0.6 0.2 0.6 0.6 0.2 0.6\n")):
        write_image(root / "images" / f"{rel}.jpg", 50, 40)
        (root / "labels" / f"{rel}.txt").parent.mkdir(parents=True, exist_ok=True)
        (root / "labels" / f"{rel}.txt").write_text(line)
    out = tmp_path / "out"
    code, _, err = ingest(capsys, root, out, "--format", "yolo", *SEG)
    assert code == 0, err
    data = canonical(out)
    tri = next(a for a in data["annotations"] if len(a["segmentation"][0]) == 6)
    assert tri["segmentation"][0] == [5.0, 4.0, 25.0, 4.0, 25.0, 20.0]
    assert 0 < tri["area"] < tri["bbox"][2] * tri["bbox"][3]  # the triangle's own area, not its box's


def test_the_demo_set_has_masks_when_the_task_is_segmentation(capsys, nightshift_home):
    code = main(["ingest", "--run-id", "segdemo", "--set", "data.task=segmentation", "--set", "data.demo_images=6"])
    out, err = capsys.readouterr()
    assert code == 0, err
    data = json.loads((nightshift_home / "artifacts/runs/segdemo/ingest/dataset/annotations.json").read_text())
    assert data["task"] == "segmentation" and data["annotations"]
    for ann in data["annotations"]:
        (poly,) = ann["segmentation"]
        xs, ys = poly[0::2], poly[1::2]
        x, y, w, h = ann["bbox"]
        assert (min(xs), min(ys), max(xs), max(ys)) == (x, y, x + w, y + h)
        assert len(poly) in (6, 8, 64)  # triangle, square, 32-gon


def test_labelme_group_id_pieces_are_one_object_and_ignore_shapes_are_ignore_regions(tmp_path, capsys):
    """As Labelme's examples/instance_segmentation: shapes sharing a label and group_id are one object in pieces
    (labelme2coco merges them), and `__ignore__` (labels.txt's first line) is a region, never a class."""
    crop = np.ones((3, 4), dtype=bool)
    root = tmp_path / "lm"
    root.mkdir()
    write_image(root / "a.jpg", 60, 40)
    shapes = [{"label": "sofa", "shape_type": "polygon", "group_id": 0, "points": [[2, 2], [12, 2], [12, 10]]},
              {"label": "sofa", "shape_type": "polygon", "group_id": 0, "points": [[20, 2], [30, 2], [30, 12]]},
              {"label": "person", "shape_type": "polygon", "group_id": 0, "points": [[40, 20], [50, 20], [50, 30]]},
              {"label": "person", "shape_type": "polygon", "group_id": 1, "points": [[2, 20], [10, 20], [10, 30]]},
              {"label": "person", "shape_type": "mask", "group_id": 1, "points": [[14, 30], [17, 32]],
               "mask": _png_b64(crop)},
              {"label": "sofa", "shape_type": "polygon", "points": [[40, 2], [50, 2], [50, 8]]},
              {"label": "sofa", "shape_type": "polygon", "points": [[52, 2], [58, 2], [58, 8]]},
              {"label": "__ignore__", "shape_type": "polygon", "points": [[30, 30], [38, 30], [38, 38]]}]
    (root / "a.json").write_text(json.dumps({"version": "5.5.0", "shapes": shapes, "imagePath": "a.jpg",
                                             "imageData": None, "imageHeight": 40, "imageWidth": 60}))
    out = tmp_path / "out"
    code, result, err = ingest(capsys, root, out, "--format", "labelme", *SEG)
    assert code == 0, err
    data = canonical(out)
    assert [c["name"] for c in data["categories"]] == ["person", "sofa"]
    objects = [a for a in data["annotations"] if not a["iscrowd"]]
    assert len(objects) == 5  # sofa pieces 0+1, person 0, person pieces 3+4, two sofas without a group
    pieces = next(a for a in objects if a["source"]["item"] == "shapes[0]+shapes[1]")
    assert len(pieces["segmentation"]) == 2 and pieces["bbox"] == [2.0, 2.0, 28.0, 10.0]
    mixed = next(a for a in objects if a["source"]["item"] == "shapes[3]+shapes[4]")
    assert isinstance(mixed["segmentation"], dict)  # a mask piece: one RLE for the whole object
    m = masks.decode(mixed["segmentation"], 40, 60)
    assert m[30:33, 14:18].all() and m[28, 9] and mixed["bbox"] == [2.0, 20.0, 16.0, 13.0]
    assert mixed["area"] == float(m.sum())
    ignore = [a for a in data["annotations"] if a["iscrowd"]]
    assert len(ignore) == 2 and {a["category_id"] for a in ignore} == {c["id"] for c in data["categories"]}
    assert all(a["segmentation"] == [[30.0, 30.0, 38.0, 30.0, 38.0, 38.0]] for a in ignore)
    assert "joined" in err and "__ignore__" in err

    # detection keeps each piece a box of its own, and __ignore__ is an ignore region there too
    det = tmp_path / "det"
    code, _, err = ingest(capsys, root, det, "--format", "labelme")
    assert code == 0, err
    boxes = canonical(det)["annotations"]
    assert sum(not a["iscrowd"] for a in boxes) == 6 and sum(a["iscrowd"] for a in boxes) == 2


def test_degenerate_polygons_are_left_out_not_their_images(tmp_path, capsys):
    """Real exports hold stray clicks: a polygon part of 2 points (COCO, CVAT, Labelme) or collinear points.
    They outline nothing, so they are left out and reported like a box with no area; the image and its other
    objects stay, and a good part of the same object is kept."""
    src = tmp_path / "coco"
    generate(src, num_images=4, image_size=64, seed=3, segmentation=True)
    coco = json.loads((src / "annotations.json").read_text())
    anns = coco["annotations"]
    good = anns[0]["segmentation"][0]
    anns[0]["segmentation"] = [good, [1, 1, 3, 3]]  # a good part and a 2-point one
    anns[1]["segmentation"] = [[5, 5, 6, 6]]  # nothing but a 2-point part
    anns[2]["segmentation"] = [[5, 5, 20, 5, 40, 5]]  # collinear: no pixel
    (src / "annotations.json").write_text(json.dumps(coco))
    out = tmp_path / "out"
    code, _, err = ingest(capsys, src, out, *SEG)
    assert code == 0, err
    data = canonical(out)
    assert len(data["images"]) == 4 and len(data["annotations"]) == len(anns) - 2
    first = next(a for a in data["annotations"] if a["source"]["item"].startswith("annotations[0]"))
    assert first["segmentation"] == [good]
    skipped = {(s["field"], s["reason"].split(":")[0]) for s in quarantine(out)["skipped"]}
    assert ("annotations[0].segmentation[1]", "a polygon of 2 point(s) outlines no area") in skipped
    assert any(f.startswith("annotations[1]") and "plain box" in r for f, r in
               ((s["field"], s["reason"]) for s in quarantine(out)["skipped"]))
    assert any(f.startswith("annotations[2]") and f.endswith(".segmentation") and "no pixel" in r for f, r in
               ((s["field"], s["reason"]) for s in quarantine(out)["skipped"]))
    assert quarantine(out)["items"] == []
    assert json.loads((src / "annotations.json").read_text())["annotations"][0]["segmentation"][1] == [1, 1, 3, 3]

    # CVAT and Labelme: a 2-point polygon is skipped, its image kept
    cv = tmp_path / "cvat"
    (cv / "images").mkdir(parents=True)
    write_image(cv / "images" / "a.jpg", 40, 30)
    (cv / "annotations.xml").write_text(
        '<annotations><version>1.1</version><image id="0" name="a.jpg" width="40" height="30">'
        '<polygon label="cell" points="2,2;12,2;12,10" occluded="0"/>'
        '<polygon label="cell" points="20,20;25,25" occluded="0"/></image></annotations>')
    code, _, err = ingest(capsys, cv, tmp_path / "cvat_out", "--format", "cvat", *SEG)
    assert code == 0, err
    assert len(canonical(tmp_path / "cvat_out")["annotations"]) == 1
    skipped = [s["field"] for s in quarantine(tmp_path / "cvat_out")["skipped"]]
    assert skipped == ["image[0] (id 0, a.jpg).polygon[1].points"]
    lm = tmp_path / "lm"
    lm.mkdir()
    write_image(lm / "a.jpg", 40, 30)
    (lm / "a.json").write_text(json.dumps({"shapes": [
        {"label": "cell", "shape_type": "polygon", "points": [[2, 2], [12, 2], [12, 10]]},
        {"label": "cell", "shape_type": "polygon", "points": [[20, 20], [25, 25]]}],
        "imagePath": "a.jpg", "imageData": None, "imageHeight": 30, "imageWidth": 40}))
    code, _, err = ingest(capsys, lm, tmp_path / "lm_out", "--format", "labelme", *SEG)
    assert code == 0, err
    assert len(canonical(tmp_path / "lm_out")["annotations"]) == 1
    assert [s["field"] for s in quarantine(tmp_path / "lm_out")["skipped"]] == ["shapes[1].points"]


def _exif_jpeg(path: Path, size=(60, 40), turn=6) -> None:
    """A JPEG stored `size` (w, h) with a white 10 px square at its stored top-left, EXIF orientation `turn`."""
    im = Image.new("RGB", size, (0, 0, 0))
    im.paste((255, 255, 255), (0, 0, 10, 10))
    exif = Image.Exif()
    exif[0x0112] = turn
    path.parent.mkdir(parents=True, exist_ok=True)
    im.save(path, exif=exif.tobytes(), quality=95)


def test_exif_rotated_photos_are_ingested_upright_as_the_tools_labelled_them(tmp_path, capsys):
    """A phone photo stored 60 x 40 with EXIF orientation 6 is shown (and labelled) 40 x 60 by CVAT, Labelme,
    Roboflow and Ultralytics; training decodes the stored pixels, so ingest writes it upright. An export that
    declares the stored size labelled the stored pixels (labelImg): kept as stored, with a warning, as is an
    upside-down one (orientation 3), whose size cannot tell."""
    src = tmp_path / "coco"
    _exif_jpeg(src / "images" / "rot.jpg")
    _exif_jpeg(src / "images" / "raw.jpg")
    _exif_jpeg(src / "images" / "flip.jpg", turn=3)  # upside down: same size either way, kept as stored
    seg_upright = [[31, 1, 38, 1, 38, 8, 31, 8]]  # the square, upright: top-right corner of a 40 x 60 image
    seg_raw = [[1, 1, 8, 1, 8, 8, 1, 8]]
    (src / "annotations.json").write_text(json.dumps({
        "images": [{"id": 1, "file_name": "rot.jpg", "width": 40, "height": 60},
                   {"id": 2, "file_name": "raw.jpg", "width": 60, "height": 40},
                   {"id": 3, "file_name": "flip.jpg", "width": 60, "height": 40}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "segmentation": seg_upright},
                        {"id": 2, "image_id": 2, "category_id": 1, "segmentation": seg_raw},
                        {"id": 3, "image_id": 3, "category_id": 1, "segmentation": seg_raw}],
        "categories": [{"id": 1, "name": "square"}]}))
    out = tmp_path / "out"
    code, _, err = ingest(capsys, src, out, *SEG)
    assert code == 0, err
    assert "1 JPEGs turned a quarter by their EXIF orientation and declared upright: written upright" in err
    assert "1 JPEGs carry an EXIF orientation that turns them a quarter" in err and "kept as stored" in err
    assert "1 JPEGs carry an EXIF orientation that mirrors them or turns them upside down" in err
    for name, seg in (("rot.jpg", seg_upright), ("raw.jpg", seg_raw), ("flip.jpg", seg_raw)):
        with Image.open(out / "images" / name) as im:
            pixels = np.asarray(im.convert("L")) > 128
        m = masks.decode(seg, *pixels.shape).astype(bool)
        assert pixels[m].mean() > 0.9 and pixels[~m].mean() < 0.1, name  # the mask covers the white square
    sizes = {im["file_name"]: (im["width"], im["height"]) for im in canonical(out)["images"]}
    assert sizes == {"rot.jpg": (40, 60), "raw.jpg": (60, 40), "flip.jpg": (60, 40)}

    # YOLO-seg labels are normalised to the upright image (Ultralytics reads sizes with EXIF applied)
    yolo = tmp_path / "yolo"
    _exif_jpeg(yolo / "images" / "train" / "rot.jpg")
    (yolo / "labels" / "train").mkdir(parents=True)
    (yolo / "labels" / "train" / "rot.txt").write_text(
        "0 " + " ".join(f"{x / 40:.4f} {y / 60:.4f}" for x, y in ((31, 1), (38, 1), (38, 8), (31, 8))) + "\n")
    (yolo / "data.yaml").write_text("path: .\ntrain: images/train\nval: images/train\nnames: {0: square}\n")
    code, _, err = ingest(capsys, yolo, tmp_path / "yolo_out", *SEG)
    assert code == 0, err
    ann = canonical(tmp_path / "yolo_out")["annotations"][0]
    assert [round(v) for v in ann["bbox"]] == [31, 1, 7, 7]


def test_cvat_for_video_tracks_become_one_image_per_frame(tmp_path, capsys):
    """CVAT for video 1.1: polygons inside <track>s, one per frame; `outside="1"` is no object, a frame with no
    shape is a background image, a shape on a frame with no image file is reported, messages name the track."""
    src = tmp_path / "video"
    for frame in (0, 1, 2):
        write_image(src / "images" / f"frame_{frame:06d}.png", 40, 30)
    src.joinpath("annotations.xml").write_text(
        '<?xml version="1.0"?><annotations><version>1.1</version><meta><task><mode>interpolation</mode>'
        '<labels><label><name>car</name></label><label><name>person</name></label></labels>'
        '<original_size><width>40</width><height>30</height></original_size></task></meta>'
        '<track id="3" label="car" source="manual">'
        '<polygon frame="0" keyframe="1" outside="0" occluded="0" points="2,2;12,2;12,10" z_order="0"/>'
        '<polygon frame="1" keyframe="0" outside="0" occluded="1" points="4,2;14,2;14,10" z_order="0"/>'
        '<polygon frame="2" keyframe="1" outside="1" occluded="0" points="4,2;14,2;14,10" z_order="0"/>'
        '</track><track id="4" label="person">'
        '<polygon frame="0" keyframe="1" outside="0" occluded="0" points="20,20;30,20;30,28" z_order="0"/>'
        '<polygon frame="7" keyframe="1" outside="0" occluded="0" points="20,20;30,20;30,28" z_order="0"/>'
        '<polygon frame="1" keyframe="1" outside="0" occluded="0" points="20,20;30,20" z_order="0"/>'
        '</track></annotations>')
    out = tmp_path / "out"
    code, _, err = ingest(capsys, src, out, *SEG, "--set", "validate.max_bad_fraction=0.5")
    assert code == 0, err
    data = canonical(out)
    names = {im["id"]: im["file_name"] for im in data["images"]}
    assert sorted(names.values()) == ["frame_000000.png", "frame_000001.png", "frame_000002.png"]
    got = sorted((names[a["image_id"]], a["attributes"]["track_id"], a["segmentation"][0][0])
                 for a in data["annotations"])
    assert got == [("frame_000000.png", "3", 2.0), ("frame_000000.png", "4", 20.0), ("frame_000001.png", "3", 4.0)]
    skipped = {s["field"]: s["reason"] for s in quarantine(out)["skipped"]}
    assert "frame 7 has no image file frame_000007.*" in skipped["track[1] (id 4).polygon[1] (frame 7)"]
    assert "at least 3 points" in skipped["track[1] (id 4).polygon[2] (frame 1).points"]


def test_real_labelme_instance_segmentation_matches_labelme2coco(tmp_path, capsys):
    """Labelme's own examples/instance_segmentation: data_annotated (Labelme JSON, group_id pieces, __ignore__)
    ingested as segmentation gives the instances Labelme's labelme2coco wrote for it (data_dataset_coco): the
    same classes per image and masks that agree (IoU > 0.95; the two rasterisers differ on edge pixels)."""
    from pycocotools import mask as mask_utils

    src, ref_dir = real("labelme-instance-seg"), real("labelme2coco-instance-seg")
    out = tmp_path / "out"
    code, _, err = ingest(capsys, src, out, *SEG)
    assert code == 0, err
    data = canonical(out)
    ref = json.loads((ref_dir / "annotations.json").read_text())
    ref_names = {c["id"]: c["name"] for c in ref["categories"]}
    names = {c["id"]: c["name"] for c in data["categories"]}
    assert "__ignore__" not in names.values()
    for img in data["images"]:
        stem = Path(img["file_name"]).stem
        ref_img = next(i for i in ref["images"] if Path(i["file_name"]).stem == stem)
        ours = [a for a in data["annotations"] if a["image_id"] == img["id"] and not a["iscrowd"]]
        theirs = [a for a in ref["annotations"] if a["image_id"] == ref_img["id"]]
        assert sorted(names[a["category_id"]] for a in ours) == sorted(ref_names[a["category_id"]] for a in theirs)
        h, w = img["height"], img["width"]
        for a in theirs:
            b = max(ours, key=lambda o: mask_utils.iou([masks.to_rle(o["segmentation"], h, w)],
                                                       [masks.to_rle(a["segmentation"], h, w)], [0])[0][0])
            iou = mask_utils.iou([masks.to_rle(b["segmentation"], h, w)], [masks.to_rle(a["segmentation"], h, w)],
                                 [0])[0][0]
            assert iou > 0.95 and names[b["category_id"]] == ref_names[a["category_id"]], (stem, iou)
    assert sum(a["iscrowd"] for a in data["annotations"]) == 2 * len(names)  # two __ignore__ regions


def test_real_labelme2coco_and_datumaro_coco_instances_ingest_for_segmentation(tmp_path, capsys):
    """labelme2coco's COCO (category id 0 `_background_`, ids from 0, multi-polygon objects) and Datumaro's
    coco_instances asset (a crowd RLE with list counts, `segmentation: []` on a box) ingest for segmentation."""
    out = tmp_path / "l2c"
    code, result, err = ingest(capsys, real("labelme2coco-instance-seg"), out, *SEG)
    assert code == 0, err
    assert result["annotations"] == 12 and any(len(a["segmentation"]) == 4 for a in canonical(out)["annotations"])
    out = tmp_path / "dm"
    code, result, err = ingest(capsys, real("coco-instances-datumaro"), out, *SEG)
    assert code == 0, err
    anns = canonical(out)["annotations"]
    crowd = [a for a in anns if a["iscrowd"]]
    assert len(anns) == 2 and len(crowd) == 1 and crowd[0]["segmentation"]["counts"] == [0, 20, 30]
    assert [s["reason"].split(":")[0] for s in quarantine(out)["skipped"]] == ["a plain box with no polygon or mask"]


def test_real_cvat_for_video_export_is_read_frame_by_frame(tmp_path, capsys):
    """Datumaro's cvat_dataset/for_video asset (a CVAT server's video task, frames 10, 13, 16 with step=3): the
    one box visible (not outside) on a frame with an image becomes an annotation; points and polylines are
    skipped as in CVAT for images; a segmentation ingest is refused since nothing has a mask."""
    src = real("cvat-video-datumaro")
    out = tmp_path / "out"
    code, _, err = ingest(capsys, src, out)
    assert code == 0, err
    data = canonical(out)
    assert sorted(im["file_name"] for im in data["images"]) == [f"frame_0000{n}.png" for n in (10, 13, 16)]
    (box,) = data["annotations"]
    assert box["bbox"] == [3.0, 4.0, 7.0, 1.0] and box["attributes"]["track_id"] == "0"
    assert box["source"]["item"] == "track[0] (id 0).box[0] (frame 10)"
    code, _, err = ingest(capsys, src, tmp_path / "seg", *SEG)
    assert code == 3 and "none of the 1 annotations has a polygon or mask" in err


def test_yolo_seg_odd_coordinates_and_an_rle_of_another_size_set_their_image_aside_naming_them(tmp_path, capsys):
    """Two defects real exports carry: a YOLO-seg line with an odd number of coordinates (a cut line), and a
    COCO RLE whose size is not its image's (an image resized after annotation). Each sets its image aside with
    one line naming the file and the field; the other images are ingested."""
    yolo = tmp_path / "yolo"
    for name in ("a", "b", "c"):
        write_image(yolo / "images" / "train" / f"{name}.jpg", 40, 30)
        (yolo / "labels" / "train").mkdir(parents=True, exist_ok=True)
        (yolo / "labels" / "train" / f"{name}.txt").write_text("0 0.1 0.1 0.5 0.1 0.5 0.5\n")
    (yolo / "labels" / "train" / "b.txt").write_text("0 0.1 0.1 0.5 0.1 0.5 0.5\n0 0.1 0.1 0.5 0.1 0.5\n")
    (yolo / "data.yaml").write_text("path: .\ntrain: images/train\nval: images/train\nnames: [cell]\n")
    out = tmp_path / "yolo_out"
    code, _, err = ingest(capsys, yolo, out, *SEG, "--set", "validate.max_bad_fraction=0.5")
    assert code == 0, err
    assert sorted(im["file_name"] for im in canonical(out)["images"]) == ["train/a.jpg", "train/c.jpg"]
    (item,) = quarantine(out)["items"]
    assert item["file"].endswith("labels/train/b.txt") and item["field"] == "line 2"
    assert "even number (>= 6) of polygon values, got 5" in item["reason"]

    src = tmp_path / "coco"
    generate(src, num_images=4, image_size=64, seed=5, segmentation=True)
    coco = json.loads((src / "annotations.json").read_text())
    ann = coco["annotations"][0]
    ann["segmentation"] = masks.encode(np.ones((32, 32), dtype=np.uint8))  # annotated at half the size
    (src / "annotations.json").write_text(json.dumps(coco))
    code, _, err = ingest(capsys, src, tmp_path / "coco_out", *SEG)
    assert code == 3
    assert "annotations.json: annotations[0].segmentation.size: RLE size [32, 32] differs from the image's " \
           "[height, width] [64, 64]" in err


def test_cvat_coco_masks_marked_iscrowd_are_named_and_trained_as_objects_on_request(tmp_path, capsys):
    """CVAT's COCO export writes every mask object as an RLE with iscrowd=1 (cvat-ai/cvat#7030): by default they
    stay ignore regions as COCO means them, and ingest says so naming data.crowd; data.crowd=objects trains
    them. Labelme __ignore__ regions stay ignore regions either way."""
    src = tmp_path / "coco"
    generate(src, num_images=6, image_size=64, seed=6, segmentation=True)
    coco = json.loads((src / "annotations.json").read_text())
    img = {im["id"]: im for im in coco["images"]}
    for ann in coco["annotations"][:4]:
        im = img[ann["image_id"]]
        m = masks.decode(ann["segmentation"], im["height"], im["width"])
        flat = m.reshape(-1, order="F")
        edges = np.flatnonzero(np.diff(flat)) + 1
        runs = np.diff(np.concatenate([[0], edges, [flat.size]])).tolist()
        ann.update(iscrowd=1, segmentation={"size": [im["height"], im["width"]],
                                            "counts": ([0] if flat[0] else []) + runs})
    (src / "annotations.json").write_text(json.dumps(coco))
    n = len(coco["annotations"])

    code, result, err = ingest(capsys, src, tmp_path / "ignored", *SEG)
    assert code == 0, err
    assert f"4 of {n} annotations are iscrowd=1" in err and "data.crowd=objects" in err
    assert result["ignore_regions"] == 4 and result["annotations"] == n - 4

    code, result, err = ingest(capsys, src, tmp_path / "objects", *SEG, "--set", "data.crowd=objects")
    assert code == 0, err
    assert "4 iscrowd=1 annotations are trained and scored as objects" in err
    assert result["ignore_regions"] == 0 and result["annotations"] == n
    assert not any(a["iscrowd"] for a in canonical(tmp_path / "objects")["annotations"])

    lm = tmp_path / "lm"
    lm.mkdir()
    write_image(lm / "a.jpg", 40, 30)
    (lm / "a.json").write_text(json.dumps({"shapes": [
        {"label": "cell", "shape_type": "polygon", "points": [[2, 2], [12, 2], [12, 10]]},
        {"label": "__ignore__", "shape_type": "polygon", "points": [[20, 20], [30, 20], [30, 28]]}],
        "imagePath": "a.jpg", "imageData": None, "imageHeight": 30, "imageWidth": 40}))
    code, result, err = ingest(capsys, lm, tmp_path / "lm_out", *SEG, "--set", "data.crowd=objects")
    assert code == 0, err
    assert result["ignore_regions"] == 1 and "iscrowd=1" not in err


def test_category_id_0_non_contiguous_ids_and_unannotated_images(tmp_path, capsys):
    """labelme2coco numbers categories from 0 (`_background_`), other tools leave gaps; images without any
    annotation are backgrounds. All ingest for segmentation with the label map's ids, nothing dropped."""
    src = tmp_path / "coco"
    generate(src, num_images=6, image_size=64, seed=7, segmentation=True)
    coco = json.loads((src / "annotations.json").read_text())
    remap = {c["id"]: new for c, new in zip(coco["categories"], (0, 7, 42))}
    for c in coco["categories"]:
        c["id"] = remap[c["id"]]
    for a in coco["annotations"]:
        a["category_id"] = remap[a["category_id"]]
    empty = coco["images"][0]["id"]
    coco["annotations"] = [a for a in coco["annotations"] if a["image_id"] != empty]
    (src / "annotations.json").write_text(json.dumps(coco))
    out = tmp_path / "out"
    code, result, err = ingest(capsys, src, out, *SEG)
    assert code == 0, err
    data = canonical(out)
    assert len(data["images"]) == 6 and len(data["annotations"]) == len(coco["annotations"])
    by_name = {c["name"]: c["id"] for c in data["categories"]}
    assert sorted(by_name.values()) == [1, 2, 3]
    src_names = {c["id"]: c["name"] for c in coco["categories"]}
    ours = sorted((a["source"]["item"], a["category_id"]) for a in data["annotations"])
    theirs = sorted((f"annotations[{j}] (id {a['id']})", by_name[src_names[a["category_id"]]])
                    for j, a in enumerate(coco["annotations"]))
    assert ours == theirs


def test_cvat_grouped_polygons_and_masks_are_one_object(tmp_path, capsys):
    """CVAT groups the pieces of one object (`group_id`; "0" or none = no group) and its COCO export merges
    them: a segmentation ingest of CVAT for images does the same; a detection ingest keeps each piece a box."""
    src = tmp_path / "cvat"
    write_image(src / "images" / "a.jpg", 40, 30)
    (src / "annotations.xml").write_text(
        '<annotations><version>1.1</version><image id="0" name="a.jpg" width="40" height="30">'
        '<polygon label="car" points="2,2;12,2;12,10" group_id="1" occluded="0"/>'
        '<mask label="car" rle="0, 4" left="20" top="3" width="2" height="2" group_id="1" occluded="0"/>'
        '<polygon label="car" points="2,20;12,20;12,28" group_id="0" occluded="0"/>'
        '<polygon label="car" points="22,20;32,20;32,28" occluded="0"/>'
        '</image></annotations>')
    out = tmp_path / "out"
    code, _, err = ingest(capsys, src, out, *SEG)
    assert code == 0, err
    anns = canonical(out)["annotations"]
    assert len(anns) == 3 and "joined" in err
    (whole,) = [a for a in anns if "+" in a["source"]["item"]]
    m = masks.decode(whole["segmentation"], 30, 40)
    assert m[3:5, 20:22].all() and m[3, 11] and whole["bbox"] == [3.0, 2.0, 19.0, 8.0]  # the rasterised pieces
    code, _, err = ingest(capsys, src, tmp_path / "det", "--format", "cvat")
    assert code == 0, err
    assert len(canonical(tmp_path / "det")["annotations"]) == 3  # the <mask> is no box; polygons stay apart
