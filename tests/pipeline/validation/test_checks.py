"""Validation checks on a canonical dataset: declared-but-unused classes are a named warning outside the
per-class minimum and the balance ratio, the minimum's failure lists every class with its counts, and every
message about a box names the export's own file and item (the provenance ingest keeps in `source`)."""
from __future__ import annotations

import json
from pathlib import Path

from PIL import Image

from pipeline.config import ValidateConfig
from pipeline.validation import validate_dataset

SRC = "export/labels/train/img{n}.txt"


def _dataset(root: Path, boxes_per_class: dict[str, int], declared_only: list[str], outside: int | None = None) -> Path:
    """Ten 40 x 30 train images (plus two val) and the given number of boxes per class, round-robin."""
    (root / "images").mkdir(parents=True)
    images = []
    for n in range(12):
        Image.new("RGB", (40, 30), (n * 20, 80, 120)).save(root / "images" / f"img{n}.png")
        images.append({"id": n + 1, "file_name": f"img{n}.png", "width": 40, "height": 30,
                       "split": "train" if n < 10 else "val", "source": {"file": SRC.format(n=n), "item": ""}})
    names = [*boxes_per_class, *declared_only]
    categories = [{"id": i, "name": name} for i, name in enumerate(names, start=1)]
    annotations, line = [], {}
    for cid, name in enumerate(names, start=1):
        for k in range(boxes_per_class.get(name, 0)):
            img = k % 10
            line[img] = line.get(img, 0) + 1
            annotations.append({"id": len(annotations) + 1, "image_id": img + 1, "category_id": cid,
                                "bbox": [2.0, 2.0, 10.0, 8.0], "area": 80.0, "iscrowd": 0,
                                "source": {"file": SRC.format(n=img), "item": f"line {line[img]}"}})
    if outside is not None:  # one box sticking far out of its image
        annotations[outside]["bbox"] = [35.0, 2.0, 50.0, 8.0]
    (root / "annotations.json").write_text(json.dumps({"images": images, "annotations": annotations,
                                                       "categories": categories}))
    return root


def test_unused_classes_warn_by_name_and_stay_out_of_the_ratio_and_minimum(tmp_path):
    ds = _dataset(tmp_path / "d", {"car": 20, "person": 12}, declared_only=["vehicles", "toaster"])
    report = validate_dataset(ds, ValidateConfig(min_annotations_per_class=5, max_class_imbalance=2.0))
    assert report["passed"], report["failed_checks"]
    assert report["warnings"] == ["declared_classes_used"] and report["unused_classes"] == ["vehicles", "toaster"]
    summary = report["observed_tables"]["summary"][0]
    assert summary["class_imbalance_ratio"] == 20 / 12 and summary["used_classes"] == 2
    used = next(r for r in report["results"] if r["name"] == "declared_classes_used")
    assert [e.split(":")[0] for e in used["examples"]] == ["class 'vehicles' (id 3)", "class 'toaster' (id 4)"]


def test_minimum_lists_classes_with_counts_and_box_messages_name_the_source_line(tmp_path, capsys):
    from pipeline.cli import main

    ds = _dataset(tmp_path / "d", {"car": 20, "person": 3, "bike": 1}, declared_only=[], outside=4)
    code = main(["validate", "--dataset", str(ds), "--set", "validate.max_bad_fraction=0",
                 "--set", "validate.max_class_imbalance=10", "--set", "validate.class_stats_action=fail"])
    err = capsys.readouterr().err
    assert code == 3
    assert ("min_annotations_per_class: every class in use has >= 5 boxes in train (2 of 3 rows): "
            "class 'person' (id 2): 3 train boxes, 3 in all; class 'bike' (id 3): 1 train boxes, 1 in all") in err
    assert "class_balance: largest class / smallest class in use <= 10.0 (1 of 1 rows), e.g. largest class 'car' " \
           "20 boxes / smallest 'bike' 1 = 20.0, over 3 classes in use (0 declared but unused)" in err
    # annotations[4] is img4's first box: the message names the label file and line, then the canonical row
    assert "export/labels/train/img4.txt: line 1: image img4.png (40 x 30), box [x, y, w, h] [35.0, 2.0, 50.0, 8.0] " \
           "(canonical annotations.json annotations[4])" in err


def test_rare_and_imbalanced_classes_warn_by_default_and_fail_when_asked(tmp_path):
    """Real exports are imbalanced (COCO128: ratio 302, 12 classes under 5 train boxes): by default both checks
    are named warnings; class_stats_action=fail makes them stop the run."""
    ds = _dataset(tmp_path / "d", {"car": 200, "person": 3, "bike": 1}, declared_only=[])
    report = validate_dataset(ds, ValidateConfig())
    assert report["passed"], report["failed_checks"]
    assert {"min_annotations_per_class", "class_balance"} <= set(report["warnings"])
    strict = validate_dataset(ds, ValidateConfig(class_stats_action="fail"))
    assert not strict["passed"]
    assert {"min_annotations_per_class", "class_balance"} <= set(strict["failed_checks"])
