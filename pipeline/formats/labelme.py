"""Labelme exports: one `<image>.json` per image, written by Labelme beside (or near) the image it labels.

Each JSON has `shapes` ({"label", "points", "shape_type", "group_id", "flags", "description"}), `imagePath`
(relative to the JSON's folder, as Labelme writes it, possibly with Windows separators or `../`),
`imageData` (the image as base64, or null with `--nodata`) and `imageHeight` / `imageWidth`. Rectangles
(two opposite corners, in any order), polygons and circles (centre + a point on the rim) become boxes;
polygons keep their outline as a COCO segmentation; points and lines are not boxes and are skipped.
`group_id`, `flags` and `description` are kept as attributes. When the image file is missing but
`imageData` is embedded, the embedded bytes are the image. An `imagePath` that is absolute or leaves the
export rejects it (exit 3); a shape with bad points sets its image aside (quarantine).
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
from pipeline.formats.base import Dataset, display, inside, is_finite_number, relative_inside
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


def read_labelme(root, origin: str = "", scratch: Path | None = None) -> Dataset:
    root = export_root(Path(root))
    origin = origin or str(root)
    files = sorted(p for p in root.rglob("*.json") if not any(part.startswith(".") for part in
                                                             p.relative_to(root).parts))
    if not files:
        raise InputRejected("no Labelme annotations: expected <image>.json files", path=origin)
    records, names, skipped = [], set(), 0
    ds = Dataset([], [], [], [])
    for path in files:
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
        image_path = data["imagePath"]
        local = relative_inside(image_path, path.parent, root)
        if local is None:
            raise InputRejected(f"must be a relative path inside the export, got {image_path!r}", path=name,
                                field="imagePath")
        rel = PurePosixPath(os.path.normpath(local.relative_to(root).as_posix())).as_posix()
        local = root / rel
        ds.listed_images += 1
        if not local.is_file():
            embedded = data.get("imageData")
            if not embedded:
                ds.set_aside(name, "imagePath", f"no such image file {image_path!r} and no imageData", rel)
                continue
            try:
                raw = base64.b64decode(embedded, validate=True)
            except (binascii.Error, ValueError, TypeError):
                ds.set_aside(name, "imageData", "not valid base64", rel)
                continue
            if scratch is None:
                scratch = Path(tempfile.mkdtemp(prefix="nightshift-labelme-"))
            local = Path(scratch) / rel
            local.parent.mkdir(parents=True, exist_ok=True)
            local.write_bytes(raw)
        w, h = data.get("imageWidth"), data.get("imageHeight")
        boxes, bad = [], None
        for k, shape in enumerate(data["shapes"]):
            where = f"shapes[{k}]"
            if not isinstance(shape, dict):
                bad = (where, "must be an object")
                break
            label = shape.get("label")
            if not isinstance(label, str) or not label.strip():
                bad = (f"{where}.label", f"must be a non-empty string, got {label!r}")
                break
            if (shape.get("shape_type") or "polygon") not in BOX_SHAPES:
                skipped += 1
                continue
            got = _shape_box(shape, where)
            if isinstance(got, str):
                bad = (f"{where}.points", got)
                break
            attrs = {k2: shape[k2] for k2 in ("group_id", "flags", "description") if shape.get(k2) not in
                     (None, {}, "")}
            boxes.append((label.strip(), got[0], got[1], attrs))
        if bad:
            ds.set_aside(name, bad[0], bad[1], rel)
            continue
        names.update(b[0] for b in boxes)
        records.append((rel, local, w, h, boxes))
    cat_id = {n: i for i, n in enumerate(sorted(names), start=1)}
    seen: dict[str, str] = {}
    for rel, local, w, h, boxes in records:
        if rel in seen:
            raise InputRejected(f"two Labelme files name the image {rel!r} (also {seen[rel]})", path=origin,
                                field="imagePath")
        seen[rel] = rel
        image_id = len(ds.images) + 1
        # declared sizes are checked against the header by ingest; a missing one is filled from it there
        ds.images.append({"id": image_id, "file_name": rel, "width": w if isinstance(w, int) else None,
                          "height": h if isinstance(h, int) else None, "path": local})
        for label, bbox, poly, attrs in boxes:
            ann = {"id": len(ds.annotations) + 1, "image_id": image_id, "category_id": cat_id[label],
                   "bbox": bbox, "area": bbox[2] * bbox[3], "iscrowd": 0}
            if poly:
                ann["segmentation"] = [poly]
            if attrs:
                ann["attributes"] = attrs
            ds.annotations.append(ann)
    if skipped:
        log.info("labelme: skipped %d shapes that are not boxes (points, lines)", skipped)
    ds.categories = [{"id": i, "name": n} for n, i in cat_id.items()]
    ds.files = [display(origin, root, p) for p in files[:1]] + ([f"... {len(files)} Labelme files"]
                                                                if len(files) > 1 else [])
    return ds
