"""pipeline.formats.images: the size a mask is decoded at is the one the annotation tool showed."""
from __future__ import annotations

from PIL import Image

from pipeline.formats.images import header_size, lazy_size


def _jpeg(path, width, height, orientation=None):
    exif = Image.Exif()
    if orientation is not None:
        exif[0x0112] = orientation
    Image.new("RGB", (width, height), (90, 120, 150)).save(path, format="JPEG", exif=exif.tobytes())
    return path


def test_the_declared_size_wins_else_the_header_as_the_tool_showed_it(tmp_path):
    plain = _jpeg(tmp_path / "plain.jpg", 40, 30)
    turned = _jpeg(tmp_path / "phone.jpg", 40, 30, orientation=6)  # stored landscape, shown portrait
    assert lazy_size(64, 48, plain)() == (48, 64)  # (height, width) from the export, the file unread
    assert lazy_size(None, None, plain)() == (30, 40)
    assert header_size(turned) == (30, 40) and lazy_size(None, 0, turned)() == (40, 30)
    assert lazy_size(None, None, tmp_path / "missing.jpg")() == (0, 0)
    (tmp_path / "broken.jpg").write_bytes(b"not a picture")
    assert lazy_size("40", "30", tmp_path / "broken.jpg")() == (0, 0)  # text sizes are not sizes
