"""Annotation format readers: each turns an export on local disk into the canonical COCO dict.

`READERS[name](root, origin)` reads the export under `root` (a directory) and returns a `Dataset`:
COCO `images` / `annotations` / `categories` with the export's own ids and category names, plus the local
file of every image. `origin` is how files are named in error messages (the source the user gave, so a
message says `export.zip:annotations.json: annotations[12].bbox` rather than a temporary path).
Readers check the schema and raise `InputRejected(path=..., field=...)` for what makes the whole export
unusable (unreadable or unsafe files, paths leaving the export, an empty split); a defect of one item (bad
box, unknown class, missing image) sets that image aside in `Dataset.quarantine` instead, and ingest rejects
the export only when too many are set aside. Value checks (boxes inside the image) are the validate stage's.
"""
from __future__ import annotations

import inspect
from pathlib import Path
from typing import Callable

from pipeline.errors import ConfigError
from pipeline.formats.base import Dataset, Problems
from pipeline.formats.coco import read_coco
from pipeline.formats.cvat import read_cvat
from pipeline.formats.kitti import read_kitti
from pipeline.formats.labelme import read_labelme
from pipeline.formats.layout import Found, locate, sub_origin
from pipeline.formats.voc import read_voc
from pipeline.formats.yolo import read_yolo

READERS: dict[str, Callable[..., Dataset]] = {
    "coco": read_coco,
    "voc": read_voc,
    "yolo": read_yolo,  # Ultralytics data.yaml, or the Darknet obj.data layout of CVAT's YOLO 1.1 export
    "labelme": read_labelme,
    "cvat": read_cvat,
    "kitti": read_kitti,
}


def read(fmt: str, root, origin: str = "", scratch=None, **options) -> Dataset:
    """Read the export under `root` with the reader for `fmt` (ConfigError when there is none).

    `options` go to the readers that take them (`one_based` for VOC); `scratch` to those that write files
    (Labelme's embedded imageData).
    """
    try:
        reader = READERS[fmt]
    except KeyError:
        raise ConfigError(f"data.format={fmt!r}: no reader for this format yet "
                          f"(available: {', '.join(sorted(READERS))})") from None
    params = inspect.signature(reader).parameters
    kwargs = {k: v for k, v in options.items() if k in params}
    if scratch is not None and "scratch" in params:
        kwargs["scratch"] = scratch
    return reader(root, origin or str(root), **kwargs)


def locate_and_read(fmt: str, top, origin: str = "", scratch=None, **options) -> tuple[Dataset, Found]:
    """Find the export under `top` (up to two folders down; `fmt` "auto" also detects the format), then read it."""
    found = locate(Path(top), fmt, origin or str(top))
    sub = sub_origin(origin or str(top), Path(top), found.root)
    return read(found.format, found.root, origin=sub, scratch=scratch, **options), found


__all__ = ["READERS", "Dataset", "Found", "Problems", "locate", "locate_and_read", "read"]
