"""Labelme exports: one `<image>.json` per image, written by Labelme beside (or near) the image it labels.

Each JSON has `shapes` ({"label", "points", "shape_type", "group_id", "flags", "description"}), `imagePath`
(relative to the JSON's folder, as Labelme writes it, possibly with Windows separators or `../`),
`imageData` (the image as base64, or null with `--nodata`) and `imageHeight` / `imageWidth`. Rectangles
(two opposite corners, in any order), polygons and circles (centre + a point on the rim) become boxes;
polygons keep their outline as a COCO segmentation; points and lines are not boxes and are skipped. With
`task="segmentation"` a `shape_type: "mask"` shape (a base64 PNG of its crop + the crop's two corners) becomes
a COCO RLE at the image size (pipeline/datasets/masks.py), a circle its 32-gon outline and a rectangle its four
corners (Labelme fills both, as labelme2coco does); otherwise a mask is skipped like any non-box.
`group_id`, `flags` and `description` are kept as attributes; with `task="segmentation"` the shapes of one
file sharing a label and a group_id are one object in pieces (merged, as labelme2coco does). A shape
labelled `__ignore__` (labels.txt's first line in Labelme's examples) is an ignore region: one crowd
annotation per class, never a class of its own. The image is `imagePath` relative to the JSON,
else the last part of `imagePath` beside the JSON (absolute and Windows paths from the annotating machine),
else an image named like the JSON; when none is there (or `imagePath` names the JSON itself) the embedded
`imageData` is the image, as Labelme itself loads it. Nothing outside the export is ever read. A shape with
an empty label or a type that is not a box is skipped and listed in the quarantine report; a shape with bad
points sets its image aside (quarantine).
"""
from __future__ import annotations

import base64
import binascii
import json
import logging
import os
import tempfile
from pathlib import Path, PurePosixPath

from pipeline.errors import InputRejected
from pipeline.formats.base import (IMAGE_SUFFIXES, Dataset, basename, coco_segmentation, display, inside,
                                   is_finite_number, provenance, relative_inside)
from pipeline.formats.coco import export_root
from pipeline.formats.images import lazy_size

log = logging.getLogger(__name__)

BOX_SHAPES = ("rectangle", "polygon", "circle")
IGNORE_LABEL = "__ignore__"  # labelme's labels.txt convention: a region to leave out of every class


def _points(raw, need: int) -> list[tuple[float, float]] | None:
    if not isinstance(raw, list) or len(raw) < need:
        return None
    out = []
    for p in raw:
        if not (isinstance(p, list) and len(p) == 2 and all(is_finite_number(v) for v in p)):
            return None
        out.append((float(p[0]), float(p[1])))
    return out


def _shape_box(shape: dict, where: str) -> tuple[list[float], list[float] | None] | str:
    """(bbox, polygon or None) of one shape, or an error message."""
    kind = shape.get("shape_type") or "polygon"  # very old Labelme files have no shape_type: polygons
    if kind == "rectangle":
        pts = _points(shape.get("points"), 2)
        if pts is None or len(pts) != 2:
            return "a rectangle needs exactly 2 points [[x1, y1], [x2, y2]]"
        (x1, y1), (x2, y2) = pts
        return [min(x1, x2), min(y1, y2), abs(x2 - x1), abs(y2 - y1)], None
    if kind == "polygon":
        pts = _points(shape.get("points"), 3)
        if pts is None:
            return "a polygon needs at least 3 points [x, y]"
        xs, ys = [p[0] for p in pts], [p[1] for p in pts]
        return [min(xs), min(ys), max(xs) - min(xs), max(ys) - min(ys)], [v for p in pts for v in p]
    if kind == "circle":
        pts = _points(shape.get("points"), 2)
        if pts is None or len(pts) != 2:
            return "a circle needs 2 points: its centre and a point on its rim"
        (cx, cy), (px, py) = pts
        r = ((px - cx) ** 2 + (py - cy) ** 2) ** 0.5
        return [cx - r, cy - r, 2 * r, 2 * r], None
    return f"shape_type {kind!r} is not a box"


def _image_file(image_path, json_path: Path, root: Path) -> Path | None:
    """The image a Labelme file names, inside the export: `imagePath` relative to the JSON (as Labelme writes
    it, `\\` separators too), else its last part beside the JSON (an absolute or Windows path from the
    annotating machine, or one leaving the export), else an image named like the JSON; None when there is none
    (or `imagePath` names the JSON itself), so the embedded imageData is used."""
    def usable(p: Path | None) -> bool:
        return p is not None and p.suffix.lower() in IMAGE_SUFFIXES and p.is_file() and inside(p, root)

    if isinstance(image_path, str) and image_path:
        local = relative_inside(image_path, json_path.parent, root)
        if local is not None:
            local = root / PurePosixPath(os.path.normpath(local.relative_to(root).as_posix()))
        if usable(local):
            return local
        near = json_path.parent / basename(image_path)
        if basename(image_path) and usable(near):
            return near
    return next((c for c in (json_path.with_suffix(s) for s in IMAGE_SUFFIXES) if usable(c)), None)


def _suffix(image_path, raw: bytes) -> str:
    if raw[:8] == b"\x89PNG\r\n\x1a\n":
        return ".png"
    if raw[:3] == b"\xff\xd8\xff":
        return ".jpg"
    suffix = PurePosixPath(basename(image_path)).suffix.lower() if isinstance(image_path, str) else ""
    return suffix if suffix in IMAGE_SUFFIXES else ".png"


def _load(path: Path, root: Path, origin: str) -> tuple[str, dict]:
    """One Labelme JSON, checked to be one: (its name in messages, its content)."""
    name = display(origin, root, path)
    if not inside(path, root):
        raise InputRejected("symlink leaves the dataset", path=name)
    try:
        data = json.loads(path.read_bytes())
    except json.JSONDecodeError as exc:
        raise InputRejected(f"not valid JSON: {exc.msg}", path=name,
                            field=f"line {exc.lineno} column {exc.colno}") from None
    except UnicodeDecodeError as exc:
        raise InputRejected(f"not UTF-8 text: {exc.reason}", path=name, field=f"byte {exc.start}") from None
    if not isinstance(data, dict) or "shapes" not in data or "imagePath" not in data:
        raise InputRejected("not a Labelme file: expected an object with shapes and imagePath", path=name)
    if not isinstance(data["shapes"], list):
        raise InputRejected(f"must be a list, got {type(data['shapes']).__name__}", path=name, field="shapes")
    return name, data


def _image(ds: Dataset, data: dict, path: Path, root: Path, name: str, scratch: Path | None):
    """The image file of a Labelme JSON and its canonical name: the file `imagePath` names, else the embedded
    imageData written under `scratch` (a temporary folder made on first need). Returns (rel, local, scratch),
    or None after setting the JSON aside."""
    image_path = data["imagePath"]
    local = _image_file(image_path, path, root)
    if local is not None:
        return local.relative_to(root).as_posix(), local, scratch
    embedded = data.get("imageData")
    if not embedded:
        ds.set_aside(name, "imagePath", f"no such image file {image_path!r} (looked beside the JSON) and "
                     "no imageData", path.relative_to(root).as_posix())
        return None
    try:
        raw = base64.b64decode(embedded, validate=True)
    except (binascii.Error, ValueError, TypeError):
        ds.set_aside(name, "imageData", "not valid base64", path.relative_to(root).as_posix())
        return None
    # the embedded picture is the image (Labelme loads imageData first): named after the JSON
    rel = path.relative_to(root).with_suffix(_suffix(image_path, raw)).as_posix()
    if scratch is None:
        scratch = Path(tempfile.mkdtemp(prefix="nightshift-labelme-"))
    local = Path(scratch) / rel
    local.parent.mkdir(parents=True, exist_ok=True)
    local.write_bytes(raw)
    return rel, local, scratch


def _boxes(ds: Dataset, shapes: list, name: str, rel: str, task: str = "detection", size=None):
    """The box-like shapes as (label, bbox, polygon, attributes, where), skipping empty labels and shapes that
    are not boxes; returns (boxes, None), or (boxes so far, (field, reason)) for the defect that sets it aside.
    With task "segmentation" a mask shape is kept too, its `polygon` a COCO RLE at `size` (a callable giving
    the image's (height, width))."""
    boxes = []
    for k, shape in enumerate(shapes):
        where = f"shapes[{k}]"
        if not isinstance(shape, dict):
            return boxes, (where, "must be an object")
        label = shape.get("label")
        if label is not None and not isinstance(label, str):
            return boxes, (f"{where}.label", f"must be a string, got {label!r}")
        if not label or not label.strip():
            ds.skip(name, f"{where}.label", "shape with an empty label: skipped", rel)
            continue
        kind = shape.get("shape_type") or "polygon"
        if kind == "mask" and task == "segmentation":
            got = _mask_shape(shape, *size())
            if isinstance(got, str):
                return boxes, (f"{where}.mask", got)
        elif kind not in BOX_SHAPES:
            ds.skip(name, f"{where}.shape_type", f"shape_type {kind!r} is not a box: skipped", rel)
            continue
        elif kind == "polygon" and len(_points(shape.get("points"), 0) or [None] * 3) < 3:
            # a stray click or two (points that parse, fewer than 3): outlines nothing, like a box with no area
            ds.skip(name, f"{where}.points", "a polygon needs at least 3 points: skipped", rel)
            continue
        else:
            got = _shape_box(shape, where)
            if task == "segmentation" and kind in ("circle", "rectangle") and not isinstance(got, str):
                # Labelme fills circles and rectangles (labelme2coco writes them as these polygons): the outline
                # is the mask
                got = got[0], (_circle_outline if kind == "circle" else _rectangle_outline)(got[0])
        if isinstance(got, str):
            return boxes, (f"{where}.points", got)
        attrs = {k2: shape[k2] for k2 in ("group_id", "flags", "description") if shape.get(k2) not in
                 (None, {}, "")}
        boxes.append((label.strip(), got[0], got[1], attrs, where))
    return boxes, None


def _fill(ds: Dataset, records: list, names: set, origin: str) -> None:
    """Number the kept images, their annotations and the categories (by name) into `ds`; two JSON files naming
    the same image are refused. A shape labelled `__ignore__` (Labelme's convention: the first line of its
    labels.txt, left out of every class by labelme2coco / labelme2voc) becomes an ignore region: one crowd
    annotation per class, which training skips and evaluation does not count."""
    cat_id = {n: i for i, n in enumerate(sorted(names - {IGNORE_LABEL}), start=1)}
    seen: dict[str, str] = {}
    for rel, local, w, h, boxes, name in records:
        if rel in seen:
            raise InputRejected(f"two Labelme files name the image {rel!r} (also {seen[rel]})", path=origin,
                                field="imagePath")
        seen[rel] = rel
        image_id = len(ds.images) + 1
        # declared sizes are checked against the header by ingest; a missing one is filled from it there
        ds.images.append({"id": image_id, "file_name": rel, "width": w if isinstance(w, int) else None,
                          "height": h if isinstance(h, int) else None, "path": local,
                          "source": provenance(name, "")})
        for label, bbox, poly, attrs, where in boxes:
            ignore = label == IGNORE_LABEL
            for cid in (cat_id.values() if ignore else [cat_id[label]]):
                ann = {"id": len(ds.annotations) + 1, "image_id": image_id, "category_id": cid,
                       "bbox": bbox, "area": bbox[2] * bbox[3], "iscrowd": int(ignore),
                       "source": provenance(name, where)}
                if poly:  # an RLE, several polygons (a group's pieces), or one polygon
                    ann["segmentation"] = coco_segmentation(poly)
                if attrs or ignore:
                    ann["attributes"] = {**attrs, **({"labelme_label": IGNORE_LABEL, "ignore": True} if ignore
                                                     else {})}
                ds.annotations.append(ann)
    ds.categories = [{"id": i, "name": n} for n, i in cat_id.items()]


def _rectangle_outline(bbox: list[float]) -> list[float]:
    """A rectangle (its box) as its 4 corners, a flat COCO polygon, as labelme2coco writes it."""
    x, y, w, h = bbox
    return [x, y, x + w, y, x + w, y + h, x, y + h]


def _circle_outline(bbox: list[float], sides: int = 32) -> list[float]:
    """A circle (its bounding box) as a `sides`-gon through the rim, a flat COCO polygon."""
    import math

    r, cx, cy = bbox[2] / 2, bbox[0] + bbox[2] / 2, bbox[1] + bbox[3] / 2
    return [round(v, 3) for k in range(sides) for v in (cx + r * math.cos(2 * math.pi * k / sides),
                                                        cy + r * math.sin(2 * math.pi * k / sides))]


def _mask_shape(shape: dict, height: int, width: int) -> tuple[list[float], dict] | str:
    """(bbox, COCO RLE) of a Labelme mask shape, or an error message."""
    from pipeline.datasets.masks import bbox_area, labelme_mask

    if height <= 0 or width <= 0:
        return "the image's size is unknown (no imageHeight / imageWidth, and the image cannot be read)"
    rle = labelme_mask(shape, height, width)
    if isinstance(rle, str):
        return rle
    return bbox_area(rle, height, width)[0], rle


def read_labelme(root, origin: str = "", scratch: Path | None = None, task: str = "detection") -> Dataset:
    root = export_root(Path(root))
    origin = origin or str(root)
    files = sorted(p for p in root.rglob("*.json") if not any(part.startswith(".") for part in
                                                             p.relative_to(root).parts))
    if not files:
        raise InputRejected("no Labelme annotations: expected <image>.json files", path=origin)
    records, names, merged = [], set(), 0
    ds = Dataset([], [], [], [])
    for path in files:
        name, data = _load(path, root, origin)
        ds.listed_images += 1
        image = _image(ds, data, path, root, name, scratch)
        if image is None:
            continue
        rel, local, scratch = image
        size = lazy_size(data.get("imageWidth"), data.get("imageHeight"), local)
        boxes, bad = _boxes(ds, data["shapes"], name, rel, task, size)
        if bad:
            ds.set_aside(name, bad[0], bad[1], rel)
            continue
        if task == "segmentation":
            from pipeline.datasets.masks import merge_groups  # torch: imported by segmentation runs only

            before = len(boxes)
            boxes = merge_groups(boxes, size)
            merged += before - len(boxes)
        names.update(b[0] for b in boxes)
        records.append((rel, local, data.get("imageWidth"), data.get("imageHeight"), boxes, name))
    _fill(ds, records, names, origin)
    if merged:
        log.info("labelme: %d shapes joined the shape of the same label and group_id before them (one object in "
                 "pieces, as labelme2coco merges them)", merged)
    ignored = sum(1 for r in records for b in r[4] if b[0] == IGNORE_LABEL)
    if ignored:
        log.info("labelme: %d shapes labelled %s became ignore regions (crowd, one per class): not learnt, not "
                 "counted by evaluation", ignored, IGNORE_LABEL)
    if ds.skipped:
        log.info("labelme: skipped %d shapes (empty labels, points, lines): listed in the quarantine report",
                 len(ds.skipped))
    ds.files = [display(origin, root, p) for p in files[:1]] + ([f"... {len(files)} Labelme files"]
                                                                if len(files) > 1 else [])
    return ds


# -- classification: image-level flags ------------------------------------------------------------------
IGNORE_FLAG = "__ignore__"  # Labelme's own convention (examples/classification/flags.txt): leave the image out


def _flag_class(ds: Dataset, data: dict, name: str, rel: str) -> str | None:
    """The one class flagged true in a Labelme file (`labelme --flags cat,dog`), or None after skipping (no
    flag true, or __ignore__) or setting the image aside (several true, a flag that is not true/false)."""
    flags = data.get("flags")
    if flags is None:
        flags = {}
    if not isinstance(flags, dict):
        ds.set_aside(name, "flags", f"must be an object of class: true/false, got {type(flags).__name__}", rel)
        return None
    bad = [k for k, v in flags.items() if not isinstance(v, bool)]
    if bad:
        ds.set_aside(name, f"flags.{bad[0]}", f"must be true or false, got {flags[bad[0]]!r}", rel)
        return None
    if flags.get(IGNORE_FLAG):
        ds.skip(name, f"flags.{IGNORE_FLAG}", "flagged __ignore__: image left out", rel)
        return None
    true = [k for k, v in flags.items() if v and k != IGNORE_FLAG]
    if not true:
        ds.skip(name, "flags", "no class flagged true: image left out (not labelled)", rel)
        return None
    if len(true) > 1:
        ds.set_aside(name, "flags", f"{len(true)} classes flagged true ({', '.join(true)}): exactly one must be", rel)
        return None
    if not true[0].strip():
        ds.set_aside(name, "flags", "a flag with an empty name is true: exactly one class must be", rel)
        return None
    return true[0].strip()


def read_labelme_flags(root, origin: str = "", scratch: Path | None = None) -> Dataset:
    """A Labelme export labelled for image classification: each `<image>.json`'s `flags` ({"cat": true,
    "dog": false}, as `labelme --flags` writes them) with exactly one true flag gives the image its class.
    No true flag (or `__ignore__` true) skips the image, reported; several true set it aside. Images are found
    as for detection (imagePath, or the embedded imageData); `shapes` are not read, and the log says how many
    files had some."""
    root = export_root(Path(root))
    origin = origin or str(root)
    files = sorted(p for p in root.rglob("*.json") if not any(part.startswith(".") for part in
                                                             p.relative_to(root).parts))
    if not files:
        raise InputRejected("no Labelme annotations: expected <image>.json files", path=origin)
    ds = Dataset([], [], [], [])
    records, declared, with_shapes, seen = [], set(), 0, {}
    for path in files:
        name, data = _load(path, root, origin)
        ds.listed_images += 1
        image = _image(ds, data, path, root, name, scratch)
        if image is None:
            continue
        rel, local, scratch = image
        if rel in seen:
            raise InputRejected(f"two Labelme files name the image {rel!r} (also {seen[rel]})", path=name,
                                field="imagePath")
        seen[rel] = name
        with_shapes += bool(data["shapes"])
        if isinstance(data.get("flags"), dict):
            declared.update(k for k in data["flags"] if k != IGNORE_FLAG)
        label = _flag_class(ds, data, name, rel)
        if label is not None:
            records.append((rel, local, data.get("imageWidth"), data.get("imageHeight"), label, name))
    cat_id = {n: i for i, n in enumerate(sorted({r[4] for r in records}), start=1)}
    for rel, local, w, h, label, name in records:
        image_id = len(ds.images) + 1
        ds.images.append({"id": image_id, "file_name": rel, "width": w if isinstance(w, int) else None,
                          "height": h if isinstance(h, int) else None, "path": local,
                          "source": provenance(name, "")})
        ds.annotations.append({"id": image_id, "image_id": image_id, "category_id": cat_id[label],
                               "source": provenance(name, f"flags.{label}")})
    ds.categories = [{"id": i, "name": n} for n, i in cat_id.items()]
    unused = sorted(declared - set(cat_id))
    log.info("labelme (classification, flags): %d labelled images in %d classes%s", len(ds.images), len(cat_id),
             f"; flags never true, so no class: {', '.join(unused)}" if unused else "")
    if with_shapes:
        log.info("labelme: %d files also have shapes: not read for classification (image-level flags only)",
                 with_shapes)
    ds.files = [display(origin, root, p) for p in files[:1]] + ([f"... {len(files)} Labelme files"]
                                                                if len(files) > 1 else [])
    return ds
