"""A Triton model repository on a directory or an S3 prefix, with atomic, serialized version publication.

Layout (Triton's own, plus two files of ours that Triton ignores):

    <repo>/<model>/config.pbtxt        the served config, pinned to one version (version_policy specific)
    <repo>/<model>/labels.txt          the served version's labels (config.pbtxt's label_filename)
    <repo>/<model>/<N>/model.onnx
    <repo>/<model>/<N>/config.pbtxt    the version's own config (unpinned) and labels, kept for rollback
    <repo>/<model>/<N>/labels.txt
    <repo>/<model>/<N>/.complete       written last: checksums, run ids; readers ignore versions without it
    <repo>/<model>/.staging/<token>/   uploads in progress
    <repo>/<model>/.lock               one promotion at a time (flock on a directory, conditional put on S3)
    <repo>/<model>/.promotion.json     the journal of a promotion between its pin and its alias move

Publication: under the lock, upload to staging, read every file back and verify its sha256, move it to
`<N>/` (a rename on disk; copy + verify on S3), then write `.complete`. Only then may `activate(N)` pin the
model-level config to N. Pinning (rather than Triton's `latest` policy) means Triton can never pick up a
half-uploaded version, and a rollback is one config rewrite with the newer versions left in place.

The lock never outlives its holder for long. On a directory it is an flock, which the kernel releases when
the holder dies. On S3 it is a lease: the lock object says who holds it (host, pid) and until when
(`ttl_s`, 60 s by default); a thread renews it every ttl/3 while the holder works. A waiter breaks it (a
delete conditional on its ETag, so two waiters never both break it) once the lease has lapsed, or at once
when the holder is a process on this host that no longer exists. A holder whose lease was lost refuses to
pin or move the alias (`Lease.check()`). A waiter that gives up gets LockTimeout (exit 5), one line that
names the lock and its holder.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import socket
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Iterator
from urllib.parse import urlparse

from pipeline.checksums import sha256_file
from pipeline.errors import InfrastructureError
from pipeline.store import ArtifactStore, LocalStore, S3Store
from pipeline.triton import config as tconfig

log = logging.getLogger(__name__)

MARKER = ".complete"
STAGING = ".staging"
LOCK = ".lock"
JOURNAL = ".promotion.json"


class LockTimeout(InfrastructureError):
    """Another promotion held the repository lock for longer than we were willing to wait (exit 5)."""


class LockLost(InfrastructureError):
    """Our S3 lease was broken or could not be renewed: we may no longer change what is served (exit 5)."""


class Lease:
    """What `with repo.lock(...) as lease` gives: `check()` raises LockLost once the lock is no longer ours."""

    def __init__(self, where: str):
        self.where = where
        self.lost: str | None = None

    def check(self) -> None:
        if self.lost:
            raise LockLost(f"lock lost ({self.lost}): refusing to change what is served", uri=self.where)


class PublicationError(RuntimeError):
    """A checksum did not match after upload: the version was not published."""


def _owner() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def _holder_text(info: dict) -> str:
    """'pid 123 on host-a, lease until 12:00:05Z' from a lock's recorded holder."""
    if not info:
        return "holder unknown"
    parts = [f"pid {info.get('pid', '?')} on {info.get('host', '?')}"]
    if info.get("expires_at"):
        parts.append("lease until " + time.strftime("%H:%M:%SZ", time.gmtime(info["expires_at"])))
    return ", ".join(parts)


def _pid_namespace() -> str:
    """Which pid namespace our pids belong to: two containers may share a hostname but never their pids."""
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return ""


def holder_is_dead(info: dict) -> bool:
    """True when the holder is a process of this host and pid namespace that no longer exists (a holder
    elsewhere: never known, its lease decides)."""
    if info.get("host") != socket.gethostname() or not isinstance(info.get("pid"), int) \
            or info.get("pidns") != _pid_namespace() or not info.get("pidns"):
        return False
    try:
        os.kill(info["pid"], 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # exists, another user's
        return False
    return False


# -- backends: an ArtifactStore plus a move and a lock ----------------------------------------------------------
class DirBackend:
    def __init__(self, root: str | Path):
        self.store = LocalStore(root)
        self.location = str(self.store.root)

    def move_prefix(self, src: str, dst: str) -> None:
        """Atomic on one filesystem: the version directory appears whole."""
        target = self.store.local_path(dst)
        target.parent.mkdir(parents=True, exist_ok=True)
        os.rename(self.store.local_path(src), target)

    @contextlib.contextmanager
    def lock(self, key: str, timeout_s: float, ttl_s: float) -> Iterator[Lease]:
        """flock: released by the kernel when its holder dies, so it is never stale; the holder writes who it
        is into the file for a waiter's message."""
        path = self.store.local_path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        deadline = time.monotonic() + timeout_s
        with open(path, "a+") as fh:  # flock: per open file, so threads and processes both serialize
            while True:
                try:
                    fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        raise LockTimeout(f"held by {_holder_text(self._holder(path))} for more than "
                                          f"promote.lock_timeout_s={timeout_s:g}s", uri=str(path)) from None
                    time.sleep(0.05)
            fh.seek(0)
            fh.truncate()
            fh.write(json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "acquired_at": time.time()}))
            fh.flush()
            try:
                yield Lease(str(path))
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    @staticmethod
    def _holder(path: Path) -> dict:
        try:
            return json.loads(path.read_text() or "{}")
        except (OSError, ValueError):
            return {}


class S3Backend:
    def __init__(self, uri: str, endpoint_url: str = ""):
        self.store = S3Store(uri, endpoint_url)
        self.location = self.store.uri

    @property
    def client(self):
        return self.store.client

    def move_prefix(self, src: str, dst: str) -> None:
        """S3 has no rename: copy each object, then delete the source."""
        src = src.rstrip("/") + "/"
        for key in self.store.list(src):
            self.client.copy_object(Bucket=self.store.bucket, Key=self.store._key(dst.rstrip("/") + "/" + key[len(src):]),
                                    CopySource={"Bucket": self.store.bucket, "Key": self.store._key(key)})
        self.store.delete_prefix(src)

    @contextlib.contextmanager
    def lock(self, key: str, timeout_s: float, ttl_s: float) -> Iterator[Lease]:
        """A lock object created with If-None-Match: * (only one writer can create it), holding a lease of
        `ttl_s` that a thread renews every ttl/3 (a put conditional on its ETag). A lock whose lease lapsed, or
        whose holder is a dead process of this host, is removed with If-Match on its ETag, so two waiters can
        never both break it."""
        from botocore.exceptions import ClientError

        full = self.store._key(key)
        where = f"s3://{self.store.bucket}/{full}"
        etag = self._acquire(full, where, timeout_s, ttl_s)
        lease, stop = Lease(where), threading.Event()
        current = {"etag": etag, "expires_at": time.time() + ttl_s}
        renewer = threading.Thread(target=self._renew, args=(full, where, ttl_s, lease, stop, current),
                                   name="nightshift-lock-lease", daemon=True)
        renewer.start()
        try:
            yield lease
        finally:
            stop.set()
            renewer.join()
            try:
                self.client.delete_object(Bucket=self.store.bucket, Key=full, IfMatch=current["etag"])
            except ClientError as exc:
                log.warning("%s: lock was no longer ours on release (%s)", where, exc)

    def _acquire(self, full: str, where: str, timeout_s: float, ttl_s: float) -> str:
        """Create the lock object, breaking a stale one, until `timeout_s` has passed: returns its ETag."""
        from botocore.exceptions import ClientError

        bucket = self.store.bucket
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                return self.client.put_object(Bucket=bucket, Key=full, Body=_lock_body(ttl_s), IfNoneMatch="*")["ETag"]
            except ClientError as exc:
                if _status(exc) not in (409, 412):
                    raise
            try:
                held = self.client.get_object(Bucket=bucket, Key=full)
            except ClientError as exc:
                if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                    continue  # released meanwhile: try again at once
                raise
            try:
                info = json.loads(held["Body"].read() or b"{}")
            except ValueError:
                info = {}
            dead, lapsed = holder_is_dead(info), info.get("expires_at", 0) < time.time()
            if dead or lapsed:
                log.warning("%s: breaking a stale lock held by %s (%s)", where, _holder_text(info),
                            "its holder is dead" if dead else "its lease lapsed")
                try:
                    self.client.delete_object(Bucket=bucket, Key=full, IfMatch=held["ETag"])
                except ClientError as exc:  # another waiter broke it first, or it was renewed
                    if _status(exc) not in (404, 409, 412):
                        raise
                continue
            if time.monotonic() > deadline:
                raise LockTimeout(f"held by {_holder_text(info)} for more than promote.lock_timeout_s="
                                  f"{timeout_s:g}s", uri=where)
            time.sleep(0.2)

    def _renew(self, full: str, where: str, ttl_s: float, lease: Lease, stop: threading.Event,
               current: dict) -> None:
        """The renewing thread: every ttl/3 a put conditional on the lock's ETag, until `stop`; marks the lease
        lost when someone replaced the lock or it could not be renewed before it lapsed."""
        from botocore.exceptions import ClientError

        while not stop.wait(ttl_s / 3):
            try:
                new_body = _lock_body(ttl_s)
                current["etag"] = self.client.put_object(Bucket=self.store.bucket, Key=full, Body=new_body,
                                                         IfMatch=current["etag"])["ETag"]
                current["expires_at"] = json.loads(new_body)["expires_at"]
            except ClientError as exc:
                if _status(exc) in (404, 409, 412):  # deleted or replaced: someone broke our lease
                    lease.lost = f"broken by another process ({exc.response.get('Error', {}).get('Code')})"
                    log.error("%s: %s", where, lease.lost)
                    return
                log.warning("%s: renewing the lock failed (%s); retrying", where, exc)
            except Exception as exc:  # noqa: BLE001 - a network error: retry until the lease lapses
                log.warning("%s: renewing the lock failed (%s); retrying", where, type(exc).__name__)
            if time.time() > current["expires_at"]:
                lease.lost = "lease lapsed: it could not be renewed in time"
                log.error("%s: %s", where, lease.lost)
                return


def _lock_body(ttl_s: float) -> bytes:
    """What an S3 lock object holds: who holds it, and until when its lease runs."""
    return json.dumps({"owner": _owner(), "host": socket.gethostname(), "pid": os.getpid(),
                       "pidns": _pid_namespace(), "expires_at": time.time() + ttl_s}).encode()


def _status(exc) -> int | None:
    return exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")


def open_backend(location: str, endpoint_url: str = ""):
    parsed = urlparse(location)
    if parsed.scheme == "s3":
        return S3Backend(location, endpoint_url)
    if parsed.scheme in ("", "file"):
        return DirBackend(parsed.path if parsed.scheme == "file" else location)
    raise ValueError(f"promote.triton_repo {location!r}: only a directory, file:// or s3:// is supported")


# -- the repository --------------------------------------------------------------------------------------------
class ModelRepository:
    def __init__(self, location: str, endpoint_url: str = ""):
        self.backend = open_backend(location, endpoint_url)
        self.store: ArtifactStore = self.backend.store
        self.location = self.backend.location

    # reading ---------------------------------------------------------------------------------------------
    def _version_dirs(self, model: str) -> dict[int, list[str]]:
        out: dict[int, list[str]] = {}
        for key in self.store.list(f"{model}/"):
            parts = key.split("/")
            if len(parts) >= 3 and parts[1].isdigit():
                out.setdefault(int(parts[1]), []).append(key)
        return out

    def versions(self, model: str) -> list[int]:
        """Published versions (those with a completion marker), ascending."""
        return sorted(v for v, keys in self._version_dirs(model).items() if f"{model}/{v}/{MARKER}" in keys)

    def marker(self, model: str, version: int) -> dict | None:
        key = f"{model}/{version}/{MARKER}"
        return self.store.get_json(key) if self.store.exists(key) else None

    def find_by_run(self, model: str, run_id: str) -> int | None:
        """The published version a pipeline run produced, if any (promotion is idempotent per run)."""
        for version in reversed(self.versions(model)):
            if (self.marker(model, version) or {}).get("run_id") == run_id:
                return version
        return None

    def served_version(self, model: str) -> int | None:
        key = f"{model}/config.pbtxt"
        if not self.store.exists(key):
            return None
        return tconfig.pinned_version(self.store.get_bytes(key).decode())

    def url(self, model: str, version: int | None = None) -> str:
        return self.store.url(f"{model}/{version}" if version is not None else model)

    def lock(self, model: str, timeout_s: float = 600.0, ttl_s: float = 60.0):
        """Serialize promotions of one model: `with repo.lock(model) as lease: ...` (see Lease)."""
        return self.backend.lock(f"{model}/{LOCK}", timeout_s, ttl_s)

    # the journal of a promotion between its pin and its alias move (call with the lock held) ---------------
    def journal(self, model: str) -> dict | None:
        key = f"{model}/{JOURNAL}"
        return self.store.get_json(key) if self.store.exists(key) else None

    def write_journal(self, model: str, entry: dict) -> None:
        self.store.put_json(entry, f"{model}/{JOURNAL}")

    def clear_journal(self, model: str) -> None:
        self.store.delete_prefix(f"{model}/{JOURNAL}")

    # writing (call these with the lock held) ----------------------------------------------------------------
    def publish(self, model: str, files: dict[str, str | Path], metadata: dict | None = None) -> int:
        """Publish `files` ({name in the version dir: local path}) as the next version; returns its number.

        Leftover version directories without a marker and staged uploads are debris of a crashed publication
        (the lock is ours, so nobody is mid-upload) and are removed first. Any failure removes what this call
        uploaded.
        """
        for version, keys in self._version_dirs(model).items():
            if f"{model}/{version}/{MARKER}" not in keys:
                log.warning("%s: removing incomplete version %d left by a crashed publication",
                            self.url(model, version), version)
                self.store.delete_prefix(f"{model}/{version}/")
        if self.store.list(f"{model}/{STAGING}/"):
            log.warning("%s: removing uploads staged by a crashed publication", self.url(model) + f"/{STAGING}")
            self.store.delete_prefix(f"{model}/{STAGING}/")
        version = max(self.versions(model), default=0) + 1
        checksums = {name: sha256_file(path) for name, path in files.items()}
        staging = f"{model}/{STAGING}/{uuid.uuid4().hex}"
        final = f"{model}/{version}"
        try:
            for name, path in files.items():
                self.store.put_file(path, f"{staging}/{name}")
            self._verify(staging, checksums)
            self.backend.move_prefix(staging, final)
            self._verify(final, checksums)
            marker = {"version": version, "files": checksums, "published_at": time.time(), **(metadata or {})}
            self.store.put_json(marker, f"{final}/{MARKER}")  # last: from here on the version exists
        except BaseException:
            self.store.delete_prefix(staging + "/")
            self.store.delete_prefix(final + "/")
            raise
        log.info("published %s (%d files, checksums verified)", self.url(model, version), len(files))
        return version

    def _verify(self, prefix: str, checksums: dict[str, str]) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            for name, expected in checksums.items():
                got = sha256_file(self.store.get_file(f"{prefix}/{name}", Path(tmp) / name))
                if got != expected:
                    raise PublicationError(f"{self.store.url(prefix + '/' + name)}: sha256 {got} != {expected}")

    def activate(self, model: str, version: int | None) -> None:
        """Make Triton serve `version` (its labels, then its config pinned to it); None serves nothing."""
        if version is None:
            self.store.delete_prefix(f"{model}/config.pbtxt")
            self.store.delete_prefix(f"{model}/{tconfig.LABELS_FILE}")
            return
        if version not in self.versions(model):
            raise FileNotFoundError(f"{self.url(model, version)}: not a published version")
        base = f"{model}/{version}"
        if self.store.exists(f"{base}/{tconfig.LABELS_FILE}"):
            self.store.put_bytes(self.store.get_bytes(f"{base}/{tconfig.LABELS_FILE}"),
                                 f"{model}/{tconfig.LABELS_FILE}")
        text = tconfig.pin_version(self.store.get_bytes(f"{base}/config.pbtxt").decode(), version)
        self.store.put_bytes(text.encode(), f"{model}/config.pbtxt")
        log.info("%s: serving version %d", self.url(model), version)

    def unpublish(self, model: str, version: int, fallback: int | None = None) -> None:
        """Remove `version` (marker first, so it disappears at once); if it was served, serve `fallback`."""
        served = self.served_version(model)
        self.store.delete_prefix(f"{model}/{version}/{MARKER}")
        self.store.delete_prefix(f"{model}/{version}/")
        if served == version:
            self.activate(model, fallback if fallback in self.versions(model) else None)
        log.info("unpublished %s", self.url(model, version))

    def prune(self, model: str, keep: int, protect: set[int] | frozenset[int] = frozenset()) -> list[int]:
        """Delete all but the newest `keep` versions; the served version and `protect` always stay."""
        versions = self.versions(model)
        keep_set = set(versions[-keep:]) if keep > 0 else set()
        keep_set |= set(protect) | {self.served_version(model)}
        pruned = [v for v in versions if v not in keep_set]
        for version in pruned:
            self.store.delete_prefix(f"{model}/{version}/{MARKER}")
            self.store.delete_prefix(f"{model}/{version}/")
        if pruned:
            log.info("%s: pruned versions %s (keeping %d)", self.url(model), pruned, keep)
        return pruned
