"""pipeline.tracking: the registry helpers the promote and rollback stages and the weekly report share."""
from __future__ import annotations

from types import SimpleNamespace

from pipeline import tracking
from pipeline.config import load_config


def test_triton_version_reads_the_tag_and_refuses_what_is_not_a_version():
    assert tracking.triton_version(SimpleNamespace(tags={tracking.TRITON_VERSION_TAG: "7"})) == 7
    assert tracking.triton_version(SimpleNamespace(tags={tracking.TRITON_VERSION_TAG: "v7"})) is None
    assert tracking.triton_version(SimpleNamespace(tags={})) is None


def test_register_reuses_the_runs_version_and_the_alias_moves(tmp_path):
    cfg = load_config(None, [f"mlflow.tracking_uri=sqlite:///{tmp_path / 'mlflow.db'}",
                             f"mlflow.artifact_root={(tmp_path / 'art').as_uri()}"]).resolved()
    client = tracking.registry_client(cfg)
    mlrun = tracking.run_for(cfg, "night-1")
    assert tracking.registered_versions(client, "det") == []
    assert tracking.current_alias(client, "det", "champion") is None
    mv, created = tracking.register(client, "det", mlrun, "night-1", 3, "/repo")
    again, created_again = tracking.register(client, "det", mlrun, "night-1", 3, "/repo")
    assert created and not created_again and again.version == mv.version
    assert mv.tags[tracking.RUN_TAG] == "night-1" and tracking.triton_version(mv) == 3
    client.set_registered_model_alias("det", "champion", mv.version)
    assert tracking.current_alias(client, "det", "champion").version == mv.version
    assert [v.version for v in tracking.registered_versions(client, "det")] == [mv.version]
