"""Artifact store: a `file://` directory or an `s3://bucket/prefix`, addressed by relative keys.

Stages never pass files to each other on local disk: everything goes to `runs/<run_id>/<stage>/...` here,
and XCom carries only the run id and a small JSON result. Writes are atomic for readers: a file appears
under its final key only once complete (rename on disk; a single PUT on S3). A directory is published with
its completion marker (`annotations.json`, `result.json`, `.complete`) last and deleted with it first, so an
interrupted upload never looks like a whole dataset.

Errors are never "absent": `exists()` is False only on a definite not-found; an S3 that cannot be asked
(5xx, SlowDown, timeouts, refused connections) is retried with backoff within a time budget and then raises
`pipeline.errors.InfrastructureError` (exit 5) naming the URI; NoSuchBucket and access denied fail at once.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path, PurePosixPath
from typing import Iterator
from urllib.parse import urlparse

from pipeline.errors import ConfigError, InfrastructureError

_log = logging.getLogger(__name__)


# Bounds on every S3 call, so an endpoint that never answers fails in tens of seconds, not minutes. Each
# can be set in the environment (seconds): a connection must open within CONNECT, every read of a response
# must see bytes within READ, and a failing operation is retried with backoff until BUDGET has passed. The
# worst case for one operation is about BUDGET + CONNECT + READ (60 s with the defaults).
S3_TIMEOUTS = {"NIGHTSHIFT_S3_CONNECT_TIMEOUT_S": 5.0, "NIGHTSHIFT_S3_READ_TIMEOUT_S": 20.0,
               "NIGHTSHIFT_S3_RETRY_BUDGET_S": 35.0}
# S3 error codes that say "this object is not there": the only answers exists() turns into False
NOT_FOUND = ("404", "NoSuchKey", "NotFound")
# answers that retrying will not change: reported at once
PERMANENT = ("NoSuchBucket", "AccessDenied", "403", "InvalidAccessKeyId", "SignatureDoesNotMatch",
             "InvalidBucketName", "AllAccessDisabled", "AccountProblem", "InvalidObjectState")
# 4xx answers that are worth another try (any other 4xx is permanent; every 5xx is retried)
RETRIED_4XX = ("SlowDown", "RequestTimeout", "Throttling", "ThrottlingException", "RequestLimitExceeded",
               "TooManyRequests", "408", "429")


def _limit(name: str) -> float:
    raw = os.environ.get(name, "")
    try:
        value = float(raw) if raw else S3_TIMEOUTS[name]
    except ValueError:
        value = float("nan")
    if not (value > 0 and value < float("inf")):
        raise ConfigError(f"{name}={raw!r}: must be a positive number of seconds")
    return value


def s3_endpoint(endpoint_url: str = "") -> str:
    return endpoint_url or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or ""


def s3_client(endpoint_url: str = "", attempts: int = 4):
    """A boto3 S3 client with bounded connect/read timeouts; honours AWS_ENDPOINT_URL_S3 too.

    `attempts` is botocore's own retry count (standard mode, with backoff) for callers that make requests
    directly. Calls wrapped in `s3_call` use `attempts=1`: there the retries, within a total time budget, are
    `s3_call`'s, which also tells "not found" from "could not ask".
    """
    import boto3
    from botocore.config import Config as BotoConfig

    return boto3.client(
        "s3",
        endpoint_url=s3_endpoint(endpoint_url) or None,
        config=BotoConfig(retries={"total_max_attempts": attempts, "mode": "standard"},
                          connect_timeout=_limit("NIGHTSHIFT_S3_CONNECT_TIMEOUT_S"),
                          read_timeout=_limit("NIGHTSHIFT_S3_READ_TIMEOUT_S")),
    )


class S3NotFound(Exception):
    """A definite "no such object" (404 / NoSuchKey) from S3."""


class NoSuchBucket(InfrastructureError):
    """The bucket itself does not exist: a misconfiguration, reported at once (no retries)."""


def _response(exc: BaseException) -> dict | None:
    """The botocore response behind `exc` (a ClientError, or boto3's wrappers around one), else None."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        response = getattr(exc, "response", None)
        if isinstance(response, dict):
            return response
        exc = getattr(exc, "last_exception", None) or exc.__cause__ or exc.__context__
    return None


def s3_error_code(exc: BaseException) -> str | None:
    """The S3 error code behind `exc` ("NoSuchKey", "SlowDown", or the bare HTTP status of a HEAD), else None."""
    response = _response(exc)
    if response is None:
        return None
    code = response.get("Error", {}).get("Code") or response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    return str(code) if code else None


def _http_status(exc: BaseException) -> int | None:
    response = _response(exc)
    status = (response or {}).get("ResponseMetadata", {}).get("HTTPStatusCode")
    return int(status) if status else None


def _describe(exc: BaseException) -> str:
    """A short reason without request details: the error code, or the exception type and its message."""
    code = s3_error_code(exc)
    if code:
        return f"S3 answered {code}"
    text = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def s3_call(fn, what: str, uri: str, budget_s: float | None = None, log=None):
    """Run `fn()` (one S3 request or transfer); retry transient failures with backoff for `budget_s`.

    A definite not-found raises S3NotFound (the caller decides what that means). NoSuchBucket, access denied
    and other answers that retrying cannot change raise InfrastructureError at once; anything else (5xx,
    SlowDown, timeouts, refused or dropped connections) is retried and then raises InfrastructureError
    naming `uri` and how long it tried. Never returns "absent" for an error.
    """
    import random

    budget = _limit("NIGHTSHIFT_S3_RETRY_BUDGET_S") if budget_s is None else budget_s
    start = time.monotonic()
    attempt = 0
    while True:
        attempt += 1
        try:
            return fn()
        except Exception as exc:  # noqa: BLE001 - classified below; nothing is swallowed
            code = s3_error_code(exc)
            if code in NOT_FOUND:
                raise S3NotFound(uri) from None
            if code == "NoSuchBucket":
                bucket = urlparse(uri).netloc
                raise NoSuchBucket(f"bucket {bucket!r} does not exist (NoSuchBucket)", uri=uri) from None
            status = _http_status(exc) or (int(code) if code and code.isdigit() else None)
            if code in PERMANENT or (status and 400 <= status < 500 and code not in RETRIED_4XX
                                     and str(status) not in RETRIED_4XX):
                raise InfrastructureError(f"{what} refused: {_describe(exc)}", uri=uri) from None
            if not _transient(exc):
                raise
            elapsed = time.monotonic() - start
            delay = min(8.0, 0.25 * 2 ** (attempt - 1)) * (0.5 + random.random() / 2)
            if elapsed + delay >= budget:
                raise InfrastructureError(
                    f"{what} failed after {attempt} attempt{'s' * (attempt > 1)} in {elapsed:.0f} s "
                    f"(NIGHTSHIFT_S3_RETRY_BUDGET_S={budget:g}): {_describe(exc)}", uri=uri) from None
            if log or attempt == 1:
                (log or _log).warning("%s of %s failed (%s), attempt %d; retrying in %.1f s", what, uri,
                                      _describe(exc), attempt, delay)
            time.sleep(delay)


def _transient(exc: BaseException) -> bool:
    """Worth another try: a server-side or throttling answer, or a connection that failed or timed out."""
    from botocore.exceptions import BotoCoreError, ClientError

    code = s3_error_code(exc)
    if code is not None:
        return True  # 5xx, SlowDown, Throttling, RequestTimeout, 429: the permanent ones were handled before
    if isinstance(exc, (BotoCoreError, ClientError, ConnectionError, TimeoutError)):
        return True
    module = type(exc).__module__ or ""
    # boto3's RetriesExceededError, s3transfer's and urllib3's connection errors; not a local file's OSError
    return module.startswith(("boto3", "s3transfer", "urllib3", "botocore"))


# file names that mark a directory as complete: uploaded after everything else, deleted before it
COMMIT_LAST = ("annotations.json", "result.json", ".complete")


class ArtifactStore:
    """Common interface; `open_store(uri)` picks the backend."""

    uri: str

    def url(self, key: str) -> str:
        return f"{self.uri.rstrip('/')}/{key}"

    # backends implement these
    def put_file(self, local: str | Path, key: str) -> str: ...
    def get_file(self, key: str, local: str | Path) -> Path: ...
    def exists(self, key: str) -> bool: ...
    def list(self, prefix: str) -> list[str]: ...
    def delete_prefix(self, prefix: str) -> None: ...

    # shared helpers
    def put_bytes(self, data: bytes, key: str) -> str:
        with tempfile.NamedTemporaryFile(delete=False) as tmp:
            tmp.write(data)
        try:
            return self.put_file(tmp.name, key)
        finally:
            os.unlink(tmp.name)

    def get_bytes(self, key: str) -> bytes:
        with tempfile.TemporaryDirectory() as tmp:
            return self.get_file(key, Path(tmp) / "blob").read_bytes()

    def put_json(self, obj, key: str) -> str:
        return self.put_bytes(json.dumps(obj, indent=2, sort_keys=True, default=str).encode(), key)

    def get_json(self, key: str):
        return json.loads(self.get_bytes(key))

    def put_dir(self, local: str | Path, prefix: str) -> int:
        local = Path(local)
        n = 0
        files = sorted((p for p in local.rglob("*") if p.is_file()), key=lambda p: (p.name in COMMIT_LAST, p))
        for path in files:
            self.put_file(path, f"{prefix.rstrip('/')}/{path.relative_to(local).as_posix()}")
            n += 1
        return n

    def get_dir(self, prefix: str, local: str | Path) -> Path:
        local = Path(local)
        prefix = prefix.rstrip("/") + "/"
        keys = self.list(prefix)
        if not keys:
            raise FileNotFoundError(f"{self.url(prefix)}: nothing stored under this prefix")
        for key in keys:
            self.get_file(key, local / key[len(prefix):])
        return local


class LocalStore(ArtifactStore):
    def __init__(self, root: str | Path):
        self.root = Path(root).resolve()
        self.uri = self.root.as_uri()

    def _path(self, key: str) -> Path:
        path = (self.root / key).resolve()
        if self.root not in path.parents and path != self.root:
            raise ValueError(f"key {key!r} leaves the store")
        return path

    def put_file(self, local, key):
        dest = self._path(key)
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=".tmp-" + dest.name)
        os.close(fd)
        try:
            shutil.copyfile(local, tmp)
            os.replace(tmp, dest)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return self.url(key)

    def get_file(self, key, local):
        src = self._path(key)
        if not src.is_file():
            raise FileNotFoundError(f"{self.url(key)}: not in the artifact store")
        local = Path(local)
        local.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, local)
        return local

    def local_path(self, key: str) -> Path:
        return self._path(key)

    def exists(self, key):
        return self._path(key).is_file()

    def list(self, prefix):
        base = self._path(prefix.rstrip("/")) if prefix.strip("/") else self.root
        if base.is_file():
            return [prefix.rstrip("/")]
        if not base.is_dir():
            return []
        return sorted(
            p.relative_to(self.root).as_posix()
            for p in base.rglob("*")
            if p.is_file() and not p.name.startswith(".tmp-")
        )

    def delete_prefix(self, prefix):
        path = self._path(prefix.rstrip("/"))
        if path.is_dir():
            for name in COMMIT_LAST:  # the marker first: a half-deleted directory never looks complete
                (path / name).unlink(missing_ok=True)
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()


class S3Store(ArtifactStore):
    """Every request goes through `s3_call`: bounded in time, retried, and an error is never "absent"."""

    def __init__(self, uri: str, endpoint_url: str = ""):
        parsed = urlparse(uri)
        self.bucket = parsed.netloc
        self.prefix = parsed.path.strip("/")
        self.uri = f"s3://{self.bucket}/{self.prefix}".rstrip("/")
        self.endpoint_url = endpoint_url
        self._once = s3_client(endpoint_url, attempts=1)  # for s3_call, which does the retrying
        self._client = None
        self._bucket_seen = False

    @property
    def client(self):
        """A client with botocore's own retries, for callers that make their own requests (conditional PUTs)."""
        if self._client is None:
            self._client = s3_client(self.endpoint_url)
        return self._client

    @client.setter
    def client(self, value):
        self._client = value

    def _key(self, key: str) -> str:
        if ".." in Path(key).parts:
            raise ValueError(f"key {key!r} leaves the store")
        return f"{self.prefix}/{key}" if self.prefix else key

    def _call(self, fn, what: str, key: str):
        return s3_call(fn, what, self.url(key))

    def _check_bucket(self, key: str) -> None:
        """A HEAD on a missing bucket answers a bare 404 like a missing key: ask once whether the bucket exists."""
        if self._bucket_seen:
            return
        try:
            s3_call(lambda: self._once.head_bucket(Bucket=self.bucket), "HEAD bucket", f"s3://{self.bucket}")
        except S3NotFound:
            raise NoSuchBucket(f"bucket {self.bucket!r} does not exist (NoSuchBucket)", uri=self.url(key)) from None
        self._bucket_seen = True

    def put_file(self, local, key):
        try:
            self._call(lambda: self._once.upload_file(str(local), self.bucket, self._key(key)), "upload", key)
        except S3NotFound:  # an upload answered 404: the bucket is missing
            self._check_bucket(key)
            raise
        self._bucket_seen = True
        return self.url(key)

    def get_file(self, key, local):
        local = Path(local)
        local.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._call(lambda: self._once.download_file(self.bucket, self._key(key), str(local)), "download", key)
        except S3NotFound:
            local.unlink(missing_ok=True)
            self._check_bucket(key)
            raise FileNotFoundError(f"{self.url(key)}: not in the artifact store") from None
        except BaseException:
            local.unlink(missing_ok=True)  # never leave half a file behind
            raise
        self._bucket_seen = True
        return local

    def exists(self, key):
        """True / False only on a definite answer; an S3 that cannot be asked raises InfrastructureError."""
        try:
            self._call(lambda: self._once.head_object(Bucket=self.bucket, Key=self._key(key)), "HEAD", key)
        except S3NotFound:
            self._check_bucket(key)
            return False
        self._bucket_seen = True
        return True

    def _iter(self, prefix: str) -> Iterator[str]:
        full = self._key(prefix)
        strip = len(self.prefix) + 1 if self.prefix else 0

        def listing() -> list[str]:  # the whole listing is one retried unit: a retry starts it again
            keys = []
            for page in self._once.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=full):
                keys.extend(obj["Key"][strip:] for obj in page.get("Contents", []))
            return keys

        try:
            keys = self._call(listing, "LIST", prefix)
        except S3NotFound:
            self._check_bucket(prefix)
            raise
        self._bucket_seen = True
        return iter(keys)

    def list(self, prefix):
        return sorted(self._iter(prefix))

    def delete_prefix(self, prefix):
        keys = [self._key(k) for k in self._iter(prefix)]
        # the completion markers first: a reader never sees an object set that claims to be whole but is not
        keys.sort(key=lambda k: (PurePosixPath(k).name not in COMMIT_LAST, k))
        for i in range(0, len(keys), 1000):
            batch = {"Objects": [{"Key": k} for k in keys[i : i + 1000]]}
            self._call(lambda: self._once.delete_objects(Bucket=self.bucket, Delete=batch), "DELETE", prefix)


def open_store(uri: str, endpoint_url: str = "") -> ArtifactStore:
    parsed = urlparse(uri)
    if parsed.scheme == "s3":
        return S3Store(uri, endpoint_url)
    if parsed.scheme == "file":
        return LocalStore(parsed.path)
    if parsed.scheme == "":
        return LocalStore(uri)
    raise ValueError(f"store.uri {uri!r}: only file:// and s3:// are supported")


def retry(fn, attempts: int = 3, base_delay: float = 1.0, what: str = "operation", log=None):
    """Call fn() up to `attempts` times with exponential backoff; re-raise the last error."""
    for attempt in range(1, attempts + 1):
        try:
            return fn()
        except Exception as exc:  # noqa: BLE001 - retried, then re-raised
            if attempt == attempts:
                raise
            if log:
                log.warning("%s failed (attempt %d/%d): %s; retrying", what, attempt, attempts, exc)
            time.sleep(base_delay * 2 ** (attempt - 1))
