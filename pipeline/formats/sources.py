"""Where an export comes from: a directory, a .zip / .tar / .tar.gz archive, or an s3:// prefix.

`materialize(source, scratch)` returns a local directory holding the export. Archives are extracted
safely: absolute paths, `..`, links that leave the tree and device files are rejected (InputRejected
naming the archive and the member) before anything is written.
"""
from __future__ import annotations

import logging
import posixpath
import shutil
import stat
import tarfile
import zipfile
from pathlib import Path, PurePosixPath
from urllib.parse import urlparse

from pipeline.errors import InputRejected

log = logging.getLogger(__name__)

ARCHIVE_SUFFIXES = (".zip", ".tar", ".tar.gz", ".tgz")


def is_archive(name: str) -> bool:
    return name.lower().endswith(ARCHIVE_SUFFIXES)


def _check_member(archive: str, name: str) -> str:
    """The member's normalised relative path, or InputRejected when it would land outside the tree."""
    if not name or "\x00" in name:
        raise InputRejected("empty or invalid member name", path=archive, field=repr(name))
    posix = name.replace("\\", "/")
    if posix.startswith("/") or PurePosixPath(posix).is_absolute() or (len(posix) > 1 and posix[1] == ":"):
        raise InputRejected("absolute path in archive: refusing to extract", path=archive, field=name)
    if ".." in PurePosixPath(posix).parts:
        raise InputRejected("path with '..' in archive: refusing to extract outside the target", path=archive,
                            field=name)
    return posixpath.normpath(posix)


def _link_stays_inside(member_path: str, target: str) -> bool:
    if target.startswith("/") or (len(target) > 1 and target[1] == ":"):
        return False
    resolved = posixpath.normpath(posixpath.join(posixpath.dirname(member_path), target))
    return not (resolved == ".." or resolved.startswith("../"))


def _extract_zip(path: Path, dest: Path, label: str) -> None:
    with zipfile.ZipFile(path) as zf:
        infos = zf.infolist()
        for info in infos:  # check every member before writing any
            rel = _check_member(label, info.filename)
            mode = info.external_attr >> 16
            if stat.S_ISLNK(mode):
                target = zf.read(info).decode("utf-8", "replace")
                if not _link_stays_inside(rel, target):
                    raise InputRejected(f"symlink to {target!r} leaves the archive's tree", path=label,
                                        field=info.filename)
                raise InputRejected("symlinks are not accepted in dataset archives", path=label, field=info.filename)
        for info in infos:
            rel = _check_member(label, info.filename)
            out = dest / rel
            if info.is_dir():
                out.mkdir(parents=True, exist_ok=True)
                continue
            out.parent.mkdir(parents=True, exist_ok=True)
            with zf.open(info) as src, open(out, "wb") as dst:
                shutil.copyfileobj(src, dst)


def _extract_tar(path: Path, dest: Path, label: str) -> None:
    try:
        tf = tarfile.open(path)
    except tarfile.TarError as exc:
        raise InputRejected(f"not a readable tar archive: {exc}", path=label) from None
    with tf:
        members = tf.getmembers()
        for m in members:
            rel = _check_member(label, m.name)
            if m.issym() or m.islnk():
                # hard-link names are relative to the archive root, symlink targets to the link's folder
                inside = _link_stays_inside(rel, m.linkname) if m.issym() else _link_stays_inside("x", m.linkname)
                if not inside:
                    raise InputRejected(f"link to {m.linkname!r} leaves the archive's tree", path=label, field=m.name)
                raise InputRejected("links are not accepted in dataset archives", path=label, field=m.name)
            if not (m.isfile() or m.isdir()):
                raise InputRejected("device, fifo or other special file in archive", path=label, field=m.name)
        # members are checked; the "data" filter is a second guard (strips modes, refuses anything odd)
        tf.extractall(dest, members=members, filter="data")


def extract(archive: Path, dest: Path, label: str | None = None) -> Path:
    """Extract `archive` into `dest` after checking every member; returns dest."""
    label = label or str(archive)
    dest.mkdir(parents=True, exist_ok=True)
    name = archive.name.lower()
    try:
        if name.endswith(".zip"):
            _extract_zip(archive, dest, label)
        else:
            _extract_tar(archive, dest, label)
    except zipfile.BadZipFile as exc:
        raise InputRejected(f"not a readable zip archive: {exc}", path=label) from None
    return dest


def _download_s3(source: str, dest: Path, endpoint_url: str) -> Path:
    from botocore.exceptions import BotoCoreError, ClientError

    from pipeline.store import s3_client

    parsed = urlparse(source)
    bucket, prefix = parsed.netloc, parsed.path.lstrip("/")
    client = s3_client(endpoint_url)
    try:
        if is_archive(prefix):
            local = dest / PurePosixPath(prefix).name
            local.parent.mkdir(parents=True, exist_ok=True)
            client.download_file(bucket, prefix, str(local))
            return local
        base = prefix.rstrip("/") + "/" if prefix else ""
        n = 0
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=base):
            for obj in page.get("Contents", []):
                key = obj["Key"]
                if key.endswith("/"):
                    continue
                rel = _check_member(source, key[len(base):])
                out = dest / rel
                out.parent.mkdir(parents=True, exist_ok=True)
                client.download_file(bucket, key, str(out))
                n += 1
    except (ClientError, BotoCoreError) as exc:
        raise InputRejected(f"cannot read from S3: {exc}", path=source) from None
    if n == 0:
        raise InputRejected("no objects under this S3 prefix", path=source)
    log.info("downloaded %d objects from %s", n, source)
    return dest


def materialize(source: str, scratch: Path, endpoint_url: str = "") -> Path:
    """A local directory holding the export named by `source`; `scratch` is an empty directory to use."""
    scratch = Path(scratch)
    if source.startswith("s3://"):
        fetched = _download_s3(source, scratch / "download", endpoint_url)
        if fetched.is_file():
            return extract(fetched, scratch / "extracted", label=source)
        return fetched
    path = Path(source).expanduser()
    if path.is_dir():
        return path
    if not path.exists():
        raise InputRejected("no such file or directory", path=source, field="data.source")
    if is_archive(path.name):
        return extract(path, scratch / "extracted", label=source)
    raise InputRejected("not a directory or a .zip / .tar / .tar.gz archive", path=source, field="data.source")
