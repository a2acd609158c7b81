"""Image-classification exports laid out as one folder per class (torchvision's `ImageFolder`, Keras'
`image_dataset_from_directory`, the classification exports of Roboflow and Ultralytics).

Two layouts:

- class folders: `root/<class>/<image>` (images may sit deeper inside their class folder);
- split folders, each holding class folders: `root/{train,val,valid,test}/<class>/<image>`; every image
  keeps its folder's split (`split`), which ingest uses with `data.splits: source`.

The layout is split folders when every sub-folder is named by a split and holds folders; otherwise every
sub-folder is a class. A class is its folder's name (in Unicode's composed form, NFC, whichever machine
wrote it); categories are numbered in name order. Each image gets one image-level annotation `{"id",
"image_id", "category_id"}` (no box) with `source` naming the image file and its class folder, so a wrong
label is fixed by moving that file. Hidden files and folders (`.DS_Store`, `.ipynb_checkpoints`, `__MACOSX/`)
and the files Windows leaves in folders (`Thumbs.db`, `desktop.ini`) are ignored; a file that is not an image,
an image outside any class folder and a class folder without images are skipped and listed in the quarantine
report (never fatal). Fewer than two classes cannot train a classifier and reject the export. Symlinks
leaving the export reject it too.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

from pipeline.errors import InputRejected
from pipeline.formats.base import IMAGE_SUFFIXES, Dataset, class_name, display, inside, provenance, split_of

log = logging.getLogger(__name__)

SKIP_DIRS = {"__MACOSX", "__pycache__"}
OS_FILES = {"thumbs.db", "ehthumbs.db", "desktop.ini"}  # Windows Explorer's, in any letter case
SPLIT_FOLDERS = ("train", "training", "val", "valid", "validation", "test", "testing")  # split_of() knows each


def _hidden(name: str) -> bool:
    return name.startswith(".") or name in SKIP_DIRS or name.lower() in OS_FILES


def _visible(p: Path) -> bool:
    return not _hidden(p.name)


def _subdirs(d: Path) -> list[Path]:
    try:
        return sorted(p for p in d.iterdir() if p.is_dir() and _visible(p))
    except OSError:
        return []


def _files(d: Path) -> list[Path]:
    try:
        return sorted(p for p in d.iterdir() if p.is_file() and _visible(p))
    except OSError:
        return []


def is_image(p: Path) -> bool:
    return p.suffix.lower() in IMAGE_SUFFIXES


def _walk(folder: Path) -> list[Path]:
    """Every visible file under `folder` (hidden files and folders left out), in a stable order."""
    out = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not _hidden(d))
        out += [Path(dirpath) / f for f in sorted(filenames) if not _hidden(f)]
    return out


def split_folders(d: Path) -> list[Path] | None:
    """The split folders of `d` when it has the split layout (every sub-folder named by a split and holding
    folders), else None."""
    subs = _subdirs(d)
    if subs and all(s.name.lower() in SPLIT_FOLDERS and _subdirs(s) for s in subs):
        return subs
    return None


def class_folders_with_images(d: Path, limit: int = 20) -> list[str]:
    """Names of sub-folders of `d` holding image files directly (looks at the first `limit` folders): what
    format detection recognises an ImageFolder export by."""
    out = []
    for sub in _subdirs(d)[:limit]:
        if any(is_image(p) for p in _files(sub)):
            out.append(sub.name)
    return out


def _read_classes(ds: Dataset, base: Path, root: Path, origin: str, split: str | None, found: dict) -> None:
    """Images of the class folders under `base` into `found` (class -> [(path, split)]); reports what is skipped."""
    for f in _files(base):
        ds.skip(display(origin, root, f), "file", ("an image outside any class folder has no class" if is_image(f)
                                                   else "not an image (no class folder, not an image suffix)")
                + ": skipped", None)
    for folder in _subdirs(base):
        if not inside(folder, root):
            raise InputRejected("symlink leaves the dataset", path=display(origin, root, folder))
        images = 0
        for f in _walk(folder):
            if not inside(f, root):
                raise InputRejected("symlink leaves the dataset", path=display(origin, root, f))
            if not is_image(f):
                ds.skip(display(origin, root, f), "file", f"not an image (suffix {f.suffix or 'none'!r}): skipped",
                        None)
                continue
            found.setdefault(class_name(folder.name), []).append((f, split))
            images += 1
        if not images:
            ds.skip(display(origin, root, folder), "folder", f"class folder {folder.name!r} holds no images: "
                    "no class made of it", None)


def read_imagefolder(root, origin: str = "") -> Dataset:
    root = Path(root)
    origin = origin or str(root)
    if not root.is_dir():
        raise InputRejected("not a folder of class folders", path=origin)
    ds = Dataset([], [], [], [origin])
    found: dict[str, list[tuple[Path, str | None]]] = {}
    splits = split_folders(root)
    if splits:
        for s in splits:
            _read_classes(ds, s, root, origin, split_of(s.name), found)
    else:
        _read_classes(ds, root, root, origin, None, found)
    if len(found) < 2:
        layout = "<split>/<class>/<image>" if splits else "<class>/<image>"
        raise InputRejected(f"an ImageFolder export needs at least two class folders with images ({layout}), found "
                            f"{len(found)}" + (f": {', '.join(found)}" if found else ""), path=origin,
                            field="class folders")
    cat_id = {name: i for i, name in enumerate(sorted(found), start=1)}
    ds.categories = [{"id": i, "name": n} for n, i in cat_id.items()]
    records = sorted(((p.relative_to(root).as_posix(), p, name, split) for name, items in found.items()
                      for p, split in items), key=lambda r: r[0])
    for rel, path, name, split in records:
        image_id = len(ds.images) + 1
        where = display(origin, root, path)
        image = {"id": image_id, "file_name": rel, "width": None, "height": None, "path": path,
                 "source": provenance(where, "")}  # sizes are read from the header by ingest
        if split:
            image["split"] = split
        ds.images.append(image)
        ds.annotations.append({"id": image_id, "image_id": image_id, "category_id": cat_id[name],
                               "source": provenance(where, f"class folder {name}/")})
    ds.listed_images = len(ds.images)
    log.info("imagefolder: %d images in %d class folders%s", len(ds.images), len(found),
             f" under split folders {', '.join(s.name + '/' for s in splits)}" if splits else "")
    if ds.skipped:
        log.info("imagefolder: skipped %d files or folders (not images, outside class folders, empty classes): "
                 "listed in the quarantine report", len(ds.skipped))
    return ds
