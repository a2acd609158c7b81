"""Validation of a classification dataset: one label per image, class balance and minimum in train images,
identical images that disagree on their class, decode and drift as detection; no box check runs."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from pipeline.config import ValidateConfig
from pipeline.datasets import canonical_io
from pipeline.validation import validate_dataset

CLASSES = ("cat", "dog", "owl")


def dataset(root: Path, per_class=(8, 8, 8), split=lambda n: "train" if n % 6 else "val") -> Path:
    """Images of 24 x 16 px, `per_class[k]` of class k, one label each, provenance as a manifest row."""
    (root / "images").mkdir(parents=True)
    images, annotations = [], []
    for k, count in enumerate(per_class):
        for i in range(count):
            n = len(images)
            name = f"{CLASSES[k]}/{i}.png"
            (root / "images" / CLASSES[k]).mkdir(exist_ok=True)
            Image.new("RGB", (24, 16), (10 * n % 255, 40 * k, 90)).save(root / "images" / name)
            images.append({"id": n + 1, "file_name": name, "width": 24, "height": 16, "split": split(n),
                           "sha1": canonical_io.file_sha1(root / "images" / name),
                           "source": {"file": "labels.csv", "item": f"row {n + 1} (line {n + 2})"}})
            annotations.append({"id": n + 1, "image_id": n + 1, "category_id": k + 1,
                                "source": {"item": f"row {n + 1} (line {n + 2})"}})
    write(root, images, annotations)
    return root


def write(root: Path, images, annotations, categories=None) -> None:
    categories = categories or [{"id": k + 1, "name": c} for k, c in enumerate(CLASSES)]
    (root / "annotations.json").write_text(json.dumps({"task": "classification", "images": images,
                                                       "annotations": annotations, "categories": categories}))


def load(root: Path) -> dict:
    return json.loads((root / "annotations.json").read_text())


def result(report: dict, name: str) -> dict:
    return next(r for r in report["results"] if r["name"] == name)


def test_a_clean_classification_dataset_passes_without_box_checks(tmp_path, caplog):
    caplog.set_level("INFO")
    report = validate_dataset(dataset(tmp_path / "d"), ValidateConfig(min_annotations_per_class=3))
    assert report["passed"], report["failed_checks"]
    assert report["task"] == "classification"
    names = {r["name"] for r in report["results"]}
    assert {"every_image_has_one_label", "min_images_per_class", "class_balance", "images_decode",
            "duplicates_agree", "min_images_per_split"} <= names
    assert not any(n.startswith("box") for n in names) and "boxes_finite" not in names
    assert "box checks do not apply and do not run" in caplog.text
    assert [(r["name"], r["train_images"], r["total_images"]) for r in report["observed_tables"]["classes"]] == [
        ("cat", 6, 8), ("dog", 7, 8), ("owl", 7, 8)]


def test_images_with_no_label_or_two_labels_fail_naming_the_row(tmp_path):
    root = dataset(tmp_path / "d")
    coco = load(root)
    coco["annotations"].append({"id": 99, "image_id": 3, "category_id": 2, "source": {"item": "row 3 (line 4)"}})
    coco["annotations"] = [a for a in coco["annotations"] if a["image_id"] != 5]
    write(root, coco["images"], coco["annotations"])
    report = validate_dataset(root, ValidateConfig(min_annotations_per_class=3))
    assert not report["passed"] and "every_image_has_one_label" in report["failed_checks"]
    examples = result(report, "every_image_has_one_label")["examples"]
    assert examples == ["labels.csv: row 3 (line 4): images/cat/2.png has 2 labels (cat, dog) (canonical "
                        "annotations.json images[2])",
                        "labels.csv: row 5 (line 6): images/cat/4.png has 0 labels (canonical annotations.json "
                        "images[4])"]


def test_unknown_category_and_image_are_named(tmp_path):
    root = dataset(tmp_path / "d")
    coco = load(root)
    coco["annotations"][0]["category_id"] = 7
    coco["annotations"].append({"id": 100, "image_id": 500, "category_id": 1})
    write(root, coco["images"], coco["annotations"])
    report = validate_dataset(root, ValidateConfig(min_annotations_per_class=3))
    assert {"category_ids_known", "annotation_images_known"} <= set(report["failed_checks"])
    assert result(report, "category_ids_known")["examples"][0] == (
        "labels.csv: row 1 (line 2): image cat/0.png, category_id 7 (canonical annotations.json annotations[0])")


@pytest.mark.parametrize("action, severity", [("warn", "warnings"), ("fail", "failed_checks")])
def test_class_minimum_and_balance_count_train_images(tmp_path, action, severity):
    root = dataset(tmp_path / "d", per_class=(30, 8, 2), split=lambda n: "val" if n % 10 == 0 else "train")
    report = validate_dataset(root, ValidateConfig(min_annotations_per_class=5, max_class_imbalance=10,
                                                   class_stats_action=action))
    assert {"min_images_per_class", "class_balance"} <= set(report[severity])
    assert report["passed"] == (action == "warn")
    assert result(report, "min_images_per_class")["examples"] == ["class 'owl' (id 3): 2 train images, 0 val, 2 in "
                                                                  "all"]
    assert result(report, "class_balance")["examples"] == ["largest class 'cat' 30 images / smallest 'owl' 2 = 15.0, "
                                                           "over 3 classes in use"]


def test_identical_images_with_different_classes_fail(tmp_path):
    root = dataset(tmp_path / "d")
    coco = load(root)
    (root / "images" / "owl" / "0.png").write_bytes((root / "images" / "cat" / "0.png").read_bytes())
    owl = next(im for im in coco["images"] if im["file_name"] == "owl/0.png")
    owl["sha1"] = coco["images"][0]["sha1"]
    write(root, coco["images"], coco["annotations"])
    report = validate_dataset(root, ValidateConfig(min_annotations_per_class=3))
    assert report["failed_checks"] == ["duplicates_agree"]
    assert result(report, "duplicates_agree")["examples"] == [
        "identical images with different classes: labels.csv: row 1 (line 2): images/cat/0.png (val): cat; "
        "labels.csv: row 17 (line 18): images/owl/0.png (train): owl"]


def test_undecodable_image_and_vocabulary_drift(tmp_path):
    root = dataset(tmp_path / "d")
    previous = canonical_io.dataset_stats(load(root))
    (root / "images" / "dog" / "1.png").write_bytes(b"\x89PNG\r\n\x1a\nbroken")
    coco = load(root)
    write(root, coco["images"], coco["annotations"], categories=[{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"},
                                                                 {"id": 3, "name": "eagle"}])
    report = validate_dataset(root, ValidateConfig(min_annotations_per_class=3, vocabulary_change="fail"), previous)
    assert {"images_decode", "no_classes_added", "no_classes_removed"} <= set(report["failed_checks"])
    assert "images/dog/1.png" in result(report, "images_decode")["examples"][0]
    assert result(report, "class_counts_stable")["description"].startswith("each class's image count")


@pytest.mark.parametrize("action, severity", [("warn", "warnings"), ("fail", "failed_checks")])
def test_a_class_without_val_images_is_named(tmp_path, action, severity):
    """A hashed split of a small real export can leave a class out of val (hymenoptera: 41 images, no bee in val):
    evaluate and export's parity would never judge it, so validation says so as class statistics do."""
    root = dataset(tmp_path / "d", per_class=(8, 8, 8), split=lambda n: "val" if n in (0, 9) else "train")
    report = validate_dataset(root, ValidateConfig(min_annotations_per_class=3, class_stats_action=action))
    assert "classes_in_val" in report[severity] and report["passed"] == (action == "warn")
    assert result(report, "classes_in_val")["examples"] == ["class 'owl' (id 3): 8 train images, 0 val, 8 in all"]
    assert "classes_in_val" not in validate_dataset(dataset(tmp_path / "ok"), ValidateConfig(
        min_annotations_per_class=3))["warnings"]
