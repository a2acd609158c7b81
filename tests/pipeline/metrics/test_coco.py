"""pipeline.metrics.coco: faster-coco-eval must give pycocotools' numbers, and bad inputs are rejected."""
from __future__ import annotations

import copy

import numpy as np
import pytest

from pipeline.errors import InputRejected
from pipeline.metrics.bench import pycocotools_eval
from pipeline.metrics.coco import STAT_KEYS, evaluate, score

CATEGORIES = [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}, {"id": 5, "name": "bird"},
              {"id": 7, "name": "never_annotated"}]


def make_set(seed: int, n_images: int = 30, crowd: bool = True, size: int = 400):
    """Random ground truth (some empty images, one class never annotated, optional crowd regions, boxes of
    every COCO area range) and noisy detections: jittered true boxes, wrong labels, false positives."""
    rng = np.random.default_rng(seed)
    images = [{"id": 100 + i, "width": size, "height": size, "file_name": f"{i}.jpg"} for i in range(n_images)]
    anns, dets = [], []
    annotated = [1, 2, 5]
    for img in images:
        n = int(rng.integers(0, 6)) if rng.uniform() > 0.2 else 0  # ~20 % empty images
        for _ in range(n):
            w, h = (float(v) for v in rng.choice([rng.uniform(4, 30, 2), rng.uniform(35, 90, 2),
                                                   rng.uniform(100, 200, 2)]))
            x, y = float(rng.uniform(0, size - w)), float(rng.uniform(0, size - h))
            cat = int(rng.choice(annotated))
            is_crowd = int(crowd and rng.uniform() < 0.08)
            anns.append({"id": len(anns) + 1, "image_id": img["id"], "category_id": cat, "bbox": [x, y, w, h],
                         "area": w * h * float(rng.uniform(0.6, 1.0)), "iscrowd": is_crowd})
            if rng.uniform() < 0.8:  # a detection of this object, maybe mislabelled
                jitter = rng.normal(0, 0.12, 4) * [w, h, w, h]
                det_cat = cat if rng.uniform() < 0.85 else int(rng.choice(annotated + [7]))
                dets.append({"image_id": img["id"], "category_id": det_cat,
                             "bbox": [x + jitter[0], y + jitter[1], max(w + jitter[2], 1.0), max(h + jitter[3], 1.0)],
                             "score": float(rng.uniform(0.05, 1.0))})
        for _ in range(int(rng.integers(0, 4))):  # false positives
            w, h = (float(v) for v in rng.uniform(5, 120, 2))
            dets.append({"image_id": img["id"], "category_id": int(rng.choice(annotated + [7])),
                         "bbox": [float(rng.uniform(0, size - w)), float(rng.uniform(0, size - h)), w, h],
                         "score": float(rng.uniform(0.0, 0.9))})
    gt = {"info": {}, "images": images, "annotations": anns, "categories": copy.deepcopy(CATEGORIES)}
    return gt, dets


def assert_same_as_pycocotools(gt, dt, iou_type="bbox"):
    ours = score(gt, dt, iou_type)
    ref = pycocotools_eval(gt, dt, iou_type)
    for key, value in zip(STAT_KEYS, ref.stats):
        if value == -1:
            assert ours[key] is None, key
        else:
            assert ours[key] == pytest.approx(value, abs=1e-6), key
    # per class: pycocotools restricted to that one category is an independent reference
    for cat in gt["categories"]:
        row = ours["per_class"][cat["name"]]
        one = pycocotools_eval(gt, dt, iou_type, cat_ids=[cat["id"]]).stats
        for key, idx in (("AP", 0), ("AP50", 1), ("AR100", 8)):
            if one[idx] == -1:
                assert row[key] is None, (cat["name"], key)
            else:
                assert row[key] == pytest.approx(one[idx], abs=1e-6), (cat["name"], key)
        assert row["support"] == sum(1 for a in gt["annotations"]
                                     if a["category_id"] == cat["id"] and not a["iscrowd"])
    return ours


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_random_sets_match_pycocotools(seed):
    gt, dt = make_set(seed, crowd=seed % 2 == 0)
    ours = assert_same_as_pycocotools(gt, dt)
    other = score(gt, dt, engine="faster-coco-eval")
    assert {k: other[k] for k in STAT_KEYS} == pytest.approx({k: ours[k] for k in STAT_KEYS}, abs=1e-12)
    assert 0 < ours["AP"] < 1  # the generated set is neither trivial nor hopeless
    assert ours["per_class"]["never_annotated"] == {"AP": None, "AP50": None, "AR100": None, "support": 0}


def test_more_than_100_detections_per_image_are_truncated_like_pycocotools():
    gt, _ = make_set(5, n_images=3, crowd=False)
    rng = np.random.default_rng(5)
    dt = [{"image_id": gt["images"][0]["id"], "category_id": 1, "score": float(rng.uniform()),
           "bbox": [float(v) for v in (*rng.uniform(0, 300, 2), *rng.uniform(5, 90, 2))]} for _ in range(250)]
    dt += [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 0.5}
           for a in gt["annotations"]]
    assert_same_as_pycocotools(gt, dt)


def test_no_detections():
    gt, _ = make_set(7)
    ours = assert_same_as_pycocotools(gt, [])
    assert ours["AP"] == 0.0 and ours["AR100"] == 0.0


def test_perfect_detections_score_one():
    gt, _ = make_set(8, crowd=False)
    dt = [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 1.0}
          for a in gt["annotations"]]
    ours = assert_same_as_pycocotools(gt, dt)
    assert ours["AP"] == pytest.approx(1.0) and ours["AP50"] == pytest.approx(1.0)


def test_detection_on_a_crowd_region_is_ignored():
    gt = {"images": [{"id": 1, "width": 100, "height": 100}],
          "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 20, 20], "area": 400, "iscrowd": 0},
                          {"id": 2, "image_id": 1, "category_id": 1, "bbox": [50, 50, 50, 50], "area": 2500,
                           "iscrowd": 1}],
          "categories": [{"id": 1, "name": "person"}]}
    dt = [{"image_id": 1, "category_id": 1, "bbox": [0, 0, 20, 20], "score": 0.9},
          {"image_id": 1, "category_id": 1, "bbox": [60, 60, 30, 30], "score": 0.95}]  # inside the crowd
    ours = assert_same_as_pycocotools(gt, dt)
    assert ours["AP"] == pytest.approx(1.0)


def test_only_empty_images_and_no_gt_gives_nulls():
    gt = {"images": [{"id": 1, "width": 50, "height": 50}], "annotations": [], "categories": CATEGORIES[:1]}
    dt = [{"image_id": 1, "category_id": 1, "bbox": [1, 1, 10, 10], "score": 0.9}]
    ours = assert_same_as_pycocotools(gt, dt)
    assert all(ours[k] is None for k in STAT_KEYS)
    no_images = score({"images": [], "annotations": [], "categories": CATEGORIES}, [])
    assert all(no_images[k] is None for k in STAT_KEYS) and set(no_images["per_class"]) == {c["name"] for c in CATEGORIES}


def test_segm_matches_pycocotools():
    from pycocotools import mask as mask_utils

    rng = np.random.default_rng(11)
    images = [{"id": i, "width": 120, "height": 90} for i in range(1, 9)]
    anns, dets = [], []
    for img in images:
        for _ in range(int(rng.integers(0, 4))):
            x, y = float(rng.uniform(0, 60)), float(rng.uniform(0, 40))
            w, h = float(rng.uniform(8, 50)), float(rng.uniform(8, 40))
            poly = [x, y, x + w, y, x + w * 0.7, y + h, x, y + h * 0.8]
            cat = int(rng.integers(1, 3))
            anns.append({"id": len(anns) + 1, "image_id": img["id"], "category_id": cat, "segmentation": [poly],
                         "bbox": [x, y, w, h], "area": w * h * 0.8, "iscrowd": 0})
            m = np.zeros((90, 120), dtype=np.uint8, order="F")
            dx, dy = (int(v) for v in rng.integers(-4, 5, 2))
            m[max(int(y) + dy, 0):int(y + h) + dy, max(int(x) + dx, 0):int(x + w) + dx] = 1
            rle = mask_utils.encode(m)
            rle["counts"] = rle["counts"].decode()
            dets.append({"image_id": img["id"], "category_id": cat, "segmentation": rle,
                         "score": float(rng.uniform())})
    gt = {"images": images, "annotations": anns, "categories": CATEGORIES[:2]}
    ours = assert_same_as_pycocotools(gt, dets, "segm")
    assert ours["AP50"] > 0


def test_inputs_are_not_modified():
    gt, dt = make_set(3, n_images=5)
    gt_before, dt_before = copy.deepcopy(gt), copy.deepcopy(dt)
    score(gt, dt)
    assert gt == gt_before and dt == dt_before


def test_evaluation_exposes_pr_curves():
    gt, dt = make_set(4, n_images=10)
    ev = evaluate(gt, dt)
    assert len(ev.recall_thresholds) == 101
    assert ev.pr_curves["never_annotated"] is None
    curve = ev.pr_curves["cat"]
    assert len(curve) == 101 and all(0 <= p <= 1 for p in curve)
    assert np.mean(curve) == pytest.approx(ev.metrics["per_class"]["cat"]["AP50"], abs=1e-9)


@pytest.mark.parametrize("mutate, field", [
    (lambda dt: dt[1].update(image_id=999999), "[1].image_id"),
    (lambda dt: dt[2].update(bbox=[1, 2, 3]), "[2].bbox"),
    (lambda dt: dt[0].update(bbox=[1, 2, float("nan"), 4]), "[0].bbox"),
    (lambda dt: dt[3].update(bbox=["1", 2, 3, 4]), "[3].bbox"),
    (lambda dt: dt[1].update(bbox=[1, 2, -3, 4]), "[1].bbox"),
    (lambda dt: dt[2].update(category_id=42), "[2].category_id"),
    (lambda dt: dt[0].pop("score"), "[0].score"),
])
def test_bad_detections_are_rejected_naming_the_field(mutate, field):
    gt, dt = make_set(1, n_images=10)
    mutate(dt)
    with pytest.raises(InputRejected) as info:
        evaluate(gt, dt, dt_path="dets.json")
    assert info.value.field == field and info.value.path == "dets.json"
    assert str(info.value).startswith(f"dets.json: {field}: ")


def test_bad_ground_truth_is_rejected():
    gt, dt = make_set(1, n_images=5)
    gt["annotations"][0]["bbox"] = [0, 0, float("inf"), 1]
    with pytest.raises(InputRejected) as info:
        evaluate(gt, dt, gt_path="gt.json")
    assert info.value.field == "annotations[0].bbox"
    with pytest.raises(InputRejected, match="'categories' must be a list"):
        evaluate({"images": [], "annotations": []}, [])
    with pytest.raises(InputRejected, match="must be a JSON list"):
        evaluate(make_set(1, n_images=2)[0], {"image_id": 1})
