"""The model repository on a directory and on S3 (moto): publication, markers, crashes, pruning, locking."""
from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
import threading
import time
import uuid

import boto3
import pytest

from pipeline.triton import config as tconfig
from pipeline.triton.repository import LockLost, LockTimeout, ModelRepository

IO = {"inputs": [{"name": "images", "dtype": "float32", "shape": [-1, 3, 32, 32]}],
      "outputs": [{"name": "labels", "dtype": "int64", "shape": [-1, 5]}]}


@pytest.fixture(params=["dir", "s3"])
def repo(request, tmp_path):
    if request.param == "dir":
        return ModelRepository(str(tmp_path / "repo"))
    return s3_repo(request.getfixturevalue("s3_server"))


def s3_repo(endpoint: str) -> ModelRepository:
    """moto keeps its buckets per process, not per server: every test gets a bucket of its own."""
    bucket = f"models-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket=bucket)
    return ModelRepository(f"s3://{bucket}/triton", endpoint)


def version_files(tmp_path, tag: str) -> dict:
    d = tmp_path / f"files-{tag}"
    d.mkdir()
    (d / "model.onnx").write_bytes(f"onnx bytes {tag}".encode() * 100)
    (d / "labels.txt").write_text(f"circle-{tag}\nsquare\n")
    (d / "config.pbtxt").write_text(tconfig.render(IO, "det"))
    return {name: d / name for name in ("model.onnx", "labels.txt", "config.pbtxt")}


def test_publish_activate_and_markers(repo, tmp_path):
    assert repo.versions("det") == [] and repo.served_version("det") is None
    v1 = repo.publish("det", version_files(tmp_path, "a"), {"run_id": "night-1"})
    v2 = repo.publish("det", version_files(tmp_path, "b"), {"run_id": "night-2"})
    assert (v1, v2) == (1, 2) and repo.versions("det") == [1, 2]
    marker = repo.marker("det", 2)
    assert marker["run_id"] == "night-2" and set(marker["files"]) == {"model.onnx", "labels.txt", "config.pbtxt"}
    assert repo.find_by_run("det", "night-1") == 1 and repo.find_by_run("det", "night-9") is None
    assert not [k for k in repo.store.list("det/") if "/.staging/" in k]

    repo.activate("det", 2)
    assert repo.served_version("det") == 2
    assert repo.store.get_bytes("det/labels.txt").decode().startswith("circle-b")
    repo.activate("det", 1)
    assert repo.served_version("det") == 1
    assert repo.store.get_bytes("det/labels.txt").decode().startswith("circle-a")


def test_crash_mid_upload_leaves_no_visible_version(repo, tmp_path, monkeypatch):
    repo.publish("det", version_files(tmp_path, "a"))
    repo.activate("det", 1)
    real_put = repo.store.put_file
    calls = []

    def crash_after_one(local, key):
        if calls:
            raise ConnectionError("network dropped mid-upload")
        calls.append(key)
        return real_put(local, key)

    monkeypatch.setattr(repo.store, "put_file", crash_after_one)
    with pytest.raises(ConnectionError):
        repo.publish("det", version_files(tmp_path, "b"))
    monkeypatch.setattr(repo.store, "put_file", real_put)
    assert calls and repo.versions("det") == [1] and repo.served_version("det") == 1
    assert not [k for k in repo.store.list("det/") if not k.startswith("det/1/") and "/" in k[4:]]


def test_debris_without_marker_is_ignored_and_cleared(repo, tmp_path):
    repo.publish("det", version_files(tmp_path, "a"))
    # a publication killed after its files landed but before the marker (e.g. SIGKILL): every file is there
    for name, path in version_files(tmp_path, "debris").items():
        repo.store.put_file(path, f"det/2/{name}")
    repo.store.put_bytes(b"half", "det/2/stray.bin")
    assert repo.versions("det") == [1] and repo.marker("det", 2) is None and repo.find_by_run("det", "x") is None
    with pytest.raises(FileNotFoundError, match="not a published version"):
        repo.activate("det", 2)  # never served
    assert repo.served_version("det") is None
    assert repo.publish("det", version_files(tmp_path, "b")) == 2
    assert repo.marker("det", 2) is not None
    # the debris is gone, not mixed into the new version
    assert sorted(k.rsplit("/", 1)[1] for k in repo.store.list("det/2/")) == [
        ".complete", "config.pbtxt", "labels.txt", "model.onnx"]
    assert repo.store.get_bytes("det/2/labels.txt").decode().startswith("circle-b")


def _record_writes(repo, monkeypatch, at_marker) -> list[tuple[str, str]]:
    """(operation, key) of every write and delete the repository makes through its store, in order;
    `at_marker()` is called just before a version's marker is written."""
    ops: list[tuple[str, str]] = []
    for method, key_arg in (("put_file", 1), ("put_bytes", 1), ("put_json", 1), ("delete_prefix", 0)):
        real = getattr(repo.store, method)

        def recorded(*args, _real=real, _method=method, _key_arg=key_arg, **kwargs):
            key = args[_key_arg]
            if _method != "delete_prefix" and key.endswith("/.complete"):
                at_marker(key)
            ops.append((_method, key))
            return _real(*args, **kwargs)

        monkeypatch.setattr(repo.store, method, recorded)
    return ops


def test_the_marker_is_written_last_and_removed_first(repo, tmp_path, monkeypatch):
    """A version exists from its marker's write until its deletion: every file lands before the marker, and
    unpublishing or pruning takes the marker away before any file, so a reader never sees a part-version."""
    repo.publish("det", version_files(tmp_path, "a"))
    repo.activate("det", 1)
    present = {}
    ops = _record_writes(repo, monkeypatch, lambda key: present.setdefault(key, set(repo.store.list("det/2/"))))
    assert repo.publish("det", version_files(tmp_path, "b")) == 2
    assert [key for op, key in ops if op != "delete_prefix"][-1] == "det/2/.complete"
    assert present["det/2/.complete"] == {"det/2/model.onnx", "det/2/labels.txt", "det/2/config.pbtxt"}

    def version_deletes() -> list[str]:
        return [key for op, key in ops if op == "delete_prefix" and key.startswith("det/2/")]

    ops.clear()
    repo.unpublish("det", 2, fallback=1)
    assert version_deletes()[0] == "det/2/.complete" and repo.versions("det") == [1]
    repo.publish("det", version_files(tmp_path, "c"))
    ops.clear()
    assert repo.prune("det", keep=0) == [2]  # the served version 1 stays
    assert version_deletes()[0] == "det/2/.complete" and repo.versions("det") == [1]


def test_checksum_mismatch_refuses_the_version(repo, tmp_path, monkeypatch):
    from pipeline.triton import repository as mod

    real = mod.sha256_file
    seen = []

    def corrupt_on_readback(path):  # the first calls hash the local files, later ones what was uploaded
        seen.append(path)
        return real(path) if len(seen) <= 3 else "0" * 64

    monkeypatch.setattr(mod, "sha256_file", corrupt_on_readback)
    with pytest.raises(mod.PublicationError):
        repo.publish("det", version_files(tmp_path, "a"))
    assert repo.versions("det") == [] and repo.store.list("det/1/") == []


def test_prune_keeps_newest_and_served(repo, tmp_path):
    for i in range(5):
        repo.publish("det", version_files(tmp_path, str(i)))
    repo.activate("det", 2)
    assert repo.prune("det", keep=2) == [1, 3]
    assert repo.versions("det") == [2, 4, 5] and repo.served_version("det") == 2
    assert repo.store.list("det/1/") == []


def test_unpublish_falls_back_to_previous(repo, tmp_path):
    repo.publish("det", version_files(tmp_path, "a"))
    repo.publish("det", version_files(tmp_path, "b"))
    repo.activate("det", 2)
    repo.unpublish("det", 2, fallback=1)
    assert repo.versions("det") == [1] and repo.served_version("det") == 1
    repo.unpublish("det", 1)
    assert repo.versions("det") == [] and repo.served_version("det") is None


def test_concurrent_promotions_get_distinct_versions(repo, tmp_path):
    files = [version_files(tmp_path, str(i)) for i in range(4)]
    got, errors = [], []

    def promote(f):
        try:
            with repo.lock("det", timeout_s=60):
                got.append(repo.publish("det", f))
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=promote, args=(f,)) for f in files]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and sorted(got) == [1, 2, 3, 4] and repo.versions("det") == [1, 2, 3, 4]


def test_lock_times_out_while_held(repo):
    with repo.lock("det", timeout_s=5):
        with pytest.raises(LockTimeout) as raised:
            with repo.lock("det", timeout_s=0.3):
                pass
    # one line naming the lock and its holder, exit 5 (infrastructure: retry later)
    message = str(raised.value)
    assert "\n" not in message and raised.value.exit_code == 5
    assert message.startswith(repo.url("det") + "/.lock: held by pid ") or \
        message.startswith(str(repo.store.local_path("det/.lock")) + ": held by pid ")
    assert f"pid {os.getpid()} on {socket.gethostname()}" in message and "promote.lock_timeout_s=0.3s" in message
    with repo.lock("det", timeout_s=1):  # released: free again
        pass


def put_lock(repo: ModelRepository, **holder) -> None:
    """A lock object as another promotion leaves it (S3)."""
    repo.store.put_bytes(json.dumps({"owner": "x", **holder}).encode(), "det/.lock")


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait(timeout=30)
    return proc.pid


def test_s3_lock_of_a_dead_holder_on_this_host_is_broken_at_once(s3_server, caplog):
    repo = s3_repo(s3_server)
    pid = dead_pid()
    put_lock(repo, host=socket.gethostname(), pid=pid, pidns=os.readlink("/proc/self/ns/pid"),
             expires_at=time.time() + 3600)  # a long lease, but its holder is dead
    started = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="pipeline.triton.repository"):
        with repo.lock("det", timeout_s=30, ttl_s=10):
            assert json.loads(repo.store.get_bytes("det/.lock"))["pid"] == os.getpid()
    assert time.monotonic() - started < 5
    assert any(f"breaking a stale lock held by pid {pid} on {socket.gethostname()}" in r.getMessage()
               and "its holder is dead" in r.getMessage() for r in caplog.records)
    assert not repo.store.exists("det/.lock")


def test_s3_lock_of_another_host_is_broken_only_when_its_lease_lapses(s3_server):
    repo = s3_repo(s3_server)
    # a container with our hostname but its own pids: its pid means nothing here, only its lease counts
    put_lock(repo, host=socket.gethostname(), pid=dead_pid(), pidns="pid:[1]", expires_at=time.time() + 1.5)
    started = time.monotonic()
    with repo.lock("det", timeout_s=30, ttl_s=10):
        waited = time.monotonic() - started
    assert 1.0 <= waited < 10
    put_lock(repo, host="another-host", pid=1, expires_at=time.time() + 1.5)  # alive as far as we can tell
    started = time.monotonic()
    with repo.lock("det", timeout_s=30, ttl_s=10):
        waited = time.monotonic() - started
    assert 1.0 <= waited < 10  # it waited for the lease, then broke it
    put_lock(repo, host="another-host", pid=1, expires_at=time.time() + 3600)
    with pytest.raises(LockTimeout, match=r"held by pid 1 on another-host, lease until .*Z for more than "
                                          r"promote.lock_timeout_s=0.5s"):
        with repo.lock("det", timeout_s=0.5, ttl_s=0.2):
            pass


def test_s3_lease_is_renewed_while_held_and_a_broken_lease_refuses_to_commit(s3_server):
    repo = s3_repo(s3_server)
    with repo.lock("det", timeout_s=5, ttl_s=0.6) as lease:
        first = json.loads(repo.store.get_bytes("det/.lock"))["expires_at"]
        # another waiter on another thread cannot break it although 3 leases go by: it is renewed
        with pytest.raises(LockTimeout):
            with repo.lock("det", timeout_s=2, ttl_s=0.6):
                pass
        assert json.loads(repo.store.get_bytes("det/.lock"))["expires_at"] > first + 1
        lease.check()
        repo.store.delete_prefix("det/.lock")  # someone broke it: the next renewal notices
        deadline = time.monotonic() + 10
        while not lease.lost:
            assert time.monotonic() < deadline, "the lost lease was never noticed"
            time.sleep(0.05)
        with pytest.raises(LockLost, match="refusing to change what is served"):
            lease.check()
    with repo.lock("det", timeout_s=1):
        pass
