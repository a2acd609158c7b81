"""Annotation format readers: each turns an export on local disk into the canonical COCO dict.

`READERS[name](root, origin)` reads the export under `root` (a directory) and returns a `Dataset`:
COCO `images` / `annotations` / `categories` with the export's own ids and category names, plus the local
file of every image. `origin` is how files are named in error messages (the source the user gave, so a
message says `export.zip:annotations.json: annotations[12].bbox` rather than a temporary path).
Readers check the schema and raise `InputRejected(path=..., field=...)`; value checks (boxes inside the
image, sizes matching) are the validate stage's job.
"""
from __future__ import annotations

from typing import Callable

from pipeline.errors import ConfigError
from pipeline.formats.base import Dataset, Problems
from pipeline.formats.coco import read_coco
from pipeline.formats.voc import read_voc
from pipeline.formats.yolo import read_yolo

READERS: dict[str, Callable[..., Dataset]] = {
    "coco": read_coco,
    "voc": read_voc,
    "yolo": read_yolo,
}


def read(fmt: str, root, origin: str = "") -> Dataset:
    """Read the export under `root` with the reader for `fmt` (ConfigError when there is none)."""
    try:
        reader = READERS[fmt]
    except KeyError:
        raise ConfigError(f"data.format={fmt!r}: no reader for this format yet "
                          f"(available: {', '.join(sorted(READERS))})") from None
    return reader(root, origin or str(root))


__all__ = ["READERS", "Dataset", "Problems", "read"]
