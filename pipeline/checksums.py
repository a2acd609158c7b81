"""Digests of files, read in 1 MiB chunks (a model or a dataset file never has to fit in memory whole).

The one place the project hashes a file: export records the sha256 of what it verified, promote and the Triton
repository check it before and after publication, training records the weights it started from, and the DVC
directory hash is made of every file's md5.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

CHUNK = 1 << 20


def file_digest(path: str | Path, algorithm: str = "sha256") -> str:
    """The hex digest of the file's bytes (`algorithm`: any hashlib name)."""
    digest = hashlib.new(algorithm)
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def sha256_file(path: str | Path) -> str:
    """The sha256 of the file's bytes, as hex."""
    return file_digest(path, "sha256")
