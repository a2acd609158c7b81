"""The run report of a segmentation run: mask metrics beside the box metrics (overall and per class, against
the champion's masks), the masks laid over the sample images, the export's mask checks and the chat line."""
from __future__ import annotations

import copy
import io

import numpy as np
from PIL import Image

from pipeline import gates
from pipeline.metrics.coco import report
from pipeline.metrics.segm import segm_metrics
from pipeline.report.build import gather
from pipeline.report.render import render_html, render_markdown
from pipeline.report.samples import ImageScore, draw
from tests.html_page import parse
from tests.pipeline.report.fake_runs import config
from tests.segmentation_data import gt_results, write_dataset


def table_with(page, first: str) -> list[list[str]]:
    return next(t for t in page.tables if t and t[0] and t[0][0] == first)


def make_segm_run(store, tmp_path) -> dict:
    """ingest, evaluate, gate and export of a segmentation run as the stages leave them (masks of the ground
    truth, one of them shifted, as the challenger; the exact ground truth as the champion)."""
    coco = write_dataset(tmp_path / "dataset", num_images=4, size=64, seed=7, val=2)
    val_ids = {im["id"] for im in coco["images"] if im["split"] == "val"}
    val = dict(coco, images=[im for im in coco["images"] if im["id"] in val_ids],
               annotations=[a for a in coco["annotations"] if a["image_id"] in val_ids])
    champ_dets = gt_results(val)
    dets = copy.deepcopy(champ_dets)
    dets[0]["segmentation"] = gt_results(val)[-1]["segmentation"] if len(dets) > 1 else dets[0]["segmentation"]
    base = "runs/r-segm"
    store.put_dir(tmp_path / "dataset", f"{base}/ingest/dataset")
    metrics, _ = report(val, dets, "bbox", 0.3)
    champion, _ = report(val, champ_dets, "bbox", 0.3)
    metrics.update(split="val", images=len(val["images"]), segm=segm_metrics(val, dets),
                   champion=dict(champion, version="2", segm=segm_metrics(val, champ_dets)))
    store.put_json(metrics, f"{base}/evaluate/metrics.json")
    store.put_json(dets, f"{base}/evaluate/detections.json")
    store.put_json({"status": "ok", "AP": metrics["AP"]}, f"{base}/evaluate/result.json")
    thresholds = {"map_min": 0.0, "map50_min": 0.0, "max_regression": 1.0, "segm_map_min": 0.0,
                  "segm_map50_min": 0.0, "segm_max_regression": 1.0}
    checks, summary = gates.check(metrics, thresholds)
    store.put_json({"status": "ok", "passed": True, "checks": checks, "champion": summary, "overrides": {},
                    "thresholds": thresholds, "deferred": []}, f"{base}/gate/result.json")
    store.put_json({"format": "onnx", "opset": 17, "model": "maskrcnn_mobilenet_v3_large_fpn", "image_size": 64,
                    "checks": {"masks": {"matched": 7, "agree": 7, "agree_fraction": 1.0, "mask_iou_min": 0.9,
                                         "passed": True},
                               "segm_parity": {"pytorch": {"AP": 0.41}, "onnxruntime": {"AP": 0.41},
                                               "segm_ap_drop": 0.0, "max_segm_ap_drop": 0.001, "passed": True}}},
                   f"{base}/export/report.json")
    return metrics


def test_mask_metrics_beside_box_metrics_and_masks_on_the_samples(store, tmp_path):
    metrics = make_segm_run(store, tmp_path)
    data = gather(config(store), "r-segm", store)
    page = parse(render_html(data))
    stats = table_with(page, "stat")
    assert stats[0] == ["stat", "challenger", "champion", "delta", "mask: challenger", "mask: champion",
                        "mask: delta"]
    ap = next(row for row in stats if row[0] == "AP")
    segm, champ = metrics["segm"]["AP"], metrics["champion"]["segm"]["AP"]
    assert ap[4:] == [f"{segm:.3f}", f"{champ:.3f}", f"{segm - champ:+.3f}"] and segm < champ == 1.0
    classes = table_with(page, "class")
    assert classes[0][-3:] == ["mask AP", "champion mask AP", "delta"]
    disc = next(row for row in classes if row[0] == "disc")
    assert disc[-3] == f"{metrics['segm']['per_class']['disc']['AP']:.3f}"
    assert "one colour per class" in page.section("samples")
    performance = page.section("performance")
    assert "Masks vs PyTorch" in performance and "Mask AP parity" in performance
    assert "segm_map_min" in page.section("gates")
    text = render_markdown(data, "file:///report.html")
    assert f"mask mAP {segm:.3f} ({segm - champ:+.3f} vs champion)" in text


def test_draw_lays_each_mask_over_the_image_in_its_class_colour(tmp_path):
    coco = write_dataset(tmp_path, num_images=1, size=64, seed=3, val=1)
    raw = (tmp_path / "images" / coco["images"][0]["file_name"]).read_bytes()
    dets = gt_results(coco)
    boxes_only = [{k: v for k, v in d.items() if k != "segmentation"} for d in dets]

    def png(detections):
        sample = ImageScore(coco["images"][0], 1.0, len(dets), 0, 0, coco["annotations"], detections)
        return np.asarray(Image.open(io.BytesIO(draw(raw, sample, {1: "disc", 2: "square"}))).convert("RGB"))

    plain, masked = png(boxes_only), png(dets)
    assert plain.shape == masked.shape == (256, 256, 3)  # scaled up to DISPLAY_SIDE
    changed = (plain != masked).any(-1)
    # the overlay covers the masks' area (scaled 4x) and nothing far outside it
    area = sum(a["area"] for a in coco["annotations"]) * 16
    assert 0.5 * area < changed.sum() < 1.5 * area
