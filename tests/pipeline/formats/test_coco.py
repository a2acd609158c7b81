"""COCO reader: segmentation kinds, derived boxes, the instances_*.json layout, the READERS registry."""
from __future__ import annotations

import json

import pytest

from pipeline import formats
from pipeline.errors import ConfigError, InputRejected
from pipeline.formats.coco import read_coco
from tests.helpers import write_image


def _coco(images, annotations, categories=None) -> dict:
    return {"images": images, "annotations": annotations,
            "categories": categories or [{"id": 7, "name": "cat"}, {"id": 9, "name": "dog"}]}


def test_polygons_rle_and_iscrowd(tmp_path):
    write_image(tmp_path / "images" / "a.jpg", 40, 30)
    rle = {"size": [30, 40], "counts": [30 * 5 + 2, 3, 27, 3, 1200 - 152 - 33]}  # column-major: x 5-6, y 2-4
    anns = [
        {"id": 1, "image_id": 5, "category_id": 7, "segmentation": [[1, 2, 11, 2, 11, 12]]},  # no bbox: derived
        {"id": 2, "image_id": 5, "category_id": 9, "iscrowd": 1, "segmentation": rle},
        {"id": 3, "image_id": 5, "category_id": 9, "bbox": [0, 0, 4, 5], "area": 3.5},
    ]
    (tmp_path / "annotations.json").write_text(json.dumps(_coco([{"id": 5, "file_name": "a.jpg", "width": 40,
                                                                   "height": 30}], anns)))
    ds = read_coco(tmp_path)
    assert [a["bbox"] for a in ds.annotations][0] == [1.0, 2.0, 10.0, 10.0]
    crowd = ds.annotations[1]
    assert crowd["iscrowd"] == 1 and crowd["area"] == 6.0 and crowd["bbox"] == [5.0, 2.0, 2.0, 3.0]
    assert crowd["segmentation"] == rle
    assert ds.annotations[2]["area"] == 3.5 and ds.images[0]["path"] == tmp_path / "images" / "a.jpg"


def test_instances_layout_is_merged_by_category_name(tmp_path):
    for split, cats in (("train2017", [{"id": 1, "name": "cat"}]), ("val2017", [{"id": 4, "name": "dog"},
                                                                               {"id": 1, "name": "cat"}])):
        write_image(tmp_path / "images" / split / f"{split}.jpg", 40, 30)
        anns = [{"id": k, "image_id": 1, "category_id": c["id"], "bbox": [1, 1, 5, 5]} for k, c in enumerate(cats)]
        doc = _coco([{"id": 1, "file_name": f"{split}.jpg", "width": 40, "height": 30}], anns, cats)
        (tmp_path / "annotations").mkdir(exist_ok=True)
        (tmp_path / "annotations" / f"instances_{split}.json").write_text(json.dumps(doc))
    ds = read_coco(tmp_path, "export")
    assert [c["name"] for c in ds.categories] == ["cat", "dog"]
    assert [i["id"] for i in ds.images] == [1, 2]
    assert sorted((a["image_id"], a["category_id"]) for a in ds.annotations) == [(1, 1), (2, 1), (2, 2)]
    assert ds.files == ["export/annotations/instances_train2017.json", "export/annotations/instances_val2017.json"]


def test_rle_that_does_not_decode_sets_the_image_aside(tmp_path):
    write_image(tmp_path / "images" / "a.jpg", 40, 30)
    write_image(tmp_path / "images" / "b.jpg", 40, 30)
    anns = [{"id": 1, "image_id": 1, "category_id": 7, "segmentation": {"size": [30, 40], "counts": [1, 2]}},
            {"id": 2, "image_id": 2, "category_id": 7, "bbox": [1, 1, 2, 2]}]
    images = [{"id": i, "file_name": f"{n}.jpg", "width": 40, "height": 30} for i, n in ((1, "a"), (2, "b"))]
    (tmp_path / "annotations.json").write_text(json.dumps(_coco(images, anns)))
    ds = read_coco(tmp_path, "exp")
    assert [i["file_name"] for i in ds.images] == ["b.jpg"] and [a["id"] for a in ds.annotations] == [2]
    assert ds.quarantine == [{"file": "exp/annotations.json", "field": "annotations[0].segmentation.counts",
                              "reason": ds.quarantine[0]["reason"], "image": "a.jpg"}]
    assert "uncompressed RLE counts" in ds.quarantine[0]["reason"] and ds.listed_images == 2


def test_structural_problems_are_counted_in_one_message(tmp_path):
    write_image(tmp_path / "images" / "a.jpg", 40, 30)
    cats = [{"id": i, "name": "same"} for i in range(10)]
    (tmp_path / "annotations.json").write_text(json.dumps(_coco([{"id": 1, "file_name": "a.jpg", "width": 40,
                                                                   "height": 30}], [], cats)))
    with pytest.raises(InputRejected) as exc:
        read_coco(tmp_path)
    assert exc.value.field == "categories[1].name"
    assert "categories[4].name" in str(exc.value) and "(and 4 more problems)" in str(exc.value)


def test_registry():
    assert {"coco", "voc", "yolo", "labelme", "cvat", "kitti"} <= set(formats.READERS)
    with pytest.raises(ConfigError, match="no reader"):
        formats.read("pascal-3d", ".")
