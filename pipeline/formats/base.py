"""What every reader returns, and the error collector that names the file and the field."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from pipeline.errors import InputRejected

MAX_LISTED = 5  # problems spelled out in one rejection message; the rest are counted

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


def coco_segmentation(shape) -> dict | list:
    """A reader's mask as COCO's `segmentation`: an RLE (dict) as it is, a group's pieces (a list of flat
    polygons) as they are, one flat polygon as a list of one."""
    return shape if isinstance(shape, dict) or isinstance(shape[0], list) else [shape]


def class_name(text: str) -> str:
    """A class name as written in a folder name or a manifest, in Unicode's composed form (NFC). macOS writes
    `café` decomposed (`e` + U+0301), Linux and Windows composed: the same class from either machine keeps one name
    and one label-map id."""
    import unicodedata

    return unicodedata.normalize("NFC", text)


@dataclass
class Dataset:
    """An export read into COCO terms.

    images: {"id", "file_name", "width", "height", "path"} where `path` is the local image file and
        `file_name` the relative path it gets under the canonical `images/`.
    annotations: {"id", "image_id", "category_id", "bbox" [x, y, w, h], "area", "iscrowd"} and, when the
        export has one, "segmentation" (polygons or RLE).
    categories: {"id", "name"} and optional "supercategory", in the export's own ids.
    files: the annotation files that were read, as named in messages.
    quarantine: per-item defects the reader set aside instead of rejecting the whole export (an image with an
        invalid box or an unknown class, an annotation naming no image): {"file", "field", "reason", "image"}.
        The image (with all its boxes) is left out of `images`; ingest decides whether there are too many.
    listed_images: how many images the export lists, quarantined ones included (the denominator of the bad
        fraction; 0 = len(images) + quarantined images).
    skipped: shapes left out while their image is kept (an empty label, a shape type that is not a box, a box
        with no area): {"file", "field", "reason", "image"}; reported in the quarantine report, never fatal.

    Provenance: every image and annotation carries `source` = {"file": <annotation file as named in messages>,
    "item": <line / object index / shape>} so later checks name what the user must fix, not the canonical row.
    A reader that knows the export's own split (VOC ImageSets, COCO split files, YOLO train/val lists, CVAT
    subsets) sets `split` (train / val / test) on the image; ingest keeps it when `data.splits: source`.
    """

    images: list[dict]
    annotations: list[dict]
    categories: list[dict]
    files: list[str] = field(default_factory=list)
    quarantine: list[dict] = field(default_factory=list)
    listed_images: int = 0
    skipped: list[dict] = field(default_factory=list)

    def skip(self, file: str, field_name: str, reason: str, image: str | None = None) -> None:
        self.skipped.append({"file": file, "field": field_name, "reason": reason, "image": image})

    def set_aside(self, file: str, field_name: str, reason: str, image: str | None = None) -> None:
        self.quarantine.append({"file": file, "field": field_name, "reason": reason, "image": image})

    def drop_quarantined(self) -> None:
        """Remove quarantined images (by file_name) and their annotations; renumbering is left to the caller."""
        bad = {q["image"] for q in self.quarantine if q.get("image")}
        if not bad:
            return
        drop_ids = {im["id"] for im in self.images if im["file_name"] in bad}
        self.images = [im for im in self.images if im["id"] not in drop_ids]
        self.annotations = [a for a in self.annotations if a["image_id"] not in drop_ids]


class Problems:
    """Collects schema problems in one file, then raises one InputRejected naming the first (and counting the rest)."""

    def __init__(self, path: str):
        self.path = path
        self.items: list[tuple[str, str]] = []

    def add(self, field_name: str, message: str) -> None:
        self.items.append((field_name, message))

    def __bool__(self) -> bool:
        return bool(self.items)

    def raise_if_any(self) -> None:
        if not self.items:
            return
        first_field, first_msg = self.items[0]
        more = [f"{self.path}: {f}: {m}" for f, m in self.items[1:MAX_LISTED]]
        message = first_msg
        if more:
            message += "; also " + "; ".join(more)
        if len(self.items) > MAX_LISTED:
            message += f" (and {len(self.items) - MAX_LISTED} more problems)"
        raise InputRejected(message, path=self.path, field=first_field)


SPLIT_NAMES = {"train": "train", "training": "train", "trainval": "train", "val": "val", "valid": "val",
               "validation": "val", "test": "test", "testing": "test"}


def split_of(name: str) -> str | None:
    """train / val / test for an export's subset name (`valid`, `Validation`, `instances_val2017`), else None."""
    low = name.lower()
    if low in SPLIT_NAMES:
        return SPLIT_NAMES[low]
    for word in sorted(SPLIT_NAMES, key=len, reverse=True):  # instances_train2017, train_annotations
        if word in low.replace("-", "_").split("_") or any(part.startswith(word) and part[len(word):].isdigit()
                                                           for part in low.replace("-", "_").split("_")):
            return SPLIT_NAMES[word]
    return None


def provenance(file: str, item: str) -> dict:
    return {"file": file, "item": item}


def basename(name: str) -> str:
    """The last component of a path written on any system (`C:\\data\\img.jpg`, `/home/u/img.jpg`)."""
    return name.replace("\\", "/").rstrip("/").rsplit("/", 1)[-1] if isinstance(name, str) else ""


def child_dir(root: Path, *names: str) -> Path | None:
    """The first sub-folder of `root` whose name matches one of `names`, in any letter case."""
    wanted = [n.lower() for n in names]
    try:
        found = {p.name.lower(): p for p in sorted(Path(root).iterdir()) if p.is_dir()}
    except OSError:
        return None
    return next((found[n] for n in wanted if n in found), None)


def is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def is_finite_number(value) -> bool:
    return is_number(value) and math.isfinite(value)


def safe_relative(name: str) -> bool:
    """A file name that stays inside images/: relative, no '..', no backslashes or drive letters."""
    if not isinstance(name, str) or not name or "\\" in name or "\x00" in name:
        return False
    p = PurePosixPath(name)
    return not p.is_absolute() and ".." not in p.parts and ":" not in p.parts[0] and name.strip() == name


def inside(path: Path, root: Path) -> bool:
    """Whether `path`, with every symlink resolved, stays under `root`."""
    try:
        Path(path).resolve().relative_to(Path(root).resolve())
        return True
    except ValueError:
        return False


def relative_inside(name: str, base: Path, root: Path) -> Path | None:
    """`base / name` for a relative name written by a tool (Windows separators allowed, `..` allowed only while
    the result stays under `root`); None when the name is absolute or leaves the export."""
    if not isinstance(name, str) or not name or "\x00" in name:
        return None
    posix = name.replace("\\", "/")
    if posix.startswith("/") or (len(posix) > 1 and posix[1] == ":"):
        return None
    path = base / PurePosixPath(posix)
    return path if inside(path, root) else None


def display(origin: str, root: Path, path: Path) -> str:
    """How a file inside the export is named in messages: `<origin>/<relative path>` (or `<archive>:<rel>`)."""
    try:
        rel = path.relative_to(root).as_posix()
    except ValueError:
        return str(path)
    if rel == ".":
        return origin
    if origin.endswith((".zip", ".tar", ".tar.gz", ".tgz")):
        return f"{origin}:{rel}"
    return f"{origin.rstrip('/')}/{rel}"


def parse_xml(xml: Path, name: str, root_tag: str, forbid_dtd: bool = False):
    """The root element of an annotation XML file, parsed with defusedxml (entity expansion and external
    references refused); InputRejected naming `name` if it is unsafe, not XML, or its root is not `root_tag`."""
    from defusedxml import ElementTree
    from defusedxml.common import DefusedXmlException

    try:
        tree = ElementTree.parse(xml, forbid_dtd=forbid_dtd)
    except DefusedXmlException as exc:
        raise InputRejected(f"unsafe XML refused: {exc}", path=name) from None
    except ElementTree.ParseError as exc:
        raise InputRejected(f"not valid XML: {exc}", path=name) from None
    node = tree.getroot()
    if node.tag != root_tag:
        raise InputRejected(f"root element must be <{root_tag}>, got <{node.tag}>", path=name)
    return node
