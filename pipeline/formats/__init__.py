"""Annotation format readers: each turns an export on local disk into the canonical COCO dict.

`READERS[name](root, origin)` reads the export under `root` (a directory) and returns a `Dataset`:
COCO `images` / `annotations` / `categories` with the export's own ids and category names, plus the local
file of every image. `origin` is how files are named in error messages (the source the user gave, so a
message says `export.zip:annotations.json: annotations[12].bbox` rather than a temporary path).
Readers check the schema and raise `InputRejected(path=..., field=...)` for what makes the whole export
unusable (unreadable or unsafe files, paths leaving the export, an empty split); a defect of one item (bad
box, unknown class, missing image) sets that image aside in `Dataset.quarantine` instead, and ingest rejects
the export only when too many are set aside. Value checks (boxes inside the image) are the validate stage's.
With `task="classification"` (data.task) the exports are read for image-level labels instead
(`CLASSIFICATION_READERS`: ImageFolder trees, CSV/JSON manifests, Labelme flags, CVAT tags): one annotation
`{"id", "image_id", "category_id"}` per image, no box.
"""
from __future__ import annotations

import inspect
from pathlib import Path
from typing import Callable

from pipeline.errors import ConfigError
from pipeline.formats.base import Dataset, Problems
from pipeline.formats.coco import read_coco
from pipeline.formats.cvat import read_cvat, read_cvat_tags
from pipeline.formats.imagefolder import read_imagefolder
from pipeline.formats.kitti import read_kitti
from pipeline.formats.labelme import read_labelme, read_labelme_flags
from pipeline.formats.layout import Found, locate, sub_origin
from pipeline.formats.manifest import read_manifest
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
# image-level labels (data.task: classification): one class per image, no boxes
CLASSIFICATION_READERS: dict[str, Callable[..., Dataset]] = {
    "imagefolder": read_imagefolder,  # <class>/<image>, or <split>/<class>/<image>
    "manifest": read_manifest,  # a CSV (file,label[,split]) or JSON list naming each image's class
    "labelme": read_labelme_flags,  # one true flag per Labelme file
    "cvat": read_cvat_tags,  # one <tag> per <image> (CVAT for images 1.1)
}


def formats_for(task: str) -> tuple[str, ...]:
    """The data.format values that can hold labels for `task` (classification, or detection/segmentation)."""
    return tuple(CLASSIFICATION_READERS if task == "classification" else READERS)


def check_task_format(task: str, fmt: str) -> None:
    """ConfigError naming data.task and data.format when `fmt` cannot hold labels for `task` ("auto" always can)."""
    if fmt == "auto" or fmt in formats_for(task) or (fmt not in READERS and fmt not in CLASSIFICATION_READERS):
        return  # a format nobody reads is read()'s message
    kind = "image-level class labels" if task == "classification" else "boxes and masks"
    raise ConfigError(f"data.format={fmt} cannot hold {kind} for data.task={task}: use data.format auto or one of "
                      f"{', '.join(formats_for(task))}, or set data.task to the task of this export")


def read(fmt: str, root, origin: str = "", scratch=None, **options) -> Dataset:
    """Read the export under `root` with the reader for `fmt` (ConfigError when there is none).

    `options` go to the readers that take them (`one_based` for VOC, `task` for Labelme and CVAT masks);
    `scratch` to those that write files (Labelme's embedded imageData). With `task="classification"` the
    image-level readers (CLASSIFICATION_READERS) read the export instead.
    """
    task = options.get("task") or "detection"
    check_task_format(task, fmt)
    table = CLASSIFICATION_READERS if task == "classification" else READERS
    try:
        reader = table[fmt]
    except KeyError:
        raise ConfigError(f"data.format={fmt!r}: no reader for this format yet "
                          f"(available: {', '.join(sorted(table))})") from None
    params = inspect.signature(reader).parameters
    kwargs = {k: v for k, v in options.items() if k in params}
    if scratch is not None and "scratch" in params:
        kwargs["scratch"] = scratch
    return reader(root, origin or str(root), **kwargs)


def locate_and_read(fmt: str, top, origin: str = "", scratch=None, **options) -> tuple[Dataset, Found]:
    """Find the export under `top` (up to two folders down; `fmt` "auto" also detects the format), then read it."""
    found = locate(Path(top), fmt, origin or str(top), task=options.get("task") or "detection")
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


__all__ = ["CLASSIFICATION_READERS", "READERS", "Dataset", "Found", "Problems", "check_task_format", "formats_for",
           "locate", "locate_and_read", "read"]
