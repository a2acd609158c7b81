"""A classifier through train -> evaluate -> gate on a tiny generated classification dataset, through the CLI;
the champion comparison, its paired bootstrap, and the refusals of mismatched data and models."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from pipeline import cli
from pipeline.config import load_config
from pipeline.context import RunContext
from pipeline.errors import InputRejected
from pipeline.metrics import classification_run
from pipeline.stages import evaluate
from pipeline.metrics.classification_run import ScoredClassifier, paired_bootstrap
from tests.helpers import last_result, only_commands

SIZE = 32
CLASSES = ("red", "green", "blue")
TRAIN = ["train.model=resnet18", "train.recipe=none", "train.nproc_per_node=1", f"train.image_size={SIZE}",
         "train.batch_size=8", "train.epochs=2", "train.lr=3e-3", "train.warmup_steps=2", "train.threads_per_rank=1",
         "train.seed=3", "train.eval_every_epochs=1", "train.bn_calibration_images=24"]
EVAL = ["evaluate.batch_size=16", "evaluate.device=cpu", "evaluate.bootstrap_resamples=200"]

pytestmark = pytest.mark.usefixtures("keep_torch_settings")


def make_classification_dataset(root, per_class=(8, 4, 2), seed=0):
    """A canonical classification dataset: 32 px images whose dominant colour channel is the class, with noise
    and a random grey square; per class `per_class` images in train, val, test."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True)
    images, annotations = [], []
    for c, name in enumerate(CLASSES):
        for split, count in zip(("train", "val", "test"), per_class):
            for _ in range(count):
                pixels = rng.integers(0, 90, size=(SIZE, SIZE, 3))
                pixels[..., c] += 140
                x, y = rng.integers(0, SIZE - 10, size=2)
                pixels[y:y + 8, x:x + 8] = 128
                i = len(images) + 1
                file_name = f"{name}_{i:03d}.png"
                Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).save(root / "images" / file_name)
                images.append({"id": i, "file_name": file_name, "width": SIZE, "height": SIZE, "split": split,
                               "group": file_name, "sha1": f"{i:040x}"})
                annotations.append({"id": i, "image_id": i, "category_id": c + 1})
    coco = {"task": "classification", "images": images, "annotations": annotations,
            "categories": [{"id": c + 1, "name": n} for c, n in enumerate(CLASSES)]}
    (root / "annotations.json").write_text(json.dumps(coco))
    return root


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    root = tmp_path_factory.mktemp("classify")
    make_classification_dataset(root / "dataset")
    tracking = [f"mlflow.tracking_uri=sqlite:///{root / 'mlflow.db'}",
                f"mlflow.artifact_root={(root / 'mlartifacts').as_uri()}"]
    return {"root": root, "data": root / "dataset", "sets": tracking}


def publish(run_id, shared, sets=()):
    cfg = load_config(None, [*shared["sets"], *sets]).resolved()
    ctx = RunContext.create(run_id, "ingest", cfg)
    ctx.publish_dir(shared["data"], "dataset")
    ctx.store.put_json({"status": "ok", "dataset_hash": "cls123"}, ctx.key("result.json", "snapshot"))
    return cfg


def stage(name, run_id, shared, *sets):
    argv = [name, "--run-id", run_id]
    for s in [*shared["sets"], *TRAIN, *EVAL, *sets]:
        argv += ["--set", s]
    return cli.main(argv)


def test_train_evaluate_gate_a_classifier(shared, monkeypatch, capsys):
    """Two epochs of resnet18 at 32 px: val_accuracy is logged per epoch, model.pt is a classifier, evaluate
    writes accuracy / top-2 / macro F1 / per class / confusion matrix, and the gate judges accuracy."""
    only_commands(monkeypatch, "train", "evaluate", "gate")
    cfg = publish("cls-1", shared)
    assert stage("train", "cls-1", shared, "train.aug_iou_crop=0.5", "train.label_smoothing=0.1") == 0
    out = capsys.readouterr()
    from tests.helpers import result_line

    trained = result_line(out.out)
    assert trained["task"] == "classification" and trained["epochs"] == 2 and trained["anchor_scale"] == 1.0
    assert len(trained["val_accuracy"]) == 2 and all(0.0 <= a <= 1.0 for a in trained["val_accuracy"])
    assert trained["val_AP"] == [] and trained["best_val_AP"] is None
    assert "train.aug_iou_crop=0.5 does not apply to classification" in out.err
    assert "val accuracy" in out.err
    blob = torch.load(RunContext.create("cls-1", "train", cfg).store.local_path("runs/cls-1/train/model.pt"),
                      weights_only=False)
    assert blob["task"] == "classification" and blob["num_classes"] == 3
    assert [c["name"] for c in blob["categories"]] == list(CLASSES)

    from pipeline import tracking

    metrics_logged = tracking.find_run(cfg, "cls-1").data.metrics
    assert "val_accuracy" in metrics_logged and "val_AP" not in metrics_logged

    assert stage("evaluate", "cls-1", shared) == 0
    result = last_result(capsys)
    assert result["task"] == "classification" and result["images"] == 12 and result["champion"] is None
    ctx = RunContext.create("cls-1", "evaluate", cfg)
    metrics = ctx.fetch_json("evaluate", "metrics.json")
    assert metrics["task"] == "classification" and metrics["accuracy"] == result["accuracy"]
    assert set(metrics["top_k"]) == {"2"} and metrics["classes"] == list(CLASSES)
    assert sum(row["support"] for row in metrics["per_class"].values()) == 12
    matrix = np.array(metrics["confusion_matrix"]["matrix"])
    assert matrix.shape == (3, 3) and matrix.sum() == 12
    assert np.trace(matrix) / 12 == pytest.approx(metrics["accuracy"])
    predictions = ctx.fetch_json("evaluate", "predictions.json")
    assert len(predictions) == 12
    assert np.mean([p["true_category_id"] == p["predicted_category_id"] for p in predictions]) == \
        pytest.approx(metrics["accuracy"])
    assert ctx.store.get_bytes(ctx.key("confusion_matrix.png"))[:8] == b"\x89PNG\r\n\x1a\n"
    assert tracking.find_run(cfg, "cls-1").data.metrics["eval_accuracy"] == pytest.approx(metrics["accuracy"])

    # the gate: accuracy_min is judged, a box gate set by the user is reported as not applicable
    assert stage("gate", "cls-1", shared, "gates.map_min=0.3", "gates.accuracy_min=0.0") == 0
    gate = RunContext.create("cls-1", "gate", cfg).result_of("gate").to_dict()
    assert {c["name"] for c in gate["checks"]} == {"accuracy_min", "macro_f1_min"}
    assert gate["not_applicable"] == [{"name": "map_min", "threshold": 0.3,
                                       "note": "not applicable to classification"}]
    assert "map_min = 0.3 is not applicable to classification" in capsys.readouterr().err

    # the run report speaks accuracy: its stats, the per-class recall / F1 table, no box samples or PR curves
    from pipeline.report import build_report

    keys = build_report(cfg, "cls-1", ctx.store, log_to_mlflow=False)
    html = ctx.store.get_bytes(keys["html"]).decode()
    for expected in ("<td>accuracy</td>", "<td>top-2 accuracy</td>", "<td>macro F1</td>", "<th>champion recall</th>",
                     "Not applicable: a classifier is judged on accuracy", "evaluate/predictions.json"):
        assert expected in html, expected
    assert "<td>AP50</td>" not in html and "GT boxes" not in html
    assert f"accuracy {metrics['accuracy']:.3f}, macro F1 {metrics['macro_f1']:.3f} (no champion yet)" in keys["text"]

    assert stage("gate", "cls-1", shared, "gates.accuracy_min=1.01") == 4
    assert "accuracy_min: accuracy = " in capsys.readouterr().err


def test_champion_is_scored_on_the_same_images_with_a_paired_bootstrap(shared, tmp_path):
    """The same classifier as champion: every drop is 0 with interval [0, 0], and the gate's max_regression is
    judged on the accuracy drop."""
    from pipeline import gates
    from tests.pipeline.stages.test_evaluate import register_champion

    sets = ["promote.model_name=cls_champion", *EVAL]
    cfg = publish("cls-2", shared, sets)
    torch.manual_seed(0)
    from pipeline.training.models import build_model, save_trained

    model = build_model("resnet18", 3, SIZE)
    save_trained(tmp_path / "model.pt", model, "resnet18", SIZE,
                 [{"id": c + 1, "name": n} for c, n in enumerate(CLASSES)])
    RunContext.create("cls-2", "train", cfg).publish(tmp_path / "model.pt", "model.pt")
    mv = register_champion(cfg, tmp_path / "model.pt")
    result = evaluate.run(cfg, RunContext.create("cls-2", "evaluate", cfg))
    assert result["champion"]["version"] == str(mv.version)
    assert result["champion"]["accuracy"] == result["accuracy"]
    metrics = RunContext.create("cls-2", "evaluate", cfg).fetch_json("evaluate", "metrics.json")
    assert metrics["stability"]["accuracy"]["drop"] == 0.0 and metrics["stability"]["accuracy"]["ci"] == [0.0, 0.0]
    assert set(metrics["stability"]["per_class"]) == set(CLASSES)
    checks, summary = gates.check(metrics, {"max_regression": 0.02, "per_class_max_regression": 0.05,
                                            "accuracy_min": 0.0}, min_support=4, regression_test="bootstrap")
    names = [c["name"] for c in checks]
    assert names == ["accuracy_min", "max_regression", *["per_class_max_regression"] * 3]
    assert all(c["passed"] for c in checks) and checks[1]["metric"] == "accuracy drop vs champion"
    assert checks[1]["test"] == "bootstrap" and summary["version"] == str(mv.version)


def test_paired_bootstrap_interval_covers_a_real_drop():
    """Challenger right on 70 of 100 images, champion on 90: the drop is 0.2 and its paired interval excludes
    0; per-class recall drops come with their support."""
    labels = np.array([0] * 50 + [1] * 50)
    right = np.eye(2)[labels] * 5.0
    wrong = np.eye(2)[1 - labels] * 5.0
    ours = np.where(np.arange(100)[:, None] < 70, right, wrong)
    theirs = np.where(np.arange(100)[:, None] < 90, right, wrong)
    out = paired_bootstrap(ScoredClassifier({}, ours, labels, []), ScoredClassifier({}, theirs, labels, []),
                           ["a", "b"], resamples=500, confidence=0.95, seed=0)
    acc = out["accuracy"]
    assert acc["drop"] == pytest.approx(0.2) and 0.0 < acc["ci"][0] < 0.2 < acc["ci"][1]
    assert out["per_class"]["a"] == {"challenger": 1.0, "champion": 1.0, "drop": 0.0, "support": 50,
                                     "ci": [0.0, 0.0]}
    b = out["per_class"]["b"]
    assert b["drop"] == pytest.approx(0.4) and b["support"] == 50 and b["ci"][0] > 0
    assert paired_bootstrap(ScoredClassifier({}, ours, labels, []), ScoredClassifier({}, theirs, labels, []),
                            ["a", "b"], resamples=0, confidence=0.95, seed=0)["accuracy"]["ci"] is None


def test_a_detector_model_on_a_classification_dataset_is_rejected(shared, tmp_path):
    from pipeline.training.models import build_model, save_trained

    cfg = publish("cls-3", shared, EVAL)
    save_trained(tmp_path / "model.pt", build_model("ssdlite320_mobilenet_v3_large", 4, 64),
                 "ssdlite320_mobilenet_v3_large", 64, [{"id": c + 1, "name": n} for c, n in enumerate(CLASSES)])
    RunContext.create("cls-3", "train", cfg).publish(tmp_path / "model.pt", "model.pt")
    with pytest.raises(InputRejected, match="model.pt: task: challenger is a detection model"):
        evaluate.run(cfg, RunContext.create("cls-3", "evaluate", cfg))


def test_train_refuses_a_model_of_another_task_naming_the_file_and_field(shared, monkeypatch, capsys):
    only_commands(monkeypatch, "train")
    publish("cls-4", shared)
    assert stage("train", "cls-4", shared, "train.model=ssdlite320_mobilenet_v3_large") == 3
    error = last_result(capsys)["error"]
    assert "annotations.json" in error and '"task" (classification) vs train.model' in error
    assert "ssdlite320_mobilenet_v3_large' is a detection model" in error


def test_top_k_is_5_above_5_classes_else_2():
    assert classification_run.top_k_for(6) == 5 and classification_run.top_k_for(5) == 2


def _weights(cfg, run_id):
    path = RunContext.create(run_id, "train", cfg).store.local_path(f"runs/{run_id}/train/model.pt")
    return torch.load(path, map_location="cpu", weights_only=False)["state_dict"]


def test_a_classifier_resumes_mid_epoch_exactly_with_ema(shared, monkeypatch, capsys):
    """The detectors' machinery holds for a classifier: max_steps stops mid-epoch with a checkpoint, the next
    run continues from that batch, and the (EMA, BN-recalibrated) weights equal an uninterrupted run's."""
    only_commands(monkeypatch, "train")
    cfg = publish("cls-straight", shared)
    publish("cls-halves", shared)
    sets = ("train.ema_decay=0.9", "train.aug_photometric=0.5", "train.aug_scale_jitter=[0.8,1.2]")
    assert stage("train", "cls-straight", shared, *sets) == 0
    assert stage("train", "cls-halves", shared, *sets, "train.max_steps=4") == 0
    assert last_result(capsys)["steps"] == 4
    assert stage("train", "cls-halves", shared, *sets) == 0
    result = last_result(capsys)
    assert result["resumed_from"] == {"epoch": 1, "step": 4, "batches_done": 1} and result["steps"] == 6
    a, b = _weights(cfg, "cls-straight"), _weights(cfg, "cls-halves")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
