"""Where in a source the export sits, and (for `data.format: auto`) which format it is.

Real sources are rarely the export's own folder: a repository holds its dataset one folder down
(`BCCD_Dataset/BCCD/Annotations`), a devkit two (`VOCdevkit/VOC2007/Annotations`), an archive wraps it in a
folder. `locate(root, fmt)` looks at the source folder, then its sub-folders, then theirs (two levels below),
and stops at the first level where something matches. Each format recognises its own layouts by their
files, never by folder names alone:

- voc: an `Annotations/`, `annotations/` or `annots/` folder (any letter case) of `<annotation>` XML files,
  or such XML files beside the images;
- coco: `annotations/instances_*.json` (or other COCO JSON files there), COCO JSON files at the top,
  Roboflow's `train/`, `valid/`, `test/` each holding `_annotations.coco.json`;
- yolo: an Ultralytics dataset YAML of any name (a mapping with `names` and `train`/`val`), Darknet's
  `obj.data` / `obj.names` (CVAT's YOLO 1.1 export), or `classes.txt` with `labels/` (Label Studio) or with
  label files beside the images (labelImg);
- labelme: JSON files with `shapes` and `imagePath`, beside the images or in `annotations/` (any case);
- cvat: `annotations.xml` (or another XML file) whose root is `<annotations>` (CVAT for images 1.1, task or
  project);
- kitti: `label_2/` beside `image_2/`, or `training/label_2/`;
- imagefolder (classification): two or more class folders holding images (`cat/`, `dog/`), or split folders
  (`train/`, `val/`, `test/`) holding them; folders named only by split (`train2017/`) are not classes;
- manifest (classification): a CSV whose header names an image (or image id) column and a class column
  (`file,label`, Kaggle's `image_id,label`), a JSON list of such objects, or a JSON object mapping image files
  to classes, or a `.txt` image list of `<image> <class>` lines; Kaggle's `sample_submission.csv` is not one.

Which formats `auto` looks for depends on `data.task` (`locate(..., task=)`): boxes and masks for detection
and segmentation; class folders, manifests, Labelme flags and CVAT tags for classification. An export of the
other kind found instead (a COCO export given to a classification run, class folders given to a detection
run) is refused naming `data.task`, never read as something it is not.

With an explicit format and nothing recognised, the source folder itself goes to the reader, whose message
names the missing or broken file. Sibling folders named by split (`train/`, `valid/`, `test/`), each an
export of the same format, are one export whose splits are those folders (Roboflow's VOC and other
per-split exports). More than one other candidate at that level (two folders, or two formats in one folder
under `auto`) is an error that lists them all: Nightshift never guesses between two exports.
"""
from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path

from pipeline.errors import InputRejected

log = logging.getLogger(__name__)

SKIP_DIRS = {"__MACOSX", "node_modules", "__pycache__"}
MAX_DEPTH = 2  # the export may sit this many folders below the source
_VOC_ROOT = re.compile(rb"<annotation[\s>]")
_PEEK = 4096
ROBOFLOW_JSON = "_annotations.coco.json"


@dataclass(frozen=True)
class Found:
    format: str
    root: Path
    reason: str
    parts: tuple[Path, ...] = ()  # split folders read one by one and merged (Roboflow's VOC train/ valid/ test/)


def _peek(path: Path, n: int = _PEEK) -> bytes:
    try:
        with open(path, "rb") as fh:
            return fh.read(n)
    except OSError:
        return b""


def _files(d: Path, *suffixes: str) -> list[Path]:
    try:
        return sorted(p for p in d.iterdir() if p.is_file() and p.suffix.lower() in suffixes
                      and not p.name.startswith("."))
    except OSError:
        return []


def _subdirs(d: Path) -> list[Path]:
    try:
        return sorted(p for p in d.iterdir() if p.is_dir() and not p.name.startswith(".") and p.name not in SKIP_DIRS)
    except OSError:
        return []


def _child(d: Path, *names: str) -> Path | None:
    wanted = {n.lower() for n in names}
    return next((p for p in _subdirs(d) if p.name.lower() in wanted), None)


def _json_keys(path: Path, limit: int = 32 * 2**20) -> set[str]:
    """Top-level keys of a JSON object file (empty when it is not one); a large file is judged by its first and
    last megabyte, where a COCO file's `images` and `categories` (or `annotations`) keys sit."""
    try:
        size = path.stat().st_size
        if size > limit:
            with open(path, "rb") as fh:
                head = fh.read(1 << 20)
                fh.seek(max(0, size - (1 << 20)))
                tail = fh.read()
            if not head.lstrip().startswith(b"{"):
                return set()
            return {k for k in ("images", "annotations", "categories", "shapes", "imagePath") if
                    f'"{k}"'.encode() in head + tail}
        data = json.loads(path.read_bytes())
    except (OSError, ValueError):
        return set()
    return set(data) if isinstance(data, dict) else set()


def is_coco_json(path: Path) -> bool:
    return {"images", "annotations"} <= _json_keys(path)


def is_voc_xml(path: Path) -> bool:
    return bool(_VOC_ROOT.search(_peek(path)))


def _voc(d: Path) -> str | None:
    ann = _child(d, "Annotations", "annots", "annotation")
    if ann is not None and any(is_voc_xml(x) for x in _files(ann, ".xml")[:5]):
        return f"{ann.name}/ holds Pascal VOC <annotation> XML files"
    if any(is_voc_xml(x) for x in _files(d, ".xml")[:5]):
        return "Pascal VOC <annotation> XML files beside the images"
    return None


def _coco(d: Path) -> str | None:
    splits = [s.name for s in _subdirs(d) if (s / ROBOFLOW_JSON).is_file()]
    if splits:
        return f"Roboflow COCO split folders ({', '.join(f'{s}/{ROBOFLOW_JSON}' for s in splits)})"
    if (d / ROBOFLOW_JSON).is_file():
        return f"{ROBOFLOW_JSON} (Roboflow COCO export)"
    ann = _child(d, "annotations")
    if ann is not None:
        inst = [p.name for p in _files(ann, ".json") if p.name.startswith("instances_")]
        if inst:
            return f"{ann.name}/{', '.join(inst)} (COCO 2017 layout)"
        coco = [p.name for p in _files(ann, ".json") if is_coco_json(p)]
        if coco:
            return f"COCO JSON in {ann.name}/: {', '.join(coco)}"
    coco = [p.name for p in _files(d, ".json") if is_coco_json(p)]
    if coco:
        return f"COCO JSON with images and annotations: {', '.join(coco)}"
    return None


def yolo_yamls(d: Path) -> list[Path]:
    """Ultralytics dataset YAMLs in `d`: mappings with `names` and `train` or `val` (any file name)."""
    import yaml

    out = []
    for p in _files(d, ".yaml", ".yml"):
        try:
            spec = yaml.safe_load(p.read_text(errors="replace"))
        except yaml.YAMLError:
            continue
        if isinstance(spec, dict) and "names" in spec and ("train" in spec or "val" in spec):
            out.append(p)
    return out


def _yolo(d: Path) -> str | None:
    yamls = yolo_yamls(d)
    if yamls:
        return f"Ultralytics dataset YAML {', '.join(p.name for p in yamls)}"
    if (d / "obj.data").is_file() or (d / "obj.names").is_file():
        return "Darknet obj.data / obj.names (CVAT YOLO 1.1)"
    if (d / "classes.txt").is_file():
        labels = _child(d, "labels")
        if labels is not None and _files(labels, ".txt"):
            return "classes.txt + images/ and labels/ (Label Studio YOLO export)"
        if any(p.name != "classes.txt" for p in _files(d, ".txt")) and any(
                p.suffix.lower() in (".jpg", ".jpeg", ".png", ".bmp") for p in d.iterdir()):
            return "classes.txt + label files beside the images (labelImg YOLO)"
    return None


def _labelme(d: Path) -> str | None:
    # beside the images, or in their own folder (`labelme --output annotations/`) next to images/
    for folder in (d, _child(d, "annotations", "labels", "json", "jsons")):
        if folder is None:
            continue
        for p in _files(folder, ".json")[:20]:
            if {"shapes", "imagePath"} <= _json_keys(p):
                where = "" if folder == d else f" in {folder.name}/"
                return f"Labelme JSON files (shapes + imagePath){where}, e.g. {p.name}"
    return None


def cvat_xmls(d: Path) -> list[Path]:
    """CVAT for images 1.1 files in `d`: annotations.xml, else any XML whose root is <annotations> (`train.xml`)."""
    if (d / "annotations.xml").is_file():
        return [d / "annotations.xml"]
    return [p for p in _files(d, ".xml") if re.search(rb"<annotations[\s>]", _peek(p))]


def _cvat(d: Path) -> str | None:
    xmls = cvat_xmls(d)
    if xmls:
        return f"{', '.join(p.name for p in xmls)} with <annotations> (CVAT for images 1.1)"
    return None


def _kitti(d: Path) -> str | None:
    for base in (d, _child(d, "training")):
        if base is not None and (base / "label_2").is_dir() and (base / "image_2").is_dir():
            rel = "" if base == d else f"{base.name}/"
            return f"KITTI {rel}label_2/ beside {rel}image_2/"
    return None


def _manifest(d: Path) -> str | None:
    from pipeline.formats.manifest import manifest_columns, manifests

    found = manifests(d)
    if found:
        cols = manifest_columns(found[0]) or {}
        return (f"classification manifest {', '.join(p.name for p in found)} (image column {cols.get('file')!r}, "
                f"class column {cols.get('label')!r})")
    return None


def _imagefolder(d: Path) -> str | None:
    from pipeline.formats.base import split_of
    from pipeline.formats.imagefolder import class_folders_with_images, split_folders

    if _manifest(d) or _labelme(d) or _cvat(d):  # annotation files here: that export, not class folders
        return None
    splits = split_folders(d)
    if splits:
        classes = sorted({c for s in splits for c in class_folders_with_images(s)})
        if len(classes) >= 2:
            return (f"split folders {', '.join(s.name + '/' for s in splits)} each holding class folders of images "
                    f"(ImageFolder), e.g. {', '.join(classes[:4])}")
        return None
    classes = class_folders_with_images(d)
    # folders named only by split (train2017/, val2017/ of a COCO export) are splits without classes, not classes
    if len(classes) >= 2 and not all(split_of(c) for c in classes):
        return f"class folders of images (ImageFolder): {', '.join(classes[:5])}" + (", ..." if len(classes) > 5
                                                                                     else "")
    return None


PROBES = {"coco": _coco, "voc": _voc, "yolo": _yolo, "labelme": _labelme, "cvat": _cvat, "kitti": _kitti,
          "imagefolder": _imagefolder, "manifest": _manifest}
# what `data.format: auto` looks for, by data.task: boxes and masks, or image-level class labels
DETECTION_FORMATS = ("coco", "voc", "yolo", "labelme", "cvat", "kitti")
CLASSIFICATION_FORMATS = ("imagefolder", "manifest", "labelme", "cvat")  # Labelme flags, CVAT tags


def _formats_for(task: str) -> tuple[str, ...]:
    return CLASSIFICATION_FORMATS if task == "classification" else DETECTION_FORMATS


def _wrong_task(f: "Found", task: str, top: Path, origin: str) -> InputRejected:
    """The export found holds labels for another task than data.task."""
    rel = f.root.relative_to(top).as_posix()
    where = "" if rel == "." else f" in {rel}/"
    if task == "classification":
        what = f"a {f.format} detection export ({f.reason}){where}: it labels boxes, not whole images"
        fix = ("give an export with one class per image (class folders, a CSV/JSON manifest, Labelme flags or "
               "CVAT tags), or set data.task to detection")
    else:
        what = f"an image-classification export ({f.reason}){where}: it labels whole images, not boxes"
        fix = "set data.task=classification (a classifier as train.model), or give a detection export"
    return InputRejected(f"data.task is {task} but this is {what}; {fix}", path=origin, field="data.task")


def _split_folders(found: list[Found]) -> Found | None:
    """Sibling folders named by split (train/ valid/ test/), each an export of one format: one export."""
    from pipeline.formats.base import split_of

    if len(found) < 2 or len({f.format for f in found}) != 1 or len({f.root.parent for f in found}) != 1:
        return None
    splits = [split_of(f.root.name) for f in found]
    if None in splits or len(set(splits)) != len(splits):
        return None
    names = ", ".join(f"{f.root.name}/" for f in found)
    return Found(found[0].format, found[0].root.parent, f"split folders {names} each with {found[0].reason}",
                 tuple(f.root for f in found))


def _describe(found: list[Found], top: Path) -> str:
    def rel(p: Path) -> str:
        r = p.relative_to(top).as_posix()
        return "." if r == "." else r + "/"
    return "; ".join(f"{rel(f.root)} as {f.format} ({f.reason})" for f in found)


def locate(top: Path, fmt: str, origin: str, task: str = "detection") -> Found:
    """The export under `top` (at most MAX_DEPTH folders down) in format `fmt` ("auto": any format that can
    hold labels for `task`; an export of the other task's formats found first is refused naming data.task)."""
    top = Path(top)
    if fmt != "auto":
        probes = {fmt: PROBES[fmt]}
    elif task == "classification":  # detection formats too, so a box export is named, not "nothing found"
        probes = {n: PROBES[n] for n in dict.fromkeys((*CLASSIFICATION_FORMATS, *DETECTION_FORMATS))}
    else:
        probes = {n: PROBES[n] for n in DETECTION_FORMATS}
    level = [top]
    for depth in range(MAX_DEPTH + 1):
        found = [Found(name, d, reason) for d in level for name, probe in probes.items()
                 if (reason := probe(d)) is not None]
        one = found[0] if len(found) == 1 else _split_folders(found)
        if one is not None:
            if fmt == "auto" and one.format not in _formats_for(task):
                raise _wrong_task(one, task, top, origin)
            return one
        if found:
            what = "exports" if len({f.root for f in found}) > 1 else "formats"
            raise InputRejected(f"several {what} found, cannot tell which to read: {_describe(found, top)}; "
                                "point data.source at one" + (" or set data.format" if fmt == "auto" else ""),
                                path=origin, field="data.source")
        level = [s for d in level for s in _subdirs(d)]
        if not level:
            break
    if fmt != "auto":  # the reader names what is missing or broken in the export's own terms
        return Found(fmt, top, f"data.format={fmt} (no {fmt} layout recognised below: read as it is)")
    if task != "classification":  # an image-classification export given to a detection run: say so
        other = _first_match(top, {n: PROBES[n] for n in ("imagefolder", "manifest")})
        if other is not None:
            raise _wrong_task(other, task, top, origin)
    # e.g. an annotations.json that does not parse: the COCO reader says where
    if _files(top, ".json") and task != "classification":
        return Found("coco", top, "JSON files at the top and nothing else recognised: read as COCO")
    looked_for = ("class folders (<class>/<image> or <split>/<class>/<image>), a CSV/JSON manifest or image list "
                  "naming each image's class, Labelme flags or CVAT tags" if task == "classification" else
                  f"{', '.join(DETECTION_FORMATS)} exports")
    raise InputRejected(f"no supported format found here or up to {MAX_DEPTH} folders below: looked for "
                        f"{looked_for} (data.task={task}; pipeline/formats/layout.py lists the layouts each format is "
                        "recognised by)", path=origin, field="data.source")


def _first_match(top: Path, probes: dict) -> Found | None:
    """The first export `probes` recognise at the shallowest level below `top` (None when there is none)."""
    level = [top]
    for _depth in range(MAX_DEPTH + 1):
        found = [Found(name, d, reason) for d in level for name, probe in probes.items()
                 if (reason := probe(d)) is not None]
        if found:
            return found[0]
        level = [s for d in level for s in _subdirs(d)]
    return None


def sub_origin(origin: str, top: Path, root: Path) -> str:
    """How messages name the export's folder when it sits below the source (`repo/BCCD`, `x.zip:export`)."""
    rel = Path(root).relative_to(top).as_posix()
    if rel == ".":
        return origin
    if origin.endswith((".zip", ".tar", ".tar.gz", ".tgz")):
        return f"{origin}:{rel}"
    return f"{origin.rstrip('/')}/{rel}"
