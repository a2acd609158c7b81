"""pipeline.metrics.boxeval: pycocotools' bbox COCOeval on arrays must equal pycocotools bit for bit.

Compared are the whole precision [T, R, K, A, M] and recall [T, K, A, M] arrays, not only the 12 stats,
on sets built to hit each rule of pycocotools' matching and accumulation.
"""
from __future__ import annotations


import numpy as np
import pytest

from pipeline.metrics import boxeval
from pipeline.metrics.bench import pycocotools_eval
from pipeline.metrics.coco import validate_dt, validate_gt
from pipeline.metrics.cocojson import dt_boxes, gt_boxes


def ours(gt: dict, dt: list[dict]):
    gt = validate_gt(gt)
    return boxeval.evaluate(gt_boxes(gt), dt_boxes(validate_dt(dt, gt)), [i["id"] for i in gt["images"]],
                            [c["id"] for c in gt["categories"]])


def assert_identical(gt: dict, dt: list[dict]):
    ref, got = pycocotools_eval(gt, dt), ours(gt, dt)
    np.testing.assert_array_equal(got.eval["precision"], ref.eval["precision"])
    np.testing.assert_array_equal(got.eval["recall"], ref.eval["recall"])
    np.testing.assert_array_equal(got.stats, np.asarray(ref.stats))
    return got


def coco(images, anns, cats=(1, 2, 3)):
    return {"images": [{"id": i, "width": 640, "height": 480} for i in images],
            "annotations": [dict(a, id=n + 1) for n, a in enumerate(anns)],
            "categories": [{"id": c, "name": f"c{c}"} for c in cats]}


def ann(image_id, cat, box, crowd=0, area=None):
    return {"image_id": image_id, "category_id": cat, "bbox": [float(v) for v in box], "iscrowd": crowd,
            "area": float(box[2] * box[3]) if area is None else float(area)}


def det(image_id, cat, box, score):
    return {"image_id": image_id, "category_id": cat, "bbox": [float(v) for v in box], "score": score}


def random_set(seed: int, images: int = 40, dets_per_image: int = 60):
    """Clustered objects (many overlapping candidates), crowd regions, duplicate ground truth, scores on a
    coarse grid (many ties), boxes of every area range and empty images."""
    rng = np.random.default_rng(seed)
    anns, dets = [], []
    for image_id in range(1, images + 1):
        if rng.uniform() < 0.15:
            continue  # an empty image, maybe with detections below
        centre = rng.uniform(100, 400, 2)
        for _ in range(int(rng.integers(1, 12))):
            side = np.exp(rng.uniform(np.log(6), np.log(200), 2))
            xy = centre + rng.normal(0, 40, 2)
            cat = int(rng.integers(1, 4))
            crowd = int(rng.uniform() < 0.1)
            box = [*np.round(xy, 1), *np.round(side, 1)]
            anns.append(ann(image_id, cat, box, crowd, area=box[2] * box[3] * rng.choice([1.0, 0.7])))
            if rng.uniform() < 0.1:
                anns.append(ann(image_id, cat, box))  # a duplicate: IoU ties between two ground truths
    by_image: dict[int, list] = {}
    for a in anns:
        by_image.setdefault(a["image_id"], []).append(a)
    for image_id in range(1, images + 1):
        objects = by_image.get(image_id, [])
        for _ in range(dets_per_image):
            if objects and rng.uniform() < 0.6:
                a = objects[int(rng.integers(len(objects)))]
                box = np.array(a["bbox"]) + rng.normal(0, 0.15, 4) * np.repeat(a["bbox"][2:], 2)
                box[2:] = np.maximum(box[2:], 0.5)
                cat = a["category_id"] if rng.uniform() < 0.85 else int(rng.integers(1, 4))
            else:
                box = np.array([*rng.uniform(0, 500, 2), *np.exp(rng.uniform(np.log(4), np.log(250), 2))])
                cat = int(rng.integers(1, 4))
            dets.append(det(image_id, cat, np.round(box, 1), float(rng.integers(0, 20)) / 20))
    return coco(range(1, images + 1), anns), dets


@pytest.mark.parametrize("seed", range(6))
def test_random_clustered_sets(seed):
    got = assert_identical(*random_set(seed))
    assert 0 < got.stats[0] < 1


def test_more_than_100_detections_per_image_and_class_with_ties_at_the_cut():
    gt = coco([1, 2], [ann(1, 1, [10 + 30 * i, 10, 25, 25]) for i in range(15)] + [ann(2, 2, [50, 50, 100, 80])])
    rng = np.random.default_rng(3)
    dt = [det(1, 1, [10 + 30 * (i % 15) + rng.normal(0, 2), 10 + rng.normal(0, 2), 25, 25], 0.5)
          for i in range(140)]  # one score for all: file order decides which 100 count
    dt += [det(2, 2, [50, 50, 100, 80], 0.9), det(2, 2, [52, 50, 100, 80], 0.9)]
    assert_identical(gt, dt)


def test_iou_exactly_at_thresholds_and_ties_between_ground_truths():
    gt = coco([1], [ann(1, 1, [0, 0, 10, 10]), ann(1, 1, [0, 0, 10, 10]),  # identical twins
                    ann(1, 2, [100, 100, 40, 40]), ann(1, 3, [200, 200, 20, 20])])
    dt = [det(1, 1, [0, 0, 10, 5], 0.9),  # IoU 0.5 with both twins: the later one is taken
          det(1, 1, [0, 0, 10, 7.5], 0.9),  # IoU 0.75
          det(1, 1, [0, 0, 10, 10], 0.8),
          det(1, 2, [100, 100, 40, 30], 0.7),  # IoU 0.75
          det(1, 3, [200, 200, 20, 0], 0.6)]  # zero area
    assert_identical(gt, dt)


def test_an_iou_tie_goes_to_the_later_ground_truth():
    # the first detection has IoU 0.6 with both; taking the later one leaves the earlier for the second
    # detection, which overlaps only it: two true positives, where "first wins" would give one
    gt = coco([1], [ann(1, 1, [0, 0, 10, 10]), ann(1, 1, [5, 0, 10, 10])])
    dt = [det(1, 1, [2.5, 0, 10, 10], 0.9), det(1, 1, [0, 0, 10, 10], 0.8)]
    got = assert_identical(gt, dt)
    assert got.eval["recall"][0, 0, 0, 2] == 1.0


def test_crowd_regions_absorb_any_number_of_detections():
    gt = coco([1, 2], [ann(1, 1, [0, 0, 200, 200], crowd=1), ann(1, 1, [20, 20, 50, 50]),
                       ann(2, 1, [0, 0, 100, 100], crowd=1)])
    dt = [det(1, 1, [20 + i, 20, 50, 50], 0.9 - i / 100) for i in range(8)]  # one TP, the rest on the crowd
    dt += [det(2, 1, [10 * i, 10 * i, 30, 30], 0.5) for i in range(6)]
    dt += [det(2, 1, [300, 300, 30, 30], 0.95)]  # a false positive outside the crowd
    assert_identical(gt, dt)


def test_area_range_edges_for_ground_truth_area_and_detection_box():
    # 32**2 and 96**2 sit in two ranges at once; a ground truth's `area` field decides, not its box
    gt = coco([1], [ann(1, 1, [0, 0, 32, 32]), ann(1, 1, [100, 0, 96, 96]), ann(1, 1, [300, 0, 40, 40], area=900),
                    ann(1, 2, [0, 200, 31, 33])])
    dt = [det(1, 1, [0, 0, 32, 32], 0.9), det(1, 1, [100, 0, 96, 96], 0.8), det(1, 1, [300, 0, 40, 40], 0.7),
          det(1, 1, [0, 100, 32, 32], 0.6), det(1, 2, [0, 200, 31, 33], 0.5), det(1, 2, [0, 300, 32, 32], 0.4)]
    assert_identical(gt, dt)


def test_empty_images_classes_without_ground_truth_and_without_detections():
    gt = coco([1, 2, 3], [ann(1, 1, [10, 10, 50, 50]), ann(2, 1, [10, 10, 50, 50]), ann(2, 2, [0, 0, 5, 5])],
              cats=(1, 2, 3, 4))
    dt = [det(1, 1, [12, 10, 50, 50], 0.9), det(3, 1, [0, 0, 50, 50], 0.8),  # image 3 has no ground truth
          det(3, 3, [0, 0, 50, 50], 0.7), det(1, 4, [0, 0, 9, 9], 0.2)]  # classes 3 and 4 have no ground truth
    assert_identical(gt, dt)


def test_no_detections_and_no_ground_truth():
    gt, _ = random_set(11, images=5)
    assert_identical(gt, [])
    empty = coco([1, 2], [])
    got = assert_identical(empty, [det(1, 1, [0, 0, 10, 10], 0.5)])
    assert (got.stats == -1).all()


def test_box_iou_is_pycocotools_bbiou():
    from pycocotools import mask as mask_utils

    rng = np.random.default_rng(0)
    d = np.round(rng.uniform(0, 60, (50, 4)), 1)
    g = np.round(rng.uniform(0, 60, (50, 4)), 1)
    crowd = rng.uniform(size=50) < 0.3
    ref = np.array([mask_utils.iou([d[i].tolist()], [g[i].tolist()], [int(crowd[i])])[0, 0] for i in range(50)])
    np.testing.assert_array_equal(boxeval.box_iou(d, g, crowd), ref)
