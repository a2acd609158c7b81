"""The evaluate stage on a tiny canonical dataset with an untrained model, with and without a champion."""
from __future__ import annotations

import json
import shutil

import pytest
import torch

from pipeline import cli
from pipeline.config import load_config
from pipeline.context import RunContext
from pipeline.datasets.synthetic import generate
from pipeline.errors import InputRejected
from pipeline.metrics.coco import STAT_KEYS
from pipeline.stages import evaluate
from pipeline.training.models import build_model
from tests.helpers import last_result, only_commands, save_model_pt

MODEL = "fasterrcnn_mobilenet_v3_large_320_fpn"
SIZE = 64
SETS = ["evaluate.batch_size=4", "evaluate.device=cpu", "evaluate.score_threshold=0.0"]


@pytest.fixture
def only_evaluate(monkeypatch):
    only_commands(monkeypatch, "evaluate")



@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    """Built once per module: the model file, the dataset, and a sqlite MLflow (its schema takes seconds)."""
    root = tmp_path_factory.mktemp("evaluate")
    torch.manual_seed(0)
    model = build_model(MODEL, 4, SIZE)
    save_model_pt(root / "model.pt", model, MODEL, SIZE)
    data = root / "dataset"
    generate(data, num_images=10, image_size=SIZE, seed=3, min_size=12, max_size=28)
    return {"root": root, "model_pt": root / "model.pt", "data": data,
            "tracking": f"mlflow.tracking_uri=sqlite:///{root / 'mlflow.db'}"}


def stage_inputs(run_id, shared, tmp_path, val_images=5, sets=()):
    """Publish train/model.pt and ingest/dataset/ for `run_id` as the upstream stages would."""
    cfg = load_config(None, [*SETS, shared["tracking"], *sets]).resolved()
    data = tmp_path / "dataset"
    shutil.copytree(shared["data"], data)
    coco = json.loads((data / "annotations.json").read_text())
    for i, img in enumerate(coco["images"]):
        img["split"] = "val" if i < val_images else "train"
        img["group"] = img["file_name"]
    (data / "annotations.json").write_text(json.dumps(coco))
    RunContext.create(run_id, "ingest", cfg).publish_dir(data, "dataset")
    RunContext.create(run_id, "train", cfg).publish(shared["model_pt"], "model.pt")
    return cfg


def register_champion(cfg, model_pt):
    """What the promote stage does: a model version from runs:/<run>/model, behind the alias."""
    import mlflow

    from pipeline import tracking

    tracking.setup(cfg)
    client = mlflow.MlflowClient()
    run = client.create_run(tracking.setup(cfg), run_name="earlier-night")
    client.log_artifact(run.info.run_id, str(model_pt), artifact_path="model")
    client.set_terminated(run.info.run_id)
    client.create_registered_model(cfg.promote.model_name)
    mv = client.create_model_version(cfg.promote.model_name, f"runs:/{run.info.run_id}/model", run.info.run_id)
    client.set_registered_model_alias(cfg.promote.model_name, cfg.promote.alias, mv.version)
    return mv




@pytest.mark.slow
def test_first_run_without_champion(shared, tmp_path, only_evaluate, capsys):
    cfg = stage_inputs("eval-1", shared, tmp_path)
    argv = ["evaluate", "--run-id", "eval-1"] + [a for s in [*SETS, shared["tracking"]] for a in ("--set", s)]
    assert cli.main(argv) == 0
    result = last_result(capsys)
    assert result["status"] == "ok" and result["images"] == 5 and result["split"] == "val"
    assert result["champion"] is None

    ctx = RunContext.create("eval-1", "evaluate", cfg)
    metrics = ctx.fetch_json("evaluate", "metrics.json")
    assert set(STAT_KEYS) <= set(metrics) and metrics["champion"] is None
    assert metrics["AP"] == result["AP"] and 0.0 <= metrics["AP"] <= 1.0
    assert set(metrics["per_class"]) == {"circle", "square", "triangle"}
    gt_boxes = sum(row["support"] for row in metrics["per_class"].values())
    op = metrics["operating_point"]
    assert op["score_threshold"] == 0.0 and op["tp"] + op["fn"] == gt_boxes
    assert metrics["confusion_matrix"]["labels"] == ["circle", "square", "triangle", "background"]
    detections = ctx.fetch_json("evaluate", "detections.json")
    assert isinstance(detections, list) and len(detections) == result["detections"]
    val_ids = {im["id"] for im in json.loads((tmp_path / "dataset" / "annotations.json").read_text())["images"]
               if im["split"] == "val"}
    assert {d["image_id"] for d in detections} <= val_ids
    for png in ("pr_curve.png", "confusion_matrix.png"):
        assert ctx.store.get_bytes(ctx.key(png))[:8] == b"\x89PNG\r\n\x1a\n"
    # the stability suite: slices of the challenger alone, no drop or interval without a champion
    stability = metrics["stability"]
    assert {"size:small", "size:medium", "size:large"} <= set(stability["slices"]) and stability["resamples"] == 0
    assert sum(stability["slices"][f"size:{s}"]["support"] for s in ("small", "medium", "large")) == gt_boxes
    assert stability["AP"] == {"challenger": metrics["AP"]} and "drop" not in stability["slices"]["size:large"]
    assert result["stability"]["slices"] == len(stability["slices"]) and result["stability"]["ci"] is None

    from pipeline import tracking

    mlrun = tracking.find_run(cfg, "eval-1")
    assert mlrun.data.metrics["eval_AP"] == pytest.approx(metrics["AP"])
    assert "eval_AP50" in mlrun.data.metrics and "eval_champion_AP" not in mlrun.data.metrics
    assert mlrun.data.tags["nightshift.champion_version"] == "none"
    import mlflow

    logged = {a.path for a in mlflow.MlflowClient().list_artifacts(mlrun.info.run_id, "evaluate")}
    assert logged == {"evaluate/metrics.json", "evaluate/pr_curve.png", "evaluate/confusion_matrix.png"}


def test_champion_is_scored_on_the_same_split(shared, tmp_path):
    # its own registered model name: the shared MLflow must keep "no champion" for the other tests
    cfg = stage_inputs("eval-2", shared, tmp_path, sets=["promote.model_name=champion_test"])
    mv = register_champion(cfg, shared["model_pt"])
    ctx = RunContext.create("eval-2", "evaluate", cfg)
    result = evaluate.run(cfg, ctx)
    # the champion here is the very same model, so it must score exactly the same
    assert result["champion"] == {"version": str(mv.version), "AP": result["AP"], "AP50": result["AP50"]}
    metrics = ctx.fetch_json("evaluate", "metrics.json")
    assert metrics["champion"]["version"] == str(mv.version) and metrics["champion"]["per_class"] == metrics["per_class"]
    assert ctx.fetch_json("evaluate", "champion_detections.json") == ctx.fetch_json("evaluate", "detections.json")
    # the same model: every resample's drop is 0, so the interval is [0, 0]
    stability = metrics["stability"]
    assert stability["AP"]["drop"] == 0.0 and stability["AP"]["ci"] == [0.0, 0.0]
    assert stability["resamples"] == cfg.evaluate.bootstrap_resamples and result["stability"]["ci"] == [0.0, 0.0]


def test_split_without_images_is_rejected(shared, tmp_path):
    cfg = stage_inputs("eval-3", shared, tmp_path, val_images=0)
    with pytest.raises(InputRejected, match="no image is in the val split"):
        evaluate.run(cfg, RunContext.create("eval-3", "evaluate", cfg))


def test_mlflow_metric_names_are_sanitised():
    metrics = {k: 0.5 for k in STAT_KEYS}
    metrics.update(APl=None, operating_point={"precision": 0.2, "recall": None, "f1": None},
                   per_class={"traffic light (red)": {"AP": 0.1, "AP50": None}}, champion=None)
    out = evaluate.mlflow_metrics(metrics)
    assert out["eval_AP_traffic light _red_"] == 0.1 and "eval_APl" not in out and "eval_recall" not in out


def test_model_label_table_wins_and_unknown_categories_are_dropped(shared, tmp_path):
    """A champion trained on another category list: its own label_to_category maps its labels, and classes the
    dataset no longer has are left out instead of failing the evaluation."""
    from pipeline.datasets.canonical import load_coco, split_coco

    cfg = stage_inputs("eval-4", shared, tmp_path)
    blob = torch.load(shared["model_pt"], weights_only=False)
    blob["label_to_category"] = [3, 99, 99]
    torch.save(blob, tmp_path / "old.pt")
    gt = split_coco(load_coco(tmp_path / "dataset"), "val")
    scored = evaluate.score_model(tmp_path / "old.pt", tmp_path / "dataset", gt, cfg, "old champion")
    assert scored.detections and {d["category_id"] for d in scored.detections} == {3}
    assert scored.metrics["operating_point"]["per_class"]["circle"]["fp"] == 0


def test_robustness_under_corruptions_against_clean_and_the_champion(shared, tmp_path):
    """Each configured corruption is a prediction pass per model on the same seeded pixels: the same model as
    champion scores exactly the same under each, so only the drop against clean data can be non-zero."""
    cfg = stage_inputs("eval-robust", shared, tmp_path, sets=["promote.model_name=robust_test",
                                                              "evaluate.corruptions=[gaussian_noise, jpeg]",
                                                              "evaluate.corruption_severities=[2]"])
    register_champion(cfg, shared["model_pt"])
    ctx = RunContext.create("eval-robust", "evaluate", cfg)
    result = evaluate.run(cfg, ctx)
    metrics = ctx.fetch_json("evaluate", "metrics.json")
    section = metrics["robustness"]
    assert list(section["corruptions"]) == ["gaussian_noise@2", "jpeg@2"]
    assert section["clean"] == metrics["AP"]
    assert section["confidence"] == 0.95
    for row in section["corruptions"].values():
        assert row["champion"] == row["challenger"] and row["drop_vs_champion"] == 0.0
        assert row["ci"] == [0.0, 0.0]  # the paired bootstrap of a model against itself
        assert row["drop_vs_clean"] == pytest.approx(metrics["AP"] - row["challenger"])
    assert result["robustness"] == {k: v["challenger"] for k, v in section["corruptions"].items()}


def test_no_robustness_section_without_corruptions(shared, tmp_path):
    cfg = stage_inputs("eval-clean", shared, tmp_path)
    assert evaluate.robustness(evaluate.Scored({"AP": 0.5}, None, []), None) is None
    assert cfg.evaluate.corruptions == ()
