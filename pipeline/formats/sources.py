"""Where an export comes from: a directory, a .zip / .tar / .tar.gz archive, or an s3:// prefix.

`materialize(source, scratch)` returns a local directory holding the export. Archives are extracted
safely: absolute paths, `..`, links that leave the tree and device files are rejected (InputRejected
naming the archive and the member) before anything is written, and so is an archive whose members add up
to more than `Limits.max_bytes` uncompressed or number more than `Limits.max_members` (a zip bomb declares
its sizes; they are checked before extraction, and extraction never writes more than was declared). A
directory source may hold symlinks only when they stay inside it.
"""
from __future__ import annotations

import logging
import os
import posixpath
import shutil
import stat
import tarfile
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from urllib.parse import urlparse

from pipeline.errors import InputRejected

log = logging.getLogger(__name__)

ARCHIVE_SUFFIXES = (".zip", ".tar", ".tar.gz", ".tgz")


@dataclass(frozen=True)
class Limits:
    max_bytes: int = 50 * 2**30  # total uncompressed size of an archive's members
    max_members: int = 2_000_000  # members in one archive


def _check_totals(label: str, sizes: list[int], limits: Limits) -> None:
    if len(sizes) > limits.max_members:
        raise InputRejected(f"{len(sizes)} members, more than data.max_archive_members={limits.max_members}: "
                            "refusing to extract", path=label, field="members")
    total = sum(sizes)
    if total > limits.max_bytes:
        raise InputRejected(f"members add up to {total} bytes uncompressed, more than data.max_archive_bytes="
                            f"{limits.max_bytes}: refusing to extract (archive bomb?)", path=label, field="size")


def check_tree(root: Path, label: str) -> None:
    """Reject symlinks under `root` that resolve outside it (a directory export pointing at /etc/passwd)."""
    root = Path(root)
    real_root = root.resolve()
    for dirpath, dirnames, filenames in os.walk(root):
        for name in (*dirnames, *filenames):
            path = Path(dirpath) / name
            if path.is_symlink():
                target = path.resolve()
                if target != real_root and real_root not in target.parents:
                    rel = path.relative_to(root).as_posix()
                    raise InputRejected(f"symlink to {os.readlink(path)!r} leaves the dataset", path=label,
                                        field=rel)


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


def _zip_name(info: zipfile.ZipInfo) -> str:
    """The member's name as its tool wrote it. Zip tools that do not set the UTF-8 flag (Info-ZIP's zip, Windows'
    "compressed folder") mostly still write UTF-8 bytes, which zipfile reads as cp437: `café/` would become
    `caf├⌐/`, a class folder under a wrong name. Such a name is read as UTF-8 when its bytes are valid UTF-8."""
    if info.flag_bits & 0x800:
        return info.filename
    try:
        return info.filename.encode("cp437").decode("utf-8")
    except (UnicodeEncodeError, UnicodeDecodeError):
        return info.filename


def _extract_zip(path: Path, dest: Path, label: str, limits: Limits) -> None:
    with zipfile.ZipFile(path) as zf:
        infos = zf.infolist()
        _check_totals(label, [i.file_size for i in infos], limits)
        names = [_zip_name(info) for info in infos]
        for info, name in zip(infos, names):  # check every member before writing any
            rel = _check_member(label, name)
            mode = info.external_attr >> 16
            if stat.S_ISLNK(mode):
                target = zf.read(info).decode("utf-8", "replace")
                if not _link_stays_inside(rel, target):
                    raise InputRejected(f"symlink to {target!r} leaves the archive's tree", path=label, field=name)
                raise InputRejected("symlinks are not accepted in dataset archives", path=label, field=name)
        for info, name in zip(infos, names):
            out = dest / _check_member(label, name)
            if info.is_dir():
                out.mkdir(parents=True, exist_ok=True)
                continue
            out.parent.mkdir(parents=True, exist_ok=True)
            with zf.open(info) as src, open(out, "wb") as dst:
                shutil.copyfileobj(src, dst)


def _extract_tar(path: Path, dest: Path, label: str, limits: Limits) -> None:
    try:
        tf = tarfile.open(path)
    except tarfile.TarError as exc:
        raise InputRejected(f"not a readable tar archive: {exc}", path=label) from None
    with tf:
        members = tf.getmembers()
        _check_totals(label, [m.size for m in members], limits)
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


def extract(archive: Path, dest: Path, label: str | None = None, limits: Limits = Limits()) -> Path:
    """Extract `archive` into `dest` after checking every member; returns dest."""
    label = label or str(archive)
    dest.mkdir(parents=True, exist_ok=True)
    name = archive.name.lower()
    try:
        if name.endswith(".zip"):
            _extract_zip(archive, dest, label, limits)
        else:
            _extract_tar(archive, dest, label, limits)
    except zipfile.BadZipFile as exc:
        raise InputRejected(f"not a readable zip archive: {exc}", path=label) from None
    return dest


def _download_s3(source: str, dest: Path, endpoint_url: str) -> Path:
    """Download an s3:// archive or every object under an s3:// prefix into `dest`.

    Every request is bounded and retried (`pipeline.store.s3_call`): an S3 that cannot be asked fails with
    InfrastructureError (exit 5), not "input rejected"; a missing object or an empty prefix is the input's fault.
    """
    from pipeline.store import NoSuchBucket, S3NotFound, s3_call, s3_client

    parsed = urlparse(source)
    bucket, prefix = parsed.netloc, parsed.path.lstrip("/")
    client = s3_client(endpoint_url, attempts=1)  # s3_call retries
    if is_archive(prefix):
        local = dest / PurePosixPath(prefix).name
        local.parent.mkdir(parents=True, exist_ok=True)
        try:
            s3_call(lambda: client.download_file(bucket, prefix, str(local)), "download", source)
        except S3NotFound:
            try:  # a HEAD answers a bare 404 for a missing bucket too: say which one is missing
                s3_call(lambda: client.head_bucket(Bucket=bucket), "HEAD bucket", f"s3://{bucket}")
            except S3NotFound:
                raise InputRejected(f"no such S3 bucket {bucket!r}", path=source, field="data.source") from None
            raise InputRejected("no such object in S3", path=source, field="data.source") from None
        return local
    base = prefix.rstrip("/") + "/" if prefix else ""

    def listing() -> list[str]:
        keys = []
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=base):
            keys.extend(obj["Key"] for obj in page.get("Contents", []) if not obj["Key"].endswith("/"))
        return keys

    try:
        keys = s3_call(listing, "LIST", source)
    except (S3NotFound, NoSuchBucket):
        raise InputRejected(f"no such S3 bucket {bucket!r}", path=source, field="data.source") from None
    for key in keys:
        rel = _check_member(source, key[len(base):])
        out = dest / rel
        out.parent.mkdir(parents=True, exist_ok=True)
        url = f"s3://{bucket}/{key}"
        try:
            s3_call(lambda: client.download_file(bucket, key, str(out)), "download", url)  # noqa: B023 - called now
        except S3NotFound:
            raise InputRejected("listed, then gone: the export changed while it was read", path=url) from None
    if not keys:
        raise InputRejected("no objects under this S3 prefix", path=source)
    log.info("downloaded %d objects from %s", len(keys), source)
    return dest


def materialize(source: str, scratch: Path, endpoint_url: str = "", limits: Limits = Limits()) -> Path:
    """A local directory holding the export named by `source`; `scratch` is an empty directory to use."""
    scratch = Path(scratch)
    if source.startswith("s3://"):
        fetched = _download_s3(source, scratch / "download", endpoint_url)
        if fetched.is_file():
            return extract(fetched, scratch / "extracted", label=source, limits=limits)
        return fetched
    path = Path(source).expanduser()
    if path.is_dir():
        check_tree(path, source)
        return path
    if not path.exists():
        raise InputRejected("no such file or directory", path=source, field="data.source")
    if is_archive(path.name):
        return extract(path, scratch / "extracted", label=source, limits=limits)
    raise InputRejected("not a directory or a .zip / .tar / .tar.gz archive", path=source, field="data.source")
