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


# -- the vectorised pass against the per-image loop it replaced ------------------------------------------------

def _reference_match(dets: list[dict], gts: list[dict], same_class_only: bool):
    """The per-image greedy loop `match()` replaced, kept verbatim as the oracle: (pairs, lost, missed)."""
    import numpy as np

    dets = sorted(dets, key=lambda d: -d["score"])
    crowd = np.array([bool(g["iscrowd"]) for g in gts], dtype=bool)
    iou = box_iou([d["bbox"] for d in dets], [g["bbox"] for g in gts], crowd)
    gt_cats = np.array([g["category_id"] for g in gts], dtype=np.int64)
    taken = np.zeros(len(gts), dtype=bool)
    pairs, lost = [], []
    for i, det in enumerate(dets):
        same = gt_cats == det["category_id"]
        best = -1
        for allowed in [same] if same_class_only else [same, np.ones(len(gts), dtype=bool)]:
            ok = allowed & ~crowd & ~taken & (iou[i] >= 0.5)
            if ok.any():
                best = int(np.argmax(np.where(ok, iou[i], -1.0)))
                break
        if best >= 0:
            taken[best] = True
            pairs.append((det, gts[best]))
        elif not (crowd & same & (iou[i] >= 0.5)).any():
            lost.append(det)
    return pairs, lost, [g for g, t, c in zip(gts, taken, crowd) if not t and not c]


def _random_set(seed: int, images: int = 40):
    """Clustered boxes on a coarse grid: exact duplicates, equal IoUs, equal scores, crowd regions, wrong
    classes, images without detections and detections on images without ground truth."""
    import numpy as np

    rng = np.random.default_rng(seed)
    gt = {"images": [{"id": i, "width": 100, "height": 100} for i in range(1, images + 1)], "annotations": [],
          "categories": [{"id": c, "name": f"c{c}"} for c in (1, 2, 5)]}
    dt = []
    for image_id in range(1, images + 1):
        boxes = [[float(v) for v in rng.integers(0, 8, 2) * 5] + [float(v) for v in rng.integers(2, 8, 2) * 5]
                 for _ in range(int(rng.integers(0, 7)))]
        boxes += [list(boxes[0]) for _ in range(int(rng.integers(0, 3)))] if boxes else []  # equal IoUs
        for box in boxes:
            gt["annotations"].append({"image_id": image_id, "category_id": int(rng.choice([1, 2, 5])),
                                      "bbox": box, "iscrowd": int(rng.random() < 0.15)})
        if image_id % 7 == 0:
            continue
        for _ in range(int(rng.integers(0, 25))):
            src = boxes[int(rng.integers(len(boxes)))] if boxes and rng.random() < 0.7 else [30.0, 30.0, 20.0, 20.0]
            box = [v + float(rng.integers(-1, 2)) * 5 * (rng.random() < 0.4) for v in src]
            box[2], box[3] = max(box[2], 0.0), max(box[3], 0.0)
            dt.append({"image_id": image_id, "category_id": int(rng.choice([1, 2, 5])), "bbox": box,
                       "score": float(rng.integers(0, 10)) / 10})  # few distinct scores: many ties
    return gt, dt


@pytest.mark.parametrize("seed", range(6))
def test_vectorised_matching_equals_the_per_image_loop(seed):
    from pipeline.metrics.cocojson import dt_boxes, gt_boxes
    from pipeline.metrics.matching import by_image, match

    gt, dt = _random_set(seed)
    gt, dt = validate_gt(gt), validate_dt(dt, validate_gt(gt))
    position = {id(d): i for i, d in enumerate(dt)}
    gt_position = {id(a): i for i, a in enumerate(gt["annotations"])}
    for threshold in (0.0, 0.3, 0.75):
        m = match(gt_boxes(gt), dt_boxes(dt), threshold)
        gts, dts = by_image(gt, dt, threshold)
        for same_only, matched, ignored in ((True, m.same_gt, m.same_ignored), (False, m.any_gt, m.any_ignored)):
            want_pairs, want_lost, want_missed = set(), set(), set()
            for image_id in set(gts) | set(dts):
                pairs, lost, missed = _reference_match(dts.get(image_id, []), gts.get(image_id, []), same_only)
                want_pairs |= {(position[id(d)], gt_position[id(g)]) for d, g in pairs}
                want_lost |= {position[id(d)] for d in lost}
                want_missed |= {gt_position[id(g)] for g in missed}
            hit = matched >= 0
            assert set(zip(m.dt_index[hit].tolist(), matched[hit].tolist())) == want_pairs
            assert set(m.dt_index[~hit & ~ignored].tolist()) == want_lost
            taken = set(matched[hit].tolist())
            assert {i for i in range(len(gt["annotations"])) if i not in taken
                    and not gt["annotations"][i]["iscrowd"]} == want_missed
        assert len(want_pairs) > 5 and len(want_lost) > 5  # the set exercises matches and misses alike


def test_operating_point_and_confusion_matrix_accept_columns_and_precomputed_matches():
    from pipeline.metrics.cocojson import dt_boxes, gt_boxes
    from pipeline.metrics.matching import match

    gt, dt = _inputs()
    m = match(gt_boxes(gt), dt_boxes(dt), 0.3)
    assert operating_point(gt, dt_boxes(dt), 0.3) == operating_point(gt, dt, 0.3, m) == operating_point(gt, dt, 0.3)
    assert confusion_matrix(gt, dt_boxes(dt), 0.3) == confusion_matrix(gt, dt, 0.3, m)
