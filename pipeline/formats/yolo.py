"""YOLO exports in the Ultralytics layout: `data.yaml` (names, train/val/test) + images/ and labels/.

Each image `.../images/<rel>.jpg` has `.../labels/<rel>.txt` with one `class cx cy w h` line per box
(normalised to 0..1) or `class x1 y1 x2 y2 ...` for a polygon. The export's own train/val/test lists are
read only to find the images: Nightshift draws its own splits from the group-key hash.
"""
from __future__ import annotations

import math
from pathlib import Path

import yaml

from pipeline.errors import InputRejected
from pipeline.formats.base import IMAGE_SUFFIXES, Dataset, Problems, display
from pipeline.formats.coco import export_root


def _inside(path: Path, root: Path) -> bool:
    try:
        path.resolve().relative_to(root.resolve())
        return True
    except ValueError:
        return False


def _names(spec, where: str) -> dict[int, str]:
    if isinstance(spec, list) and all(isinstance(n, str) and n for n in spec):
        return dict(enumerate(spec))
    if isinstance(spec, dict) and all(isinstance(k, int) and isinstance(v, str) and v for k, v in spec.items()):
        return dict(spec)
    raise InputRejected("must be a list of class names or a mapping {id: name}", path=where, field="names")


def _image_files(base: Path, entry, root: Path, where: str, key: str) -> list[Path]:
    entries = entry if isinstance(entry, list) else [entry]
    files = []
    for e in entries:
        if not isinstance(e, str):
            raise InputRejected(f"must be a path or a list of paths, got {e!r}", path=where, field=key)
        p = base / e
        if not _inside(p, root):
            raise InputRejected(f"{e!r} points outside the export", path=where, field=key)
        if p.is_dir():
            files += sorted(f for f in p.rglob("*") if f.suffix.lower() in IMAGE_SUFFIXES and f.is_file())
        elif p.is_file() and p.suffix == ".txt":
            for line in p.read_text().splitlines():
                if line.strip():
                    f = (p.parent / line.strip()) if not line.strip().startswith("/") else Path(line.strip())
                    if not _inside(f, root):
                        raise InputRejected(f"image list entry {line.strip()!r} points outside the export",
                                            path=display(where, root, p), field=key)
                    files.append(f)
        else:
            raise InputRejected(f"{e!r}: no such directory or image list", path=where, field=key)
    return files


def _label_path(image: Path) -> Path:
    parts = list(image.parts)
    idx = max(i for i, p in enumerate(parts) if p == "images") if "images" in parts else None
    if idx is None:
        return image.with_suffix(".txt")
    parts[idx] = "labels"
    return Path(*parts).with_suffix(".txt")


def read_yolo(root, origin: str = "") -> Dataset:
    from PIL import Image

    root = export_root(Path(root))
    origin = origin or str(root)
    yamls = [p for p in (root / "data.yaml", root / "dataset.yaml") if p.is_file()]
    if not yamls:
        raise InputRejected("no data.yaml: expected the Ultralytics layout (data.yaml, images/, labels/)", path=origin)
    where = display(origin, root, yamls[0])
    try:
        spec = yaml.safe_load(yamls[0].read_text())
    except yaml.YAMLError as exc:
        raise InputRejected(f"not valid YAML: {exc}", path=where) from None
    if not isinstance(spec, dict):
        raise InputRejected("must be a mapping with names and train/val", path=where)
    names = _names(spec.get("names"), where)
    base = yamls[0].parent
    if isinstance(spec.get("path"), str):
        candidate = base / spec["path"]
        if _inside(candidate, root) and candidate.is_dir():
            base = candidate  # an absolute path from the exporting machine is ignored: the export is self-contained
    files: list[Path] = []
    for key in ("train", "val", "test"):
        if spec.get(key):
            files += _image_files(base, spec[key], root, where, key)
    if not any(spec.get(k) for k in ("train", "val")):
        raise InputRejected("must name the train (and val) images", path=where, field="train")

    images, annotations, seen = [], [], set()
    used_ids = sorted(names)
    cat_of = {k: i for i, k in enumerate(used_ids, start=1)}
    for path in dict.fromkeys(files):
        rel = path.relative_to(root).as_posix()
        rel = rel.split("images/", 1)[1] if rel.startswith("images/") or "/images/" in rel else rel
        if rel in seen:
            continue
        seen.add(rel)
        try:
            with Image.open(path) as img:
                w, h = img.size
        except Exception as exc:  # noqa: BLE001
            raise InputRejected(f"image cannot be read: {exc}", path=display(origin, root, path)) from None
        image_id = len(images) + 1
        images.append({"id": image_id, "file_name": rel, "width": w, "height": h, "path": path})
        label = _label_path(path)
        if not label.is_file():
            continue  # an image without a label file is a background image
        lname = display(origin, root, label)
        problems = Problems(lname)
        for n, line in enumerate(label.read_text().splitlines(), start=1):
            fields = line.split()
            if not fields:
                continue
            try:
                cls = int(fields[0])
                vals = [float(v) for v in fields[1:]]
            except ValueError:
                problems.add(f"line {n}", f"expected 'class cx cy w h' numbers, got {line.strip()!r}")
                continue
            if cls not in names:
                problems.add(f"line {n}: class", f"class {cls} is not in data.yaml names ({len(names)} classes)")
                continue
            if not all(math.isfinite(v) for v in vals) or len(vals) < 4 or (len(vals) > 4 and len(vals) % 2):
                problems.add(f"line {n}", f"expected 4 box values or an even number (>= 6) of polygon values, "
                                          f"got {len(vals)}")
                continue
            ann = {"id": len(annotations) + 1, "image_id": image_id, "category_id": cat_of[cls], "iscrowd": 0}
            if len(vals) == 4:
                cx, cy, bw, bh = vals
                ann["bbox"] = [(cx - bw / 2) * w, (cy - bh / 2) * h, bw * w, bh * h]
            else:
                poly = [v * (w if i % 2 == 0 else h) for i, v in enumerate(vals)]
                xs, ys = poly[0::2], poly[1::2]
                ann["bbox"] = [min(xs), min(ys), max(xs) - min(xs), max(ys) - min(ys)]
                ann["segmentation"] = [poly]
            ann["area"] = ann["bbox"][2] * ann["bbox"][3]
            annotations.append(ann)
        problems.raise_if_any()
    categories = [{"id": cat_of[k], "name": names[k]} for k in used_ids]
    return Dataset(images, annotations, categories, [where])
