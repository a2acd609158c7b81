"""The audit stage through the CLI: queue files in the store, the label-issue-rate policy (exit 3), the dataset
card's counts, no model to audit with. The model's predictions are stood in for by the clean labels (the
ranking with a real trained model is tests/pipeline/audit/test_scoring.py's acceptance test)."""
from __future__ import annotations

import json

import pytest

from pipeline import cli
from pipeline.config import load_config
from pipeline.context import RunContext
from pipeline.stages import audit as audit_stage
from tests.helpers import last_result, only_commands


@pytest.fixture(autouse=True)
def only_audit(monkeypatch):
    only_commands(monkeypatch, "audit")


@pytest.fixture
def dataset(tmp_path, monkeypatch):
    """A demo dataset in the store for run `a1` with every 10th box's class swapped; `predictions` returns what
    a good detector says about the clean labels."""
    from pipeline.datasets.synthetic import generate

    data = tmp_path / "data"
    generate(data, num_images=40, image_size=64, seed=2, min_size=12, max_size=26, max_objects=3)
    clean = json.loads((data / "annotations.json").read_text())
    for i, im in enumerate(clean["images"]):
        im["split"] = "val" if i % 4 == 0 else "train"
    detections = [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 0.95}
                  for a in clean["annotations"]]
    noisy = json.loads(json.dumps(clean))
    swapped = noisy["annotations"][::10]
    for a in swapped:
        a["category_id"] = a["category_id"] % 3 + 1
    (data / "annotations.json").write_text(json.dumps(noisy))
    cfg = load_config().resolved()
    RunContext.create("a1", "ingest", cfg).publish_dir(data, "dataset")
    monkeypatch.setattr(audit_stage, "predictions", lambda model, data_dir, *a, **k: detections)
    model = tmp_path / "model.pt"
    model.write_bytes(b"stands for a train-format model.pt")
    return {"model": model, "swapped": {a["id"] for a in swapped}, "annotations": len(noisy["annotations"])}




def test_audit_writes_the_queue_and_the_card_shows_its_counts(dataset, capsys):
    from pipeline.datasets import card

    assert cli.main(["audit", "--run-id", "a1", "--model", str(dataset["model"])]) == 0
    result = last_result(capsys)
    assert result["annotations"] == dataset["annotations"]
    assert result["per_reason"]["swapped class"] == len(dataset["swapped"]) == result["issues"]
    assert result["passed"] and result["max_label_issue_rate"] is None
    ctx = RunContext.create("a1", "audit", load_config().resolved())
    report = ctx.store.get_json(ctx.key("report.json"))
    worst = report["items"][: len(dataset["swapped"])]
    assert {it["ann_id"] for it in worst} == dataset["swapped"]
    assert all(it["reason"] == "swapped class" for it in worst)
    page = ctx.store.get_bytes(ctx.key("queue.html")).decode()
    assert page.count('src="data:image/jpeg;base64,') == min(100, len(report["items"]))
    assert b"<annotations>" in ctx.store.get_bytes(ctx.key("cvat/annotations.xml"))
    assert ctx.store.exists(ctx.key("reproduce.sh"))

    html, md = card.build({"images": [], "annotations": [], "categories": []}, lambda n: None,
                          audit=ctx.result_of("audit"))
    line = f"{len(dataset['swapped'])} likely label issues among {dataset['annotations']} annotations"
    assert line in html and line in md


def test_a_label_issue_rate_above_the_policy_rejects_the_data(dataset, capsys):
    code = cli.main(["audit", "--run-id", "a1", "--model", str(dataset["model"]),
                     "--set", "validate.max_label_issue_rate=0.05"])
    assert code == 3
    err = capsys.readouterr().err
    assert "above validate.max_label_issue_rate 0.05" in err and "queue.html" in err
    ctx = RunContext.create("a1", "audit", load_config().resolved())
    result = ctx.result_of("audit")
    assert result["status"] == "rejected" and result["rate"] > 0.05 and result["passed"] is False
    assert ctx.store.exists(ctx.key("queue.html")), "the queue to fix from is written before the rejection"
    assert cli.main(["audit", "--run-id", "a1", "--model", str(dataset["model"]),
                     "--set", "validate.max_label_issue_rate=0.2"]) == 0


def test_no_champion_and_no_model_skips_and_says_so(dataset, capsys, caplog):
    assert cli.main(["audit", "--run-id", "a1"]) == 0
    result = last_result(capsys)
    assert result["skipped"] is True and "no --model" in result["reason"]


def test_a_missing_model_file_is_rejected(dataset, tmp_path, capsys):
    assert cli.main(["audit", "--run-id", "a1", "--model", str(tmp_path / "nope.pt")]) == 3
    assert "nope.pt: no such file" in capsys.readouterr().err


def test_a_classification_dataset_is_refused_naming_its_task(tmp_path, capsys):
    """The audit ranks box annotations: a classification dataset is refused (exit 3) naming annotations.json's
    task, before any model runs."""
    from pipeline.datasets.synthetic import generate_classification
    from pipeline.stages.ingest import convert

    cfg = load_config(None, [f"data.source={tmp_path / 'tree'}", "data.task=classification"]).resolved()
    generate_classification(tmp_path / "tree", num_images=12, seed=0)
    data, *_ = convert(cfg, tmp_path / "work", {})
    RunContext.create("c1", "ingest", cfg).publish_dir(data, "dataset")
    model = tmp_path / "model.pt"
    model.write_bytes(b"never read")
    assert cli.main(["audit", "--run-id", "c1", "--model", str(model), "--set", "data.task=classification"]) == 3
    err = capsys.readouterr().err
    assert "annotations.json" in err and "task" in err and "classification dataset" in err
