"""Image-classification labels listed in a manifest: a CSV, JSON or image-list file naming each image's class.

CSV: a header row, then one row per image. The image column is the header among FILE_COLUMNS (`file`,
`filename`, `image`, `path`, ...) or, when there is none, among ID_COLUMNS (`image_id`, `id`: Kaggle's
`train.csv`); the class column among LABEL_COLUMNS (`label`, `class`, `category`, `target`, ...), an optional
split column among SPLIT_COLUMNS (`split`, `subset`); header names are matched in any letter case, with spaces
or hyphens for underscores (`Image Path`); other columns are ignored. Without a class column, one 0/1 column per
class (Roboflow's multi-class `_classes.csv`: `filename, cat, dog` then `a.jpg, 1, 0`) gives each row the class
marked 1; a row marking two is set aside, one marking none is skipped. Commas, semicolons or tabs separate the
fields (as the header line shows); a UTF-8 byte-order mark is allowed.
JSON: a list of objects (`[{"file": "a.jpg", "label": "cat"}, ...]`) or an object with such a list under
`images`, with the same key names; or one object mapping each image file to its class (`{"a.jpg": "cat"}`).
Image list (`.txt`, ImageNet's `train.txt`, Caffe, PaddleClas, MMPretrain): one `<image> <class>` a line; class
indices are named by a `synsets.txt` / `labels.txt` / `classes.txt` beside it (one class a line, or PaddleClas'
`<index> <class>` lines), an index it lacks sets the row aside; without one the indices are the class names.

Image paths are relative to the manifest's folder (`/` or `\\` separators), or, when none of its rows is found
there, to the one folder beside it (or at the export's top) that holds them: `labels.csv` + `images/`,
Kaggle's `train.csv` + `train_images/`; the log says which. A row naming an image without its suffix (an id,
`1000`) finds `1000.jpg` (or `.png`, ...) in that folder. A manifest named by a split (`train.csv`,
`val.json`) gives its rows that split unless a split column says otherwise; several manifests in one folder are
one export only when each is named by its split. Kaggle's submission templates (`sample_submission.csv`) are
not labels: they are left out, and the log says so.

What is wrong with the whole file rejects the export (InputRejected naming the file and the column or key): no
image or no class column, two columns that could each be the image (or the class), a path that is absolute or
leaves the export, a file that is neither CSV nor a JSON manifest. What is wrong with one row sets its image
aside (quarantine, naming the manifest, the row and its line): an image file that does not exist, an unknown
split, a row with the wrong number of fields, the same image listed with two classes. A row without a class
is skipped and reported (the image is not labelled); the same image listed twice with one class is read once.
"""
from __future__ import annotations

import csv
import io
import json
import logging
import os
import posixpath
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from pipeline.errors import InputRejected
from pipeline.formats.base import (IMAGE_SUFFIXES, Dataset, class_name, display, inside, is_number, provenance,
                                  relative_inside, split_of)

log = logging.getLogger(__name__)

FILE_COLUMNS = ("file", "filename", "file_name", "filepath", "file_path", "image", "image_path", "image_name",
                "img", "path")
ID_COLUMNS = ("image_id", "imageid", "img_id", "id", "id_code")  # read only when no FILE_COLUMNS header is there
LABEL_COLUMNS = ("label", "class", "class_name", "classname", "category", "category_name", "label_name", "target")
SPLIT_COLUMNS = ("split", "subset")
SUFFIXES = (".csv", ".json")
LIST_SUFFIX = ".txt"  # `<image> <class>` lines (ImageNet's train.txt, Caffe, PaddleClas, MMPretrain)
NAMES_FILES = ("synsets.txt", "labels.txt", "classes.txt", "class_names.txt", "label_list.txt")  # index -> class


@dataclass
class Row:
    where: str  # how messages name the row: `row 3 (line 4)`, `[2]`, `images[2]`
    field_prefix: str  # `row 3 (line 4): ` / `[2].`
    file: object
    label: object
    split: object = None
    error: str = ""  # a defect of the row itself (wrong number of fields)


def _key(name: str) -> str:
    """A header as matched: any case, spaces and hyphens as underscores (`Image Path` is `image_path`)."""
    return name.strip().lower().replace(" ", "_").replace("-", "_")


def _columns(header: list[str], wanted: tuple[str, ...], what: str, name: str) -> str | None:
    """The one header among `wanted` (any case); InputRejected naming both when two could be it."""
    hits = [h for h in header if isinstance(h, str) and _key(h) in wanted]
    if len(hits) > 1:
        raise InputRejected(f"two {what} columns ({', '.join(hits)}): cannot tell which to read; rename or drop one",
                            path=name, field=f"header: {hits[1]}")
    return hits[0] if hits else None


def _image_column(header: list[str], name: str) -> str | None:
    """The image column: a file column, else an id column when the header has no file column (the first in
    ID_COLUMNS' order: `image_id` before a row's own `id`)."""
    ids = [h for wanted in ID_COLUMNS for h in header if isinstance(h, str) and _key(h) == wanted]
    return _columns(header, FILE_COLUMNS, "image", name) or (ids[0] if ids else None)


def _delimiter(line: str) -> str:
    counts = {d: line.count(d) for d in (",", ";", "\t")}
    best = max(counts, key=counts.get)
    return best if counts[best] else ","


def _csv_rows(text: str, name: str) -> tuple[list[Row], dict]:
    lines = text.splitlines()
    if not lines or not lines[0].strip():
        raise InputRejected("empty CSV: expected a header row (e.g. file,label)", path=name, field="header")
    reader = csv.reader(io.StringIO(text), delimiter=_delimiter(lines[0]))
    header = [h.strip() for h in next(reader)]
    file_col = _image_column(header, name)
    label_col = _columns(header, LABEL_COLUMNS, "class", name)
    split_col = _columns(header, SPLIT_COLUMNS, "split", name)
    records = [(k, reader.line_num, values) for k, values in enumerate(reader, start=1)
               if any(v.strip() for v in values)]  # blank lines (a spreadsheet's trailing ones) are no rows
    one_hot = _one_hot_columns(header, records, (file_col, split_col)) if label_col is None else []
    for col, wanted, what in ((file_col, FILE_COLUMNS + ID_COLUMNS, "image"),
                              (label_col or one_hot, LABEL_COLUMNS, "class")):
        if not col:
            raise InputRejected(f"no {what} column: the header needs one of {', '.join(wanted)}"
                                + (" (or one 0/1 column per class)" if what == "class" else "")
                                + f" (found: {', '.join(repr(h) for h in header)})", path=name, field="header")
    label_name = label_col or f"one-hot columns {', '.join(one_hot)}"
    index = {col: header.index(col) for col in (file_col, label_col, split_col) if col is not None}
    rows = []
    for k, line, values in records:
        where = f"row {k} (line {line})"
        row = Row(where, f"{where}: ", None, None)
        if len(values) != len(header):
            row.error = f"{len(values)} fields where the header has {len(header)}"
        else:
            row.file = values[index[file_col]].strip()
            row.split = values[index[split_col]].strip() if split_col else None
            if label_col:
                row.label = values[index[label_col]].strip()
            else:  # one-hot: the class is the column marked 1
                marked = [c for c in one_hot if values[header.index(c)].strip() == "1"]
                row.label = marked[0] if len(marked) == 1 else ""
                if len(marked) > 1:
                    row.error = f"{len(marked)} classes marked 1 ({', '.join(marked)}): one image, one class"
        rows.append(row)
    return rows, {"file": file_col, "label": label_name, "split": split_col}


def _one_hot_columns(header: list[str], records: list, taken: tuple) -> list[str]:
    """The class columns of a one-hot CSV (Roboflow's multi-class `_classes.csv`: `filename, cat, dog` then
    `a.jpg, 1, 0`): every column but the image and split ones, when there are two or more and each holds only
    0 and 1 in every row; else []."""
    cols = [h for h in header if h and h not in taken]
    if len(cols) < 2 or not records:
        return []
    at = [header.index(c) for c in cols]
    for _, _, values in records:
        if len(values) == len(header) and any(values[i].strip() not in ("0", "1") for i in at):
            return []
    return cols


def _names_image(text: str) -> bool:
    """`text` is a file name (`/` or `\\` separators) with an image suffix."""
    return PurePosixPath(text.replace("\\", "/")).suffix.lower() in IMAGE_SUFFIXES


def _is_file_map(data) -> bool:
    """A JSON object mapping image files to classes (`{"a.jpg": "cat"}`): its first key names an image file and
    every value is a class name or number (a `{"0": "cat"}` class map is not one)."""
    if not isinstance(data, dict) or not data:
        return False
    first = next(iter(data))
    return _names_image(first) and all(
        isinstance(v, (str, int)) and not isinstance(v, bool) for v in data.values())


def _json_items(data) -> tuple[list, str] | None:
    """(items, the key they sit under) of a JSON manifest, or None when `data` is not one."""
    if _is_file_map(data):
        return [{"file": k, "label": v} for k, v in data.items()], "{}"
    if isinstance(data, list):
        items, key = data, ""
    elif isinstance(data, dict) and "annotations" not in data:  # a COCO file has annotations: never a manifest
        items, key = data.get("images"), "images"
    else:
        return None
    if not isinstance(items, list) or not items or not isinstance(items[0], dict):
        return None
    keys = {_key(k) for k in items[0] if isinstance(k, str)}
    if keys & set(FILE_COLUMNS + ID_COLUMNS) and keys & set(LABEL_COLUMNS):
        return items, key
    return None


def _json_rows(text: str, name: str) -> tuple[list[Row], dict]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputRejected(f"not valid JSON: {exc.msg}", path=name, field=f"line {exc.lineno} column {exc.colno}") \
            from None
    got = _json_items(data)
    if got is None:
        raise InputRejected("not a JSON manifest: expected a list of objects like {\"file\": \"a.jpg\", \"label\": "
                            "\"cat\"} (or such a list under \"images\"), or an object mapping each image file to "
                            "its class ({\"a.jpg\": \"cat\"})", path=name,
                            field="images" if isinstance(data, dict) else "")
    items, key = got
    if key == "{}":  # {file: class}: each row is named by its key
        return [Row(json.dumps(item["file"], ensure_ascii=False), f"{json.dumps(item['file'], ensure_ascii=False)}: ",
                    item["file"], item["label"]) for item in items], {"file": "file", "label": "class", "split": None}
    header = list(items[0])
    file_key = _image_column(header, name)
    label_key = _columns(header, LABEL_COLUMNS, "class", name)
    split_key = _columns(header, SPLIT_COLUMNS, "split", name)
    rows = []
    for k, item in enumerate(items):
        where = f"{key}[{k}]"
        row = Row(where, f"{where}.", None, None)
        if not isinstance(item, dict):
            row.error = f"must be an object, got {type(item).__name__}"
        else:
            row.file, row.label = item.get(file_key), item.get(label_key)
            row.split = item.get(split_key) if split_key else None
        rows.append(row)
    return rows, {"file": file_key, "label": label_key, "split": split_key}


def _list_rows(text: str, name: str) -> tuple[list[Row], dict]:
    """An image list: one `<image> <class>` per line, split at the last space or tab (`cat/1.jpg 0`); its first
    line must name an image file, or it is no manifest (YOLO label files, VOC ImageSets and class-name lists
    are not)."""
    rows = []
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.strip().rsplit(None, 1)
        row = Row(f"line {n}", f"line {n}: ", None, None)
        if len(parts) == 2:
            row.file, row.label = parts
        else:
            row.error = f"expected `<image> <class>`, got {line.strip()!r}"
        rows.append(row)
    first = rows[0] if rows else None
    if first is None or first.error or not _names_image(first.file):
        raise InputRejected("not an image list: expected one `<image file> <class>` per line (e.g. `cat/1.jpg 0`)",
                            path=name, field=first.where if first else "")
    return rows, {"file": "image", "label": "class", "split": None}


def _rows(path: Path, text: str, name: str) -> tuple[list[Row], dict]:
    suffix = path.suffix.lower()
    return (_json_rows if suffix == ".json" else _list_rows if suffix == LIST_SUFFIX else _csv_rows)(text, name)


def manifest_columns(path: Path) -> dict | None:
    """{"file", "label", "split"} column names when `path` is a manifest (CSV header, JSON keys, image list),
    else None."""
    try:
        return _rows(path, path.read_text(encoding="utf-8-sig"), path.name)[1]
    except (InputRejected, OSError, UnicodeDecodeError, csv.Error, StopIteration):
        return None


def _is_submission(p: Path) -> bool:
    """Kaggle's submission template (`sample_submission.csv`): the test images' ids with a placeholder class."""
    return "submission" in p.stem.lower()


def _candidates(d: Path) -> list[Path]:
    try:
        return sorted(p for p in d.iterdir() if p.is_file() and p.suffix.lower() in SUFFIXES
                      and not p.name.startswith(".") and not _is_submission(p))
    except OSError:
        return []


def manifests(d: Path) -> list[Path]:
    """The manifest files directly in `d` (what format detection looks for); submission templates are not."""
    try:
        lists = [p for p in d.iterdir() if p.is_file() and p.suffix.lower() == LIST_SUFFIX
                 and not p.name.startswith(".") and p.name.lower() not in NAMES_FILES]
    except OSError:
        lists = []
    return [p for p in sorted(_candidates(d) + lists) if p.stat().st_size < 256 * 2**20
            and manifest_columns(p) is not None]


def _chosen(root: Path, origin: str) -> list[tuple[Path, str | None]]:
    """[(manifest, split it gives its rows or None)]: one manifest, or one per split (`train.csv`, `val.csv`)."""
    for p in sorted(root.iterdir()):
        if p.is_file() and p.suffix.lower() in SUFFIXES and _is_submission(p):
            log.info("manifest: %s left out: a submission template (test images and placeholder classes), not labels",
                     display(origin, root, p))
    found = manifests(root)
    if not found:
        candidates = _candidates(root)
        if len(candidates) == 1:  # read it anyway: its reader names what is wrong with it
            return [(candidates[0], None)]
        none_is = f"; none of {', '.join(p.name for p in candidates)} is one" if candidates else ""
        raise InputRejected("no manifest: expected a CSV with a header like file,label or image_id,label (or a JSON "
                            "list of {\"file\": ..., \"label\": ...}, or {\"a.jpg\": \"cat\", ...}, or a .txt of "
                            "`<image> <class>` lines)" + none_is, path=origin)
    if len(found) == 1:
        return [(found[0], split_of(found[0].stem))]  # `train.csv` alone: its rows are the train split
    splits = [split_of(p.stem) for p in found]
    if None in splits or len(set(splits)) != len(splits):
        raise InputRejected(f"several manifests ({', '.join(p.name for p in found)}): cannot tell which to read; "
                            "keep one, or name one per split (train.csv, val.csv, test.csv)", path=origin)
    return list(zip(found, splits))


def _class_names(path: Path, root: Path) -> tuple[Path, dict[int, str]] | None:
    """(the names file, {index: class}) beside an image list (or at the export's top): `synsets.txt` /
    `labels.txt` / `classes.txt` with one class a line (index = line), or PaddleClas' `<index> <class>` lines."""
    for folder in (path.parent, root):
        for candidate in NAMES_FILES:
            f = folder / candidate
            if f.is_file() and inside(f, root):
                lines = [ln.strip() for ln in f.read_text(encoding="utf-8-sig", errors="replace").splitlines()
                         if ln.strip()]
                pairs = [ln.split(None, 1) for ln in lines]
                if lines and all(len(pr) == 2 and pr[0].isdigit() for pr in pairs):
                    return f, {int(i): n.strip() for i, n in pairs}
                return f, dict(enumerate(lines))
    return None


def _name_indices(rows: list[Row], path: Path, root: Path, origin: str, name: str) -> None:
    """An image list's class indices as class names from its names file; an index it lacks sets the row aside.
    Without one (or with a class that is not an index) the labels are the classes as written, and the log says so."""
    labelled = [r for r in rows if not r.error]
    if not labelled or not all(str(r.label).isdigit() for r in labelled):
        return
    found = _class_names(path, root)
    if found is None:
        log.info("manifest %s: classes are indices and no %s is beside it: the indices are the class names", name,
                 " / ".join(NAMES_FILES[:3]))
        return
    names_file, names = found
    shown = display(origin, root, names_file)
    for r in labelled:
        if int(r.label) in names:
            r.label = names[int(r.label)]
        else:
            r.error = f"class index {r.label} is not in {shown} ({len(names)} classes)"
    log.info("manifest %s: class indices named by %s (%d classes)", name, shown, len(names))


class _Images:
    """Where a manifest's rows find their images (see the module's docstring): the folder its paths are relative
    to, and `<id>.<suffix>` for a row naming an image without its suffix."""

    SAMPLE = 200  # rows tried against each candidate folder

    def __init__(self, root: Path):
        self.root = root
        self._stems: dict[Path, dict[str, list[str]]] = {}

    def _by_stem(self, folder: Path) -> dict[str, list[str]]:
        """{file name without its image suffix: [image files]} of one folder, listed once."""
        if folder not in self._stems:
            index: dict[str, list[str]] = {}
            try:
                names = sorted(os.listdir(folder))
            except OSError:
                names = []
            for n in names:
                stem, suffix = posixpath.splitext(n)
                if suffix.lower() in IMAGE_SUFFIXES and not n.startswith("."):
                    index.setdefault(stem, []).append(n)
            self._stems[folder] = index
        return self._stems[folder]

    def find(self, local: Path) -> tuple[Path, list[str]]:
        """(the image file `local` names, other files it could name): `local` itself, or for a name without an
        image suffix the image file(s) it is the stem of (`1000` -> `1000.jpg`)."""
        if local.suffix.lower() in IMAGE_SUFFIXES or local.is_file():
            return local, []
        hits = self._by_stem(local.parent).get(local.name, [])
        return (local.parent / hits[0], hits[1:]) if hits else (local, [])

    def base(self, files: list, folder: Path) -> Path:
        """The folder the paths in `files` are relative to: `folder` (the manifest's) when any is found there,
        else the sub-folder of it, the export's top or a sub-folder of that which holds the most."""
        sample = [f.strip() for f in files if isinstance(f, str) and f.strip()][:self.SAMPLE]
        seen, candidates = set(), []
        for top in (folder, self.root):
            for c in (top, *sorted(d for d in top.iterdir() if d.is_dir() and not d.name.startswith("."))):
                if c not in seen and inside(c, self.root):
                    seen.add(c)
                    candidates.append(c)
        best, best_hits = folder, 0
        for c in candidates:
            hits = sum(1 for f in sample if (local := relative_inside(f, c, self.root)) is not None
                       and self.find(local)[0].is_file())
            if hits > best_hits:
                best, best_hits = c, hits
            if best_hits == len(sample) or (c == folder and hits):
                break
        return best


def _read_rows(ds: Dataset, path: Path, root: Path, origin: str, split: str | None, labelled: dict,
               images: _Images) -> None:
    name = display(origin, root, path)
    if not inside(path, root):
        raise InputRejected("symlink leaves the dataset", path=name)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise InputRejected(f"not UTF-8 text: {exc.reason}", path=name, field=f"byte {exc.start}") from None
    try:
        rows, cols = _rows(path, text, name)
    except csv.Error as exc:
        raise InputRejected(f"not a readable CSV: {exc}", path=name) from None
    ds.files.append(name)
    if path.suffix.lower() == LIST_SUFFIX:
        _name_indices(rows, path, root, origin, name)
    for row in rows:  # an id read from JSON as a number names its file too
        if isinstance(row.file, int) and not isinstance(row.file, bool):
            row.file = str(row.file)
    base = images.base([r.file for r in rows if not r.error], path.parent)
    relative_to = "the manifest's folder" if base == path.parent else f"{display(origin, root, base)}/"
    if base != path.parent:
        log.info("manifest %s: image paths are relative to %s (none is found beside the manifest)", name, relative_to)
    added_suffix: list[str] = []  # `1000 -> train_images/1000.jpg`, for the log
    for row in rows:
        if row.error:
            ds.listed_images += 1
            ds.set_aside(name, row.where, row.error, None)
            continue
        file_field, label_field = f"{row.field_prefix}{cols['file']}", f"{row.field_prefix}{cols['label']}"
        if not isinstance(row.file, str) or not row.file.strip():
            ds.listed_images += 1
            ds.set_aside(name, file_field, f"must name an image file, got {row.file!r}", None)
            continue
        local = relative_inside(row.file.strip(), base, root)
        if local is None:
            raise InputRejected(f"{row.file!r} is absolute or leaves the export: image paths are relative to "
                                f"{relative_to}", path=name, field=file_field)
        local, others = images.find(local)
        rel = posixpath.normpath(local.relative_to(root).as_posix())  # `../images/a.jpg` from a sub-folder
        if local.name != PurePosixPath(row.file.strip().replace("\\", "/")).name:
            added_suffix.append(f"{row.file.strip()} -> {rel}")
        local = root / PurePosixPath(rel)
        label = str(row.label) if is_number(row.label) and float(row.label).is_integer() else row.label
        if label is not None and not isinstance(label, str):
            ds.listed_images += 1
            ds.set_aside(name, label_field, f"must be a class name, got {label!r}", rel)
            continue
        entry = labelled.get(rel)
        if entry is None:
            ds.listed_images += 1
            entry = labelled[rel] = {"path": local, "labels": {}, "where": [], "file": name, "split": split,
                                     "bad": None}
        entry["where"].append(row.where)
        if others:
            entry["bad"] = entry["bad"] or (file_field, f"{row.file!r} could be {local.name} or {', '.join(others)}: "
                                                        "name the file with its suffix")
            continue
        if not local.is_file():
            entry["bad"] = entry["bad"] or (file_field, f"no such image file {row.file!r} (paths are relative to "
                                                        f"{relative_to})")
            continue
        if local.suffix.lower() not in IMAGE_SUFFIXES:
            entry["bad"] = entry["bad"] or (file_field, f"not an image file (suffix {local.suffix or 'none'!r})")
            continue
        if row.split not in (None, ""):
            s = split_of(str(row.split)) if isinstance(row.split, str) else None
            if s is None:
                entry["bad"] = entry["bad"] or (f"{row.field_prefix}{cols['split']}", f"unknown split {row.split!r} "
                                                "(train, val, valid or test)")
                continue
            entry["split"] = s
        if not label or not label.strip():
            ds.skip(name, label_field, "no class: image left out (not labelled)", rel)
            continue
        entry["labels"].setdefault(class_name(label.strip()), row.where)  # `café` typed on a Mac: one class
    if added_suffix:
        log.info("manifest %s: %d rows name an image without its suffix (an id), each read as the one image file of "
                 "that name, e.g. %s", name, len(added_suffix), added_suffix[0])


def read_manifest(root, origin: str = "") -> Dataset:
    root = Path(root)
    origin = origin or str(root)
    ds = Dataset([], [], [], [])
    labelled: dict[str, dict] = {}
    images = _Images(root)
    for path, split in _chosen(root, origin):
        _read_rows(ds, path, root, origin, split, labelled, images)
    records = []
    for rel, entry in sorted(labelled.items()):
        if entry["bad"]:
            ds.set_aside(entry["file"], entry["bad"][0], entry["bad"][1], rel)
            continue
        labels = entry["labels"]
        if len(labels) > 1:
            ds.set_aside(entry["file"], " and ".join(labels.values()), f"image {rel!r} is listed with "
                         f"{len(labels)} classes ({', '.join(sorted(labels))}): one image, one class", rel)
            continue
        if not labels:
            continue  # every row of it had no class: skipped and reported above
        if len(entry["where"]) > 1:
            ds.skip(entry["file"], entry["where"][1], f"image {rel!r} listed again (first at {entry['where'][0]}) "
                    "with the same class: read once", rel)
        records.append((rel, entry, next(iter(labels.items()))))
    cat_id = {n: i for i, n in enumerate(sorted({label for _, _, (label, _) in records}), start=1)}
    ds.categories = [{"id": i, "name": n} for n, i in cat_id.items()]
    for rel, entry, (label, where) in records:
        image_id = len(ds.images) + 1
        image = {"id": image_id, "file_name": rel, "width": None, "height": None, "path": entry["path"],
                 "source": provenance(entry["file"], where)}
        if entry["split"]:
            image["split"] = entry["split"]
        ds.images.append(image)
        ds.annotations.append({"id": image_id, "image_id": image_id, "category_id": cat_id[label],
                               "source": provenance(entry["file"], where)})
    log.info("manifest: %d labelled images in %d classes from %s", len(ds.images), len(cat_id), ", ".join(ds.files))
    return ds
