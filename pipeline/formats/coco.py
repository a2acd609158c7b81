"""COCO detection exports: `annotations.json` (or `annotations/instances_*.json`) + the images.

Layouts found: Roboflow's `_annotations.coco.json` (alone, or in each of `train/`, `valid/`, `test/` beside
its images), one `*.json` at the top of the export, else every `annotations/instances_<name>.json` (the COCO
2017 layout), else per-split COCO files named by their split (`train.json`, `val.json` at the top or in
`annotations/`); several files are merged by category name, and each image keeps the split its file names
(kept with `data.splits: source`). Images are looked up beside the JSON, in `images/`, and for
`instances_<name>.json` in `images/<name>/` and `<name>/`; a `file_name` with a sub-path the export does not
keep, or an absolute path from the annotating machine, is looked up by its last part. Roboflow file names get
their split folder as prefix (`valid/x.jpg`). Boxes, polygons, RLE (compressed or not) and `iscrowd` are
kept; a missing `bbox` is derived from the segmentation.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

from pipeline.errors import InputRejected
from pipeline.formats.base import (Dataset, Problems, basename, child_dir, display, is_finite_number, is_int,
                                   provenance, safe_relative, split_of)

SKIP_NAMES = ("__MACOSX",)
_NUMBER = (int, float)  # exact types: bool is not a coordinate


def export_root(root: Path) -> Path:
    """Step into the single folder an archive often wraps its export in (`export/annotations.json`)."""
    root = Path(root)
    while True:
        entries = [p for p in root.iterdir() if not p.name.startswith(".") and p.name not in SKIP_NAMES]
        if len(entries) == 1 and entries[0].is_dir():
            root = entries[0]
        else:
            return root


def find_annotation_files(root: Path, origin: str) -> list[Path]:
    """The COCO JSON files of the export, in the order they are merged (one per split when it has splits)."""
    from pipeline.formats.layout import ROBOFLOW_JSON, is_coco_json

    if (root / ROBOFLOW_JSON).is_file():
        return [root / ROBOFLOW_JSON]
    roboflow = sorted(root.glob(f"*/{ROBOFLOW_JSON}"))
    if roboflow:  # Roboflow's COCO export: train/, valid/, test/ each with its JSON beside its images
        return roboflow
    top = sorted(p for p in root.glob("*.json") if not p.name.startswith("."))
    ann = child_dir(root, "annotations")
    in_ann = sorted(p for p in ann.glob("*.json") if not p.name.startswith(".")) if ann is not None else []
    instances = [p for p in in_ann if p.name.startswith("instances_")]
    if len(top) == 1:
        return top
    if instances:  # COCO 2017: instances_train2017.json, instances_val2017.json (captions_*, person_keypoints_* left)
        return instances
    for group in ([p for p in top if is_coco_json(p)], [p for p in in_ann if is_coco_json(p)]):
        if len(group) == 1:
            return group
        if group:
            splits = [split_of(p.stem) for p in group]
            if None in splits or len(set(splits)) < len(splits):
                names = ", ".join(p.name for p in group)
                raise InputRejected(f"several COCO JSON files ({names}) and their names do not tell one split each "
                                    "(train / val / test): cannot tell how they fit together; keep one, or name "
                                    "them by split", path=origin)
            return group
    if top:
        names = ", ".join(p.name for p in top)
        raise InputRejected(f"several JSON files at the top of the export ({names}) and none is COCO (images and "
                            "annotations): cannot tell which holds the COCO annotations", path=origin)
    raise InputRejected("no COCO annotations found: expected one *.json at the top of the export, "
                        "annotations/instances_*.json or Roboflow's <split>/_annotations.coco.json", path=origin)


def _image_dirs(root: Path, json_path: Path) -> list[Path]:
    dirs = [json_path.parent / "images", json_path.parent]
    if json_path.stem.startswith("instances_"):
        sub = json_path.stem[len("instances_"):]
        dirs += [root / "images" / sub, root / sub]
    dirs += [root / "images", root]
    seen, out = set(), []
    for d in dirs:
        if d not in seen:
            seen.add(d)
            out.append(d)
    return out


def _load_json(path: Path, name: str):
    try:
        with open(path, "rb") as fh:
            return json.load(fh)
    except json.JSONDecodeError as exc:
        raise InputRejected(f"not valid JSON: {exc.msg}", path=name, field=f"line {exc.lineno} column {exc.colno}") \
            from None
    except UnicodeDecodeError as exc:
        raise InputRejected(f"not UTF-8 text: {exc.reason}", path=name, field=f"byte {exc.start}") from None


def _check_polygons(seg, where: str, problems: Problems, dropped: list | None = None) -> list[float] | None:
    """Polygons [[x1, y1, x2, y2, ...], ...]; returns their bounding box or None when invalid.

    A part of fewer than 3 points (a stray click or a 2-point line that the tools export as a polygon) outlines
    nothing: with `dropped` given it is removed from `seg` in place and listed there as (field, reason), and the
    box is the remaining parts' (None, with nothing flagged, when no part remains). An odd number of values or a
    value that is not a finite number is a defect (flagged)."""
    if not seg:
        problems.add(where, "empty polygon list")
        return None
    xs, ys, keep = [], [], []
    for k, poly in enumerate(seg):
        if not isinstance(poly, list) or len(poly) % 2 or (len(poly) < 6 and dropped is None):
            problems.add(f"{where}[{k}]", "a polygon must be a flat list of at least 3 x, y pairs")
            return None
        if not all(is_finite_number(v) for v in poly):
            problems.add(f"{where}[{k}]", "polygon coordinates must be finite numbers")
            return None
        if len(poly) < 6:
            dropped.append((f"{where}[{k}]", f"a polygon of {len(poly) // 2} point(s) outlines no area: dropped"))
            continue
        keep.append(poly)
        xs += poly[0::2]
        ys += poly[1::2]
    seg[:] = keep
    if not keep:
        return None
    return [min(xs), min(ys), max(xs) - min(xs), max(ys) - min(ys)]


def _check_rle(seg: dict, image: dict | None, where: str, problems: Problems) -> tuple[list[float], float] | None:
    """RLE {"size": [h, w], "counts": [...] or "..."}; returns (bbox, area) or None when invalid."""
    size, counts = seg.get("size"), seg.get("counts")
    if not (isinstance(size, list) and len(size) == 2 and all(is_int(v) and v > 0 for v in size)):
        problems.add(f"{where}.size", f"RLE size must be [height, width] positive integers, got {size!r}")
        return None
    if image is not None and size != [image["height"], image["width"]]:
        problems.add(f"{where}.size", f"RLE size {size} differs from the image's [height, width] "
                                      f"[{image['height']}, {image['width']}]")
        return None
    if isinstance(counts, list):
        if not all(is_int(v) and v >= 0 for v in counts) or sum(counts) != size[0] * size[1]:
            problems.add(f"{where}.counts", "uncompressed RLE counts must be non-negative integers summing to "
                                            "height * width")
            return None
    elif not isinstance(counts, str) or not counts:
        problems.add(f"{where}.counts", "RLE counts must be a list of integers or a compressed string")
        return None
    from pycocotools import mask as mask_utils

    try:
        rle = mask_utils.frPyObjects(seg, size[0], size[1]) if isinstance(counts, list) else \
            {"size": size, "counts": counts.encode()}
        bbox = [float(v) for v in mask_utils.toBbox(rle)]
        area = float(mask_utils.area(rle))
    except Exception as exc:  # noqa: BLE001 - pycocotools raises plain Exceptions for corrupt strings
        problems.add(f"{where}.counts", f"RLE counts cannot be decoded: {exc}")
        return None
    return bbox, area


def _split_and_prefix(path: Path, root: Path) -> tuple[str | None, str]:
    """The export's own split for a COCO file, and the folder its file names are relative to (Roboflow)."""
    parent = path.parent
    if parent == root or parent.name.lower() == "annotations":
        stem = path.stem[len("instances_"):] if path.stem.startswith("instances_") else path.stem
        return split_of(stem), ""
    rel = parent.relative_to(root).as_posix()
    return split_of(parent.name), rel + "/"


def _read_one(path: Path, root: Path, origin: str) -> Dataset:
    reader = _CocoFile(path, root, origin)
    data = reader.load()
    categories = reader.read_categories(data["categories"])
    images = reader.read_images(data["images"])
    annotations = reader.read_annotations(data["annotations"], data["images"])
    reader.problems.raise_if_any()
    return reader.dataset(images, annotations, categories)


class _CocoFile:
    """One COCO JSON file being read, in three steps that share what they found: categories, images (each
    looked up on disk), then annotations (each checked against both). Schema problems reject the export
    (`problems`); per-image defects set the image aside (`quarantine`, `bad_ids`)."""

    def __init__(self, path: Path, root: Path, origin: str):
        self.path, self.root, self.origin = path, root, origin
        self.name = display(origin, root, path)
        self.split, self.prefix = _split_and_prefix(path, root)
        self.problems = Problems(self.name)
        self.quarantine: list[tuple[str, str, str | None]] = []  # (field, reason, image file_name)
        self.skipped: list[tuple[str, str, str]] = []  # (field, reason, image file_name): left out, image kept
        self.bad_ids: dict[int, str] = {}  # image id -> file_name of images set aside
        self.cat_by_id: dict[int, tuple[int, dict]] = {}
        self.img_by_id: dict[int, tuple[int, dict]] = {}
        self.img_names: dict[str, int] = {}

    def load(self) -> dict:
        data = _load_json(self.path, self.name)
        if not isinstance(data, dict):
            raise InputRejected("top level must be an object with images, annotations and categories", path=self.name)
        for key in ("images", "annotations", "categories"):
            if key not in data:
                self.problems.add(key, "missing (a COCO detection file has images, annotations and categories)")
            elif not isinstance(data[key], list):
                self.problems.add(key, f"must be a list, got {type(data[key]).__name__}")
        self.problems.raise_if_any()
        return data

    # -- categories ----------------------------------------------------------------------------------------
    def read_categories(self, raw: list) -> list[dict]:
        problems, cat_by_id = self.problems, self.cat_by_id
        categories, cat_names = [], {}
        for k, cat in enumerate(raw):
            where = f"categories[{k}]"
            if not isinstance(cat, dict):
                problems.add(where, "must be an object")
                continue
            cid, cname = cat.get("id"), cat.get("name")
            if not is_int(cid):
                problems.add(f"{where}.id", f"must be an integer, got {cid!r}")
                continue
            if not isinstance(cname, str) or not cname.strip():
                problems.add(f"{where}.name", f"must be a non-empty string, got {cname!r}")
                continue
            if cid in cat_by_id:
                problems.add(f"{where}.id", f"duplicate category id {cid} (also categories[{cat_by_id[cid][0]}])")
                continue
            if cname in cat_names:
                problems.add(f"{where}.name",
                             f"duplicate category name {cname!r} (also categories[{cat_names[cname]}])")
                continue
            entry = {"id": cid, "name": cname}
            if isinstance(cat.get("supercategory"), str):
                entry["supercategory"] = cat["supercategory"]
            cat_by_id[cid] = (k, entry)
            cat_names[cname] = k
            categories.append(entry)
        return categories

    # -- images --------------------------------------------------------------------------------------------
    def read_images(self, raw: list) -> list[dict]:
        dirs = _image_dirs(self.root, self.path)
        images = []
        for i, img in enumerate(raw):
            entry = self._image(i, img, dirs)
            if entry is not None:
                self.img_by_id[entry["id"]] = (i, entry)
                images.append(entry)
        return images

    def _image_name(self, where: str, img: dict) -> str | None:
        """The image's checked id and file_name, or None (a schema problem) when either is unusable."""
        problems = self.problems
        iid, fname = img.get("id"), img.get("file_name")
        bad = False
        if not is_int(iid):
            problems.add(f"{where}.id", f"must be an integer, got {iid!r}")
            bad = True
        elif iid in self.img_by_id:
            problems.add(f"{where}.id", f"duplicate image id {iid} (also images[{self.img_by_id[iid][0]}])")
            bad = True
        if isinstance(fname, str) and not safe_relative(fname) and safe_relative(basename(fname)):
            # an absolute path from the annotating machine, or one relative to the tool's upload folder
            # (`../../media/upload/1/x.jpg`): the image is looked up by its name inside the export only
            fname = basename(fname)
        if not safe_relative(fname):
            problems.add(f"{where}.file_name", f"must be a relative path inside the export, got {fname!r}")
            bad = True
        elif fname in self.img_names:
            problems.add(f"{where}.file_name",
                         f"duplicate file_name {fname!r} (also images[{self.img_names[fname]}])")
            bad = True
        return None if bad else fname

    def _image(self, i: int, img, dirs: list[Path]) -> dict | None:
        """images[i] as a Dataset image, or None when it is rejected (a problem) or set aside (quarantine)."""
        where = f"images[{i}]"
        if not isinstance(img, dict):
            self.problems.add(where, "must be an object")
            return None
        fname = self._image_name(where, img)
        if fname is None:
            return None
        iid, w, h, prefix = img["id"], img.get("width"), img.get("height"), self.prefix
        self.img_names[fname] = i
        # per-image defects set the image aside (quarantine) instead of rejecting the export
        size_bad = next(((key, value) for key, value in (("width", w), ("height", h))
                         if not (is_int(value) and value > 0)), None)
        if size_bad:
            self.quarantine.append((f"{where}.{size_bad[0]}", f"must be a positive integer, got {size_bad[1]!r}",
                                    prefix + fname))
            self.bad_ids[iid] = prefix + fname
            return None
        local = next((d / fname for d in dirs if (d / fname).is_file()), None)
        if local is None and "/" in fname:  # a sub-path the export does not keep (`train2017/x.jpg` in images/)
            local = next((d / basename(fname) for d in dirs if (d / basename(fname)).is_file()), None)
        if local is None:
            looked = ", ".join(display(self.origin, self.root, d) for d in dirs if d.is_dir())
            self.quarantine.append((f"{where}.file_name", f"no such image file {fname!r} (looked in {looked})",
                                    prefix + fname))
            self.bad_ids[iid] = prefix + fname
            return None
        entry = {"id": iid, "file_name": prefix + fname, "width": w, "height": h, "path": local,
                 "source": provenance(self.name, f"images[{i}] (id {iid})")}
        if self.split:
            entry["split"] = self.split
        return entry

    # -- annotations ---------------------------------------------------------------------------------------
    def read_annotations(self, raw: list, raw_images: list) -> list[dict]:
        annotations, ann_ids = [], {}
        raw_image_ids = {im.get("id") for im in raw_images if isinstance(im, dict) and is_int(im.get("id"))}
        for j, ann in enumerate(raw):
            entry = self._annotation(j, ann, ann_ids, raw_image_ids)
            if entry is not None:
                annotations.append(entry)
        return annotations

    def _annotation(self, j: int, ann, ann_ids: dict, raw_image_ids: set) -> dict | None:
        """annotations[j] as a Dataset annotation, or None when it is rejected, dropped or sets its image aside."""
        where, problems = f"annotations[{j}]", self.problems
        if not isinstance(ann, dict):
            problems.add(where, "must be an object")
            return None
        aid, iid, cid = ann.get("id"), ann.get("image_id"), ann.get("category_id")
        if not is_int(aid):
            problems.add(f"{where}.id", f"must be an integer, got {aid!r}")
            return None
        if aid in ann_ids:
            problems.add(f"{where}.id", f"duplicate annotation id {aid} (also annotations[{ann_ids[aid]}])")
            return None
        ann_ids[aid] = j
        if not is_int(iid):
            problems.add(f"{where}.image_id", f"must be an integer, got {iid!r}")
            return None
        if iid not in self.img_by_id:
            if iid not in raw_image_ids:
                self.quarantine.append((f"{where}.image_id", f"unknown image id {iid} (not in images)", None))
            return None  # the image itself was rejected or set aside above
        image = self.img_by_id[iid][1]
        flag = _flagger(self.quarantine, self.bad_ids, iid, image["file_name"])
        if not is_int(cid):
            flag(f"{where}.category_id", f"must be an integer, got {cid!r}")
            return None
        if cid not in self.cat_by_id:
            flag(f"{where}.category_id", f"unknown category id {cid} (not in categories)")
            return None
        iscrowd = ann.get("iscrowd", 0)
        if iscrowd not in (0, 1) or isinstance(iscrowd, bool):
            flag(f"{where}.iscrowd", f"must be 0 or 1, got {iscrowd!r}")
            return None
        seg = ann.get("segmentation")
        if isinstance(seg, list):
            seg = list(seg)  # degenerate parts are dropped from this copy, never from the caller's JSON
        dropped: list = []
        geometry = _geometry(ann, seg, image, where, flag, dropped)
        for field_name, reason in dropped:
            self.skipped.append((field_name, reason, image["file_name"]))
        if geometry is None:
            return None
        bbox, area = geometry
        entry = {"id": aid, "image_id": iid, "category_id": cid, "bbox": [float(v) for v in bbox],
                 "area": float(area), "iscrowd": iscrowd, "source": provenance(self.name, f"{where} (id {aid})")}
        if seg is not None and seg != []:
            entry["segmentation"] = seg
        return entry

    def dataset(self, images: list[dict], annotations: list[dict], categories: list[dict]) -> Dataset:
        """The file's Dataset, without the images set aside (and their annotations), which it lists in quarantine."""
        if self.bad_ids:
            images = [im for im in images if im["id"] not in self.bad_ids]
            annotations = [a for a in annotations if a["image_id"] not in self.bad_ids]
        ds = Dataset(images, annotations, categories, [self.name], listed_images=len(self.img_names))
        for field_name, reason, fname in self.quarantine:
            ds.set_aside(self.name, field_name, reason, fname)
        for field_name, reason, fname in self.skipped:
            ds.skip(self.name, field_name, reason, fname)
        return ds


def _geometry(ann: dict, seg, image: dict, where: str, flag, dropped: list) -> tuple[list, float] | None:
    """An annotation's (bbox, area): checked, or derived from its segmentation (polygons or RLE) when missing;
    None after flagging the first defect. Polygon parts of fewer than 3 points are removed from `seg` and
    listed in `dropped`; when none is left the annotation is a plain box (its `bbox`)."""
    seg_box, seg_area = None, None
    if seg is not None and seg != []:
        if isinstance(seg, list):
            seg_box = _check_polygons(seg, f"{where}.segmentation", _Shim(flag), dropped)
            if seg_box is None and not (dropped and seg == []):
                return None
        elif isinstance(seg, dict):
            checked = _check_rle(seg, image, f"{where}.segmentation", _Shim(flag))
            if checked is None:
                return None
            seg_box, seg_area = checked
        else:
            flag(f"{where}.segmentation", "must be a list of polygons or an RLE object")
            return None
    bbox = ann.get("bbox")
    if bbox is None:
        if seg_box is None:
            flag(f"{where}.bbox", "missing, and there is no segmentation to derive it from")
            return None
        bbox = seg_box
    elif not (type(bbox) is list and len(bbox) == 4 and all(type(v) in _NUMBER for v in bbox)
              and math.isfinite(sum(bbox))):  # NaN and inf survive the sum
        flag(f"{where}.bbox", f"must be 4 finite numbers [x, y, width, height], got {bbox!r}")
        return None
    area = ann.get("area")
    if area is None:
        area = seg_area if seg_area is not None else float(bbox[2]) * float(bbox[3])
    elif not (is_finite_number(area) and area >= 0):
        flag(f"{where}.area", f"must be a non-negative number, got {area!r}")
        return None
    return bbox, area


class _Shim:
    """Lets the segmentation checks report through a quarantine flagger as if it were a Problems."""

    def __init__(self, flag):
        self.add = flag


def _flagger(quarantine: list, bad_ids: dict, iid: int, fname: str):
    def flag(field_name: str, reason: str) -> None:
        quarantine.append((field_name, reason, fname))
        bad_ids[iid] = fname
    return flag


def read_coco(root, origin: str = "") -> Dataset:
    """Read a COCO export under `root`; several instances_*.json are merged (categories matched by name)."""
    root = export_root(Path(root))
    origin = origin or str(root)
    files = find_annotation_files(root, origin)
    parts = [_read_one(p, root, origin) for p in files]
    for part in parts:
        if not part.listed_images:  # an export's split file with no images: nothing to train or score on
            raise InputRejected("lists no images (empty dataset or empty split)", path=part.files[0], field="images")
    if len(parts) == 1:
        return parts[0]

    # merge: new image/annotation ids, categories by name
    images, annotations, categories, names = [], [], [], {}
    seen_files: dict[str, str] = {}
    for part in parts:
        cat_map = {}
        for cat in part.categories:
            if cat["name"] not in names:
                names[cat["name"]] = len(categories) + 1
                categories.append({**cat, "id": names[cat["name"]]})
            cat_map[cat["id"]] = names[cat["name"]]
        img_map = {}
        for img in part.images:
            if img["file_name"] in seen_files:
                raise InputRejected(f"file_name {img['file_name']!r} is also listed in {seen_files[img['file_name']]}",
                                    path=part.files[0], field="images.file_name")
            seen_files[img["file_name"]] = part.files[0]
            img_map[img["id"]] = len(images) + 1
            images.append({**img, "id": img_map[img["id"]]})
        for ann in part.annotations:
            annotations.append({**ann, "id": len(annotations) + 1, "image_id": img_map[ann["image_id"]],
                                "category_id": cat_map[ann["category_id"]]})
    merged = Dataset(images, annotations, categories, [f for p in parts for f in p.files],
                     listed_images=sum(p.listed_images for p in parts))
    merged.quarantine = [q for p in parts for q in p.quarantine]
    merged.skipped = [s for p in parts for s in p.skipped]
    return merged
