"""CVAT for images 1.1 exports: `annotations.xml` (or one other XML file with an `<annotations>` root, as
Datumaro names it after the subset) + `images/`, parsed with defusedxml.

Task exports keep images in `images/<name>`; project exports add `subset="..."` to every `<image>` and keep
the images in `images/<subset>/<name>` (their canonical file name is then `<subset>/<name>`, since two subsets
may hold the same name). `<image id name width height>` holds `<box label occluded xtl ytl xbr ybr
[rotation]>` and `<polygon label occluded points="x1,y1;x2,y2;...">` shapes, each with `<attribute name=..>`
children; `occluded`, `z_order`, `source`, `group_id` and every attribute are kept as annotation attributes.
CVAT for video 1.1 (`<track label>` elements, one shape per frame) is read as one image per frame file
(`images/frame_000010.png`), each holding the tracks' shapes on that frame that are not `outside`, named in
messages by their track. A rotated box becomes the axis-aligned box around it. Polylines, points, cuboids,
ellipses, masks, skeletons and tags are not boxes and are skipped; with `task="segmentation"` a `<mask rle left
top width height>` (CVAT's own row-major RLE of its crop) is kept as a COCO RLE at the image size
(pipeline/datasets/masks.py), and the shapes of one image sharing a label and a `group_id` are one object in
pieces (merged, as CVAT's COCO export does). Labels come from `<meta>` (task or project); a shape whose label
is not declared there, or with bad coordinates, sets its image aside (quarantine); a polygon of fewer than 3
points is skipped (reported). Entities, DTDs and external references are refused by defusedxml (exit 3).
"""
from __future__ import annotations

import logging
import math
from pathlib import Path

from pipeline.errors import InputRejected
from pipeline.formats.base import (Dataset, coco_segmentation, display, inside, parse_xml, provenance,
                                  safe_relative, split_of)
from pipeline.formats.coco import export_root
from pipeline.formats.images import lazy_size

log = logging.getLogger(__name__)

SHAPES = ("box", "polygon")
TOO_FEW_POINTS = "a polygon needs at least 3 points"
NOT_BOXES = ("polyline", "points", "cuboid", "ellipse", "mask", "skeleton", "tag")
KEPT = ("occluded", "z_order", "source", "group_id", "track_id")


def _float(el, key: str) -> float | None:
    try:
        v = float(el.get(key, ""))
    except ValueError:
        return None
    return v if math.isfinite(v) else None


def _declared_labels(root_el) -> list[str]:
    labels = []
    for path in ("meta/task/labels/label", "meta/project/labels/label", "meta/job/labels/label"):
        for label in root_el.findall(path):
            name = (label.findtext("name") or "").strip()
            if name and name not in labels:
                labels.append(name)
    return labels


def _shape(el) -> tuple[list[float], list[float] | None] | str:
    if el.tag == "box":
        vals = [_float(el, k) for k in ("xtl", "ytl", "xbr", "ybr")]
        if None in vals:
            return "xtl, ytl, xbr, ybr must be finite numbers"
        xtl, ytl, xbr, ybr = vals
        rotation = _float(el, "rotation") if el.get("rotation") is not None else 0.0
        if rotation is None:
            return "rotation must be a number"
        w, h = xbr - xtl, ybr - ytl
        if rotation % 360:
            # CVAT rotates the box about its centre: the axis-aligned box around the rotated one
            t = math.radians(rotation)
            cx, cy = xtl + w / 2, ytl + h / 2
            hw = abs(w / 2 * math.cos(t)) + abs(h / 2 * math.sin(t))
            hh = abs(w / 2 * math.sin(t)) + abs(h / 2 * math.cos(t))
            return [cx - hw, cy - hh, 2 * hw, 2 * hh], None
        return [xtl, ytl, w, h], None
    pts = []
    for pair in (el.get("points") or "").split(";"):
        xy = pair.split(",")
        try:
            x, y = float(xy[0]), float(xy[1])
        except (ValueError, IndexError):
            return f"points must be 'x1,y1;x2,y2;...', got {el.get('points')!r}"
        if len(xy) != 2 or not (math.isfinite(x) and math.isfinite(y)):
            return f"points must be 'x1,y1;x2,y2;...', got {el.get('points')!r}"
        pts += [x, y]
    if len(pts) < 6:
        return TOO_FEW_POINTS
    xs, ys = pts[0::2], pts[1::2]
    return [min(xs), min(ys), max(xs) - min(xs), max(ys) - min(ys)], pts


def _mask(el, height: int, width: int) -> tuple[list[float], dict] | str:
    """(bbox, COCO RLE at the image size) of a <mask rle left top width height>, or an error message."""
    from pipeline.datasets.masks import bbox_area, cvat_mask

    try:
        left, top, w, h = (int(float(el.get(k, ""))) for k in ("left", "top", "width", "height"))
    except ValueError:
        return "a <mask> needs integer left, top, width and height"
    if height <= 0 or width <= 0:
        return "the image's size is unknown (no width / height on <image>, and the image cannot be read)"
    rle = cvat_mask(el.get("rle") or "", left, top, w, h, height, width)
    if isinstance(rle, str):
        return rle
    return bbox_area(rle, height, width)[0], rle


def _parse(root: Path, origin: str):
    """The export's one CVAT XML, parsed safely: (its name in messages, the <annotations> element)."""
    from pipeline.formats.layout import cvat_xmls

    xmls = cvat_xmls(root)
    if len(xmls) > 1:
        raise InputRejected(f"several CVAT XML files ({', '.join(p.name for p in xmls)}): cannot tell which to read; "
                            "keep one", path=origin)
    if not xmls:
        raise InputRejected("no CVAT annotations: expected annotations.xml (CVAT for images 1.1)", path=origin)
    xml = xmls[0]
    name = display(origin, root, xml)
    top = parse_xml(xml, name, "annotations", forbid_dtd=True)
    if top.find("track") is not None:
        if top.find("image") is not None:
            raise InputRejected("both <image> and <track> elements: neither CVAT for images nor CVAT for video",
                                path=name, field="track")
        return name, top, _frames_from_tracks(top, root, name)
    return name, top, []


FRAME_NAME = "frame_{:06d}"  # how CVAT names a video task's frames in an export with images
TRACK_WHERE = "_nightshift_where"  # where a video shape sits in the XML (its <track>), for messages


def _frames_from_tracks(top, root: Path, name: str) -> list[tuple[str, str]]:
    """CVAT for video 1.1: each `<track label>` holds one shape per frame (`frame`, `outside`, `keyframe`; CVAT
    writes the interpolated frames too). Rewritten in place as CVAT for images: one `<image>` per frame file
    (`images/frame_000010.png`, as CVAT names them), holding the track's shapes on that frame with the track's
    label, `track_id` kept as an attribute. A shape marked `outside="1"` (the object has left the frame) is no
    object; frames with no shape are background images. Returns (field, reason) of the first shape on each frame
    that has no image file (the caller reports them)."""
    import xml.etree.ElementTree as ET

    meta_size = top.find("meta/task/original_size")
    w = (meta_size.findtext("width") or "").strip() if meta_size is not None else ""
    h = (meta_size.findtext("height") or "").strip() if meta_size is not None else ""
    folder = root / "images" if (root / "images").is_dir() else root
    files = {}
    for f in sorted(folder.iterdir()):
        stem = f.stem
        if f.is_file() and stem.startswith("frame_") and stem[6:].isdigit():
            files.setdefault(int(stem[6:]), f.relative_to(folder).as_posix())
    per_frame: dict[int, list] = {}
    missing: dict[int, str] = {}
    for t, track in enumerate(top.findall("track")):
        for k, el in enumerate(track):
            if el.tag == "attribute":
                continue
            try:
                frame = int(el.get("frame", ""))
            except ValueError:
                raise InputRejected(f"frame must be an integer, got {el.get('frame')!r}", path=name,
                                    field=f"track[{t}].{el.tag}[{k}]") from None
            if el.get("outside") in ("1", "true", "True"):
                continue
            shape = ET.Element(el.tag, dict(el.attrib))
            shape.extend(list(el))
            shape.set("label", track.get("label", ""))
            shape.set(TRACK_WHERE, f"track[{t}] (id {track.get('id')}).{el.tag}[{k}] (frame {frame})")
            if track.get("id") is not None:
                shape.set("track_id", track.get("id"))
            if frame not in files:
                missing.setdefault(frame, shape.get(TRACK_WHERE))
                continue
            per_frame.setdefault(frame, []).append(shape)
    for t in top.findall("track"):
        top.remove(t)
    for frame, rel in sorted(files.items()):
        image = ET.SubElement(top, "image", {"id": str(frame), "name": rel,
                                             **({"width": w, "height": h} if w and h else {})})
        image.extend(per_frame.get(frame, []))
    tracks = {s.get("track_id") for shapes in per_frame.values() for s in shapes}
    log.info("cvat (video): %d frame images, shapes of %d tracks on them", len(files), len(tracks))
    return [(where, f"frame {frame} has no image file {FRAME_NAME.format(frame)}.* in the export: skipped")
            for frame, where in sorted(missing.items())]


def _image_file(ds: Dataset, img, where: str, root: Path, origin: str, name: str, seen: dict, i: int):
    """The local file of <image> `img` and its canonical name, or None after setting it aside (no such file)."""
    iname, subset = img.get("name", ""), (img.get("subset") or "").strip()
    if not safe_relative(iname):
        raise InputRejected(f"must be a relative path inside the export, got {iname!r}", path=name,
                            field=f"{where}.name")
    if subset and not safe_relative(subset):
        raise InputRejected(f"must be a plain folder name, got {subset!r}", path=name, field=f"{where}.subset")
    ds.listed_images += 1
    candidates = ([(root / "images" / subset / iname, f"{subset}/{iname}")] if subset else []) + \
        [(root / "images" / iname, iname), (root / iname, iname)]
    found = next(((p, rel) for p, rel in candidates if p.is_file()), None)
    if found is None:
        ds.set_aside(name, f"{where}.name", f"no such image file {iname!r} in images/"
                     + (f" or images/{subset}/" if subset else ""), iname)
        return None
    local, rel = found
    if not inside(local, root):
        raise InputRejected("symlink leaves the dataset", path=display(origin, root, local))
    if rel in seen:
        raise InputRejected(f"image {rel!r} is listed twice (also image[{seen[rel]}])", path=name,
                            field=f"{where}.name")
    seen[rel] = i
    return local, rel


def _shapes(ds: Dataset, img, where: str, name: str, rel: str, declared: list[str], task: str = "detection",
            size=None):
    """The boxes and polygons of <image> `img` as (label, bbox, polygon, attributes, where), skipping what is
    not a box; returns (shapes, None), or (shapes so far, (field, reason)) for the defect that sets it aside.
    With task "segmentation" a <mask> is kept too, its `polygon` a COCO RLE at `size` (a callable giving the
    image's (height, width))."""
    shapes = []
    masks = task == "segmentation"
    for k, el in enumerate(img):
        swhere = el.get(TRACK_WHERE) or f"{where}.{el.tag}[{k}]"  # a video track's shape: named in its track
        if el.tag in NOT_BOXES and not (masks and el.tag == "mask"):
            ds.skip(name, swhere, f"<{el.tag}> is not a box: skipped", rel)
            continue
        if el.tag not in SHAPES and el.tag != "mask":
            continue
        label = (el.get("label") or "").strip()
        if not label:
            ds.skip(name, f"{swhere}.label", "shape with an empty label: skipped", rel)
            continue
        if declared and label not in declared:
            return shapes, (f"{swhere}.label", f"unknown label {label!r} (not in <meta> labels)")
        got = _mask(el, *size()) if el.tag == "mask" else _shape(el)
        if got == TOO_FEW_POINTS:  # a stray click: outlines nothing, like a box with no area
            ds.skip(name, f"{swhere}.points", f"{got}: skipped", rel)
            continue
        if isinstance(got, str):
            return shapes, (swhere, got)
        attrs = {key: el.get(key) for key in KEPT if el.get(key) is not None}
        if "occluded" in attrs:
            attrs["occluded"] = attrs["occluded"] in ("1", "true", "True")
        for a in el.findall("attribute"):
            attrs[a.get("name", "")] = (a.text or "").strip()
        shapes.append((label, got[0], got[1], attrs, swhere))
    return shapes, None


def _fill(ds: Dataset, records: list, names: list[str], name: str) -> None:
    """Number the kept images, their annotations and the categories (declared labels first) into `ds`."""
    cat_id = {n: i for i, n in enumerate(names, start=1)}
    for rel, local, w, h, shapes, split in records:
        image_id = len(ds.images) + 1
        image = {"id": image_id, "file_name": rel, "width": w, "height": h, "path": local,
                 "source": provenance(name, "")}
        if split:
            image["split"] = split
        ds.images.append(image)
        for label, bbox, poly, attrs, swhere in shapes:
            ann = {"id": len(ds.annotations) + 1, "image_id": image_id, "category_id": cat_id[label],
                   "bbox": bbox, "area": bbox[2] * bbox[3], "iscrowd": 0, "attributes": attrs,
                   "source": provenance(name, swhere)}
            if poly:  # an RLE, several polygons (a group's pieces), or one polygon
                ann["segmentation"] = coco_segmentation(poly)
            ds.annotations.append(ann)
    ds.categories = [{"id": i, "name": n} for n, i in cat_id.items()]


def _images(ds: Dataset, top, root: Path, origin: str, name: str):
    """(<image>, where, local file, relative name, width, height) for every <image> whose file is found (the
    others are set aside by _image_file); width/height None when the XML lacks them (ingest reads the header)."""
    seen: dict = {}
    for i, img in enumerate(top.findall("image")):
        where = f"image[{i}]"
        found = _image_file(ds, img, where, root, origin, name, seen, i)
        if found is None:
            continue
        local, rel = found
        try:
            w, h = int(img.get("width", "")), int(img.get("height", ""))
        except ValueError:
            w = h = None  # read from the header by ingest
        if img.get("id") is not None:
            where = f"{where} (id {img.get('id')}, {img.get('name', '')})"
        yield img, where, local, rel, w, h


def _open(root, origin: str):
    """What both readers start from: (export root, origin, the XML's name, its root element, the labels declared
    in <meta>, an empty Dataset with the shapes on frames that have no image file already reported)."""
    root = export_root(Path(root))
    origin = origin or str(root)
    name, top, no_frame = _parse(root, origin)
    ds = Dataset([], [], [], [name])
    for field_name, reason in no_frame:
        ds.skip(name, field_name, reason)
    return root, origin, name, top, _declared_labels(top), ds


def read_cvat(root, origin: str = "", task: str = "detection") -> Dataset:
    root, origin, name, top, declared, ds = _open(root, origin)
    records, used, merged = [], set(), 0
    for img, where, local, rel, w, h in _images(ds, top, root, origin, name):
        size = lazy_size(w, h, local)  # <image>'s own size, else the header's
        shapes, bad = _shapes(ds, img, where, name, rel, declared, task, size)
        if bad:
            ds.set_aside(name, bad[0], bad[1], rel)
            continue
        if task == "segmentation":
            from pipeline.datasets.masks import merge_groups  # torch: imported by segmentation runs only

            before = len(shapes)
            shapes = merge_groups(shapes, size, no_group=(None, "", "0"))
            merged += before - len(shapes)
        used.update(s[0] for s in shapes)
        subset = (img.get("subset") or "").strip()
        records.append((rel, local, w, h, shapes, split_of(subset) if subset else None))
    _fill(ds, records, declared + sorted(used - set(declared)), name)
    if merged:
        log.info("cvat: %d shapes joined the shape of the same label and group_id before them (one object in "
                 "pieces, as CVAT's COCO export merges them)", merged)
    if ds.skipped:
        log.info("cvat: skipped %d shapes (not boxes, or with an empty label): listed in the quarantine report",
                 len(ds.skipped))
    return ds


# -- classification: image-level tags ------------------------------------------------------------------
def _tag_class(ds: Dataset, img, where: str, name: str, rel: str, declared: list[str]):
    """(class, attributes, where) of the one `<tag label=...>` of <image> `img`, or None after skipping (no
    tag) or setting the image aside (several classes, an undeclared or empty label)."""
    tags = [(k, el) for k, el in enumerate(img) if el.tag == "tag"]
    if not tags:
        ds.skip(name, f"{where}.tag", "no <tag>: image left out (not labelled)", rel)
        return None
    labels = {}
    for k, el in tags:
        label = (el.get("label") or "").strip()
        twhere = f"{where}.tag[{k}].label"
        if not label:
            ds.set_aside(name, twhere, "tag with an empty label", rel)
            return None
        if declared and label not in declared:
            ds.set_aside(name, twhere, f"unknown label {label!r} (not in <meta> labels)", rel)
            return None
        attrs = {a.get("name", ""): (a.text or "").strip() for a in el.findall("attribute")}
        labels.setdefault(label, (attrs, f"{where}.tag[{k}]"))
    if len(labels) > 1:
        ds.set_aside(name, f"{where}.tag", f"{len(labels)} classes tagged ({', '.join(labels)}): exactly one tag "
                     "per image", rel)
        return None
    label, (attrs, twhere) = next(iter(labels.items()))
    return label, attrs, twhere


def read_cvat_tags(root, origin: str = "") -> Dataset:
    """A CVAT for images 1.1 export labelled for image classification: each `<image>`'s one `<tag label=...>`
    is its class (its `<attribute>`s kept). No tag skips the image, reported; tags of several classes, or a
    label not declared in `<meta>`, set it aside. Shapes are not read, and the log says how many images had
    some."""
    root, origin, name, top, declared, ds = _open(root, origin)
    records, with_shapes = [], 0
    for img, where, local, rel, w, h in _images(ds, top, root, origin, name):
        with_shapes += any(el.tag != "tag" for el in img)
        got = _tag_class(ds, img, where, name, rel, declared)
        if got is None:
            continue
        subset = (img.get("subset") or "").strip()
        records.append((rel, local, w, h, got, split_of(subset) if subset else None))
    cat_id = {n: i for i, n in enumerate([n for n in declared if any(r[4][0] == n for r in records)]
                                         + sorted({r[4][0] for r in records} - set(declared)), start=1)}
    for rel, local, w, h, (label, attrs, twhere), split in records:
        image_id = len(ds.images) + 1
        image = {"id": image_id, "file_name": rel, "width": w, "height": h, "path": local,
                 "source": provenance(name, "")}
        if split:
            image["split"] = split
        ds.images.append(image)
        ann = {"id": image_id, "image_id": image_id, "category_id": cat_id[label], "source": provenance(name, twhere)}
        if attrs:
            ann["attributes"] = attrs
        ds.annotations.append(ann)
    ds.categories = [{"id": i, "name": n} for n, i in cat_id.items()]
    unused = [n for n in declared if n not in cat_id]
    log.info("cvat (classification, tags): %d labelled images in %d classes%s", len(ds.images), len(cat_id),
             f"; declared labels never tagged, so no class: {', '.join(unused)}" if unused else "")
    if with_shapes:
        log.info("cvat: %d images also have shapes: not read for classification (image-level tags only)",
                 with_shapes)
    return ds
