"""snapshot: DVC add + push of the ingested dataset, to a directory remote and to S3 (moto); stable hashes."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipeline import tracking
from pipeline.cli import main
from pipeline.config import load_config
from pipeline.datasets.synthetic import generate
from pipeline.stages import snapshot


@pytest.fixture
def tags(monkeypatch) -> list:
    """Record MLflow tagging instead of creating a sqlite MLflow per test (covered once in the slow test)."""
    calls = []
    monkeypatch.setattr(tracking, "run_for", lambda cfg, run_id, tags=None: calls.append((run_id, tags)) or "mlrun")
    return calls


@pytest.fixture
def ingested(nightshift_home, monkeypatch, tmp_path):
    """Ingest a 30-image export under run ids; returns a function run_id -> None. cwd is a clean tmp dir."""
    monkeypatch.chdir(tmp_path)  # no dvc.yaml above: the repo is always the configured one
    generate(tmp_path / "export", num_images=30, seed=2)

    def ingest(run_id: str, source: Path | None = None) -> None:
        assert main(["ingest", "--run-id", run_id, "--source", str(source or tmp_path / "export")]) == 0
    return ingest


def run(capsys, *args) -> tuple[int, dict, str]:
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    lines = [ln for ln in out.splitlines() if ln.startswith("NIGHTSHIFT_RESULT ")]
    return code, json.loads(lines[-1].split(" ", 1)[1]) if lines else {}, err


def remote_files(remote: Path) -> set[str]:
    return {p.relative_to(remote).as_posix() for p in remote.rglob("*") if p.is_file()}


def test_directory_remote_same_hash_nothing_new_failed_push_restores(capsys, ingested, tags, tmp_path,
                                                                    nightshift_home):
    repo, remote = tmp_path / "repo", tmp_path / "remote"
    sets = ["--set", f"snapshot.repo_dir={repo}", "--set", f"snapshot.remote={remote}"]
    ingested("r1")
    code, first, err = run(capsys, "snapshot", "--run-id", "r1", *sets)
    assert code == 0, err
    assert first["dataset_hash"].endswith(".dir") and first["files"] == 31 and first["size_bytes"] > 0
    assert first["pushed"] == 32  # 31 files + the .dir listing
    assert first["remote"] == str(remote)
    uploaded = remote_files(remote)
    assert len(uploaded) == 32
    data_dvc = (repo / "data.dvc").read_text()
    assert first["dataset_hash"] in data_dvc
    stored = nightshift_home / "artifacts" / "runs" / "r1" / "snapshot" / "data.dvc"
    assert stored.read_text() == data_dvc
    assert 'remote "nightshift"' in (repo / ".dvc" / "config.local").read_text()
    assert tags == [("r1", {"dataset_hash": first["dataset_hash"], "dataset_remote": str(remote)})]
    # the statistics the next validate compares with, and the dataset card
    stats = json.loads((nightshift_home / "artifacts" / "state" / "dataset_stats.json").read_text())
    assert stats["dataset_hash"] == first["dataset_hash"] and stats["run_id"] == "r1" and stats["images"] == 30
    assert sum(stats["width_hist"]) == 30 and set(stats["classes"]) == {"circle", "square", "triangle"}
    snap = nightshift_home / "artifacts" / "runs" / "r1" / "snapshot"
    assert first["dataset_hash"] in (snap / "card.html").read_text() and "data:image/png;base64," in \
        (snap / "card.html").read_text()
    assert "| train |" in (snap / "card.md").read_text()

    ingested("r2")  # the same export, another night
    code, second, err = run(capsys, "snapshot", "--run-id", "r2", *sets)
    assert code == 0, err
    assert second["dataset_hash"] == first["dataset_hash"]
    assert second["pushed"] == 0 and second["changed"] is False
    assert (nightshift_home / "artifacts" / "runs" / "r2" / "snapshot" / "card.md").is_file()  # unchanged: still a card
    assert remote_files(remote) == uploaded

    # a new dataset whose push fails (the remote's files/ folder is a plain file) leaves data.dvc as it was
    before = (repo / "data.dvc").read_bytes()
    generate(tmp_path / "export2", num_images=31, seed=2)
    ingested("r3", tmp_path / "export2")
    broken = tmp_path / "broken-remote"
    broken.mkdir()
    (broken / "files").write_text("not a folder")
    code, _, err = run(capsys, "snapshot", "--run-id", "r3", "--set", f"snapshot.repo_dir={repo}",
                       "--set", f"snapshot.remote={broken}",
                       "--set", "snapshot.push_retries=2", "--set", "snapshot.push_backoff_s=0")
    assert code == 1
    assert "dvc push" in err and "2 attempts" in err
    assert (repo / "data.dvc").read_bytes() == before
    assert len(list((repo / "data" / "images").iterdir())) == 30  # data/ checked out back to the snapshot
    assert [t for t in tags if t[0] == "r3"] == []


def test_s3_remote_on_a_local_server(capsys, ingested, tags, tmp_path, s3_server):
    from pipeline.store import s3_client

    client = s3_client(s3_server)
    client.create_bucket(Bucket="dvc-store")
    sets = ["--set", f"snapshot.repo_dir={tmp_path / 'repo'}", "--set", "snapshot.remote=s3://dvc-store/nightshift",
            "--set", f"snapshot.remote_endpoint_url={s3_server}"]
    ingested("r1")
    code, first, err = run(capsys, "snapshot", "--run-id", "r1", *sets)
    assert code == 0, err
    keys = {o["Key"] for o in client.list_objects_v2(Bucket="dvc-store")["Contents"]}
    assert len(keys) == 32 and all(k.startswith("nightshift/files/md5/") for k in keys)
    assert any(k.endswith(first["dataset_hash"][2:]) for k in keys)
    assert "endpointurl" in (tmp_path / "repo" / ".dvc" / "config.local").read_text()


def test_repo_discovery(tmp_path, monkeypatch, nightshift_home):
    project = tmp_path / "project"
    (project / ".dvc").mkdir(parents=True)
    (project / "dvc.yaml").write_text("stages: {}\n")
    (project / "src" / "deep").mkdir(parents=True)
    cfg = load_config(None, []).resolved()
    assert snapshot.find_repo(cfg, start=project / "src" / "deep") == project
    # nothing above: the workspace's own DVC project, created without SCM
    repo = snapshot.find_repo(cfg, start=tmp_path / "elsewhere")
    assert repo == nightshift_home / "dvc"
    assert "no_scm = True" in (repo / ".dvc" / "config").read_text()


def test_snapshot_without_ingest_is_rejected(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, _, err = run(capsys, "snapshot", "--run-id", "none", "--set", f"snapshot.repo_dir={tmp_path / 'repo'}")
    assert code == 3 and "run `nightshift ingest` first" in err


@pytest.mark.slow
def test_dataset_hash_is_tagged_on_the_mlflow_run(capsys, ingested, tmp_path):
    import mlflow

    ingested("r1")
    code, result, err = run(capsys, "snapshot", "--run-id", "r1", "--set", f"snapshot.repo_dir={tmp_path / 'repo'}")
    assert code == 0, err
    cfg = load_config(None, []).resolved()
    mlrun = tracking.find_run(cfg, "r1")
    assert mlrun is not None and mlrun.info.run_id == result["mlflow_run_id"]
    assert mlrun.data.tags["dataset_hash"] == result["dataset_hash"]
    assert mlrun.data.tags["dataset_remote"] == cfg.snapshot.remote
    assert mlflow.get_tracking_uri().startswith("sqlite:")
