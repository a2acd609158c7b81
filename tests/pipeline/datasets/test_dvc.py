"""pipeline.datasets.dvc: the DVC project and its remote, the remote probe, DVC's directory hash."""
from __future__ import annotations

import subprocess
import sys
import time

import pytest

from pipeline.config import load_config
from pipeline.datasets import dvc


def test_repo_discovery(tmp_path, monkeypatch, nightshift_home):
    project = tmp_path / "project"
    (project / ".dvc").mkdir(parents=True)
    (project / "dvc.yaml").write_text("stages: {}\n")
    (project / "src" / "deep").mkdir(parents=True)
    cfg = load_config(None, []).resolved()
    assert dvc.find_repo(cfg, start=project / "src" / "deep") == project
    # nothing above: the workspace's own DVC project, created without SCM
    repo = dvc.find_repo(cfg, start=tmp_path / "elsewhere")
    assert repo == nightshift_home / "dvc"
    assert "no_scm = True" in (repo / ".dvc" / "config").read_text()


def test_the_remote_probe_tells_not_pushed_from_an_outage(s3_server, monkeypatch):
    """The unchanged-night check asks the remote for the snapshot's .dir listing: a definite 404 means
    "not pushed" (snapshot again), but a dead endpoint is exit 5 in bounded time, never a silent "absent"."""
    import boto3

    from pipeline.errors import InfrastructureError
    from tests.faults import dead_endpoint

    boto3.client("s3", endpoint_url=s3_server).create_bucket(Bucket="dvc")
    md5 = "0123456789abcdef0123456789abcdef.dir"
    cfg = load_config(None, [f"snapshot.remote_endpoint_url={s3_server}"])
    assert dvc.remote_has("s3://dvc/remote", md5, cfg) is False
    boto3.client("s3", endpoint_url=s3_server).put_object(Bucket="dvc", Key=f"remote/files/md5/01/{md5[2:]}",
                                                          Body=b"[]")
    assert dvc.remote_has("s3://dvc/remote", md5, cfg) is True

    monkeypatch.setenv("NIGHTSHIFT_S3_RETRY_BUDGET_S", "2")
    dead = load_config(None, [f"snapshot.remote_endpoint_url={dead_endpoint()}"])
    started = time.monotonic()
    with pytest.raises(InfrastructureError, match="s3://dvc/remote/files/md5/01/"):
        dvc.remote_has("s3://dvc/remote", md5, dead)
    assert time.monotonic() - started < 30


def test_a_configured_remote_is_not_configured_again(tmp_path, monkeypatch):
    """configure_remote reads DVC's own config.local (sections quoted as ['remote "nightshift"']): once the
    remote is set, an unchanged night spends no `dvc remote` start-ups on it."""
    repo = dvc.init_repo(tmp_path / "project")
    cfg = load_config(None, [f"snapshot.remote={tmp_path / 'remote'}"])
    assert dvc.configure_remote(repo, cfg) == str((tmp_path / "remote").resolve())
    assert dvc._local_remote(repo) == {"url": str((tmp_path / "remote").resolve())}
    calls = []
    monkeypatch.setattr(dvc, "run", lambda *a, **k: calls.append(a))
    dvc.configure_remote(repo, cfg)
    assert calls == []
    other = load_config(None, [f"snapshot.remote={tmp_path / 'elsewhere'}"])
    dvc.configure_remote(repo, other)
    assert calls and calls[0][1:3] == ("remote", "add")


def test_dir_hash_is_what_dvc_add_records(tmp_path):
    repo = tmp_path / "repo"
    (repo / "data" / "images").mkdir(parents=True)
    (repo / "data" / "annotations.json").write_text('{"images": []}\r\n')
    (repo / "data" / "images" / "a.png").write_bytes(bytes(range(256)) * 40)
    env_run = dict(cwd=repo, check=True, capture_output=True)
    subprocess.run([sys.executable, "-m", "dvc", "init", "--no-scm", "-q"], **env_run)
    subprocess.run([sys.executable, "-m", "dvc", "add", "data", "-q"], **env_run)
    import yaml

    recorded = yaml.safe_load((repo / "data.dvc").read_text())["outs"][0]["md5"]
    assert dvc.dir_hash(repo / "data") == recorded
