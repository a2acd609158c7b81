"""`nightshift reproduce`: a past run re-trained and re-evaluated from its record, compared within a tolerance."""
from __future__ import annotations

import json
import shutil

import pytest
import torch

from pipeline import cli, tracking
from pipeline.config import load_config
from pipeline.context import RunContext
from pipeline.datasets.dvc import dir_hash
from pipeline.training.reproduce import REPRODUCTION_TAG, compare

SIZE = 64
# 16 train images, batch 4, 2 epochs: 8 deterministic CPU steps in one process
TRAIN = ["train.recipe=none", "train.nproc_per_node=1", f"train.image_size={SIZE}", "train.batch_size=4", "train.epochs=2",
         "train.warmup_steps=2", "train.threads_per_rank=1", "train.deterministic=true", "train.seed=3",
         "train.bn_calibration_images=16", "evaluate.batch_size=4"]


pytestmark = pytest.mark.usefixtures("keep_torch_settings")


def run_cli(argv: list[str], sets: list[str]) -> int:
    for s in sets:
        argv += ["--set", s]
    return cli.main(argv)


@pytest.fixture(scope="module")
def original(tmp_path_factory, split_dataset):
    """Run `orig`: ingest's dataset and snapshot's real DVC hash in the store, then train and evaluate."""
    root = tmp_path_factory.mktemp("reproduce")
    data = root / "dataset"
    split_dataset(data, SIZE)
    locations = [f"store.uri={(root / 'artifacts').as_uri()}",
                 f"mlflow.tracking_uri=sqlite:///{root / 'mlflow.db'}",
                 f"mlflow.artifact_root={(root / 'mlartifacts').as_uri()}"]
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("NIGHTSHIFT_HOME", str(root / "home"))
        cfg = load_config(None, locations).resolved()
        ctx = RunContext.create("orig", "ingest", cfg)
        ctx.publish_dir(data, "dataset")
        ctx.store.put_json({"status": "ok", "dataset_hash": dir_hash(data)}, ctx.key("result.json", "snapshot"))
        assert run_cli(["train", "--run-id", "orig"], [*TRAIN, *locations]) == 0
        assert run_cli(["evaluate", "--run-id", "orig"], [*TRAIN, *locations]) == 0
        torch.use_deterministic_algorithms(False)
    return {"locations": locations, "store": ctx.store, "cfg": cfg}


def reproduce(original, *extra: str) -> int:
    argv = ["reproduce", "orig", *extra]
    for s in original["locations"]:
        argv += ["--set", s]
    return cli.main(argv)


def model_state(store, run_id: str) -> dict:
    return torch.load(store.local_path(f"runs/{run_id}/train/model.pt"), map_location="cpu",
                      weights_only=False)["state_dict"]


def test_compare_within_and_outside_the_tolerance():
    rows = compare({"AP": 0.50, "AP50": 0.80}, {"AP": 0.51, "AP50": 0.75}, tolerance=0.02)
    assert [(r["metric"], r["ok"]) for r in rows] == [("AP", True), ("AP50", False)]
    assert rows[1]["delta"] == pytest.approx(-0.05)
    assert [r["ok"] for r in compare({"AP": None, "AP50": 0.1}, {"AP": 0.0, "AP50": None}, 1.0)] == [False, False]


def test_a_deterministic_cpu_run_reproduces_exactly(original, capsys):
    store = original["store"]
    assert reproduce(original) == 0
    out = capsys.readouterr().out
    assert "reproduction of orig as reproduce-orig-1" in out and "reproduced within 0.02" in out
    table = out[out.index("reproduction of orig"):].splitlines()
    assert table[1].split()[:4] == ["metric", "orig", "reproduce-orig-1", "delta"]
    assert [line.split()[0] for line in table[2:4]] == ["AP", "AP50"]

    # the same weights bit for bit, and the same metrics
    a, b = model_state(store, "orig"), model_state(store, "reproduce-orig-1")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    before = store.get_json("runs/orig/evaluate/metrics.json")
    after = store.get_json("runs/reproduce-orig-1/evaluate/metrics.json")
    assert (after["AP"], after["AP50"], after["images"]) == (before["AP"], before["AP50"], before["images"])
    report = store.get_json("runs/reproduce-orig-1/reproduce/report.json")
    assert report["reproduced"] is True and [r["delta"] for r in report["metrics"]] == [0.0, 0.0]

    # it ran with the recorded config; its lineage is recorded like any run's
    recorded = load_config(store.local_path("runs/orig/train/config.yaml"))
    ran = load_config(store.local_path("runs/reproduce-orig-1/train/config.yaml"))
    assert ran.train == recorded.train and ran.evaluate == recorded.evaluate
    assert store.get_json("runs/reproduce-orig-1/snapshot/result.json") == store.get_json("runs/orig/snapshot/result.json")
    run = tracking.find_run(original["cfg"], "reproduce-orig-1")
    assert run.data.tags[REPRODUCTION_TAG] == "orig"
    assert run.data.tags["dataset_hash"] == tracking.find_run(original["cfg"], "orig").data.tags["dataset_hash"]


def test_other_code_is_refused_unless_allowed_and_a_metric_gap_exits_4(original, monkeypatch, capsys):
    store = original["store"]
    monkeypatch.setattr(tracking, "code_version", lambda: "0123456789abcdef")
    existing = store.list("runs/")
    assert reproduce(original) == 3
    err = capsys.readouterr().err
    assert "0123456789abcdef" in err and "--allow-code-change" in err
    assert store.list("runs/") == existing  # refused before anything was written

    # allowed, and the original's AP made 0.05 higher: the reproduction misses it by more than 0.02
    key = "runs/orig/evaluate/metrics.json"
    saved = store.get_bytes(key)
    metrics = json.loads(saved)
    store.put_json(dict(metrics, AP=(metrics["AP"] or 0.0) + 0.05), key)
    try:
        code = reproduce(original, "--allow-code-change")
    finally:
        store.put_bytes(saved, key)
    captured = capsys.readouterr()
    assert code == 4
    assert "WARNING" in captured.err and "NOT reproduced: AP differ" in captured.err
    new_id = store.get_json(sorted(k for k in store.list("runs/") if k.endswith("reproduce/report.json"))[-1])
    assert new_id["reproduced"] is False and new_id["metrics"][0]["ok"] is False and new_id["metrics"][1]["ok"]


def test_a_changed_dataset_is_refused(original, tmp_path, capsys):
    """One image changed, annotations.json not: only the DVC hash can tell."""
    store = original["store"]
    path = store.local_path(store.list("runs/orig/ingest/dataset/images/")[0])
    shutil.copyfile(path, tmp_path / "backup")
    try:
        path.write_bytes(path.read_bytes() + b"\0")
        assert reproduce(original) == 3
    finally:
        shutil.copyfile(tmp_path / "backup", path)
    assert "the dataset at" in capsys.readouterr().err


def test_an_incomplete_record_is_refused(original, capsys):
    assert cli.main(["reproduce", "never-ran", *sum((["--set", s] for s in original["locations"]), [])]) == 3
    assert "train ran with is missing" in capsys.readouterr().err
    assert reproduce(original, "--set", "train.lr=0.1") == 2
    assert "only locations" in capsys.readouterr().err
