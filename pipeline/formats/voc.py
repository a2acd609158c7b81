"""Pascal VOC exports, parsed with defusedxml, in the layouts tools and dataset repositories use.

Annotations: an `Annotations/` folder in any letter case (`annotations/`, labelImg users' `annots/`) or the
XML files beside the images. Images: `JPEGImages/`, `images/`, `imgs/` (any case), the annotation folder or
the export's top; an image is found by `<filename>` (with or without its extension), else by the last part
of `<path>` (labelImg writes the annotating machine's absolute path, Windows ones included), else by the XML
file's stem. Splits: `ImageSets/Main/{train,val,trainval,test}.txt` when present (kept with
`data.splits: source`).

Pixel convention (`data.voc_one_based`): labelImg (`convert_points_to_bnd_box` truncates the canvas's 0-based
coordinates), CVAT and Datumaro (`_parse_bbox`: `[xmin, ymin, xmax - xmin, ymax - ymin]`) and Roboflow write
0-based corners, so the default reads x = xmin, w = xmax - xmin. The official devkit's annotations are
1-based inclusive; `voc_one_based: true` reads them as detectron2 and torchvision do: x = xmin - 1,
w = xmax - xmin + 1. `write_box` is the inverse for any VOC writing. A box with no area after conversion is
kept as it is and reported by ingest, never inflated. An object with no name is skipped and reported.
"""
from __future__ import annotations

import math
from pathlib import Path

from pipeline.errors import InputRejected
from pipeline.formats.base import (IMAGE_SUFFIXES, Dataset, Problems, basename, child_dir, display, parse_xml,
                                   provenance, safe_relative, split_of)
from pipeline.formats.coco import export_root
from pipeline.formats.images import header_size
from pipeline.formats.layout import is_voc_xml

ANNOTATION_DIRS = ("Annotations", "annots", "annotation")
IMAGE_DIRS = ("JPEGImages", "images", "imgs", "image")


def read_box(xmin: float, ymin: float, xmax: float, ymax: float, one_based: bool = False) -> list[float]:
    """COCO [x, y, w, h] of VOC corners."""
    if one_based:
        return [xmin - 1, ymin - 1, xmax - xmin + 1, ymax - ymin + 1]
    return [xmin, ymin, xmax - xmin, ymax - ymin]


def write_box(bbox, one_based: bool = False) -> tuple[float, float, float, float]:
    """VOC (xmin, ymin, xmax, ymax) of a COCO box: the inverse of read_box, for any VOC writing."""
    x, y, w, h = bbox
    if one_based:
        return x + 1, y + 1, x + w, y + h
    return x, y, x + w, y + h


def _number(node, tag: str, where: str, problems: Problems):
    child = node.find(tag) if node is not None else None
    if child is None or child.text is None:
        problems.add(f"{where}.{tag}", "missing")
        return None
    try:
        value = float(child.text.strip())
    except ValueError:
        problems.add(f"{where}.{tag}", f"must be a number, got {child.text.strip()!r}")
        return None
    if not math.isfinite(value):
        problems.add(f"{where}.{tag}", f"must be finite, got {child.text.strip()!r}")
        return None
    return value


def _source_splits(root: Path) -> dict[str, str]:
    """image id -> train/val/test from ImageSets/Main (train.txt, val.txt, test.txt; trainval.txt as train)."""
    sets = child_dir(root, "ImageSets")
    main = child_dir(sets, "Main") if sets is not None else None
    if main is None:
        return {}
    files = {p.stem.lower(): p for p in main.glob("*.txt")}
    order = ["trainval"] if "train" not in files and "val" not in files else []
    out: dict[str, str] = {}
    for name in [*order, "train", "val", "test"]:
        if name in files:
            for line in files[name].read_text(errors="replace").splitlines():
                if line.strip():
                    out[line.split()[0]] = split_of(name)
    return out


class _Lookup:
    """Image files by name in a list of folders, exact first, then ignoring letter case (`IMG_1.JPG` named
    `IMG_1.jpg` by a tool on Windows or macOS)."""

    def __init__(self, dirs: list[Path]):
        self.dirs = dirs
        self._lower: dict[Path, dict[str, Path]] = {}

    def _index(self, d: Path) -> dict[str, Path]:
        if d not in self._lower:
            self._lower[d] = {p.name.lower(): p for p in sorted(d.iterdir()) if p.is_file()} if d.is_dir() else {}
        return self._lower[d]

    def find(self, name: str) -> Path | None:
        names = [name] + ([name + s for s in IMAGE_SUFFIXES] if Path(name).suffix.lower() not in IMAGE_SUFFIXES
                          else [])
        for d in self.dirs:
            hit = next((d / n for n in names if (d / n).is_file()), None)
            if hit is not None:
                return hit
        if "/" in name:
            return None
        for d in self.dirs:
            index = self._index(d)
            hit = next((index[n.lower()] for n in names if n.lower() in index), None)
            if hit is not None:
                return hit
        return None


def _find_image(node, xml: Path, lookup: _Lookup) -> tuple[Path | None, str]:
    """The image file an annotation names, and the name tried (for the message when there is none)."""
    fname = (node.findtext("filename") or "").strip()
    tried = []
    if fname:
        tried.append(fname if safe_relative(fname) else basename(fname))
    path_name = basename((node.findtext("path") or "").strip())
    if path_name:
        tried.append(path_name)
    for name in [*dict.fromkeys(tried), xml.stem]:
        hit = lookup.find(name)
        if hit is not None:
            return hit, name
    return None, (tried[0] if tried else xml.stem)


def _annotation_files(root: Path, origin: str) -> tuple[Path, list[Path]]:
    """The folder of the VOC XML files and the files: Annotations/ (or its variants), else beside the images."""
    ann_dir = child_dir(root, *ANNOTATION_DIRS)
    xmls = sorted(ann_dir.glob("*.xml")) if ann_dir is not None else []
    if not xmls:  # the XML files beside the images (labelImg's default save folder)
        ann_dir = root
        xmls = [p for p in sorted(root.glob("*.xml")) if is_voc_xml(p)]
    if not xmls:
        raise InputRejected("no Pascal VOC annotations: expected Annotations/*.xml (any letter case, or annots/) "
                            "or <annotation> XML files beside the images", path=origin)
    return ann_dir, xmls


def _parse(xml: Path, name: str):
    """The <annotation> element of one VOC file, parsed safely."""
    return parse_xml(xml, name, "annotation")


def _size(ds: Dataset, node, local: Path, name: str):
    """(width, height) from <size>, else from the image header; None after setting the image aside."""
    size = node.find("size")
    w = _number(size, "width", "size", Problems(name)) if size is not None else None
    h = _number(size, "height", "size", Problems(name)) if size is not None else None
    if not w or not h:  # VOC exports often write 0: read the header instead
        real = header_size(local)
        if real is None:
            ds.set_aside(name, "size", "missing, and the image header cannot be read", local.name)
            return None
        w, h = real
    return w, h


def _objects(ds: Dataset, node, name: str, local: Path, one_based: bool) -> tuple[list, Problems]:
    """The <object> boxes as (label, bbox, attributes, where), skipping nameless ones, and the per-image defects
    found (which set the image aside)."""
    item = Problems(name)
    boxes = []
    for k, obj in enumerate(node.findall("object")):
        where = f"object[{k}]"
        label = (obj.findtext("name") or "").strip()
        if not label:
            ds.skip(name, f"{where}.name", "object with no class name: skipped", local.name)
            continue
        bnd = obj.find("bndbox")
        if bnd is None:
            item.add(f"{where}.bndbox", "missing")
            continue
        vals = [_number(bnd, t, f"{where}.bndbox", item) for t in ("xmin", "ymin", "xmax", "ymax")]
        if None in vals:
            continue
        attrs = {t: obj.findtext(t).strip() for t in ("pose", "truncated", "difficult", "occluded")
                 if obj.findtext(t) is not None}
        boxes.append((label, read_box(*vals, one_based=one_based), attrs, where))
    return boxes, item


def _fill(ds: Dataset, records: list, names: set) -> None:
    """Number the kept images, their annotations and the categories (by name) into `ds`; two annotation files
    naming the same image are refused."""
    cat_id = {n: i for i, n in enumerate(sorted(names), start=1)}
    seen: dict[str, str] = {}
    for local, w, h, boxes, name, split in records:
        if local.name in seen:
            raise InputRejected(f"two annotation files name the image {local.name!r} (also {seen[local.name]})",
                                path=name, field="filename")
        seen[local.name] = name
        image_id = len(ds.images) + 1
        image = {"id": image_id, "file_name": local.name, "width": w, "height": h, "path": local,
                 "source": provenance(name, "")}
        if split:
            image["split"] = split
        ds.images.append(image)
        for label, box, attrs, where in boxes:
            ann = {"id": len(ds.annotations) + 1, "image_id": image_id, "category_id": cat_id[label], "bbox": box,
                   "area": box[2] * box[3], "iscrowd": 0, "source": provenance(name, where)}
            if attrs:
                ann["attributes"] = attrs
            ds.annotations.append(ann)
    ds.categories = [{"id": i, "name": n} for n, i in cat_id.items()]


def read_voc(root, origin: str = "", one_based: bool = False) -> Dataset:
    root = export_root(Path(root))
    origin = origin or str(root)
    ann_dir, xmls = _annotation_files(root, origin)
    image_dirs = [d for d in (child_dir(root, name) for name in IMAGE_DIRS) if d is not None] + [ann_dir, root]
    image_dirs = list(dict.fromkeys(image_dirs))
    lookup = _Lookup(image_dirs)
    splits = _source_splits(root)
    records, names = [], set()
    ds = Dataset([], [], [], [display(origin, root, ann_dir)], listed_images=len(xmls))
    for xml in xmls:
        name = display(origin, root, xml)
        node = _parse(xml, name)
        local, tried = _find_image(node, xml, lookup)
        if local is None:
            ds.set_aside(name, "filename", f"no image file for {tried!r} in "
                         f"{', '.join(display(origin, root, d) for d in image_dirs)}", tried)
            continue
        # per-image defects below set this image aside (quarantine) instead of rejecting the export
        size = _size(ds, node, local, name)
        if size is None:
            continue
        boxes, item = _objects(ds, node, name, local, one_based)
        if item:
            for f, m in item.items:
                ds.set_aside(name, f, m, local.name)
            continue
        names.update(b[0] for b in boxes)
        records.append((local, int(size[0]), int(size[1]), boxes, name,
                        splits.get(xml.stem) or splits.get(local.stem)))
    _fill(ds, records, names)
    return ds
