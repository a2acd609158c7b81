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


def _without_utf8_flag(path) -> None:
    """Clear the UTF-8 name flag (bit 11) in every local and central header, as Info-ZIP's zip and Windows'
    "compressed folder" write archives: UTF-8 bytes, no flag."""
    data = bytearray(path.read_bytes())
    for signature, flag_at in ((b"PK\x03\x04", 6), (b"PK\x01\x02", 8)):
        start = data.find(signature)
        while start != -1:
            data[start + flag_at] &= ~0x08 & 0xFF  # 0x800 is bit 3 of the flag field's high byte
            data[start + flag_at + 1] &= ~0x08 & 0xFF
            start = data.find(signature, start + 4)
    path.write_bytes(bytes(data))


def test_zip_names_in_utf8_without_the_flag_keep_their_letters(tmp_path):
    """`café/0.jpg` zipped by a tool that sets no UTF-8 flag: extracted as `café/`, not cp437's `caf├⌐/`; a name
    that is not UTF-8 (a real cp437 one) stays as zipfile reads it."""
    archive = tmp_path / "classes.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("export/café/0.jpg", b"x")
        zf.writestr("export/golden retriever/1.jpg", b"y")
    _without_utf8_flag(archive)
    assert {i.flag_bits & 0x800 for i in zipfile.ZipFile(archive).infolist()} == {0}
    assert "export/caf├⌐/0.jpg" in zipfile.ZipFile(archive).namelist()  # what zipfile alone makes of it
    out = extract(archive, tmp_path / "out")
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*.jpg")) == ["export/café/0.jpg",
                                                                                 "export/golden retriever/1.jpg"]
    cp437 = tmp_path / "dos.zip"
    with zipfile.ZipFile(cp437, "w") as zf:  # an ASCII name of the same length, its bytes then made cp437's
        zf.writestr("r_sum_.jpg", b"z")
    cp437.write_bytes(cp437.read_bytes().replace(b"r_sum_", "résumé".encode("cp437")))
    assert [p.name for p in extract(cp437, tmp_path / "dos").iterdir()] == ["résumé.jpg"]
