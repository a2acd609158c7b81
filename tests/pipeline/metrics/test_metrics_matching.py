"""Operating-point metrics and the confusion matrix on hand-checked cases."""
from __future__ import annotations

import pytest

from pipeline.metrics.coco import report, validate_dt, validate_gt
from pipeline.metrics.matching import box_iou, confusion_matrix, operating_point

GT = {
    "images": [{"id": 1, "width": 200, "height": 200}, {"id": 2, "width": 200, "height": 200}],
    "annotations": [
        {"id": 1, "image_id": 1, "category_id": 1, "bbox": [10, 10, 40, 40], "iscrowd": 0},
        {"id": 2, "image_id": 1, "category_id": 1, "bbox": [100, 100, 40, 40], "iscrowd": 0},
        {"id": 3, "image_id": 1, "category_id": 2, "bbox": [10, 100, 40, 40], "iscrowd": 0},
        {"id": 4, "image_id": 2, "category_id": 2, "bbox": [0, 0, 100, 100], "iscrowd": 1},
    ],
    "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}, {"id": 3, "name": "c"}],
}
DT = [
    {"image_id": 1, "category_id": 1, "bbox": [10, 10, 40, 40], "score": 0.9},   # a on a: TP
    {"image_id": 1, "category_id": 1, "bbox": [12, 12, 40, 40], "score": 0.85},  # duplicate of a: FP
    {"image_id": 1, "category_id": 1, "bbox": [10, 100, 40, 40], "score": 0.8},  # a on the b object
    {"image_id": 1, "category_id": 2, "bbox": [150, 0, 30, 30], "score": 0.7},   # b on nothing: FP
    {"image_id": 1, "category_id": 1, "bbox": [100, 100, 40, 40], "score": 0.1},  # below threshold
    {"image_id": 2, "category_id": 2, "bbox": [20, 20, 30, 30], "score": 0.95},  # inside b crowd: ignored
    {"image_id": 2, "category_id": 1, "bbox": [20, 20, 30, 30], "score": 0.6},   # a inside b crowd: FP
]


def _inputs():
    gt = validate_gt(GT)
    return gt, validate_dt(DT, gt)


def test_box_iou_uses_detection_area_for_crowd():
    iou = box_iou([[0, 0, 10, 10]], [[0, 0, 10, 20], [0, 0, 10, 20]], [False, True])
    assert iou[0, 0] == pytest.approx(0.5) and iou[0, 1] == pytest.approx(1.0)


def test_operating_point_counts():
    op = operating_point(*_inputs(), score_threshold=0.3)
    a, b, c = (op["per_class"][n] for n in "abc")
    assert (a["tp"], a["fp"], a["fn"]) == (1, 3, 1)  # duplicate, the a on b, the a on the b crowd
    assert (b["tp"], b["fp"], b["fn"]) == (0, 1, 1)
    assert (c["tp"], c["fp"], c["fn"]) == (0, 0, 0) and c["precision"] is None and c["f1"] is None
    assert (op["tp"], op["fp"], op["fn"]) == (1, 4, 2)
    assert op["precision"] == pytest.approx(1 / 5) and op["recall"] == pytest.approx(1 / 3)
    assert op["f1"] == pytest.approx(2 * (1 / 5) * (1 / 3) / (1 / 5 + 1 / 3))
    assert b["precision"] == 0.0 and b["recall"] == 0.0 and b["f1"] == 0.0


def test_lower_threshold_admits_the_low_score_detection():
    op = operating_point(*_inputs(), score_threshold=0.05)
    assert op["per_class"]["a"]["tp"] == 2 and op["per_class"]["a"]["fn"] == 0


def test_confusion_matrix_puts_wrong_labels_off_diagonal():
    cm = confusion_matrix(*_inputs(), score_threshold=0.3)
    assert cm["labels"] == ["a", "b", "c", "background"]
    assert cm["matrix"] == [
        # a  b  c  bg   (predicted)
        [1, 0, 0, 1],  # gt a: matched once, the second a missed (its detection is below threshold)
        [1, 0, 0, 0],  # gt b: found, but labelled a
        [0, 0, 0, 0],  # gt c
        [2, 1, 0, 0],  # background: the duplicate a, the a on the crowd, the b on nothing
    ]


def test_report_has_everything_the_stage_writes():
    metrics, ev = report(GT, DT, score_threshold=0.3)
    assert {"AP", "AP50", "ARl", "per_class", "operating_point", "confusion_matrix"} <= set(metrics)
    assert metrics["operating_point"]["score_threshold"] == 0.3
    assert ev.metrics["AP"] == metrics["AP"]
