"""Layouts as real tools and dataset repositories lay exports out, found with `data.format: auto` and no
renaming: every layout of the one small scene gives the same boxes, box by box, and says which splits it holds.

The scene (tests/fixtures/formats/scene) is rearranged here into each layout: VOC with lowercase folders,
labelImg's `annots/`, XML beside the images, the devkit root, a repository one and two folders above the
export, Windows paths; COCO 2017 `annotations/instances_*.json`, Roboflow split folders, per-split files,
sub-path and absolute file names; Ultralytics YAMLs of any name (`path`, lists, image-list files, Roboflow's
`../train/images`, paths from the exporting machine); Labelme with Windows `imagePath` and embedded imageData;
a CVAT zip with its images; KITTI one folder down.
"""
from __future__ import annotations

import json
import shutil
import zipfile
from pathlib import Path

import pytest

from pipeline import formats
from pipeline.cli import main
from pipeline.errors import InputRejected
from tests.helpers import result_line

SCENE = Path(__file__).resolve().parents[2] / "fixtures" / "formats" / "scene"
EXPECTED = {"scene1": [("car", [10.0, 12.0, 30.0, 20.0]), ("person", [50.0, 5.0, 12.0, 40.0])],
            "scene2": [("car", [4.0, 8.0, 20.0, 16.0])]}
SIZES = {"scene1": (80, 60), "scene2": (64, 48)}
CLASSES = ["car", "person"]


def boxes_by_image(ds) -> dict[str, list]:
    names = {c["id"]: c["name"] for c in ds.categories}
    files = {im["id"]: Path(im["file_name"]).stem.lower() for im in ds.images}
    out: dict[str, list] = {}
    for a in ds.annotations:
        out.setdefault(files[a["image_id"]], []).append((names[a["category_id"]], [round(v, 2) for v in a["bbox"]]))
    return {k: sorted(v) for k, v in out.items()}


def splits_by_image(ds) -> dict[str, str | None]:
    return {Path(im["file_name"]).stem.lower(): im.get("split") for im in ds.images}


def read_auto(src: Path, tmp_path: Path, **options):
    ds, found = formats.locate_and_read("auto", src, origin=src.name, scratch=tmp_path / "scratch", **options)
    assert not ds.quarantine, ds.quarantine
    assert boxes_by_image(ds) == {k: sorted(v) for k, v in EXPECTED.items()}
    return ds, found


def _png(name: str) -> Path:
    return SCENE / "coco" / "images" / name


# -- VOC -------------------------------------------------------------------------------------------------------
def _voc(dest: Path, ann: str = "Annotations", img: str = "JPEGImages") -> Path:
    (dest / ann).mkdir(parents=True, exist_ok=True)
    (dest / img).mkdir(parents=True, exist_ok=True)
    for stem in SIZES:
        shutil.copy(SCENE / "voc" / "Annotations" / f"{stem}.xml", dest / ann / f"{stem}.xml")
        shutil.copy(_png(f"{stem}.png"), dest / img / f"{stem}.png")
    return dest


def _devkit(root: Path) -> Path:
    voc = _voc(root / "VOCdevkit" / "VOC2007")
    (voc / "ImageSets" / "Main").mkdir(parents=True)
    (voc / "ImageSets" / "Main" / "train.txt").write_text("scene1\n")
    (voc / "ImageSets" / "Main" / "val.txt").write_text("scene2\n")
    return root / "VOCdevkit"


def _beside(root: Path) -> Path:
    _voc(root / "export", ann="labels", img="labels")
    return root / "export" / "labels"


def _windows_paths(root: Path) -> Path:
    src = _voc(root / "export", ann="annots", img="images")
    for stem in SIZES:  # labelImg on Windows: no extension in <filename>, the full path in <path>
        xml = src / "annots" / f"{stem}.xml"
        path = f"<path>C:\\Users\\me\\data\\{stem}.png</path>"
        text = xml.read_text().replace(f"<filename>{stem}.png</filename>", f"<filename>{stem}</filename>{path}")
        xml.write_text(text)
        xml.rename(src / "annots" / f"frame_{stem}.xml")  # and XML names that are not the image's
    (src / "images" / "scene2.png").rename(src / "images" / "SCENE2.PNG")  # and a file name in another case
    return src


VOC_LAYOUTS = {
    "devkit_folders": (lambda r: _voc(r / "export"), "export", {}),
    "lowercase_annotations_images": (lambda r: _voc(r / "export", "annotations", "images"), "export", {}),
    "labelimg_annots": (lambda r: _voc(r / "export", "annots", "images"), "export", {}),
    "xml_beside_images": (_beside, "export/labels", {}),
    "devkit_root_with_imagesets": (_devkit, "VOCdevkit/VOC2007", {"scene1": "train", "scene2": "val"}),
    "repository_one_folder_down": (lambda r: (_voc(r / "repo" / "BCCD"), (r / "repo" / "README.md").write_text("x"),
                                              r / "repo")[2], "repo/BCCD", {}),
    "repository_two_folders_down": (lambda r: (_voc(r / "repo" / "data" / "voc"), r / "repo")[1], "repo/data/voc", {}),
    "windows_paths_no_extension": (_windows_paths, "export", {}),
}


def test_roboflow_voc_split_folders_are_one_export(tmp_path):
    src = tmp_path / "roboflow-voc"
    for folder, stem in (("train", "scene1"), ("valid", "scene2")):  # XML beside the images in each split
        (src / folder).mkdir(parents=True)
        shutil.copy(SCENE / "voc" / "Annotations" / f"{stem}.xml", src / folder / f"{stem}.xml")
        shutil.copy(_png(f"{stem}.png"), src / folder / f"{stem}.png")
    ds, found = read_auto(src, tmp_path)
    assert found.format == "voc" and found.root == src and found.reason.startswith("split folders train/, valid/")
    assert {im["file_name"]: im["split"] for im in ds.images} == {"train/scene1.png": "train",
                                                                  "valid/scene2.png": "val"}


@pytest.mark.parametrize("layout", VOC_LAYOUTS)
def test_voc_layouts(layout, tmp_path):
    make, export, splits = VOC_LAYOUTS[layout]
    src = make(tmp_path)
    src = src if src.name != "export" or layout == "xml_beside_images" else src
    ds, found = read_auto(src, tmp_path)
    assert found.format == "voc" and found.root == tmp_path / export
    assert splits_by_image(ds) == {s: splits.get(s) for s in SIZES}
    assert all(a["source"]["item"].startswith("object[") and a["source"]["file"].endswith(".xml")
               for a in ds.annotations)


def test_voc_one_based_reads_the_devkit_convention(tmp_path):
    src = _voc(tmp_path / "export")
    xml = src / "Annotations" / "scene2.xml"  # the devkit writes scene2's car as 1-based inclusive corners
    xml.write_text(xml.read_text().replace("<xmin>4</xmin><ymin>8</ymin>", "<xmin>5</xmin><ymin>9</ymin>"))
    ds, _ = formats.locate_and_read("voc", src, one_based=True)
    car = [a["bbox"] for a in ds.annotations if ds.images[a["image_id"] - 1]["file_name"] == "scene2.png"]
    assert car == [[4.0, 8.0, 20.0, 16.0]]
    from pipeline.formats.voc import read_box, write_box
    for one_based in (False, True):  # any VOC writing is the exact inverse of reading
        assert list(read_box(*write_box([4.0, 8.0, 20.0, 16.0], one_based), one_based=one_based)) == \
            [4.0, 8.0, 20.0, 16.0]


# -- COCO ------------------------------------------------------------------------------------------------------
def _coco_doc() -> dict:
    return json.loads((SCENE / "coco" / "annotations.json").read_text())


def _subset(doc: dict, stems: list[str], name=lambda s: f"{s}.png") -> dict:
    ids = {im["id"] for im in doc["images"] if Path(im["file_name"]).stem in stems}
    return {"images": [{**im, "file_name": name(Path(im["file_name"]).stem)} for im in doc["images"]
                       if im["id"] in ids],
            "annotations": [a for a in doc["annotations"] if a["image_id"] in ids], "categories": doc["categories"]}


def _coco_instances(root: Path) -> Path:
    src, doc = root / "coco2017", _coco_doc()
    for split, stem in (("train2017", "scene1"), ("val2017", "scene2")):
        (src / "images" / split).mkdir(parents=True)
        shutil.copy(_png(f"{stem}.png"), src / "images" / split / f"{stem}.png")
        (src / "annotations").mkdir(exist_ok=True)
        (src / "annotations" / f"instances_{split}.json").write_text(json.dumps(_subset(doc, [stem])))
    (src / "annotations" / "captions_train2017.json").write_text("{}")
    return src


def _roboflow(root: Path) -> Path:
    src, doc = root / "roboflow", _coco_doc()
    doc["categories"] = [{"id": 0, "name": "vehicles-and-people", "supercategory": "none"},
                         *({**c, "supercategory": "vehicles-and-people"} for c in doc["categories"])]
    for split, stem in (("train", "scene1"), ("valid", "scene2")):
        (src / split).mkdir(parents=True)
        shutil.copy(_png(f"{stem}.png"), src / split / f"{stem}.png")
        (src / split / "_annotations.coco.json").write_text(json.dumps(_subset(doc, [stem])))
    (src / "README.roboflow.txt").write_text("exported from roboflow")
    return src


def _per_split(root: Path) -> Path:
    src, doc = root / "export", _coco_doc()
    shutil.copytree(SCENE / "coco" / "images", src / "images")
    (src / "train.json").write_text(json.dumps(_subset(doc, ["scene1"])))
    (src / "val.json").write_text(json.dumps(_subset(doc, ["scene2"])))
    return src


def _renamed(names: dict[str, str]):
    def make(root: Path) -> Path:
        src, doc = root / "export", _coco_doc()
        shutil.copytree(SCENE / "coco" / "images", src / "images")
        (src / "annotations.json").write_text(json.dumps(_subset(doc, list(SIZES), lambda s: names[s])))
        return src
    return make


COCO_LAYOUTS = {
    "coco2017_instances": (_coco_instances, {"scene1": "train", "scene2": "val"}),
    "roboflow_split_folders": (_roboflow, {"train/scene1": "train", "valid/scene2": "val"}),
    "per_split_files": (_per_split, {"scene1": "train", "scene2": "val"}),
    "sub_path_file_names": (_renamed({"scene1": "frames/scene1.png", "scene2": "train2017/scene2.png"}),
                            {"frames/scene1": None, "train2017/scene2": None}),
    "absolute_and_upload_folder_file_names": (_renamed({"scene1": "C:\\labeling\\project\\scene1.png",
                                                        "scene2": "../../media/upload/3/scene2.png"}),  # Label Studio
                                              {"scene1": None, "scene2": None}),
}


@pytest.mark.parametrize("layout", COCO_LAYOUTS)
def test_coco_layouts(layout, tmp_path):
    make, splits = COCO_LAYOUTS[layout]
    ds, found = read_auto(make(tmp_path), tmp_path)
    assert found.format == "coco"
    assert {str(Path(im["file_name"]).with_suffix("")): im.get("split") for im in ds.images} == splits
    if layout == "roboflow_split_folders":  # the unused supercategory class is declared, and kept declared
        assert "vehicles-and-people" in [c["name"] for c in ds.categories]


# -- YOLO ------------------------------------------------------------------------------------------------------
def _yolo_labels(images: Path, labels: Path, stems) -> None:
    images.mkdir(parents=True, exist_ok=True)
    labels.mkdir(parents=True, exist_ok=True)
    for stem in stems:
        shutil.copy(_png(f"{stem}.png"), images / f"{stem}.png")
        w, h = SIZES[stem]
        lines = [f"{CLASSES.index(c)} {(x + bw / 2) / w:.6f} {(y + bh / 2) / h:.6f} {bw / w:.6f} {bh / h:.6f}"
                 for c, (x, y, bw, bh) in EXPECTED[stem]]
        (labels / f"{stem}.txt").write_text("\n".join(lines) + "\n")


def _ultralytics_any_name(root: Path) -> Path:
    src = root / "export"
    _yolo_labels(src / "images" / "train", src / "labels" / "train", ["scene1"])
    _yolo_labels(src / "images" / "val", src / "labels" / "val", ["scene2"])
    (src / "val.txt").write_text("./images/val/scene2.png\n")
    (src / "coco-scene.yml").write_text("path: .\ntrain: [images/train]\nval: val.txt\nnames:\n  - car\n  - person\n")
    return src


def _roboflow_yolo(root: Path) -> Path:
    src = root / "export"
    _yolo_labels(src / "train" / "images", src / "train" / "labels", ["scene1"])
    _yolo_labels(src / "valid" / "images", src / "valid" / "labels", ["scene2"])
    (src / "data.yaml").write_text("train: ../train/images\nval: ../valid/images\ntest: ../test/images\n\nnc: 2\n"
                                   "names: ['car', 'person']\n")
    return src


def _exporting_machine_paths(root: Path) -> Path:
    src = root / "repo" / "dataset"
    _yolo_labels(src / "images" / "train", src / "labels" / "train", ["scene1"])
    _yolo_labels(src / "images" / "val", src / "labels" / "val", ["scene2"])
    (src / "dataset.yaml").write_text("path: /home/someone/datasets/dataset\ntrain: /home/someone/datasets/dataset/"
                                      "images/train\nval: images/val\nnames:\n  0: car\n  1: person\n")
    return root / "repo"


def _label_studio(root: Path) -> Path:
    src = root / "project-3-at-2026-11-30"
    _yolo_labels(src / "images", src / "labels", list(SIZES))
    (src / "classes.txt").write_text("car\nperson\n")
    (src / "notes.json").write_text('{"categories": [{"id": 0, "name": "car"}, {"id": 1, "name": "person"}]}')
    return src


def _labelimg_yolo(root: Path) -> Path:
    src = root / "pictures"
    _yolo_labels(src, src, list(SIZES))
    (src / "classes.txt").write_text("car\nperson\n")
    return src


TRAIN_VAL = {"scene1": "train", "scene2": "val"}
YOLO_LAYOUTS = {"ultralytics_yaml_of_any_name": (_ultralytics_any_name, TRAIN_VAL),
                "roboflow_yolo": (_roboflow_yolo, TRAIN_VAL),
                "exporting_machine_paths_one_folder_down": (_exporting_machine_paths, TRAIN_VAL),
                "label_studio_classes_txt": (_label_studio, {"scene1": None, "scene2": None}),
                "labelimg_classes_txt_beside_images": (_labelimg_yolo, {"scene1": None, "scene2": None})}


@pytest.mark.parametrize("layout", YOLO_LAYOUTS)
def test_yolo_layouts(layout, tmp_path):
    make, splits = YOLO_LAYOUTS[layout]
    ds, found = read_auto(make(tmp_path), tmp_path)
    assert found.format == "yolo"
    assert splits_by_image(ds) == splits
    assert all(a["source"]["item"] == f"line {k}" for a, k in zip(ds.annotations, (1, 2, 1)))


# -- Labelme, CVAT, KITTI -----------------------------------------------------------------------------------------
def test_labelme_windows_path_and_imagedata_naming_itself(tmp_path):
    src = tmp_path / "labelme"
    shutil.copytree(SCENE / "labelme", src)
    doc = json.loads((src / "scene1.json").read_text())
    doc["imagePath"] = "C:\\Users\\me\\Pictures\\scene1.png"  # absolute, from the annotating machine
    (src / "scene1.json").write_text(json.dumps(doc))
    doc = json.loads((src / "scene2.json").read_text())
    doc["imagePath"] = "scene2.json"  # names itself: the picture is the embedded imageData
    (src / "scene2.json").write_text(json.dumps(doc))
    ds, found = read_auto(src, tmp_path)
    assert found.format == "labelme"
    by_name = {im["file_name"]: im for im in ds.images}
    assert by_name["scene1.png"]["path"] == src / "scene1.png"
    assert by_name["scene2.png"]["path"].read_bytes()[:4] == b"\x89PNG"  # written out of imageData


def test_labelme_json_in_their_own_folder(tmp_path):
    src = tmp_path / "project"
    (src / "Annotations").mkdir(parents=True)
    shutil.copytree(SCENE / "coco" / "images", src / "images")
    for stem in SIZES:
        doc = json.loads((SCENE / "labelme" / f"{stem}.json").read_text())
        doc.update(imagePath=f"..\\images\\{stem}.png", imageData=None)  # written on Windows, --nodata
        (src / "Annotations" / f"{stem}.json").write_text(json.dumps(doc))
    ds, found = read_auto(src, tmp_path)
    assert found.format == "labelme" and found.root == src and "in Annotations/" in found.reason
    assert sorted(im["file_name"] for im in ds.images) == ["images/scene1.png", "images/scene2.png"]


def test_cvat_zip_with_images_and_an_empty_label(tmp_path, capsys, nightshift_home):
    src = tmp_path / "task"
    shutil.copytree(SCENE / "cvat_task", src)
    xml = src / "annotations.xml"
    xml.write_text(xml.read_text().replace("</image>\n  <image id=\"1\"",
                                           '<box label="" occluded="0" xtl="1" ytl="1" xbr="5" ybr="5"></box>\n'
                                           "  </image>\n  <image id=\"1\"", 1))
    with zipfile.ZipFile(tmp_path / "task_export.zip", "w") as zf:
        for p in sorted(src.rglob("*")):
            zf.write(p, p.relative_to(src).as_posix())
    out = tmp_path / "canonical"
    code = main(["ingest", "--source", str(tmp_path / "task_export.zip"), "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    report = json.loads(Path(f"{out}.quarantine.json").read_text())
    assert report["items"] == [] and report["skipped_shapes"] == 1
    skipped = report["skipped"][0]
    assert skipped["file"].endswith("task_export.zip:annotations.xml")
    assert skipped["field"] == "image[0] (id 0, scene1.png).box[2].label" and "empty label" in skipped["reason"]
    coco = json.loads((out / "annotations.json").read_text())
    assert len(coco["annotations"]) == 3


def test_kitti_one_folder_down(tmp_path):
    shutil.copytree(SCENE / "kitti", tmp_path / "repo" / "kitti")
    (tmp_path / "repo" / "README.md").write_text("KITTI sample")
    ds, found = formats.locate_and_read("auto", tmp_path / "repo")
    assert found.format == "kitti" and found.root == tmp_path / "repo" / "kitti"
    assert sum(1 for a in ds.annotations if not a["iscrowd"]) == 3


# -- ambiguity, format auto, splits ----------------------------------------------------------------------------
def test_ambiguity_is_an_error_listing_every_candidate(tmp_path):
    _voc(tmp_path / "repo" / "VOC2007")
    _voc(tmp_path / "repo" / "VOC2012")
    with pytest.raises(InputRejected) as exc:
        formats.locate_and_read("voc", tmp_path / "repo", origin="repo")
    msg = str(exc.value)
    assert "several exports found" in msg and "VOC2007/ as voc" in msg and "VOC2012/ as voc" in msg
    both = _voc(tmp_path / "both")
    shutil.copy(SCENE / "coco" / "annotations.json", both / "annotations.json")
    with pytest.raises(InputRejected, match=r"several formats found.*\. as coco.*\. as voc"):
        formats.locate_and_read("auto", both, origin="both")
    ds, found = formats.locate_and_read("voc", both, origin="both")  # an explicit format settles it
    assert found.format == "voc"


def test_auto_is_logged_and_splits_follow_data_splits(tmp_path, capsys, nightshift_home):
    src = _devkit(tmp_path)
    out = tmp_path / "hash"
    code = main(["ingest", "--source", str(src), "--out", str(out)])
    stdout, err = capsys.readouterr()
    assert code == 0, err
    assert "as voc (detected: data.format=auto) from VOC2007/: Annotations/ holds Pascal VOC" in err
    result = result_line(stdout)
    assert result["format"] == "voc" and result["format_detected"] and result["export_root"] == "VOC2007"
    assert result["splits"] == {"mode": "hash", "export_defines_splits": True}
    coco = json.loads((out / "annotations.json").read_text())
    assert coco["info"]["splits"] == "hash"

    out = tmp_path / "source"
    assert main(["ingest", "--source", str(src), "--out", str(out), "--set", "data.splits=source"]) == 0
    coco = json.loads((out / "annotations.json").read_text())
    assert coco["info"]["splits"] == "source"
    assert {im["file_name"]: im["split"] for im in coco["images"]} == {"scene1.png": "train", "scene2.png": "val"}
    # provenance relative to the source (the dataset's hash does not depend on where the export lay); a box
    # names only its item when its file is its image's
    assert coco["images"][0]["source"] == {"file": "VOC2007/Annotations/scene1.xml"}
    assert coco["annotations"][0]["source"] == {"item": "object[0]"}
    from pipeline.datasets.card import split_method
    assert "as the export defines them" in split_method(coco)

    capsys.readouterr()
    code = main(["ingest", "--source", str(SCENE / "labelme"), "--out", str(tmp_path / "x"), "--set",
                 "data.splits=source"])
    assert code == 2 and "data.splits=source: this export defines no train/val/test splits" in capsys.readouterr().err


def test_degenerate_boxes_are_reported_not_inflated(tmp_path, capsys, nightshift_home):
    src = _voc(tmp_path / "export")
    xml = src / "Annotations" / "scene2.xml"  # a 0 x 0 box, as labelImg writes a stray click
    xml.write_text(xml.read_text().replace("</annotation>", "<object><name>car</name><bndbox><xmin>30</xmin>"
                                           "<ymin>30</ymin><xmax>30</xmax><ymax>30</ymax></bndbox></object>"
                                           "</annotation>"))
    for one_based in ("false", "true"):
        out = tmp_path / f"canonical-{one_based}"
        code = main(["ingest", "--source", str(src), "--out", str(out), "--set", f"data.voc_one_based={one_based}"])
        assert code == 0
        report = json.loads(Path(f"{out}.quarantine.json").read_text())
        coco = json.loads((out / "annotations.json").read_text())
        if one_based == "false":
            assert report["items"] == [] and report["skipped_shapes"] == 1
            assert report["skipped"][0]["field"] == "object[1]" and "degenerate box [30.0, 30.0, 0.0, 0.0]" in \
                report["skipped"][0]["reason"]
            assert report["skipped"][0]["file"] == f"{src}/Annotations/scene2.xml"
            assert len(coco["annotations"]) == 3  # the image and its good box are kept
        else:  # the devkit's inclusive pixels: xmin == xmax is one pixel wide there
            assert report["skipped_shapes"] == 0 and len(coco["annotations"]) == 4


def test_the_same_export_elsewhere_gives_the_same_dataset(tmp_path, capsys, nightshift_home):
    """Provenance is kept relative to the source: the canonical dataset (and so its hash) does not depend on
    where the export lay, or on whether it came as a folder or a zip."""
    first = _devkit(tmp_path / "a")
    second = shutil.copytree(first, tmp_path / "b" / "elsewhere" / "VOCdevkit")
    archive = shutil.make_archive(str(tmp_path / "devkit"), "zip", first)
    outs = []
    for n, src in enumerate((first, second, archive)):
        out = tmp_path / f"canonical{n}"
        assert main(["ingest", "--source", str(src), "--out", str(out)]) == 0, capsys.readouterr().err
        outs.append((out / "annotations.json").read_bytes())
    assert outs[0] == outs[1] == outs[2]
