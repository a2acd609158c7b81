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
    if found.parts:
        parts = [(part.name, read(found.format, part, origin=sub_origin(sub, found.root, part),
                                  scratch=None if scratch is None else Path(scratch) / part.name, **options))
                 for part in found.parts]
        return merge_split_folders(parts), found
    return read(found.format, found.root, origin=sub, scratch=scratch, **options), found


def merge_split_folders(parts: list[tuple[str, Dataset]]) -> Dataset:
    """One Dataset from per-split folders: categories matched by name, file names prefixed with their folder
    (two splits may hold the same name), each image's split its folder's unless its reader set one."""
    from pipeline.formats.base import split_of

    merged = Dataset([], [], [], [])
    names: dict[str, int] = {}
    for folder, ds in parts:
        cat_map = {}
        for cat in ds.categories:
            if cat["name"] not in names:
                names[cat["name"]] = len(merged.categories) + 1
                merged.categories.append({**cat, "id": names[cat["name"]]})
            cat_map[cat["id"]] = names[cat["name"]]
        img_map = {}
        for img in ds.images:
            img_map[img["id"]] = len(merged.images) + 1
            merged.images.append({**img, "id": img_map[img["id"]], "file_name": f"{folder}/{img['file_name']}",
                                  "split": img.get("split") or split_of(folder)})
        for ann in ds.annotations:
            merged.annotations.append({**ann, "id": len(merged.annotations) + 1, "image_id": img_map[ann["image_id"]],
                                       "category_id": cat_map[ann["category_id"]]})
        for kind in ("quarantine", "skipped"):
            getattr(merged, kind).extend({**q, "image": f"{folder}/{q['image']}" if q.get("image") else None}
                                         for q in getattr(ds, kind))
        merged.files += ds.files
        merged.listed_images += ds.listed_images or len(ds.images)
    return merged


__all__ = ["READERS", "Dataset", "Found", "Problems", "locate", "locate_and_read", "read"]
