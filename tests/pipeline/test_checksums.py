"""pipeline.checksums: the one file-digest helper, read in chunks, equal to hashing the bytes whole."""
from __future__ import annotations

import hashlib

from pipeline.checksums import CHUNK, file_digest, sha256_file


def test_digests_equal_hashing_the_whole_bytes_across_chunk_boundaries(tmp_path):
    for size in (0, 1, CHUNK - 1, CHUNK, 2 * CHUNK + 7):
        data = bytes((i * 7 + size) % 251 for i in range(size))
        path = tmp_path / f"f{size}"
        path.write_bytes(data)
        assert sha256_file(path) == hashlib.sha256(data).hexdigest(), size
        assert file_digest(str(path), "md5") == hashlib.md5(data).hexdigest(), size


def test_one_changed_byte_changes_the_digest(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.write_bytes(b"x" * (CHUNK + 10))
    b.write_bytes(b"x" * CHUNK + b"y" + b"x" * 9)
    assert sha256_file(a) != sha256_file(b)
