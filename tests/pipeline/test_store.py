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


# -- faults: an error is never "absent" ------------------------------------------------------------------------

import time  # noqa: E402

from pipeline.errors import ConfigError, InfrastructureError  # noqa: E402
from pipeline.store import NoSuchBucket, S3Store  # noqa: E402
from tests.faults import FaultProxy, dead_endpoint  # noqa: E402


@pytest.fixture
def faulty_s3(s3_server, monkeypatch):
    """(proxy, store): an S3Store on bucket 'artifacts' through a FaultProxy, with short time bounds."""
    import boto3

    # a generous read timeout: a busy machine's moto may be slow to answer (the black-hole test sets its own)
    for name, value in {"NIGHTSHIFT_S3_CONNECT_TIMEOUT_S": "1", "NIGHTSHIFT_S3_READ_TIMEOUT_S": "10",
                        "NIGHTSHIFT_S3_RETRY_BUDGET_S": "3"}.items():
        monkeypatch.setenv(name, value)
    boto3.client("s3", endpoint_url=s3_server).create_bucket(Bucket="artifacts")
    with FaultProxy(s3_server) as proxy:
        yield proxy, S3Store("s3://artifacts/ns", proxy.url)


def test_transient_errors_are_retried_not_taken_as_absent(faulty_s3):
    proxy, store = faulty_s3
    store.put_bytes(b"x", "state/label_map.json")
    proxy.fail(2, match=r"^HEAD /artifacts/ns/state/")
    assert store.exists("state/label_map.json") is True
    assert proxy.faults_applied == 2
    proxy.fail(1, status=500, code="InternalError")
    assert store.exists("state/missing.json") is False  # a definite 404 after the retry: absent
    proxy.drop(1, match=r"^GET ")
    assert store.list("state/") == ["state/label_map.json"]
    proxy.drop(1, match=r"^GET ")
    assert store.get_bytes("state/label_map.json") == b"x"


@pytest.mark.parametrize("fault", ["fail", "drop", "blackhole"])
def test_a_store_that_cannot_be_asked_raises_within_the_budget(faulty_s3, fault, monkeypatch):
    proxy, store = faulty_s3
    store.put_bytes(b"x", "runs/r/ingest/result.json")
    monkeypatch.setenv("NIGHTSHIFT_S3_RETRY_BUDGET_S", "1.5")  # read at each call
    monkeypatch.setenv("NIGHTSHIFT_S3_READ_TIMEOUT_S", "1")  # read when a client is made
    store = S3Store("s3://artifacts/ns", proxy.url)
    getattr(proxy, fault)(None)
    for call in (lambda: store.exists("runs/r/ingest/result.json"), lambda: store.list("runs/r/"),
                 lambda: store.get_bytes("runs/r/ingest/result.json"), lambda: store.put_bytes(b"y", "runs/r/x")):
        started = time.monotonic()
        with pytest.raises(InfrastructureError, match=r"^s3://artifacts/ns/runs/r/\S*: \w+ failed after \d+ "
                                                      r"attempts? in \d+ s") as info:
            call()
        assert time.monotonic() - started < 1.5 + 1 + 1 + 5  # budget + connect + read + slack for a busy machine
        assert info.value.exit_code == 5 and "\n" not in str(info.value)
        assert "testing" not in str(info.value)  # the fixture's credentials
    proxy.clear()
    assert store.exists("runs/r/ingest/result.json")  # and it recovers when the endpoint does


def test_a_dead_endpoint_fails_in_bounded_time(s3_server, monkeypatch):
    monkeypatch.setenv("NIGHTSHIFT_S3_RETRY_BUDGET_S", "2")
    started = time.monotonic()
    with pytest.raises(InfrastructureError, match="EndpointConnectionError"):
        S3Store("s3://artifacts/ns", dead_endpoint()).exists("k")
    assert time.monotonic() - started < 2 + 6  # the budget, and slack for a busy machine


def test_no_such_bucket_is_one_clear_line_without_retries(faulty_s3):
    proxy, _store = faulty_s3
    missing = S3Store("s3://no-such-bucket/ns", proxy.url)
    for call in (lambda: missing.exists("k"), lambda: missing.list("k/"), lambda: missing.get_bytes("k"),
                 lambda: missing.put_bytes(b"1", "k")):
        before = proxy.seen()
        with pytest.raises(NoSuchBucket, match=r"^s3://no-such-bucket/ns/k/?: bucket 'no-such-bucket' does not "
                                               r"exist \(NoSuchBucket\)$"):
            call()
        assert proxy.seen() - before <= 2  # the request, and the bucket check that tells the two 404s apart


def test_label_map_survives_a_503_and_is_never_rebuilt_on_an_error(faulty_s3):
    from pipeline.datasets import canonical_io

    proxy, store = faulty_s3
    canonical_io.save_label_map(store, {"circle": 1, "square": 2, "triangle": 3})
    proxy.fail(1, match=r"label_map\.json")
    assert canonical_io.load_label_map(store)["triangle"] == 3
    proxy.fail(None, match=r"label_map\.json")
    with pytest.raises(InfrastructureError, match="label_map.json"):
        canonical_io.load_label_map(store)


def test_directories_publish_their_marker_last_and_delete_it_first(faulty_s3, tmp_path):
    proxy, store = faulty_s3
    src = tmp_path / "dataset"
    (src / "images").mkdir(parents=True)
    (src / "annotations.json").write_text("{}")
    for name in ("a", "b", "z"):
        (src / "images" / f"{name}.jpg").write_bytes(b"\xff\xd8" + name.encode())
    assert store.put_dir(src, "runs/r/ingest/dataset") == 4
    puts = [line for line in proxy.state.requests if line.startswith("PUT ")]
    assert puts[-1].startswith("PUT /artifacts/ns/runs/r/ingest/dataset/annotations.json")
    # an upload cut short leaves no marker: a reader never takes it for a whole dataset
    store.delete_prefix("runs/r/ingest/dataset")
    proxy.fail(None, match=r"^PUT .*images/z\.jpg")
    with pytest.raises(InfrastructureError):
        store.put_dir(src, "runs/r/ingest/dataset")
    assert not store.exists("runs/r/ingest/dataset/annotations.json")


def test_local_store_deletes_the_marker_first(tmp_path):
    store = LocalStore(tmp_path / "s")
    store.put_bytes(b"{}", "d/annotations.json")
    store.put_bytes(b"1", "d/images/a.jpg")
    store.delete_prefix("d")
    assert store.list("") == []


def test_time_bounds_must_be_positive_numbers(monkeypatch):
    from pipeline.store import s3_client

    for bad in ("abc", "0", "-1", "nan", "inf"):
        monkeypatch.setenv("NIGHTSHIFT_S3_READ_TIMEOUT_S", bad)
        with pytest.raises(ConfigError, match="NIGHTSHIFT_S3_READ_TIMEOUT_S"):
            s3_client("http://127.0.0.1:9")


def test_a_local_file_error_is_not_retried_as_an_outage(faulty_s3, tmp_path):
    proxy, store = faulty_s3
    started = time.monotonic()
    with pytest.raises(FileNotFoundError):
        store.put_file(tmp_path / "missing.bin", "runs/r/x")
    assert time.monotonic() - started < 1 and proxy.seen(r"^PUT ") == 0


@pytest.mark.parametrize("status, code, retried", [(503, "SlowDown", True), (500, "InternalError", True),
                                                   (400, "RequestTimeout", True), (429, "TooManyRequests", True),
                                                   (403, "AccessDenied", False), (400, "InvalidRequest", False)])
def test_which_answers_are_retried(faulty_s3, status, code, retried):
    proxy, store = faulty_s3
    store.put_bytes(b"x", "k")
    proxy.fail(1, status=status, code=code, match=r"^GET /artifacts/ns/k")
    if retried:
        assert store.get_bytes("k") == b"x"
    else:
        with pytest.raises(InfrastructureError, match=rf"^s3://artifacts/ns/k: download refused: S3 answered {code}$"):
            store.get_bytes("k")
