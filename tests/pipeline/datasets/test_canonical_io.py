"""canonical_io summaries."""
from __future__ import annotations

from pipeline.datasets import canonical_io


def test_counts_skip_ignore_regions_and_list_unknown_classes_in_first_seen_order():
    coco = {"images": [{"id": 1, "split": "train"}, {"id": 2, "split": "val"}, {"id": 3}],
            "categories": [{"id": 1, "name": "car"}, {"id": 2, "name": "bike"}],
            "annotations": [{"image_id": 1, "category_id": 1}, {"image_id": 2, "category_id": 7},
                            {"image_id": 2, "category_id": 1, "iscrowd": 1}, {"image_id": 3, "category_id": 5},
                            {"image_id": 9, "category_id": 7}, {"image_id": 2, "category_id": 1, "iscrowd": 0}]}
    c = canonical_io.counts(coco)
    assert (c["images"], c["annotations"], c["ignore_regions"]) == (3, 5, 1)
    assert c["per_split"] == {"train": {"images": 2, "annotations": 3}, "val": {"images": 1, "annotations": 2},
                              "test": {"images": 0, "annotations": 0}}
    assert list(c["per_class"]) == ["car", "bike", "7", "5"]  # declared classes, then unknown ids as first seen
    assert c["per_class"]["car"] == {"train": 1, "val": 1, "test": 0, "total": 2}
    assert c["per_class"]["7"] == {"train": 1, "val": 1, "test": 0, "total": 2}  # image 9 is unknown: train
    assert c["per_class"]["bike"]["total"] == 0
