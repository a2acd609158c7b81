"""Pascal VOC exports: `Annotations/*.xml` + `JPEGImages/` (or `images/`), parsed with defusedxml.

Boxes are VOC's 1-based inclusive pixel corners, converted to COCO [x, y, w, h] as detectron2 and
torchvision do: x = xmin - 1, w = xmax - xmin + 1. Category ids follow the sorted class names.
"""
from __future__ import annotations

import math
from pathlib import Path

from pipeline.errors import InputRejected
from pipeline.formats.base import IMAGE_SUFFIXES, Dataset, Problems, display, safe_relative
from pipeline.formats.coco import export_root
from pipeline.formats.images import header_size


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


def read_voc(root, origin: str = "") -> Dataset:
    from defusedxml import ElementTree
    from defusedxml.common import DefusedXmlException

    root = export_root(Path(root))
    origin = origin or str(root)
    ann_dir = root / "Annotations"
    xmls = sorted(ann_dir.glob("*.xml")) if ann_dir.is_dir() else []
    if not xmls:
        raise InputRejected("no Pascal VOC annotations: expected Annotations/*.xml", path=origin)
    image_dirs = [root / "JPEGImages", root / "images", ann_dir]
    records, names, quarantine = [], set(), []
    for xml in xmls:
        name = display(origin, root, xml)
        problems = Problems(name)
        try:
            tree = ElementTree.parse(xml)
        except DefusedXmlException as exc:
            raise InputRejected(f"unsafe XML refused: {exc}", path=name) from None
        except ElementTree.ParseError as exc:
            raise InputRejected(f"not valid XML: {exc}", path=name) from None
        node = tree.getroot()
        if node.tag != "annotation":
            raise InputRejected(f"root element must be <annotation>, got <{node.tag}>", path=name)
        fname = (node.findtext("filename") or "").strip()
        if fname and not safe_relative(fname):
            problems.add("filename", f"must be a plain file name, got {fname!r}")
            problems.raise_if_any()
        candidates = [d / fname for d in image_dirs] if fname else \
            [d / (xml.stem + s) for d in image_dirs for s in IMAGE_SUFFIXES]
        local = next((c for c in candidates if c.is_file()), None)
        # per-image defects below set this image aside (quarantine) instead of rejecting the export
        item = Problems(name)
        if local is None:
            quarantine.append((name, "filename", f"no image file for {fname or xml.stem!r} in JPEGImages/ or "
                                                 "images/", fname or xml.stem))
            continue
        size = node.find("size")
        w = _number(size, "width", "size", Problems(name)) if size is not None else None
        h = _number(size, "height", "size", Problems(name)) if size is not None else None
        if not w or not h:  # VOC exports often write 0: read the header instead
            real = header_size(local)
            if real is None:
                quarantine.append((name, "size", "missing, and the image header cannot be read", local.name))
                continue
            w, h = real
        boxes = []
        for k, obj in enumerate(node.findall("object")):
            where = f"object[{k}]"
            label = (obj.findtext("name") or "").strip()
            if not label:
                item.add(f"{where}.name", "missing class name")
                continue
            bnd = obj.find("bndbox")
            if bnd is None:
                item.add(f"{where}.bndbox", "missing")
                continue
            vals = [_number(bnd, t, f"{where}.bndbox", item) for t in ("xmin", "ymin", "xmax", "ymax")]
            if None in vals:
                continue
            xmin, ymin, xmax, ymax = vals
            attrs = {t: obj.findtext(t).strip() for t in ("pose", "truncated", "difficult", "occluded")
                     if obj.findtext(t) is not None}
            boxes.append((label, [xmin - 1, ymin - 1, xmax - xmin + 1, ymax - ymin + 1], attrs))
        if item:
            quarantine += [(name, f, m, local.name) for f, m in item.items]
            continue
        names.update(label for label, _, _ in boxes)
        records.append((local, int(w), int(h), boxes))

    cat_id = {n: i for i, n in enumerate(sorted(names), start=1)}
    images, annotations = [], []
    for i, (local, w, h, boxes) in enumerate(records, start=1):
        images.append({"id": i, "file_name": local.name, "width": w, "height": h, "path": local})
        for label, box, attrs in boxes:
            ann = {"id": len(annotations) + 1, "image_id": i, "category_id": cat_id[label], "bbox": box,
                   "area": box[2] * box[3], "iscrowd": 0}
            if attrs:
                ann["attributes"] = attrs
            annotations.append(ann)
    seen = {}
    for img in images:
        if img["file_name"] in seen:
            raise InputRejected(f"two annotation files name the image {img['file_name']!r}",
                                path=display(origin, root, ann_dir), field="filename")
        seen[img["file_name"]] = True
    categories = [{"id": i, "name": n} for n, i in cat_id.items()]
    ds = Dataset(images, annotations, categories, [display(origin, root, ann_dir)], listed_images=len(xmls))
    for file, field_name, reason, image in quarantine:
        ds.set_aside(file, field_name, reason, image)
    return ds
