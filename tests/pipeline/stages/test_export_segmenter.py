"""The export stage for a Mask R-CNN (maskrcnn_mobilenet_v3_large_fpn): the extra `masks` output, the mask
checks (pasted masks vs PyTorch, mask AP parity as a Failure), and the promote / rollback path with the masks
output in Triton's config. A sibling of test_export.py's test_every_detector_ships_export_promote_and_rollback."""
from __future__ import annotations

import pytest
import torch

from pipeline import cli
from pipeline.config import load_config
from pipeline.context import RunContext
from tests.helpers import last_result, only_commands, stage_argv
from tests.segmentation_data import CATEGORIES, write_dataset

MODEL = "maskrcnn_mobilenet_v3_large_fpn"
SIZE = 64
SETS = ["export.benchmark_repeats=2", "export.benchmark_warmup=1", "export.benchmark_batches=[1, 2]",
        "export.verify_images=3"]


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    """A segmentation dataset (noisy background, so an untrained model's scores are spread, not tied) and a
    Mask R-CNN with representative random weights."""
    from pipeline.export.bench import representative
    from pipeline.training.models import save_trained

    root = tmp_path_factory.mktemp("export_segm")
    write_dataset(root / "dataset", num_images=6, size=96, seed=4, val=4)
    model = representative(MODEL, len(CATEGORIES), SIZE)
    model.rpn._pre_nms_top_n["testing"] = model.rpn._post_nms_top_n["testing"] = 150  # a quick eager reference
    with torch.no_grad():  # a background bias: a few detections per image, not 100 (each runs the mask head)
        model.roi_heads.box_predictor.cls_score.bias[0] = 3.0
    save_trained(root / "model.pt", model, MODEL, SIZE, CATEGORIES)
    blob = torch.load(root / "model.pt", weights_only=False)
    return {"root": root, "model_pt": root / "model.pt", "data": root / "dataset", "blob": blob,
            "tracking": f"mlflow.tracking_uri=sqlite:///{root / 'mlflow.db'}"}


def stage_inputs(run_id, shared, sets=()):
    cfg = load_config(None, [*SETS, shared["tracking"], *sets]).resolved()
    RunContext.create(run_id, "ingest", cfg).publish_dir(shared["data"], "dataset")
    RunContext.create(run_id, "train", cfg).publish(shared["model_pt"], "model.pt")
    return cfg


def argv(run_id, shared, sets=()):
    return stage_argv("export", run_id, shared["tracking"], *SETS, *sets)


@pytest.mark.slow
def test_mask_rcnn_ships_export_promote_and_rollback(shared, tmp_path, monkeypatch, upstream, capsys):
    from pipeline.stages import promote
    from pipeline.triton.config import parse
    from pipeline.triton.repository import ModelRepository

    only_commands(monkeypatch, "export")
    cfg = stage_inputs("seg-night-1", shared)
    assert cli.main(argv("seg-night-1", shared)) == 0
    ctx = RunContext.create("seg-night-1", "export", cfg)
    result = ctx.store.get_json(ctx.key("result.json"))
    assert result["status"] == "ok" and result["parity"]["map_drop"] <= 0.001 and result["output_match"] >= 0.98
    assert result["segm_parity"]["segm_ap_drop"] <= cfg.export.parity_max_segm_ap_drop
    assert result["mask_agreement"] >= 0.98
    report = ctx.store.get_json(ctx.key("report.json"))
    io = report["io"]
    assert [(o["name"], o["dtype"], o["shape"]) for o in io["outputs"]] == [
        ("boxes", "float32", [-1, 100, 4]), ("scores", "float32", [-1, 100]), ("labels", "int64", [-1, 100]),
        ("masks", "float32", [-1, 100, 28, 28])]
    masks = report["checks"]["masks"]
    assert masks["matched"] > 0 and masks["passed"] and masks["worst_mean_prob_abs_diff"] < 1e-3
    assert report["checks"]["segm_parity"]["passed"] is True
    assert set(report["checks"]["segm_parity"]["per_class_segm_ap_drop"]) == {"disc", "square"}
    assert report["checks"]["outputs"]["batch_vs_single"]["match_fraction"] == 1.0
    assert ctx.fetch_json("export", "io.json")["outputs"][3]["name"] == "masks"
    from pipeline import tracking

    logged = tracking.find_run(cfg, "seg-night-1").data.metrics
    assert logged["export_parity_segm_ap_drop"] == result["segm_parity"]["segm_ap_drop"]
    assert logged["export_mask_agreement"] == result["mask_agreement"]

    exported = tmp_path / "exported"
    for file in ("model.onnx", "labels.txt", "io.json"):
        ctx.fetch("export", file, exported / file)
    assert (exported / "labels.txt").read_text() == "disc\nsquare\n"
    cfg = load_config(None, [shared["tracking"], f"promote.triton_repo={tmp_path / 'triton'}",
                             f"store.uri={cfg.store.uri}"]).resolved()
    for night in ("seg-night-a", "seg-night-b"):
        upstream(cfg, night, exported)
        promote.run(cfg, RunContext.create(night, "promote", cfg))
    repo = ModelRepository(cfg.promote.triton_repo)
    name = cfg.promote.model_name
    assert repo.served_version(name) == 2
    config = parse((tmp_path / "triton" / name / "config.pbtxt").read_text())  # Triton's own schema
    assert [o.name for o in config.output] == ["boxes", "scores", "labels", "masks"]
    assert list(config.output[3].dims) == [100, 28, 28] and config.output[2].label_filename == "labels.txt"
    only_commands(monkeypatch, "rollback")
    capsys.readouterr()
    assert cli.main(["rollback", "--model", name, "--set", shared["tracking"],
                     "--set", f"promote.triton_repo={cfg.promote.triton_repo}"]) == 0
    assert last_result(capsys)["status"] == "rolled_back" and repo.served_version(name) == 1


@pytest.mark.slow
def test_mask_ap_parity_failure_is_a_gate_failure(shared, monkeypatch):
    only_commands(monkeypatch, "export")
    cfg = stage_inputs("seg-night-2", shared)
    # no drop can be below -1: the mask parity must refuse (exit 4), listed as its own failure
    assert cli.main(argv("seg-night-2", shared, ["export.parity_max_segm_ap_drop=-1"])) == 4
    result = RunContext.create("seg-night-2", "export", cfg).result_of("export")
    assert [f["check"] for f in result["failures"]] == ["segm_parity"]
    assert result["failures"][0]["message"].startswith("segm_parity: val mask AP drop, PyTorch - ONNX Runtime = ")
