"""Labelme exports: one `<image>.json` per image, written by Labelme beside (or near) the image it labels.

Each JSON has `shapes` ({"label", "points", "shape_type", "group_id", "flags", "description"}), `imagePath`
(relative to the JSON's folder, as Labelme writes it, possibly with Windows separators or `../`),
`imageData` (the image as base64, or null with `--nodata`) and `imageHeight` / `imageWidth`. Rectangles
(two opposite corners, in any order), polygons and circles (centre + a point on the rim) become boxes;
polygons keep their outline as a COCO segmentation; points and lines are not boxes and are skipped.
`group_id`, `flags` and `description` are kept as attributes. The image is `imagePath` relative to the JSON,
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
from pipeline.formats.base import (IMAGE_SUFFIXES, Dataset, basename, display, inside, is_finite_number, provenance,
                                   relative_inside)
from pipeline.formats.coco import export_root

log = logging.getLogger(__name__)

BOX_SHAPES = ("rectangle", "polygon", "circle")


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


def _boxes(ds: Dataset, shapes: list, name: str, rel: str):
    """The box-like shapes as (label, bbox, polygon, attributes, where), skipping empty labels and shapes that
    are not boxes; returns (boxes, None), or (boxes so far, (field, reason)) for the defect that sets it aside."""
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
        if kind not in BOX_SHAPES:
            ds.skip(name, f"{where}.shape_type", f"shape_type {kind!r} is not a box: skipped", rel)
            continue
        got = _shape_box(shape, where)
        if isinstance(got, str):
            return boxes, (f"{where}.points", got)
        attrs = {k2: shape[k2] for k2 in ("group_id", "flags", "description") if shape.get(k2) not in
                 (None, {}, "")}
        boxes.append((label.strip(), got[0], got[1], attrs, where))
    return boxes, None


def _fill(ds: Dataset, records: list, names: set, origin: str) -> None:
    """Number the kept images, their annotations and the categories (by name) into `ds`; two JSON files naming
    the same image are refused."""
    cat_id = {n: i for i, n in enumerate(sorted(names), start=1)}
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
            ann = {"id": len(ds.annotations) + 1, "image_id": image_id, "category_id": cat_id[label],
                   "bbox": bbox, "area": bbox[2] * bbox[3], "iscrowd": 0, "source": provenance(name, where)}
            if poly:
                ann["segmentation"] = [poly]
            if attrs:
                ann["attributes"] = attrs
            ds.annotations.append(ann)
    ds.categories = [{"id": i, "name": n} for n, i in cat_id.items()]


def read_labelme(root, origin: str = "", scratch: Path | None = None) -> Dataset:
    root = export_root(Path(root))
    origin = origin or str(root)
    files = sorted(p for p in root.rglob("*.json") if not any(part.startswith(".") for part in
                                                             p.relative_to(root).parts))
    if not files:
        raise InputRejected("no Labelme annotations: expected <image>.json files", path=origin)
    records, names = [], set()
    ds = Dataset([], [], [], [])
    for path in files:
        name, data = _load(path, root, origin)
        ds.listed_images += 1
        image = _image(ds, data, path, root, name, scratch)
        if image is None:
            continue
        rel, local, scratch = image
        boxes, bad = _boxes(ds, data["shapes"], name, rel)
        if bad:
            ds.set_aside(name, bad[0], bad[1], rel)
            continue
        names.update(b[0] for b in boxes)
        records.append((rel, local, data.get("imageWidth"), data.get("imageHeight"), boxes, name))
    _fill(ds, records, names, origin)
    if ds.skipped:
        log.info("labelme: skipped %d shapes (empty labels, points, lines): listed in the quarantine report",
                 len(ds.skipped))
    ds.files = [display(origin, root, p) for p in files[:1]] + ([f"... {len(files)} Labelme files"]
                                                                if len(files) > 1 else [])
    return ds
