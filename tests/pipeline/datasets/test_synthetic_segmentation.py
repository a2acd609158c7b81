"""The generated demo set as instance segmentation: the detection set's very images and boxes, plus each shape's
outline as a polygon whose extent is its box and whose area is its shape's."""
from __future__ import annotations

import json
import math

from pipeline.datasets.synthetic import generate

SHAPE_AREA = {1: math.pi / 4, 2: 1.0, 3: 0.5}  # circle, square, triangle: area / box area


def test_segmentation_adds_polygons_to_the_same_images_and_boxes(tmp_path):
    generate(tmp_path / "det", num_images=6, image_size=64, seed=9)
    generate(tmp_path / "seg", num_images=6, image_size=64, seed=9, segmentation=True)
    generate(tmp_path / "seg2", num_images=6, image_size=64, seed=9, segmentation=True)
    det = json.loads((tmp_path / "det/annotations.json").read_text())
    seg = json.loads((tmp_path / "seg/annotations.json").read_text())
    assert (tmp_path / "seg/annotations.json").read_bytes() == (tmp_path / "seg2/annotations.json").read_bytes()
    for im in det["images"]:
        name = im["file_name"]
        assert (tmp_path / "det/images" / name).read_bytes() == (tmp_path / "seg/images" / name).read_bytes()
    assert "task" not in det and seg["task"] == "segmentation"
    assert [a["bbox"] for a in det["annotations"]] == [a["bbox"] for a in seg["annotations"]]
    for ann in seg["annotations"]:
        (poly,) = ann["segmentation"]
        x, y, w, h = ann["bbox"]
        xs, ys = poly[0::2], poly[1::2]
        assert (min(xs), min(ys), max(xs), max(ys)) == (x, y, x + w, y + h)
        # the 32-gon is 97.4 % of its circle
        assert abs(ann["area"] / (w * h) - SHAPE_AREA[ann["category_id"]]) < 0.03
