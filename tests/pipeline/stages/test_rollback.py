"""`nightshift rollback`: the alias and Triton's served version move back together; exit 3 when they can't."""
from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch

from pipeline import cli, tracking
from pipeline.config import load_config
from pipeline.context import RunContext
from pipeline.stages import promote
from pipeline.triton.repository import ModelRepository
from tests.helpers import last_result, only_commands


@pytest.fixture(autouse=True)
def only_rollback(monkeypatch):
    only_commands(monkeypatch, "rollback")
    handlers, level = logging.root.handlers[:], logging.root.level
    yield
    logging.root.handlers[:] = handlers
    logging.root.setLevel(level)


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    from pipeline.export.onnx_export import export_onnx
    from pipeline.training.models import build_model

    root = tmp_path_factory.mktemp("rollback")
    torch.manual_seed(0)
    export = root / "export"
    spec = export_onnx(build_model("ssdlite320_mobilenet_v3_large", 4, 320).eval(), 320, export / "model.onnx")
    (export / "labels.txt").write_text("circle\nsquare\ntriangle\n")
    (export / "io.json").write_text(json.dumps(spec))
    return {"export": export, "tracking": f"sqlite:///{root / 'mlflow.db'}"}


@pytest.fixture
def promoted(shared, tmp_path):
    """Three nights promoted in turn: registry versions 1..3 = Triton versions 1..3, alias on 3."""
    import mlflow

    from pipeline.checksums import sha256_file

    sets = [f"mlflow.tracking_uri={shared['tracking']}", f"promote.model_name={tmp_path.name}",
            f"promote.triton_repo={tmp_path / 'repo'}", "promote.keep_versions=10"]
    cfg = load_config(None, sets).resolved()
    for night in ("night-1", "night-2", "night-3"):
        mlrun = tracking.run_for(cfg, night)
        weights = tmp_path / f"{night}.pt"
        weights.write_bytes(night.encode())
        mlflow.MlflowClient().log_artifact(mlrun, str(weights), artifact_path="model")
        RunContext.create(night, "train", cfg).publish_json({"mlflow_run_id": mlrun}, "result.json")
        RunContext.create(night, "gate", cfg).publish_json({"passed": True}, "result.json")
        ctx = RunContext.create(night, "export", cfg)
        for name in ("model.onnx", "labels.txt", "io.json"):
            ctx.publish(shared["export"] / name, name)
        ctx.publish_json({"status": "ok", "sha256": {name: sha256_file(shared["export"] / name)
                                                     for name in ("model.onnx", "labels.txt", "io.json")}},
                         "result.json")
        promote.run(cfg, RunContext.create(night, "promote", cfg))
    return cfg, sets


def rollback(sets, model, *extra):
    args = ["rollback", "--model", model]
    for s in sets:
        args += ["--set", s]
    return cli.main(args + list(extra))


def state(cfg):
    name = cfg.promote.model_name
    mv = tracking.current_alias(tracking.registry_client(cfg), name, cfg.promote.alias)
    return int(mv.version), ModelRepository(cfg.promote.triton_repo).served_version(name)


def test_rollback_steps_back_until_nothing_is_left(promoted, capsys):
    cfg, sets = promoted
    name = cfg.promote.model_name
    assert state(cfg) == (3, 3)
    capsys.readouterr()
    assert rollback(sets, name) == 0
    summary = last_result(capsys)
    assert summary["announced_to"] == "sink"
    announced = json.loads(Path(cfg.notify.sink).read_text().splitlines()[-1])
    assert announced["event"] == "rollback" and "rolled back from registry version 3" in announced["text"]
    assert summary["from"] == {"registry_version": 3, "triton_version": 3}
    assert summary["to"] == {"registry_version": 2, "triton_version": 2} and summary["status"] == "rolled_back"
    assert state(cfg) == (2, 2)
    labels = Path(cfg.promote.triton_repo, name, "labels.txt").read_text()
    assert labels == "circle\nsquare\ntriangle\n"
    assert ModelRepository(cfg.promote.triton_repo).versions(name) == [1, 2, 3]  # newer ones kept, unserved

    assert rollback(sets, name) == 0 and state(cfg) == (1, 1)
    assert rollback(sets, name) == 3 and state(cfg) == (1, 1)
    assert "nothing to roll back to" in capsys.readouterr().err


def test_rollback_to_a_given_version(promoted, capsys):
    cfg, sets = promoted
    name = cfg.promote.model_name
    assert rollback(sets, name, "--to", "1") == 0 and state(cfg) == (1, 1)
    assert rollback(sets, name, "--to", "3") == 0 and state(cfg) == (3, 3)  # and forward again
    assert rollback(sets, name, "--to", "3") == 3  # already there
    assert rollback(sets, name, "--to", "9") == 3
    assert "no version 9" in capsys.readouterr().err


def test_pruned_versions_cannot_be_rolled_back_to(promoted, capsys):
    cfg, sets = promoted
    name = cfg.promote.model_name
    ModelRepository(cfg.promote.triton_repo).prune(name, keep=1)
    assert rollback(sets, name) == 3 and state(cfg) == (3, 3)
    assert rollback(sets, name, "--to", "2") == 3
    assert "pruned" in capsys.readouterr().err


def test_unknown_model_has_nothing_to_roll_back(shared, tmp_path, capsys):
    assert rollback([f"mlflow.tracking_uri={shared['tracking']}"], "never-promoted") == 3
    assert "no @champion version" in capsys.readouterr().err
