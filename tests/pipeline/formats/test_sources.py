"""Sources: safe archive extraction (zip-slip, absolute paths, links) before anything is written."""
from __future__ import annotations

import tarfile
import zipfile

import pytest

from pipeline.errors import InputRejected
from pipeline.formats.sources import extract, materialize


@pytest.mark.parametrize("name", ["../x.txt", "/etc/x.txt", "a/../../x.txt", "C:/x.txt"])
def test_zip_members_outside_the_tree_are_rejected(tmp_path, name):
    archive = tmp_path / "a.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("ok.txt", "fine")
        zf.writestr(name, "bad")
    with pytest.raises(InputRejected) as exc:
        extract(archive, tmp_path / "out")
    assert exc.value.field == name
    assert not (tmp_path / "out" / "ok.txt").exists()  # checked before anything is written


def test_zip_symlink_is_rejected(tmp_path):
    archive = tmp_path / "l.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        info = zipfile.ZipInfo("images/link.jpg")
        info.external_attr = (0o120777 << 16)
        zf.writestr(info, "../../../../etc/passwd")
    with pytest.raises(InputRejected, match="leaves the archive's tree"):
        extract(archive, tmp_path / "out")


def test_tar_hardlink_and_device_are_rejected(tmp_path):
    archive = tmp_path / "h.tar"
    with tarfile.open(archive, "w") as tf:
        link = tarfile.TarInfo("hard")
        link.type, link.linkname = tarfile.LNKTYPE, "../../etc/shadow"
        tf.addfile(link)
    with pytest.raises(InputRejected, match="leaves"):
        extract(archive, tmp_path / "o1")
    with tarfile.open(archive, "w") as tf:
        dev = tarfile.TarInfo("dev")
        dev.type = tarfile.CHRTYPE
        tf.addfile(dev)
    with pytest.raises(InputRejected, match="special file"):
        extract(archive, tmp_path / "o2")


def test_unreadable_and_unknown_sources(tmp_path):
    (tmp_path / "broken.zip").write_bytes(b"not a zip")
    with pytest.raises(InputRejected, match="not a readable zip"):
        materialize(str(tmp_path / "broken.zip"), tmp_path / "s")
    (tmp_path / "data.csv").write_text("x")
    with pytest.raises(InputRejected, match="not a directory or a .zip"):
        materialize(str(tmp_path / "data.csv"), tmp_path / "s")
    assert materialize(str(tmp_path), tmp_path / "s") == tmp_path
