"""ingest with data.task: classification: class folders, manifests and the generated demo become the canonical
classification dataset; an export of the other kind is refused naming data.task / data.format."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from pipeline.cli import main
from pipeline.datasets.synthetic import generate, generate_classification
from tests.helpers import result_line

CLS = ("--set", "data.task=classification")
ROOT = Path(__file__).resolve().parents[3]
REAL_DIR = Path(os.environ.get("NIGHTSHIFT_REAL_EXPORTS") or next(
    (p for p in (ROOT / "shared" / "fixtures" / "real", ROOT.parent / "shared" / "fixtures" / "real") if p.is_dir()),
    ROOT / "shared" / "fixtures" / "real"))


def _real(name: str) -> Path:
    src = REAL_DIR / name
    if not src.is_dir():
        pytest.skip(f"real export {name!r} not here: expected {src}")
    return src


def run(capsys, *args) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def folders_30(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("exports") / "shapes"
    generate_classification(out, num_images=30, image_size=32, seed=3)
    return out


def test_class_folders_become_a_canonical_classification_dataset(capsys, folders_30, tmp_path):
    code, out, err = run(capsys, "ingest", "--source", folders_30, "--out", tmp_path / "ds", *CLS)
    assert code == 0, err
    result = result_line(out)
    coco = json.loads((tmp_path / "ds" / "annotations.json").read_text())
    assert coco["task"] == "classification" and result["task"] == "classification"
    assert result["format"] == "imagefolder" and result["format_detected"]
    assert len(coco["images"]) == len(coco["annotations"]) == 30
    assert all(set(a) <= {"id", "image_id", "category_id", "source"} for a in coco["annotations"])
    assert sorted(a["image_id"] for a in coco["annotations"]) == [im["id"] for im in coco["images"]]
    names = {c["id"]: c["name"] for c in coco["categories"]}
    for im, a in zip(coco["images"], sorted(coco["annotations"], key=lambda a: a["image_id"])):
        assert im["file_name"].split("/")[0] == names[a["category_id"]]  # the class is the folder
        assert im["width"] == im["height"] == 32 and im["split"] in ("train", "val", "test") and im["sha1"]
    assert result["per_class"]["circle"]["total"] + result["per_class"]["square"]["total"] + \
        result["per_class"]["triangle"]["total"] == 30
    # the same export, the same bytes (and DVC hash)
    code, _, err = run(capsys, "ingest", "--source", folders_30, "--out", tmp_path / "ds2", *CLS)
    assert code == 0, err
    assert (tmp_path / "ds" / "annotations.json").read_bytes() == (tmp_path / "ds2" / "annotations.json").read_bytes()


def test_empty_source_with_classification_ingests_the_class_folder_demo(capsys, nightshift_home):
    code, out, err = run(capsys, "ingest", "--run-id", "cls-demo", "--set", "data.demo_images=24", *CLS)
    assert code == 0, err
    result = result_line(out)
    assert result["format"] == "imagefolder" and result["source"] == "demo" and result["images"] == 24
    ds = nightshift_home / "artifacts" / "runs" / "cls-demo" / "ingest" / "dataset"
    coco = json.loads((ds / "annotations.json").read_text())
    assert coco["task"] == "classification" and [c["name"] for c in coco["categories"]] == ["circle", "square",
                                                                                            "triangle"]
    assert "generated the classification demo set (24 images in class folders, seed 0)" in err


def test_detection_ingest_writes_no_task(capsys, tmp_path):
    generate(tmp_path / "coco", num_images=6, seed=0)
    code, _, err = run(capsys, "ingest", "--source", tmp_path / "coco", "--out", tmp_path / "ds")
    assert code == 0, err
    coco = json.loads((tmp_path / "ds" / "annotations.json").read_text())
    assert "task" not in coco and all("bbox" in a for a in coco["annotations"])


def test_a_box_export_given_to_a_classification_run_is_refused(capsys, tmp_path):
    generate(tmp_path / "coco", num_images=6, seed=0)
    code, _, err = run(capsys, "ingest", "--source", tmp_path / "coco", "--out", tmp_path / "ds", *CLS)
    assert code == 3 and not (tmp_path / "ds").exists()
    assert "data.task: data.task is classification but this is a coco detection export" in err
    code, _, err = run(capsys, "ingest", "--source", tmp_path / "coco", "--out", tmp_path / "ds", "--format", "coco",
                       *CLS)
    assert code == 2 and not (tmp_path / "ds").exists()
    assert "data.format=coco cannot hold image-level class labels for data.task=classification" in err


def test_class_folders_given_to_a_detection_run_are_refused(capsys, folders_30, tmp_path):
    code, _, err = run(capsys, "ingest", "--source", folders_30, "--out", tmp_path / "ds")
    assert code == 3 and not (tmp_path / "ds").exists()
    assert "data.task is detection but this is an image-classification export" in err
    code, _, err = run(capsys, "ingest", "--source", folders_30, "--out", tmp_path / "ds", "--format", "imagefolder")
    assert code == 2 and "data.format=imagefolder cannot hold boxes and masks for data.task=detection" in err


def test_split_folders_are_kept_with_splits_source(capsys, folders_30, tmp_path):
    src = tmp_path / "split"
    for cls_dir in sorted(folders_30.iterdir()):
        for k, img in enumerate(sorted(cls_dir.iterdir())):
            dest = src / ("train" if k < 6 else "valid" if k < 8 else "test") / cls_dir.name / img.name
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(img, dest)
    code, out, err = run(capsys, "ingest", "--source", src, "--out", tmp_path / "ds", "--set", "data.splits=source",
                         *CLS)
    assert code == 0, err
    coco = json.loads((tmp_path / "ds" / "annotations.json").read_text())
    assert coco["info"]["splits"] == "source"
    assert {im["file_name"].split("/")[0]: im["split"] for im in coco["images"]} == {"train": "train", "valid": "val",
                                                                                    "test": "test"}
    assert result_line(out)["per_split"]["train"]["images"] == 18


def test_manifest_rows_naming_missing_images(capsys, folders_30, tmp_path):
    rows = [f"{p.relative_to(folders_30).as_posix()},{p.parent.name}" for p in sorted(folders_30.rglob("*.jpg"))]
    shutil.copytree(folders_30, tmp_path / "export" / "pictures")
    manifest = tmp_path / "export" / "labels.csv"
    manifest.write_text("file,label\n" + "\n".join(f"pictures/{r}" for r in rows + ["circle/gone.jpg,circle"]) + "\n")
    # one missing of 31 is over the default max_bad_fraction (0.01): rejected naming the manifest's row
    code, _, err = run(capsys, "ingest", "--source", tmp_path / "export", "--out", tmp_path / "ds", *CLS)
    assert code == 3 and not (tmp_path / "ds").exists()
    assert "labels.csv: row 31 (line 32): file: no such image file 'pictures/circle/gone.jpg'" in err
    code, out, err = run(capsys, "ingest", "--source", tmp_path / "export", "--out", tmp_path / "ds", *CLS,
                         "--set", "validate.max_bad_fraction=0.05")
    assert code == 0, err
    result = result_line(out)
    assert result["format"] == "manifest" and result["images"] == 30 and result["quarantined"] == 1
    report = json.loads(Path(result["quarantine_report"]).read_text())
    assert report["items"][0]["field"] == "row 31 (line 32): file"


def test_real_datumaro_export_and_a_manifest_over_it(capsys, tmp_path):
    """Datumaro's ImageNet-layout export (MIT, shared/fixtures/real): split folders kept; its identical images in
    several splits are flagged; a CSV manifest written over some of its images reads the same classes."""
    src = _real("datumaro-imagenet-subsets")
    code, out, err = run(capsys, "ingest", "--source", src, "--out", tmp_path / "ds", "--set", "data.splits=source",
                         *CLS)
    assert code == 0, err
    result = result_line(out)
    assert result["format"] == "imagefolder" and result["images"] == 9
    assert {s: v["images"] for s, v in result["per_split"].items()} == {"train": 3, "val": 3, "test": 3}
    assert result["duplicates"]["exact_cross_split"] == 1  # the one picture copied into every split and class
    report = json.loads(Path(result["quarantine_report"]).read_text())
    skipped = sorted("/".join(s["file"].split("/")[-2:]) for s in report["skipped"] if s["file"].endswith(".jpg"))
    assert skipped == ["test/label_0_2.jpg", "train/label_0_2.jpg", "val/label_0_2.jpg"]
    export = tmp_path / "manifest-export"
    shutil.copytree(src / "train", export / "train")
    (export / "train.csv").write_text("path,class\ntrain/label_0/label_0_1.jpg,label_0\n"
                                      "train/label_1/label_1_1.jpg,label_1\ntrain/label_0_2.jpg,label_0\n")
    code, out, err = run(capsys, "ingest", "--source", export, "--out", tmp_path / "ds2", "--set",
                         "data.splits=source", *CLS)
    assert code == 0, err
    result = result_line(out)
    assert result["format"] == "manifest" and result["images"] == 3
    assert {c["name"]: v["train"] for c, v in zip(result["categories"], result["per_class"].values())} == \
        {"label_0": 2, "label_1": 1}


def _classes_by_file(coco: dict) -> dict:
    names = {c["id"]: c["name"] for c in coco["categories"]}
    files = {im["id"]: im["file_name"] for im in coco["images"]}
    return {files[a["image_id"]]: names[a["category_id"]] for a in coco["annotations"]}


def test_real_hymenoptera_photo_folders(capsys, tmp_path):
    """The ants/bees photos of PyTorch's transfer-learning tutorial as a repository commits them
    (`hymenoptera_data/{train,val}/{ants,bees}`, a subset): found one folder down, the split folders kept, every
    photo's class its folder, `formica.jpeg` read and the Flickr placeholder `imageNotFound.gif` skipped, named."""
    src = _real("hymenoptera")
    code, out, err = run(capsys, "ingest", "--source", src, "--out", tmp_path / "ds", "--set", "data.splits=source",
                         *CLS)
    assert code == 0, err
    result = result_line(out)
    expected = {p.relative_to(src / "hymenoptera_data").as_posix(): p.parent.name
                for p in (src / "hymenoptera_data").rglob("*") if p.suffix.lower() in (".jpg", ".jpeg")}
    coco = json.loads((tmp_path / "ds" / "annotations.json").read_text())
    assert result["format"] == "imagefolder" and result["export_root"] == "hymenoptera_data"
    assert _classes_by_file(coco) == expected
    assert {im["file_name"]: im["split"] for im in coco["images"]} == {f: f.split("/")[0] for f in expected}
    assert any(f.endswith("formica.jpeg") for f in expected)
    report = json.loads(Path(result["quarantine_report"]).read_text())
    assert [s["file"].rsplit("/", 1)[-1] for s in report["skipped"]] == ["imageNotFound.gif"]


def test_real_labelme_classification_flags(capsys, tmp_path):
    """Labelme's own classification example (`labelme data_annotated --flags flags.txt`): each JSON's one true
    flag is its image's class."""
    src = _real("labelme-classification")
    code, _, err = run(capsys, "ingest", "--source", src, "--out", tmp_path / "ds", *CLS)
    assert code == 0, err
    expected = {}
    for f in sorted((src / "data_annotated").glob("*.json")):
        doc = json.loads(f.read_text())
        expected[doc["imagePath"]] = next(k for k, v in doc["flags"].items() if v and k != "__ignore__")
    coco = json.loads((tmp_path / "ds" / "annotations.json").read_text())
    assert {k.rsplit("/", 1)[-1]: v for k, v in _classes_by_file(coco).items()} == expected == {"0001.jpg": "cat",
                                                                                                "0002.jpg": "dog"}


@pytest.mark.parametrize("manifest", ["ann.csv", "ann_wo_ext.csv"])
def test_real_datumaro_kaggle_csv(capsys, tmp_path, manifest):
    """Datumaro's Kaggle image-CSV assets: `image_name,label_name` naming files (with or without their suffix)
    inside `images/` beside the CSV. The asset folder holds both CSVs; each is taken with the images alone."""
    src = _real("datumaro-kaggle-image-csv")
    export = tmp_path / "export"
    shutil.copytree(src / "images", export / "images")
    shutil.copyfile(src / manifest, export / manifest)
    code, _, err = run(capsys, "ingest", "--source", export, "--out", tmp_path / "ds", *CLS)
    assert code == 0, err
    rows = [line.split(",") for line in (src / manifest).read_text().splitlines()[1:] if line]
    coco = json.loads((tmp_path / "ds" / "annotations.json").read_text())
    assert _classes_by_file(coco) == {f"images/{Path(f).stem}.jpg": label for f, label in rows}
    assert f"image paths are relative to {export}/images/" in err


def test_real_roboflow_multiclass_csv(capsys, tmp_path):
    """A Roboflow multi-class classification export as a repository commits it: `train/`, `valid/`, `test/`,
    each with its images and `_classes.csv` (`filename, <class>, ...` one-hot, spaces after the commas). Every
    image gets the class marked 1, in its folder's split, and the dataset passes validation."""
    src = _real("roboflow-egg-multiclass")
    code, out, err = run(capsys, "ingest", "--run-id", "egg", "--source", src, "--set", "data.splits=source", *CLS)
    assert code == 0, err
    expected = {}
    for split in ("train", "valid", "test"):
        lines = (src / split / "_classes.csv").read_text().splitlines()
        classes = [c.strip() for c in lines[0].split(",")[1:]]
        for line in lines[1:]:
            name, *marks = (v.strip() for v in line.split(","))
            expected[f"{split}/{name}"] = classes[marks.index("1")]
    coco = json.loads((Path(result_line(out)["dataset"].removeprefix("file://")) / "annotations.json").read_text())
    assert _classes_by_file(coco) == expected and len(expected) == 662
    assert {im["split"] for im in coco["images"]} == {"train", "val", "test"}
    assert all(im["split"] == {"train": "train", "valid": "val", "test": "test"}[im["file_name"].split("/")[0]]
               for im in coco["images"])
    code, out, err = run(capsys, "validate", "--run-id", "egg", *CLS)
    assert code == 0 and result_line(out)["passed"], err


def test_real_datumaro_image_lists(capsys, tmp_path):
    """Datumaro's ImageNet-txt asset (`train.txt` of `<image> <index>` lines, `synsets.txt`, `images/` holding 2
    of the 4 listed images) and its Kaggle image-txt asset (`ann.txt` of `<image> <class>` beside `images/`)."""
    src = _real("datumaro-imagenet-txt") / "basic"
    code, _, err = run(capsys, "ingest", "--source", src, "--out", tmp_path / "ds", *CLS)
    assert code == 3 and "train.txt: line 3: image: no such image file '3.jpg' (paths are relative to" in err
    code, _, err = run(capsys, "ingest", "--source", src, "--out", tmp_path / "ds", "--set",
                       "validate.max_bad_fraction=0.5", *CLS)
    assert code == 0, err
    synsets = (src / "synsets.txt").read_text().split()
    rows = [line.split() for line in (src / "train.txt").read_text().splitlines() if line.strip()]
    coco = json.loads((tmp_path / "ds" / "annotations.json").read_text())
    assert _classes_by_file(coco) == {f"images/{f}": synsets[int(i)] for f, i in rows if (src / "images" / f).is_file()}
    kaggle = tmp_path / "kaggle"
    shutil.copytree(_real("datumaro-kaggle-image-txt") / "images", kaggle / "images")
    shutil.copyfile(_real("datumaro-kaggle-image-txt") / "ann.txt", kaggle / "ann.txt")
    code, _, err = run(capsys, "ingest", "--source", kaggle, "--out", tmp_path / "ds2", *CLS)
    assert code == 0, err
    rows = [line.split() for line in (kaggle / "ann.txt").read_text().splitlines() if line.strip()]
    coco = json.loads((tmp_path / "ds2" / "annotations.json").read_text())
    assert _classes_by_file(coco) == {f"images/{f}": label for f, label in rows}
