"""The evaluate stage on a tiny segmentation dataset: box metrics as for detection, plus `segm` (mask AP), the
champion's too, and the mask metrics in MLflow."""
from __future__ import annotations

import pytest
import torch

from pipeline.config import load_config
from pipeline.context import RunContext
from pipeline.metrics.coco import STAT_KEYS
from pipeline.stages import evaluate
from pipeline.training.models import build_model
from tests.helpers import save_model_pt
from tests.pipeline.stages.test_evaluate import register_champion
from tests.segmentation_data import CATEGORIES, write_dataset

MODEL = "maskrcnn_mobilenet_v3_large_fpn"
SIZE = 64


def test_segmentation_run_adds_mask_metrics_for_challenger_and_champion(tmp_path):
    cfg = load_config(None, ["evaluate.batch_size=4", "evaluate.device=cpu", "evaluate.score_threshold=0.0",
                             f"mlflow.tracking_uri=sqlite:///{tmp_path / 'mlflow.db'}",
                             "promote.model_name=segm_champion"]).resolved()
    write_dataset(tmp_path / "dataset", num_images=4, size=96, seed=5)
    torch.manual_seed(0)
    model = build_model(MODEL, len(CATEGORIES) + 1, SIZE)
    model_pt = save_model_pt(tmp_path / "model.pt", model, MODEL, SIZE, categories=CATEGORIES)
    RunContext.create("seg-1", "ingest", cfg).publish_dir(tmp_path / "dataset", "dataset")
    RunContext.create("seg-1", "train", cfg).publish(model_pt, "model.pt")
    mv = register_champion(cfg, model_pt)

    ctx = RunContext.create("seg-1", "evaluate", cfg)
    result = evaluate.run(cfg, ctx)
    metrics = ctx.fetch_json("evaluate", "metrics.json")
    # the box metrics stay as a detection run writes them
    assert set(STAT_KEYS) <= set(metrics) and metrics.get("iou_type") == "bbox" and "stability" in metrics
    assert metrics["task"] == "segmentation"  # the gate judges the mask gates on it
    segm = metrics["segm"]
    assert segm["iou_type"] == "segm" and set(STAT_KEYS) <= set(segm) and set(segm["per_class"]) == {"disc", "square"}
    # the champion is the same model: the same mask metrics
    assert metrics["champion"]["version"] == str(mv.version)
    assert metrics["champion"]["segm"] == {k: v for k, v in segm.items() if k != "champion_drop"}
    # ...and the mask AP drop against it is 0 on every resample
    assert segm["champion_drop"]["drop"] == 0.0 and segm["champion_drop"]["ci"] == [0.0, 0.0]
    assert segm["champion_drop"]["resamples"] == cfg.evaluate.bootstrap_resamples
    assert result["segm"] == {"AP": segm["AP"], "AP50": segm["AP50"], "champion_AP": segm["AP"]}
    detections = ctx.fetch_json("evaluate", "detections.json")
    assert all(d["segmentation"]["size"] == [96, 96] for d in detections)

    from pipeline import tracking

    logged = tracking.find_run(cfg, "seg-1").data.metrics
    if segm["AP"] is not None:
        assert logged["eval_segm_AP"] == pytest.approx(segm["AP"])
        assert logged["eval_champion_segm_AP"] == pytest.approx(segm["AP"])
    assert "eval_segm_AR100" in logged or segm["AR100"] is None
