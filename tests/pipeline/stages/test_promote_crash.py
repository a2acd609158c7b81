"""`nightshift promote` killed with SIGKILL mid-upload, five times, then once more against S3, then at each
step of the pin-then-alias transaction.

Each kill is a real process dying at a different point of the publication (staging the first file, half the
files, all files, verification of the staged copies, the moved version directory before its marker). The
promote process runs through a small wrapper that slows the repository's uploads and downloads down (a sleep
per file), so the test can watch the repository directory and kill at those points. After every kill: readers
see only complete versions, Triton's pinned config and the MLflow alias are unchanged, and the repository
lock is free (flock dies with its process). Then a promote that is not killed publishes exactly one new version
and clears the debris. On S3 the lock object survives the kill; the next promote sees that its holder, a process
of this host, is dead and breaks it at once. Killed after its journal, its pin or its alias move, a promotion is
finished or undone by the retry: Triton's pinned version and the alias always agree afterwards.
"""
from __future__ import annotations

import json
import logging
import os
import random
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import boto3
import pytest
import torch

from pipeline import tracking
from pipeline.checksums import sha256_file
from pipeline.config import load_config
from pipeline.context import RunContext
from pipeline.stages import promote
from pipeline.triton.repository import LOCK, MARKER, STAGING, ModelRepository

ROOT = Path(__file__).resolve().parents[3]
DELAY_S = 0.4  # per slowed file operation: wide enough windows to kill in, short enough for a quick test

# `python -c WRAPPER promote --run-id ...`: the real CLI, with every staged/versioned file operation slowed
WRAPPER = """
import os, sys, time
from pipeline.store import LocalStore, S3Store
from pipeline.triton.repository import STAGING

delay = float(os.environ["NIGHTSHIFT_TEST_SLOW_S"])
owners = os.environ.get("NIGHTSHIFT_TEST_OWNERS", "")

def slowed(real):
    def op(self, a, b):
        key = b if real.__name__ == "put_file" else a
        parts = key.split("/")
        if STAGING in parts and owners:  # tell the test which process stages which upload: written whole,
            token = parts[parts.index(STAGING) + 1]  # then renamed, so a reader never sees an empty file
            tmp = os.path.join(owners, f".tmp-{token}-{os.getpid()}")
            with open(tmp, "w") as fh:
                fh.write(str(os.getpid()))
            os.replace(tmp, os.path.join(owners, token))
        if STAGING in parts or (len(parts) > 2 and parts[1].isdigit()):
            time.sleep(delay)
        return real(self, a, b)
    return op

for store in (LocalStore, S3Store):
    store.put_file = slowed(store.put_file)
    store.get_file = slowed(store.get_file)

# NIGHTSHIFT_TEST_STOP_AT: right after that step of the transaction, say so (pid in a file written whole, then
# renamed) and wait to be killed
stop_at, flag = os.environ.get("NIGHTSHIFT_TEST_STOP_AT", ""), os.environ.get("NIGHTSHIFT_TEST_FLAG", "")

def stop_after(point, real):
    def step(*args, **kwargs):
        out = real(*args, **kwargs)
        if point == stop_at:
            with open(flag + ".tmp", "w") as fh:
                fh.write(str(os.getpid()))
            os.replace(flag + ".tmp", flag)
            time.sleep(3600)
        return out
    return step

import mlflow
from pipeline.triton.repository import ModelRepository
ModelRepository.write_journal = stop_after("journal written", ModelRepository.write_journal)
ModelRepository.activate = stop_after("pinned", ModelRepository.activate)
mlflow.MlflowClient.set_registered_model_alias = stop_after("alias moved",
                                                            mlflow.MlflowClient.set_registered_model_alias)

from pipeline import cli
sys.exit(cli.main(sys.argv[1:]))
"""


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory):
    from pipeline.export.onnx_export import export_onnx
    from pipeline.training.models import build_model

    root = tmp_path_factory.mktemp("crash")
    torch.manual_seed(0)
    spec = export_onnx(build_model("ssdlite320_mobilenet_v3_large", 4, 96).eval(), 96, root / "model.onnx")
    (root / "labels.txt").write_text("circle\nsquare\ntriangle\n")
    (root / "io.json").write_text(json.dumps(spec))
    return root


def sets(tmp_path, repo: str, *extra) -> list[str]:
    return [f"mlflow.tracking_uri=sqlite:///{tmp_path / 'mlflow.db'}", "promote.model_name=crashy",
            f"promote.triton_repo={repo}", *extra]


def start_promote(overrides: list[str], run_id: str, slow_s: float | None, owners: Path | None = None,
                  stop_at: str = "", flag: Path | None = None) -> subprocess.Popen:
    command = [sys.executable, "-m", "pipeline"] if slow_s is None else [sys.executable, "-c", WRAPPER]
    command += ["promote", "--run-id", run_id]
    for s in overrides:
        command += ["--set", s]
    env = dict(os.environ, NIGHTSHIFT_TEST_SLOW_S=str(slow_s or 0), NIGHTSHIFT_TEST_OWNERS=str(owners or ""),
               NIGHTSHIFT_TEST_STOP_AT=stop_at, NIGHTSHIFT_TEST_FLAG=str(flag or ""), PYTHONPATH=str(ROOT))
    return subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def wait_for(condition, proc: subprocess.Popen, what: str, timeout_s: float = 90.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if proc.poll() is not None:
            raise AssertionError(f"promote exited ({proc.returncode}) before {what}:\n{proc.stdout.read().decode()}")
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


def kill9(proc: subprocess.Popen) -> None:
    assert proc.poll() is None, "promote finished before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    assert proc.wait(timeout=30) == -signal.SIGKILL
    proc.stdout.close()


def alias_version(cfg):
    mv = tracking.current_alias(tracking.registry_client(cfg), cfg.promote.model_name, cfg.promote.alias)
    return int(mv.version) if mv else None


def registry_count(cfg) -> int:
    return len(tracking.registered_versions(tracking.registry_client(cfg), cfg.promote.model_name))


def assert_readers_see_only_complete_versions(repo: ModelRepository, model: str, expected: list[int]) -> None:
    """What Triton and every reader of the repository sees: complete versions only, checksums intact, the
    model-level config still pinned to the version that was served before."""
    assert repo.versions(model) == expected
    for version in expected:
        marker = repo.marker(model, version)
        for name, digest in marker["files"].items():
            local = repo.store.get_file(f"{model}/{version}/{name}", Path(os.environ["NIGHTSHIFT_HOME"]) / "check")
            assert sha256_file(local) == digest, f"version {version}: {name} does not match its checksum"


def test_promote_killed_mid_upload_five_times_then_succeeds(tmp_path, export_dir, upstream):
    repo_dir = tmp_path / "repo"
    overrides = sets(tmp_path, str(repo_dir), "promote.lock_timeout_s=120")
    cfg = load_config(None, overrides).resolved()
    model = cfg.promote.model_name
    upstream(cfg, "night-1", export_dir)
    first = promote.run(cfg, RunContext.create("night-1", "promote", cfg))
    assert first["version"] == 1
    upstream(cfg, "night-2", export_dir)
    repo = ModelRepository(str(repo_dir))
    model_dir = repo_dir / model
    served_config = (model_dir / "config.pbtxt").read_bytes()

    def uploads() -> set[str]:
        return {p.name for p in (model_dir / STAGING).iterdir()} if (model_dir / STAGING).is_dir() else set()

    def staged(token: str) -> int:
        return sum(1 for p in (model_dir / STAGING / token).glob("*") if not p.name.startswith(".tmp-"))

    rng = random.Random(20261125)
    kill_points = {
        "first file staging": lambda token: (model_dir / STAGING / token).is_dir(),
        "half the files staged": lambda token: staged(token) >= 2,
        "verifying the staged copies": lambda token: staged(token) >= 4,
        "version directory moved, no marker yet": lambda token: token not in uploads() and (model_dir / "2").is_dir(),
        "a random moment of the upload": lambda token: True,
    }
    # five promotes of the same run (a retried task) start together and queue on the repository lock; each
    # is killed at its own point once it holds the lock, and the next waiter must get the lock at once
    owners = tmp_path / "owners"
    owners.mkdir()
    waiting = {}
    for _ in kill_points:
        proc = start_promote(overrides, "night-2", DELAY_S, owners)
        waiting[proc.pid] = proc
    seen: set[str] = set()
    killed_at = None

    def published() -> set[str]:  # owner files renamed into place (never the writers' .tmp- files)
        return {p.name for p in owners.iterdir() if not p.name.startswith(".")}

    def owner_pid(token: str) -> int | None:
        text = (owners / token).read_text()
        return int(text) if text.isdigit() else None

    try:
        for point, reached in kill_points.items():
            deadline = time.monotonic() + 300  # five interpreters importing torch on a busy machine
            while not published() - seen:  # the next upload, staged by whoever got the lock
                assert all(p.poll() is None for p in waiting.values()), "a waiting promote exited"
                assert time.monotonic() < deadline, f"no promote took the lock for {point!r}"
                time.sleep(0.01)
            token = (published() - seen).pop()
            seen.add(token)
            if killed_at is not None:  # the dead process's flock went with it
                assert time.monotonic() - killed_at < 10
            deadline = time.monotonic() + 30
            while (pid := owner_pid(token)) not in waiting:  # atomic writes: a digit string naming a waiter
                assert time.monotonic() < deadline, f"owner file of {token} never named a waiting promote"
                time.sleep(0.01)
            proc = waiting.pop(pid)
            wait_for(lambda: reached(token), proc, point)
            if point == "a random moment of the upload":
                time.sleep(rng.uniform(0, 4 * DELAY_S))
            kill9(proc)
            killed_at = time.monotonic()
            assert not (model_dir / "2" / MARKER).exists(), point
            # the next waiter is publishing meanwhile, slowed: it cannot have completed a version yet
            assert_readers_see_only_complete_versions(repo, model, [1])
            assert (model_dir / "config.pbtxt").read_bytes() == served_config and repo.served_version(model) == 1
            assert alias_version(cfg) == first["registry_version"] and registry_count(cfg) == 1, point
    finally:  # a failed assertion must not leave promotes behind, and should say what they printed
        for proc in waiting.values():
            proc.kill()
            out = proc.communicate(timeout=30)[0].decode(errors="replace")
            print(f"--- promote {proc.pid} (killed by the test's clean-up):\n{out[-3000:]}")
    assert not waiting
    with repo.lock(model, timeout_s=1):
        pass

    result = promote.run(cfg, RunContext.create("night-2", "promote", cfg))  # the retry that is not killed
    assert result["version"] == 2 and not result["reused"]
    assert_readers_see_only_complete_versions(repo, model, [1, 2])  # exactly one new version
    assert repo.served_version(model) == 2 and registry_count(cfg) == 2
    assert alias_version(cfg) == result["registry_version"] != first["registry_version"]
    assert not uploads()  # the killed runs' staged uploads were cleared under the lock
    assert (model_dir / LOCK).exists()  # the lock file stays; only its flock matters


def test_s3_lock_of_a_killed_promote_is_broken_at_once(tmp_path, export_dir, s3_server, caplog, upstream):
    """On S3 the lock object survives a kill -9; its holder was a process of this host that no longer exists,
    so the next promote breaks it at once instead of waiting for the lease (renewed while the holder lived)."""
    bucket = f"models-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=s3_server).create_bucket(Bucket=bucket)
    location = f"s3://{bucket}/triton"
    overrides = sets(tmp_path, location, f"promote.triton_endpoint_url={s3_server}", "promote.lock_ttl_s=60",
                     "promote.lock_timeout_s=120")
    cfg = load_config(None, overrides).resolved()
    model = cfg.promote.model_name
    upstream(cfg, "night-1", export_dir)
    promote.run(cfg, RunContext.create("night-1", "promote", cfg))
    upstream(cfg, "night-2", export_dir)
    repo = ModelRepository(location, s3_server)

    proc = start_promote(overrides, "night-2", DELAY_S)
    wait_for(lambda: len(repo.store.list(f"{model}/{STAGING}/")) >= 2, proc, "two staged files on S3", timeout_s=300)
    kill9(proc)
    lock = json.loads(repo.store.get_bytes(f"{model}/{LOCK}"))  # nobody released it
    assert lock["pid"] == proc.pid and lock["expires_at"] > time.time() + 20
    assert_readers_see_only_complete_versions(repo, model, [1])
    assert repo.served_version(model) == 1 and registry_count(cfg) == 1

    with caplog.at_level(logging.WARNING, logger="pipeline.triton.repository"):
        result = promote.run(cfg, RunContext.create("night-2", "promote", cfg))
    assert time.time() < lock["expires_at"]  # it did not sit out the dead holder's lease
    assert any(f"breaking a stale lock held by pid {proc.pid}" in r.getMessage() and "its holder is dead" in
               r.getMessage() for r in caplog.records)
    assert result["version"] == 2
    assert_readers_see_only_complete_versions(repo, model, [1, 2])
    assert repo.served_version(model) == 2 and registry_count(cfg) == 2
    assert repo.store.list(f"{model}/{STAGING}/") == [] and not repo.store.exists(f"{model}/{LOCK}")


@pytest.mark.parametrize("point", ["journal written", "pinned", "alias moved"])
def test_kill_between_pin_and_alias_converges_on_retry(tmp_path, export_dir, upstream, monkeypatch, point):
    """kill -9 right after a step of the pin-then-alias transaction. The first retry's smoke test fails: it
    must end with the old version served and the alias unchanged, or (once the alias had moved) the new
    version served and the alias on it, never a mix, and never "put back" the version it is undoing. The
    next retry promotes the new version."""
    repo_dir = tmp_path / "repo"
    overrides = sets(tmp_path, str(repo_dir))
    cfg = load_config(None, overrides).resolved()
    model = cfg.promote.model_name
    upstream(cfg, "night-1", export_dir)
    first = promote.run(cfg, RunContext.create("night-1", "promote", cfg))
    upstream(cfg, "night-2", export_dir)
    repo = ModelRepository(str(repo_dir))

    flag = tmp_path / "reached"
    proc = start_promote(overrides, "night-2", 0, stop_at=point, flag=flag)
    try:
        wait_for(lambda: flag.is_file() and flag.read_text() == str(proc.pid), proc, point, timeout_s=300)
        kill9(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
    journal = repo.journal(model)
    assert journal is not None and journal["run_id"] == "night-2" and journal["previous_version"] == 1
    new_registry = journal["registry_version"]
    assert repo.versions(model) == [1, 2]  # version 2 is complete (marker written) before the journal
    crashed_state = (repo.served_version(model), alias_version(cfg))
    assert crashed_state == {"journal written": (1, first["registry_version"]),
                             "pinned": (2, first["registry_version"]),  # the mix, until the next promote
                             "alias moved": (2, new_registry)}[point]

    def failing_smoke(*args, **kwargs):
        raise RuntimeError("Triton smoke test: detections differ from ONNX Runtime (injected)")

    real_smoke = promote._smoke
    monkeypatch.setattr(promote, "_smoke", failing_smoke)
    with pytest.raises(RuntimeError, match="injected"):
        promote.run(cfg, RunContext.create("night-2", "promote", cfg))
    if point == "alias moved":  # the transaction had committed: it stays committed
        assert (repo.served_version(model), alias_version(cfg)) == (2, new_registry)
    else:  # it had not: the old version and the old alias, not the version being undone
        assert (repo.served_version(model), alias_version(cfg)) == (1, first["registry_version"])
    assert repo.journal(model) is None
    assert_readers_see_only_complete_versions(repo, model, [1, 2])

    monkeypatch.setattr(promote, "_smoke", real_smoke)
    result = promote.run(cfg, RunContext.create("night-2", "promote", cfg))
    assert result["version"] == 2 and result["reused"] and result["recovered"] is None
    assert (repo.served_version(model), alias_version(cfg)) == (2, new_registry) and registry_count(cfg) == 2
    assert repo.journal(model) is None
    assert_readers_see_only_complete_versions(repo, model, [1, 2])


def test_retry_after_a_kill_between_pin_and_alias_reports_the_recovery(tmp_path, export_dir, upstream):
    """The plain retry of a promote killed after its pin: it rolls the half-done promotion back, then
    promotes (one new version, not two), and says what it recovered."""
    repo_dir = tmp_path / "repo"
    overrides = sets(tmp_path, str(repo_dir))
    cfg = load_config(None, overrides).resolved()
    model = cfg.promote.model_name
    upstream(cfg, "night-1", export_dir)
    promote.run(cfg, RunContext.create("night-1", "promote", cfg))
    upstream(cfg, "night-2", export_dir)
    flag = tmp_path / "reached"
    proc = start_promote(overrides, "night-2", 0, stop_at="pinned", flag=flag)
    try:
        wait_for(lambda: flag.is_file() and flag.read_text() == str(proc.pid), proc, "pinned", timeout_s=300)
        kill9(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
    result = promote.run(cfg, RunContext.create("night-2", "promote", cfg))
    assert result["recovered"] == {"run_id": "night-2", "version": 2, "outcome": "rolled back", "serving": 1}
    assert result["version"] == 2 and result["previous_version"] == 1 and result["reused"]
    repo = ModelRepository(str(repo_dir))
    assert repo.served_version(model) == 2 and alias_version(cfg) == result["registry_version"]
    assert registry_count(cfg) == 2 and repo.journal(model) is None
