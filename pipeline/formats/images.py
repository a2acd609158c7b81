"""Image files read cheaply: size from the header, truncation from the end marker, sha1 of the bytes, one read.

`probe(path)` never decodes pixels: JPEG and PNG headers are parsed here (SOF / IHDR), other formats with
Pillow's lazy `Image.open`, which also reads only the header. A JPEG that does not end with its EOI marker or
a PNG without its IEND chunk is reported as truncated, which catches the usual half-copied file without a
full decode (validate's `image_check: decode` does the full decode). Declared sizes are what a decompression
bomb lies about, so callers compare `width * height` with `data.max_image_pixels` before anything decodes it.
"""
from __future__ import annotations

import hashlib
import io
import struct
import warnings
from dataclasses import dataclass
from pathlib import Path

# JPEG start-of-frame markers carrying the frame size (not DHT C4, JPG C8, DAC CC)
_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@dataclass
class Probe:
    width: int | None
    height: int | None
    format: str
    sha1: str
    error: str = ""  # empty when the header is readable and the file is complete

    @property
    def pixels(self) -> int:
        return (self.width or 0) * (self.height or 0)


def _jpeg_size(data: bytes) -> tuple[int, int] | None:
    pos, n = 2, len(data)
    while pos + 4 <= n:
        if data[pos] != 0xFF:
            return None
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in (0x01, 0xD8) or 0xD0 <= marker <= 0xD7:  # markers without a length
            pos += 2
            continue
        (length,) = struct.unpack(">H", data[pos + 2:pos + 4])
        if marker in _SOF:
            if pos + 9 > n:
                return None
            height, width = struct.unpack(">HH", data[pos + 5:pos + 9])
            return width, height
        if marker == 0xD9 or length < 2:
            return None
        pos += 2 + length
    return None


def probe_bytes(data: bytes) -> Probe:
    sha1 = hashlib.sha1(data).hexdigest()
    if data[:8] == _PNG_SIGNATURE:
        if len(data) < 24 or data[12:16] != b"IHDR":
            return Probe(None, None, "png", sha1, "PNG without an IHDR header")
        width, height = struct.unpack(">II", data[16:24])
        error = "" if b"IEND" in data[-64:] else "truncated PNG (no IEND chunk at the end)"
        return Probe(width, height, "png", sha1, error)
    if data[:3] == b"\xff\xd8\xff":
        size = _jpeg_size(data)
        if size is None:
            return Probe(None, None, "jpeg", sha1, "JPEG without a readable frame header (SOF)")
        error = "" if data.rstrip(b"\x00\r\n ")[-2:] == b"\xff\xd9" else "truncated JPEG (no end-of-image marker)"
        return Probe(size[0], size[1], "jpeg", sha1, error)
    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # DecompressionBombWarning: the caller compares sizes itself
            with Image.open(io.BytesIO(data)) as img:
                return Probe(img.size[0], img.size[1], (img.format or "").lower(), sha1)
    except Image.DecompressionBombError as exc:
        return Probe(None, None, "", sha1, f"decompression bomb: {exc}")
    except Exception as exc:  # noqa: BLE001 - any reader error means the header is unusable
        return Probe(None, None, "", sha1, f"not a readable image: {type(exc).__name__}: {exc}")


def probe(path: str | Path) -> Probe:
    try:
        with open(path, "rb") as fh:
            data = fh.read()
    except OSError as exc:
        return Probe(None, None, "", "", f"cannot read the file: {exc.strerror or exc}")
    if not data:
        return Probe(None, None, "", hashlib.sha1(b"").hexdigest(), "empty file")
    return probe_bytes(data)


def header_size(path: str | Path) -> tuple[int, int] | None:
    """(width, height) as the annotation tools show the image: the header's, swapped when the file's EXIF
    orientation turns it a quarter (5-8: phone photos held upright), or None when it cannot be read."""
    p = probe(path)
    if not (p.width and p.height):
        return None
    return (p.height, p.width) if p.format == "jpeg" and orientation(path) in QUARTER_TURNS else (p.width, p.height)


def lazy_size(width, height, path: str | Path):
    """A callable giving an image's (height, width) as the annotation tool showed it, for decoding a mask at the
    image's size: the export's declared `width` / `height` when both are positive integers, else the header's
    (`header_size`), (0, 0) when unreadable (ingest sets such an image aside anyway). Nothing is read until a mask
    asks."""
    def size() -> tuple[int, int]:
        if isinstance(width, int) and isinstance(height, int) and width > 0 and height > 0:
            return height, width
        got = header_size(path)
        return (got[1], got[0]) if got else (0, 0)
    return size


# EXIF orientations (tag 0x0112): 1 as stored; 2-4 mirrored / turned half; 5-8 turned a quarter (width and height
# swap). Annotation tools (CVAT, Labelme, Label Studio, Roboflow, browsers, OpenCV's imread) show and label the
# image with its orientation applied; decoders used for training (torchvision's decode_image, Pillow) do not.
QUARTER_TURNS = (5, 6, 7, 8)


def orientation(path: str | Path) -> int:
    """The EXIF orientation of a JPEG (1 when it has none or it cannot be read); reads the header only."""
    from PIL import Image

    try:
        with open(path, "rb") as fh:
            if b"Exif\x00\x00" not in fh.read(1 << 16):  # no EXIF segment where JPEG keeps it: most files
                return 1
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(path) as img:
                value = img.getexif().get(0x0112, 1)
    except Exception:  # noqa: BLE001 - no readable EXIF means no orientation
        return 1
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


def write_upright(src: str | Path, dest: str | Path) -> tuple[int, int]:
    """Write `src` with its EXIF orientation applied to the pixels (and the tag dropped) as a JPEG at `dest`;
    returns the new (width, height). Re-encoded at quality 95: one generation of JPEG loss."""
    from PIL import Image, ImageOps

    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    with Image.open(src) as img:
        upright = ImageOps.exif_transpose(img).convert("RGB")
        upright.save(dest, format="JPEG", quality=95)
        return upright.size


def probe_many(paths, workers: int = 4) -> list[Probe]:
    """Probe many files; threads overlap the file reads (hashing and reading release the GIL)."""
    paths = list(paths)
    if len(paths) < 256:
        return [probe(p) for p in paths]
    from concurrent.futures import ThreadPoolExecutor

    chunks = [paths[i:i + 512] for i in range(0, len(paths), 512)]  # one future per chunk, not per file
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return [p for chunk in pool.map(lambda c: [probe(x) for x in c], chunks) for p in chunk]
