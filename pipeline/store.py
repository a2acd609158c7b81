"""Artifact store: a `file://` directory or an `s3://bucket/prefix`, addressed by relative keys.

Stages never pass files to each other on local disk: everything goes to `runs/<run_id>/<stage>/...` here,
and XCom carries only the run id and a small JSON result. Writes are atomic for readers: a file appears
under its final key only once complete (rename on disk; a single PUT on S3).
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Iterator
from urllib.parse import urlparse


def s3_client(endpoint_url: str = ""):
    """A boto3 S3 client with retries for transient errors; honours AWS_ENDPOINT_URL_S3 too."""
    import boto3
    from botocore.config import Config as BotoConfig

    endpoint = endpoint_url or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or None
    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        config=BotoConfig(retries={"max_attempts": 8, "mode": "adaptive"}, connect_timeout=10, read_timeout=120),
    )


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
        for path in sorted(p for p in local.rglob("*") if p.is_file()):
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
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()


class S3Store(ArtifactStore):
    def __init__(self, uri: str, endpoint_url: str = ""):
        parsed = urlparse(uri)
        self.bucket = parsed.netloc
        self.prefix = parsed.path.strip("/")
        self.uri = f"s3://{self.bucket}/{self.prefix}".rstrip("/")
        self.client = s3_client(endpoint_url)

    def _key(self, key: str) -> str:
        if ".." in Path(key).parts:
            raise ValueError(f"key {key!r} leaves the store")
        return f"{self.prefix}/{key}" if self.prefix else key

    def put_file(self, local, key):
        self.client.upload_file(str(local), self.bucket, self._key(key))
        return self.url(key)

    def get_file(self, key, local):
        from botocore.exceptions import ClientError

        local = Path(local)
        local.parent.mkdir(parents=True, exist_ok=True)
        try:
            self.client.download_file(self.bucket, self._key(key), str(local))
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey"):
                raise FileNotFoundError(f"{self.url(key)}: not in the artifact store") from None
            raise
        return local

    def exists(self, key):
        from botocore.exceptions import ClientError

        try:
            self.client.head_object(Bucket=self.bucket, Key=self._key(key))
            return True
        except ClientError:
            return False

    def _iter(self, prefix: str) -> Iterator[str]:
        full = self._key(prefix)
        paginator = self.client.get_paginator("list_objects_v2")
        strip = len(self.prefix) + 1 if self.prefix else 0
        for page in paginator.paginate(Bucket=self.bucket, Prefix=full):
            for obj in page.get("Contents", []):
                yield obj["Key"][strip:]

    def list(self, prefix):
        return sorted(self._iter(prefix))

    def delete_prefix(self, prefix):
        keys = [self._key(k) for k in self._iter(prefix)]
        for i in range(0, len(keys), 1000):
            self.client.delete_objects(
                Bucket=self.bucket, Delete={"Objects": [{"Key": k} for k in keys[i : i + 1000]]}
            )


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
