"""changed?: compares this run's lineage with the champion's MLflow run."""
import pytest

from pipeline import tracking
from pipeline.config import load_config
from pipeline.context import RunContext
from pipeline.stages import changed


@pytest.fixture
def cfg():
    return load_config().resolved()


def _ctx(cfg, run_id, dataset_hash="d1"):
    ctx = RunContext.create(run_id, "changed", cfg)
    ctx.store.put_json({"status": "ok", "dataset_hash": dataset_hash}, ctx.key("result.json", "snapshot"))
    return ctx


def _make_champion(cfg, run_id, **tags):
    import mlflow

    mlrun = tracking.run_for(cfg, run_id, tags=tags)
    client = mlflow.MlflowClient()
    client.create_registered_model(cfg.promote.model_name)
    version = client.create_model_version(cfg.promote.model_name, f"runs:/{mlrun}/model", run_id=mlrun)
    client.set_registered_model_alias(cfg.promote.model_name, cfg.promote.alias, version.version)
    return version


def test_no_champion_means_changed(cfg):
    result = changed.run(cfg, _ctx(cfg, "night-1"))
    assert result.changed is True and result.reason == "no champion yet" and result.champion is None
    assert tracking.find_run(cfg, "night-1").data.tags["dataset_hash"] == "d1"


def test_same_lineage_short_circuits_unless_forced(cfg):
    current = changed.lineage(cfg, _ctx(cfg, "night-1"))
    _make_champion(cfg, "night-1", **current)
    result = changed.run(cfg, _ctx(cfg, "night-2"))
    assert result.changed is False and "nothing changed since champion v1" in result.reason
    assert result.champion["version"] == 1 and result.dataset_hash == current["dataset_hash"]
    assert changed.run(cfg, _ctx(cfg, "night-3"), force=True).changed is True


def test_new_dataset_or_config_means_changed(cfg):
    current = changed.lineage(cfg, _ctx(cfg, "night-1"))
    _make_champion(cfg, "night-1", **current)
    result = changed.run(cfg, _ctx(cfg, "night-2", dataset_hash="d2"))
    assert result.changed is True and "dataset_hash d1 -> d2" in result.reason
    other = load_config(None, ["train.epochs=1"]).resolved()
    assert changed.run(other, _ctx(other, "night-3")).changed is True
