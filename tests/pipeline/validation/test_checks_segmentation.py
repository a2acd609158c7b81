"""validate on a segmentation dataset: the mask checks pass on good masks and each defect fails its own check,
naming the export's file and item and what is wrong with the mask; a detection dataset gets no mask checks."""
from __future__ import annotations

import json
from pathlib import Path

from pipeline.config import ValidateConfig
from pipeline.datasets import masks
from pipeline.datasets.synthetic import generate
from pipeline.validation import validate_dataset

MASK_CHECKS = {"masks_valid", "masks_inside", "mask_box_agrees"}


def _dataset(root: Path, segmentation: bool = True) -> tuple[Path, dict]:
    generate(root, num_images=12, image_size=64, seed=4, segmentation=segmentation)
    coco = json.loads((root / "annotations.json").read_text())
    for i, image in enumerate(coco["images"]):
        image["split"] = "train" if i < 8 else ("val" if i < 10 else "test")
    for ann in coco["annotations"]:
        ann["source"] = {"file": "export/annotations.json", "item": f"annotations[{ann['id'] - 1}]"}
    return root, coco


def _validate(root: Path, coco: dict) -> dict:
    (root / "annotations.json").write_text(json.dumps(coco))
    return validate_dataset(root, ValidateConfig(min_images_per_split={}, min_annotations_per_class=0,
                                                 max_bad_fraction=0.0, check_image_decode=False))


def _result(report: dict, name: str) -> dict:
    return next(r for r in report["results"] if r["name"] == name)


def test_good_masks_pass_every_mask_check(tmp_path):
    root, coco = _dataset(tmp_path / "ds")
    coco["annotations"][0]["segmentation"] = masks.encode(masks.decode(coco["annotations"][0]["segmentation"], 64, 64))
    report = _validate(root, coco)
    assert MASK_CHECKS <= {r["name"] for r in report["results"]}
    assert all(_result(report, n)["success"] for n in MASK_CHECKS), report["failed_checks"]


def test_each_mask_defect_fails_its_check_and_names_the_item(tmp_path):
    root, coco = _dataset(tmp_path / "ds")
    anns = coco["annotations"]
    anns[0]["segmentation"] = {"size": [32, 32], "counts": "PPYo0"}  # RLE of another size
    anns[1]["segmentation"] = [[1, 1, 5, 1]]  # two points
    x, y, w, h = anns[2]["bbox"]
    anns[2]["segmentation"] = [[x, y, x + 90, y, x + 90, y + h]]  # reaches far outside the 64 px image
    anns[3]["bbox"] = [anns[3]["bbox"][0] + 10, *anns[3]["bbox"][1:]]  # the box no longer fits its mask
    report = _validate(root, coco)
    assert not report["passed"]
    assert MASK_CHECKS <= set(report["failed_checks"])
    valid = _result(report, "masks_valid")["examples"]
    assert any("annotations[0]" in e and "segmentation.size" in e and "[32, 32]" in e for e in valid)
    assert any("annotations[1]" in e and "at least 3" in e for e in valid)
    assert any("annotations[2]" in e and "outside" in e for e in _result(report, "masks_inside")["examples"])
    agrees = _result(report, "mask_box_agrees")["examples"]
    assert any("export/annotations.json: annotations[3]" in e and "disagrees with its mask's box" in e
               for e in agrees)


def test_a_detection_dataset_has_no_mask_checks(tmp_path):
    root, coco = _dataset(tmp_path / "ds", segmentation=False)
    report = _validate(root, coco)
    assert not MASK_CHECKS & {r["name"] for r in report["results"]}
