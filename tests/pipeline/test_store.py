import pytest

from pipeline.store import LocalStore, open_store, retry


def _exercise(store):
    store.put_bytes(b"hello", "runs/r1/a/x.txt")
    store.put_json({"k": 1}, "runs/r1/a/sub/y.json")
    assert store.exists("runs/r1/a/x.txt") and not store.exists("runs/r1/a/missing")
    assert store.get_bytes("runs/r1/a/x.txt") == b"hello"
    assert store.get_json("runs/r1/a/sub/y.json") == {"k": 1}
    assert store.list("runs/r1/a/") == ["runs/r1/a/sub/y.json", "runs/r1/a/x.txt"]
    with pytest.raises(FileNotFoundError, match="not in the artifact store"):
        store.get_bytes("runs/r1/nothing")
    store.delete_prefix("runs/r1/a/sub")
    assert store.list("runs/r1/a/") == ["runs/r1/a/x.txt"]


def test_local_store(tmp_path):
    store = open_store((tmp_path / "s").as_uri())
    assert isinstance(store, LocalStore)
    _exercise(store)
    with pytest.raises(ValueError, match="leaves the store"):
        store.put_bytes(b"x", "../escape")
    assert not any(p.name.startswith(".tmp-") for p in (tmp_path / "s").rglob("*"))


def test_dirs_round_trip(tmp_path):
    src = tmp_path / "src"
    (src / "images").mkdir(parents=True)
    (src / "annotations.json").write_text("{}")
    (src / "images" / "a.jpg").write_bytes(b"\xff\xd8")
    store = open_store(str(tmp_path / "s"))
    assert store.put_dir(src, "runs/r/ingest/dataset") == 2
    out = store.get_dir("runs/r/ingest/dataset", tmp_path / "out")
    assert (out / "images" / "a.jpg").read_bytes() == b"\xff\xd8"
    with pytest.raises(FileNotFoundError):
        store.get_dir("runs/none", tmp_path / "none")


def test_s3_store(s3_server):
    import boto3

    boto3.client("s3", endpoint_url=s3_server).create_bucket(Bucket="artifacts")
    store = open_store("s3://artifacts/nightshift")
    _exercise(store)
    assert store.url("runs/r1") == "s3://artifacts/nightshift/runs/r1"


def test_unsupported_scheme():
    with pytest.raises(ValueError, match="file:// and s3://"):
        open_store("gs://bucket/x")


def test_retry_backs_off_then_raises():
    calls = []

    def flaky():
        calls.append(1)
        if len(calls) < 3:
            raise OSError("transient")
        return "ok"

    assert retry(flaky, attempts=3, base_delay=0.01) == "ok"
    with pytest.raises(OSError):
        retry(lambda: (_ for _ in ()).throw(OSError("down")), attempts=2, base_delay=0.01)
