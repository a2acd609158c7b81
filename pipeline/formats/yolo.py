"""YOLO exports: the Ultralytics layout and the Darknet layout CVAT's "YOLO 1.1" export writes.

Ultralytics: a dataset YAML of any name (`data.yaml`, `coco128.yaml`, `config.yaml`: a mapping with `names`
as a list or {id: name}, and `train` / `val` / `test` as folders, lists of folders or image-list .txt files,
relative to `path` when that exists in the export, else to the YAML's folder; Roboflow's `../train/images`
and absolute paths from the exporting machine are matched inside the export) + images/ and labels/; each
image `.../images/<rel>.jpg` has `.../labels/<rel>.txt`. Darknet (CVAT): `obj.data` (`names = obj.names`,
`train = train.txt`,
`valid = valid.txt`), `obj.names` (one class per line, line k = class k), `train.txt` listing
`data/obj_train_data/<image>` (older CVAT) or `obj_train_data/<image>`, and `obj_<subset>_data/` holding each
image beside its `<stem>.txt`. A label line is `class cx cy w h` normalised to 0..1 (or `class x1 y1 ...` for
a polygon, Ultralytics only), converted to pixels with the size read from the image header. `classes.txt`
(one class per line) with `images/` + `labels/` (Label Studio) or with each label file beside its image
(labelImg) is read the same way, without splits. Each image keeps
the subset that listed it as its source split (used with `data.splits: source`). A line with an unknown class
or bad numbers sets its image aside (quarantine); a train/val list naming no image is an empty split and
rejects the export (a `test` entry missing from the export is logged and left out).
"""
from __future__ import annotations

import logging
import math
from pathlib import Path, PurePosixPath

import yaml

from pipeline.errors import InputRejected
from pipeline.formats.base import IMAGE_SUFFIXES, Dataset, Problems, display, provenance, split_of
from pipeline.formats.base import inside as _inside
from pipeline.formats.coco import export_root
from pipeline.formats.images import header_size

log = logging.getLogger(__name__)


def _names(spec, where: str) -> dict[int, str]:
    if isinstance(spec, list) and all(isinstance(n, str) and n for n in spec):
        return dict(enumerate(spec))
    if isinstance(spec, dict) and all(isinstance(v, str) and v for v in spec.values()):
        try:
            return {int(k): v for k, v in spec.items()}
        except (TypeError, ValueError):
            pass
    raise InputRejected("must be a list of class names or a mapping {id: name}", path=where, field="names")


def _resolve(entry: str, bases: list[Path], root: Path) -> Path | None:
    """Where a train/val/test entry points inside the export.

    As Ultralytics does, relative to `path` (else the YAML's folder), with a leading `../` dropped when that
    is what exists (Roboflow writes `train: ../train/images` beside `train/`); an absolute path from the
    exporting machine, or one that still does not exist, is matched by its longest tail that exists here.
    """
    posix = entry.replace("\\", "/")
    tries = []
    for base in bases:
        if not posix.startswith("/") and not (len(posix) > 1 and posix[1] == ":"):
            tries.append(base / posix)
            if posix.startswith("../"):
                tries.append(base / posix[3:])
    parts = [p for p in PurePosixPath(posix).parts if p not in ("/", "..", ".") and not p.endswith(":")]
    for k in range(len(parts)):
        for base in bases:
            tries.append(base / PurePosixPath(*parts[k:]))
    for t in tries:
        if t.exists() and _inside(t, root):
            return t
    return None


def _image_files(bases: list[Path], entry, root: Path, where: str, key: str) -> list[Path]:
    entries = entry if isinstance(entry, list) else [entry]
    files = []
    for e in entries:
        if not isinstance(e, str):
            raise InputRejected(f"must be a path or a list of paths, got {e!r}", path=where, field=key)
        p = _resolve(e, bases, root)
        if p is None:
            if key == "test":  # Ultralytics trains without it; a YAML often names a test split it did not ship
                log.warning("%s: %s: %r not in the export: no test images from it", where, key, e)
                continue
            raise InputRejected(f"{e!r}: no such directory or image list inside the export", path=where, field=key)
        if p.is_dir():
            files += sorted(f for f in p.rglob("*") if f.suffix.lower() in IMAGE_SUFFIXES and f.is_file())
        elif p.is_file() and p.suffix == ".txt":
            for line in p.read_text().splitlines():
                item = line.strip()
                if not item:
                    continue
                f = _resolve(item, [p.parent, *bases], root)
                if f is None:
                    raise InputRejected(f"image list entry {item!r} is not a file inside the export",
                                        path=display(where, root, p), field=key)
                files.append(f)
        elif p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES:
            files.append(p)
    if not files and key != "test":
        raise InputRejected(f"{entry!r} holds no images (empty split)", path=where, field=key)
    return files


def _label_path(image: Path) -> Path:
    parts = list(image.parts)
    idx = max(i for i, p in enumerate(parts) if p == "images") if "images" in parts else None
    if idx is None:
        return image.with_suffix(".txt")
    parts[idx] = "labels"
    return Path(*parts).with_suffix(".txt")


def _read_labels(label: Path, lname: str, names: dict[int, str], cat_of: dict[int, int], image_id: int,
                 w: int, h: int, polygons: bool) -> tuple[list[dict], Problems]:
    """The boxes of one label file (ids left to the caller) and the problems found in it."""
    problems = Problems(lname)
    anns = []
    for n, line in enumerate(label.read_text(errors="replace").splitlines(), start=1):
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
            problems.add(f"line {n}: class", f"class {cls} is not one of the {len(names)} declared classes")
            continue
        ok_count = len(vals) == 4 or (polygons and len(vals) >= 6 and len(vals) % 2 == 0)
        if not all(math.isfinite(v) for v in vals) or not ok_count:
            extra = " or an even number (>= 6) of polygon values" if polygons else ""
            problems.add(f"line {n}", f"expected 4 box values{extra}, got {len(vals)}")
            continue
        ann = {"image_id": image_id, "category_id": cat_of[cls], "iscrowd": 0,
               "source": provenance(lname, f"line {n}")}
        if len(vals) == 4:
            cx, cy, bw, bh = vals
            ann["bbox"] = [(cx - bw / 2) * w, (cy - bh / 2) * h, bw * w, bh * h]
        else:
            poly = [v * (w if i % 2 == 0 else h) for i, v in enumerate(vals)]
            xs, ys = poly[0::2], poly[1::2]
            ann["bbox"] = [min(xs), min(ys), max(xs) - min(xs), max(ys) - min(ys)]
            ann["segmentation"] = [poly]
        ann["area"] = ann["bbox"][2] * ann["bbox"][3]
        anns.append(ann)
    return anns, problems


def _assemble(root: Path, origin: str, entries: list[tuple], names: dict[int, str],
              files: list[str], polygons: bool) -> Dataset:
    """entries: (image file, canonical file_name, label file, split or None) in export order."""
    used_ids = sorted(names)
    cat_of = {k: i for i, k in enumerate(used_ids, start=1)}
    ds = Dataset([], [], [{"id": cat_of[k], "name": names[k]} for k in used_ids], files)
    seen = set()
    for path, rel, label, split in entries:
        if rel in seen:
            continue
        seen.add(rel)
        ds.listed_images += 1
        size = header_size(path) if path.is_file() else None
        if size is None:
            ds.set_aside(display(origin, root, path), "image",
                         "no such image file" if not path.is_file() else "image header cannot be read", rel)
            continue
        w, h = size
        image_id = len(ds.images) + 1
        anns: list[dict] = []
        if label.is_file():  # an image without a label file is a background image
            lname = display(origin, root, label)
            anns, problems = _read_labels(label, lname, names, cat_of, image_id, w, h, polygons)
            if problems:
                for f, m in problems.items:
                    ds.set_aside(lname, f, m, rel)
                continue
        image = {"id": image_id, "file_name": rel, "width": w, "height": h, "path": path,
                 "source": provenance(display(origin, root, label if label.is_file() else path), "")}
        if split:
            image["split"] = split
        ds.images.append(image)
        for ann in anns:
            ann["id"] = len(ds.annotations) + 1
            ds.annotations.append(ann)
    return ds


def _dataset_yaml(root: Path, origin: str) -> Path:
    from pipeline.formats.layout import yolo_yamls

    yamls = yolo_yamls(root)
    if len(yamls) > 1:
        preferred = [p for p in yamls if p.name in ("data.yaml", "dataset.yaml")]
        if len(preferred) != 1:
            raise InputRejected(f"several dataset YAML files ({', '.join(p.name for p in yamls)}): cannot tell which "
                                "describes the export; keep one", path=origin)
        yamls = preferred
    if not yamls:
        named = [p for p in (root / "data.yaml", root / "dataset.yaml") if p.is_file()]
        if named:
            return named[0]  # read below, so its own problem is named
        raise InputRejected("no Ultralytics dataset YAML (a mapping with names and train/val) and no obj.data / "
                            "obj.names (Darknet, CVAT's YOLO 1.1 export)", path=origin)
    return yamls[0]


def read_yolo(root, origin: str = "") -> Dataset:
    """Ultralytics (a dataset YAML of any name) or Darknet/CVAT (obj.data, obj.names), whichever the export has."""
    from pipeline.formats.layout import yolo_yamls

    root = export_root(Path(root))
    origin = origin or str(root)
    no_yaml = not yolo_yamls(root) and not (root / "data.yaml").is_file() and not (root / "dataset.yaml").is_file()
    if no_yaml and ((root / "obj.data").is_file() or (root / "obj.names").is_file()):
        return read_darknet(root, origin)
    if no_yaml and (root / "classes.txt").is_file():
        return read_classes_txt(root, origin)
    yaml_path = _dataset_yaml(root, origin)
    where = display(origin, root, yaml_path)
    try:
        spec = yaml.safe_load(yaml_path.read_text())
    except yaml.YAMLError as exc:
        raise InputRejected(f"not valid YAML: {exc}", path=where) from None
    if not isinstance(spec, dict):
        raise InputRejected("must be a mapping with names and train/val", path=where)
    names = _names(spec.get("names"), where)
    bases = [yaml_path.parent]
    if isinstance(spec.get("path"), str) and spec["path"].strip():
        # `path` is the dataset root on the exporting machine: used when it exists inside the export
        found = _resolve(spec["path"], [yaml_path.parent], root)
        if found is not None and found.is_dir():
            bases.insert(0, found)
    if not any(spec.get(k) for k in ("train", "val")):
        raise InputRejected("must name the train (and val) images", path=where, field="train")
    entries, seen = [], set()
    for key in ("train", "val", "test"):
        if not spec.get(key):
            continue
        for path in _image_files(bases, spec[key], root, where, key):
            if path in seen:
                continue
            seen.add(path)
            rel = path.relative_to(root).as_posix() if _inside(path, root) else path.name
            rel = rel.split("images/", 1)[1] if rel.startswith("images/") or "/images/" in rel else rel
            entries.append((path, rel, _label_path(path), split_of(key)))
    return _assemble(root, origin, entries, names, [where], polygons=True)


def _class_list(path: Path, name: str) -> dict[int, str]:
    """One class per line, line k = class k (obj.names, classes.txt)."""
    lines = [ln.strip() for ln in path.read_text(errors="replace").splitlines()]
    while lines and not lines[-1]:
        lines.pop()
    if not lines or not all(lines):
        raise InputRejected("must list one non-empty class name per line", path=name)
    return dict(enumerate(lines))


def read_classes_txt(root, origin: str = "") -> Dataset:
    """`classes.txt` + `images/` and `labels/` (Label Studio's YOLO export) or + label files beside the images
    (labelImg's YOLO mode). The export defines no splits."""
    root = export_root(Path(root))
    origin = origin or str(root)
    names_path = root / "classes.txt"
    where = display(origin, root, names_path)
    names = _class_list(names_path, where)
    images_dir = next((p for p in root.iterdir() if p.is_dir() and p.name.lower() == "images"), None)
    base = images_dir if images_dir is not None else root
    images = sorted(f for f in base.rglob("*") if f.suffix.lower() in IMAGE_SUFFIXES and f.is_file())
    if not images:
        raise InputRejected("no images beside classes.txt or in images/", path=where)
    labels_dir = next((p for p in root.iterdir() if p.is_dir() and p.name.lower() == "labels"), None)
    entries = []
    for path in images:
        rel = PurePosixPath(path.relative_to(base).as_posix())
        beside = images_dir is None or labels_dir is None
        label = path.with_suffix(".txt") if beside else labels_dir / rel.with_suffix(".txt")
        entries.append((path, rel.as_posix(), label, None))
    return _assemble(root, origin, entries, names, [where], polygons=True)


def _obj_data(path: Path, where: str) -> dict[str, str]:
    spec = {}
    for n, line in enumerate(path.read_text(errors="replace").splitlines(), start=1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        if "=" not in line:
            raise InputRejected(f"expected 'key = value', got {line!r}", path=where, field=f"line {n}")
        key, value = (part.strip() for part in line.split("=", 1))
        spec[key] = value
    return spec


def _darknet_path(root: Path, rel: str) -> Path:
    """Darknet paths are relative to darknet's own folder, so CVAT writes `data/obj.names`: the export is data/."""
    rel = rel.replace("\\", "/")
    if rel.startswith("data/") and not (root / rel).exists():
        rel = rel[len("data/"):]
    return root / rel


def read_darknet(root, origin: str = "") -> Dataset:
    """CVAT's YOLO 1.1 export: obj.data, obj.names, train.txt / valid.txt, obj_<subset>_data/."""
    root = export_root(Path(root))
    origin = origin or str(root)
    data_file = root / "obj.data"
    where = display(origin, root, data_file)
    spec = _obj_data(data_file, where) if data_file.is_file() else {"names": "obj.names", "train": "train.txt"}
    names_rel = spec.get("names", "obj.names")
    names_path = _darknet_path(root, names_rel)
    if not _inside(names_path, root):
        raise InputRejected(f"{names_rel!r} points outside the export", path=where, field="names")
    if not names_path.is_file():
        raise InputRejected(f"no class list {names_rel!r}", path=where, field="names")
    lines = [ln.strip() for ln in names_path.read_text(errors="replace").splitlines()]
    while lines and not lines[-1]:
        lines.pop()
    nname = display(origin, root, names_path)
    if not lines or not all(lines):
        raise InputRejected("must list one non-empty class name per line", path=nname)
    names = dict(enumerate(lines))
    entries = []
    subsets = [(k, spec[k]) for k in ("train", "valid") if spec.get(k)]
    if not subsets:
        raise InputRejected("names no train or valid image list", path=where, field="train")
    for key, list_rel in subsets:
        list_path = _darknet_path(root, list_rel)
        if not _inside(list_path, root):
            raise InputRejected(f"{list_rel!r} points outside the export", path=where, field=key)
        if not list_path.is_file():
            raise InputRejected(f"no image list {list_rel!r}", path=where, field=key)
        lname = display(origin, root, list_path)
        listed = 0
        for n, line in enumerate(list_path.read_text(errors="replace").splitlines(), start=1):
            item = line.strip().replace("\\", "/")
            if not item:
                continue
            listed += 1
            rel = item[len("data/"):] if item.startswith("data/") and not (root / item).exists() else item
            pure = PurePosixPath(rel)
            if pure.is_absolute() or ".." in pure.parts or not _inside(root / pure, root):
                raise InputRejected(f"image path {item!r} leaves the export", path=lname, field=f"line {n}")
            path = root / pure
            entries.append((path, pure.as_posix(), path.with_suffix(".txt"), split_of(key)))
        if not listed:
            raise InputRejected("lists no images (empty split)", path=lname)
    return _assemble(root, origin, entries, names, [where if data_file.is_file() else nname], polygons=False)
