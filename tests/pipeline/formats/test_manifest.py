"""CSV and JSON manifests naming each image's class: columns found by name, rows naming missing images set
aside with their row, bad headers rejected naming the file and the column."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from pipeline import formats
from pipeline.errors import InputRejected
from pipeline.formats.layout import locate


def image(path: Path, colour=(200, 30, 30)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (24, 16), colour).save(path)
    return path


@pytest.fixture
def export(tmp_path) -> Path:
    root = tmp_path / "export"
    for i in range(4):
        image(root / "images" / f"{i}.jpg", colour=(50 * i, 20, 20))
    return root


def read(root: Path):
    return formats.read("manifest", root, origin="export", task="classification")


def test_csv_with_its_own_column_names_and_split(export):
    (export / "labels.csv").write_text("Image Path,Class,subset,notes\nimages/0.jpg,cat,train,x\n"
                                       "images/1.jpg,dog,valid,\nimages/2.jpg, cat ,test,\nimages\\3.jpg,dog,,\n")
    ds = read(export)
    assert [im["file_name"] for im in ds.images] == ["images/0.jpg", "images/1.jpg", "images/2.jpg", "images/3.jpg"]
    assert ds.categories == [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}]
    assert [a["category_id"] for a in ds.annotations] == [1, 2, 1, 2]
    assert [im.get("split") for im in ds.images] == ["train", "val", "test", None]
    assert ds.annotations[1]["source"] == {"file": "export/labels.csv", "item": "row 2 (line 3)"}
    assert set(ds.annotations[0]) == {"id", "image_id", "category_id", "source"} and ds.files == ["export/labels.csv"]


def test_semicolons_and_a_byte_order_mark(export):
    (export / "m.csv").write_bytes("\ufefffilename;label\nimages/0.jpg;cat\nimages/1.jpg;dog\n".encode())
    assert len(read(export).images) == 2


def test_missing_image_is_quarantined_naming_its_row(export):
    (export / "labels.csv").write_text("file,label\nimages/0.jpg,cat\nimages/9.jpg,dog\nimages/1.jpg,dog\n")
    ds = read(export)
    assert [im["file_name"] for im in ds.images] == ["images/0.jpg", "images/1.jpg"]
    assert ds.quarantine == [{"file": "export/labels.csv", "field": "row 2 (line 3): file",
                              "reason": "no such image file 'images/9.jpg' (paths are relative to the manifest's "
                                        "folder)", "image": "images/9.jpg"}]
    assert ds.listed_images == 3


@pytest.mark.parametrize("header, field, message", [
    ("file,comment", "header", "no class column: the header needs one of label, class"),
    ("name,label", "header", "no image column: the header needs one of file, filename"),
    ("file,path,label", "header: path", "two image columns (file, path)"),
    ("file,label,class", "header: class", "two class columns (label, class)"),
])
def test_bad_header_names_the_file_and_the_column(export, header, field, message):
    (export / "labels.csv").write_text(f"{header}\nimages/0.jpg,cat,x\n")
    with pytest.raises(InputRejected) as exc:
        read(export)
    assert exc.value.path == "export/labels.csv" and exc.value.field == field and message in str(exc.value)


def test_row_defects_are_set_aside_or_skipped(export):
    (export / "labels.csv").write_text("file,label,split\n"
                                       "images/0.jpg,cat,train\n"
                                       "images/1.jpg,dog\n"  # a field short
                                       "images/2.jpg,cat,holdout\n"  # unknown split
                                       "images/3.jpg,,train\n"  # no class: skipped, reported
                                       "images/0.jpg,cat,train\n")  # listed again, same class: read once
    ds = read(export)
    assert [im["file_name"] for im in ds.images] == ["images/0.jpg"]
    assert [(q["field"], q["reason"]) for q in ds.quarantine] == [
        ("row 2 (line 3)", "2 fields where the header has 3"),
        ("row 3 (line 4): split", "unknown split 'holdout' (train, val, valid or test)")]
    assert [(s["field"], s["reason"]) for s in ds.skipped] == [
        ("row 4 (line 5): label", "no class: image left out (not labelled)"),
        ("row 5 (line 6)", "image 'images/0.jpg' listed again (first at row 1 (line 2)) with the same class: read "
                           "once")]


def test_one_image_with_two_classes_is_set_aside(export):
    (export / "labels.csv").write_text("file,label\nimages/0.jpg,cat\nimages/1.jpg,dog\nimages/0.jpg,dog\n")
    ds = read(export)
    assert [im["file_name"] for im in ds.images] == ["images/1.jpg"]
    assert ds.quarantine[0]["field"] == "row 1 (line 2) and row 3 (line 4)"
    assert "listed with 2 classes (cat, dog): one image, one class" in ds.quarantine[0]["reason"]


def test_a_path_leaving_the_export_is_rejected(export, tmp_path):
    image(tmp_path / "secret.jpg")
    (export / "labels.csv").write_text("file,label\n../secret.jpg,cat\n")
    with pytest.raises(InputRejected) as exc:
        read(export)
    assert exc.value.field == "row 1 (line 2): file" and "leaves the export" in str(exc.value)


def test_json_lists_and_image_lists(export):
    (export / "labels.json").write_text(json.dumps([{"image": "images/0.jpg", "label": "cat"},
                                                    {"image": "images/1.jpg", "label": 7}]))
    ds = read(export)
    assert [c["name"] for c in ds.categories] == ["7", "cat"] and len(ds.images) == 2
    (export / "labels.json").write_text(json.dumps({"images": [{"file": "images/0.jpg", "category": "cat"},
                                                               {"file": "images/8.jpg", "category": "dog"}]}))
    ds = read(export)
    assert len(ds.images) == 1 and ds.quarantine[0]["field"] == "images[1].file"


def test_one_manifest_per_split(export):
    (export / "train.csv").write_text("file,label\nimages/0.jpg,cat\nimages/1.jpg,dog\n")
    (export / "val.csv").write_text("file,label\nimages/2.jpg,cat\nimages/3.jpg,dog\n")
    ds = read(export)
    assert [im["split"] for im in ds.images] == ["train", "train", "val", "val"]
    (export / "other.csv").write_text("file,label\nimages/2.jpg,cat\n")
    with pytest.raises(InputRejected, match="several manifests"):
        read(export)


def test_auto_finds_a_manifest_for_classification(export):
    (export / "labels.csv").write_text("file,label\nimages/0.jpg,cat\n")
    found = locate(export, "auto", "export", task="classification")
    assert found.format == "manifest" and "labels.csv" in found.reason
    # a detection run given the manifest is told what it is
    with pytest.raises(InputRejected, match="data.task is detection but this is an image-classification export"):
        locate(export, "auto", "export", task="detection")


def test_a_csv_that_is_no_manifest_is_named_when_the_format_is_explicit(export):
    (export / "notes.csv").write_text("when,who\nmonday,ann\n")
    with pytest.raises(InputRejected) as exc:
        read(export)
    assert exc.value.path == "export/notes.csv" and exc.value.field == "header"


def test_kaggle_train_csv_naming_ids_in_an_image_folder(tmp_path, caplog):
    """Kaggle's layout: `train.csv` (`image_id,label`, ids without a suffix) beside `train_images/`, next to a
    `sample_submission.csv` with the same columns and a class map JSON: the ids find their files (any suffix
    case), the submission template and the class map are left out, the log says where paths were found."""
    root = tmp_path / "kaggle"
    for i, suffix in enumerate((".jpg", ".JPG", ".png", ".jpeg")):
        image(root / "train_images" / f"{1000 + i}{suffix}")
    (root / "train.csv").write_text("image_id,label\n1000,0\n1001,1\n1002,0\n1003,1\n1009,1\n")
    (root / "sample_submission.csv").write_text("image_id,label\n2000,0\n")
    (root / "label_num_to_disease_map.json").write_text(json.dumps({"0": "healthy", "1": "blight"}))
    assert locate(root, "auto", "kaggle", task="classification").format == "manifest"
    with caplog.at_level("INFO", logger="pipeline.formats.manifest"):
        ds = formats.read("manifest", root, origin="kaggle", task="classification")
    assert [im["file_name"] for im in ds.images] == ["train_images/1000.jpg", "train_images/1001.JPG",
                                                     "train_images/1002.png", "train_images/1003.jpeg"]
    assert [c["name"] for c in ds.categories] == ["0", "1"] and ds.files == ["kaggle/train.csv"]
    assert ds.quarantine == [{"file": "kaggle/train.csv", "field": "row 5 (line 6): image_id",
                              "reason": "no such image file '1009' (paths are relative to kaggle/train_images/)",
                              "image": "train_images/1009"}]
    assert "kaggle/sample_submission.csv left out: a submission template" in caplog.text
    assert "image paths are relative to kaggle/train_images/ (none is found beside the manifest)" in caplog.text
    assert "4 rows name an image without its suffix (an id), each read as the one image file of that name, e.g. " \
           "1000 -> train_images/1000.jpg" in caplog.text


def test_an_id_naming_two_files_is_set_aside_and_a_file_column_wins_over_an_id_column(export):
    image(export / "images" / "0.png")
    (export / "labels.csv").write_text("id,label\nimages/0,cat\nimages/1,dog\n")
    ds = read(export)
    assert [im["file_name"] for im in ds.images] == ["images/1.jpg"]
    assert ds.quarantine[0]["field"] == "row 1 (line 2): id"
    assert ds.quarantine[0]["reason"] == "'images/0' could be 0.jpg or 0.png: name the file with its suffix"
    (export / "labels.csv").write_text("id,file,label\n7,images/2.jpg,cat\n8,images/3.jpg,dog\n")
    assert [im["file_name"] for im in read(export).images] == ["images/2.jpg", "images/3.jpg"]
    (export / "labels.csv").write_text("id,image_id,label\n7,images/2,cat\n8,images/3,dog\n")  # the image's id
    assert [im["file_name"] for im in read(export).images] == ["images/2.jpg", "images/3.jpg"]


def test_paths_relative_to_an_images_folder_with_semicolons_crlf_and_blank_lines(export):
    """`filename;class` from a spreadsheet: BOM, CRLF, trailing blank lines, names relative to images/."""
    (export / "labels.csv").write_bytes("\ufefffilename;class\r\n0.jpg;café\r\n1.jpg;golden retriever\r\n"
                                        "2.jpg;café\r\n\r\n\r\n".encode())
    ds = read(export)
    assert [im["file_name"] for im in ds.images] == ["images/0.jpg", "images/1.jpg", "images/2.jpg"]
    assert [c["name"] for c in ds.categories] == ["café", "golden retriever"] and not ds.quarantine


def test_a_json_object_mapping_files_to_classes(export):
    (export / "labels.json").write_text(json.dumps({"images/0.jpg": "cat", "images/1.jpg": 3, "images/9.jpg": "dog"}))
    assert locate(export, "auto", "export", task="classification").format == "manifest"
    ds = read(export)
    assert [(im["file_name"], ds.categories[a["category_id"] - 1]["name"]) for im, a in
            zip(ds.images, ds.annotations)] == [("images/0.jpg", "cat"), ("images/1.jpg", "3")]
    assert ds.quarantine[0]["field"] == '"images/9.jpg": file'
    # ids as JSON numbers name their files as well
    (export / "labels.json").write_text(json.dumps([{"image_id": 2, "label": "cat"}, {"image_id": 3, "label": "dog"}]))
    assert [im["file_name"] for im in read(export).images] == ["images/2.jpg", "images/3.jpg"]


def test_one_hot_columns_per_split_folder_as_roboflow_exports_them(tmp_path):
    """Roboflow's multi-class classification export: `train/`, `valid/` each holding its images and a
    `_classes.csv` of `filename, <class>, <class>` with 0/1 values (spaces after the commas). A row marking two
    classes is set aside naming them, one marking none is skipped."""
    root = tmp_path / "roboflow"
    for split, rows in {"train": ["a.jpg, 1, 0", "b.jpg, 0, 1", "c.jpg, 1, 1", "d.jpg, 0, 0"],
                        "valid": ["e.jpg, 0, 1", "f.jpg, 1, 0"]}.items():
        for r in rows:
            image(root / split / r.split(",")[0])
        (root / split / "_classes.csv").write_text("filename, Tahap Awal, Telur Mati\n" + "\n".join(rows) + "\n")
    found = locate(root, "auto", "roboflow", task="classification")
    assert found.format == "manifest" and [p.name for p in found.parts] == ["train", "valid"]
    assert "class column 'one-hot columns Tahap Awal, Telur Mati'" in found.reason
    ds, _ = formats.locate_and_read("auto", root, origin="roboflow", task="classification")
    names = {c["id"]: c["name"] for c in ds.categories}
    assert [(im["file_name"], im["split"], names[a["category_id"]]) for im, a in zip(ds.images, ds.annotations)] == [
        ("train/a.jpg", "train", "Tahap Awal"), ("train/b.jpg", "train", "Telur Mati"),
        ("valid/e.jpg", "val", "Telur Mati"), ("valid/f.jpg", "val", "Tahap Awal")]
    assert [(q["field"], q["reason"]) for q in ds.quarantine] == [
        ("row 3 (line 4)", "2 classes marked 1 (Tahap Awal, Telur Mati): one image, one class")]
    assert [s["field"] for s in ds.skipped] == ["row 4 (line 5): one-hot columns Tahap Awal, Telur Mati"]


def test_columns_that_are_not_0_or_1_are_no_classes(export):
    (export / "labels.csv").write_text("file,width,height\nimages/0.jpg,24,16\nimages/1.jpg,1,0\n")
    with pytest.raises(InputRejected) as exc:
        read(export)
    assert exc.value.field == "header" and "no class column" in str(exc.value) and "one 0/1 column per class" in \
        str(exc.value)


def test_image_lists_with_class_indices_named_by_a_names_file(export, caplog):
    """ImageNet / Caffe / MMPretrain lists: `train.txt` and `val.txt` of `<image> <index>` lines beside
    `synsets.txt`; PaddleClas' `label_list.txt` of `<index> <name>` lines; an index the names file lacks is set
    aside naming the line; a names file or a YOLO label file is no list."""
    (export / "train.txt").write_text("images/0.jpg 1\nimages/1.jpg 0\n\nimages/2.jpg 7\n")
    (export / "val.txt").write_text("images/3.jpg 1\n")
    (export / "synsets.txt").write_text("n01440764 tench\ngolden retriever\n")
    image(export / "labels" / "x.jpg")
    (export / "labels" / "x.txt").write_text("0 0.5 0.5 0.2 0.2\n")  # YOLO: not a list
    assert locate(export, "auto", "export", task="classification").format == "manifest"
    with caplog.at_level("INFO", logger="pipeline.formats.manifest"):
        ds = read(export)
    names = {c["id"]: c["name"] for c in ds.categories}
    assert [(im["file_name"], im["split"], names[a["category_id"]]) for im, a in zip(ds.images, ds.annotations)] == [
        ("images/0.jpg", "train", "golden retriever"), ("images/1.jpg", "train", "n01440764 tench"),
        ("images/3.jpg", "val", "golden retriever")]
    assert ds.quarantine == [{"file": "export/train.txt", "field": "line 4",
                              "reason": "class index 7 is not in export/synsets.txt (2 classes)", "image": None}]
    assert "manifest export/train.txt: class indices named by export/synsets.txt (2 classes)" in caplog.text
    (export / "synsets.txt").unlink()
    (export / "label_list.txt").write_text("0 daisy\n1 rose\n7 tulip\n")
    assert sorted(c["name"] for c in read(export).categories) == ["daisy", "rose", "tulip"]
    (export / "label_list.txt").unlink()
    with caplog.at_level("INFO", logger="pipeline.formats.manifest"):
        assert sorted(c["name"] for c in read(export).categories) == ["0", "1", "7"]
    assert "classes are indices and no synsets.txt / labels.txt / classes.txt is beside it" in caplog.text
