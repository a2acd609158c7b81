"""Mask metrics: faster-coco-eval's segm numbers (what evaluate writes) against pycocotools' COCOeval."""
from __future__ import annotations

import copy

import numpy as np
import pytest
from pycocotools import mask as mask_util

from pipeline.errors import InputRejected
from pipeline.metrics import segm
from pipeline.metrics.coco import STAT_KEYS
from tests.segmentation_data import gt_results, write_dataset


def _perturbed(coco: dict) -> list[dict]:
    """Detections that overlap the ground truth imperfectly: shifted masks, a wrong class, a false positive."""
    rng = np.random.default_rng(0)
    out = []
    for k, det in enumerate(gt_results(coco)):
        mask = mask_util.decode({"size": det["segmentation"]["size"],
                                 "counts": det["segmentation"]["counts"].encode()})
        mask = np.roll(mask, int(rng.integers(-4, 5)), axis=1)
        if k % 5 == 4:
            det["category_id"] = 3 - det["category_id"]
        rle = mask_util.encode(np.asfortranarray(mask))
        det["segmentation"] = {"size": det["segmentation"]["size"], "counts": rle["counts"].decode()}
        det["score"] = float(rng.uniform(0.3, 1.0))
        out.append(det)
    fp = np.zeros((96, 96), dtype=np.uint8)
    fp[5:15, 70:90] = 1
    rle = mask_util.encode(np.asfortranarray(fp))
    out.append({"image_id": 1, "category_id": 1, "score": 0.95, "bbox": [70, 5, 20, 10],
                "segmentation": {"size": [96, 96], "counts": rle["counts"].decode()}})
    return out


def test_segm_stats_equal_pycocotools(tmp_path):
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    coco = write_dataset(tmp_path, num_images=6, size=96, seed=2, shapes=3)
    dets = _perturbed(coco)
    ours = segm.segm_metrics(coco, copy.deepcopy(dets))

    ref_gt = COCO()
    ref_gt.dataset = copy.deepcopy(coco)
    ref_gt.createIndex()
    ref_dt = ref_gt.loadRes([dict(d, segmentation=dict(d["segmentation"])) for d in dets])
    ev = COCOeval(ref_gt, ref_dt, "segm")
    ev.evaluate()
    ev.accumulate()
    ev.summarize()
    for key, ref in zip(STAT_KEYS, ev.stats):
        expected = None if ref < 0 else pytest.approx(float(ref), abs=1e-9)
        assert ours[key] == expected, key
    assert 0.0 < ours["AP"] < 1.0  # the case really tests something: neither perfect nor empty
    assert set(ours["per_class"]) == {"disc", "square"} and ours["iou_type"] == "segm"
    # perfect masks score 1
    assert segm.segm_metrics(coco, gt_results(coco))["AP"] == pytest.approx(1.0)


def test_missing_gt_mask_is_rejected_naming_the_field(tmp_path):
    coco = write_dataset(tmp_path, num_images=2, size=64)
    del coco["annotations"][1]["segmentation"]
    with pytest.raises(InputRejected) as err:
        segm.segm_metrics(coco, [], gt_path="ingest/dataset/annotations.json")
    assert err.value.field == "annotations[1].segmentation" and "annotations.json" in str(err.value)


def test_a_model_without_masks_gets_no_segm_and_says_so(tmp_path, caplog):
    coco = write_dataset(tmp_path, num_images=2, size=64)
    boxes_only = [{k: v for k, v in d.items() if k != "segmentation"} for d in gt_results(coco)]
    assert segm.section(coco, boxes_only, "champion v3", "detection") is None
    assert "predicts no masks" in caplog.text
    section = segm.section(coco, gt_results(coco), "challenger", "segmentation")
    assert section["AP"] == pytest.approx(1.0)
    metrics = {"segm": dict(section, AP=0.7), "champion": {"segm": {"AP": 0.75, "AP50": 0.9}}}
    assert segm.drop(metrics) == pytest.approx(0.05)
    logged = segm.mlflow_metrics(metrics)
    assert logged["eval_segm_AP"] == 0.7 and logged["eval_champion_segm_AP"] == 0.75 and "eval_segm_AP_disc" in logged


def test_mask_matches_reproduce_coco_segm_ap_and_the_drop_gets_an_interval(tmp_path):
    from pipeline.metrics.stability import _model_aps, counts, prepare

    coco = write_dataset(tmp_path, num_images=6, size=96, seed=2, shapes=3)
    dets = _perturbed(coco)
    p = prepare(segm.mask_matches(coco, dets))
    ap = _model_aps(p, counts(p), np.ones((1, p.n_images)))[0][0, 0]
    assert ap == pytest.approx(segm.segm_metrics(coco, copy.deepcopy(dets))["AP"], abs=1e-9)
    # the same detections: a drop of 0 on every resample; perfect masks as champion: a positive drop
    same = segm.paired_drop(coco, dets, dets, resamples=50, seed=1)
    assert same["drop"] == 0.0 and same["ci"] == [0.0, 0.0]
    worse = segm.paired_drop(coco, dets, gt_results(coco), resamples=50, seed=1)
    assert worse["drop"] == pytest.approx(1.0 - ap) and worse["ci"][0] > 0 and worse["ci"][0] <= worse["ci"][1]
