"""Reading and writing the canonical dataset: COCO `annotations.json` + `images/<file_name>`.

Every image carries `split` (train/val/test), `group` (the key its split was drawn from) and `sha1` (of
its bytes). Splits are a pure function of sha1(salt + group key) laid onto `data.split_ratios`, so adding
images never moves old ones and images of one group (one video, one patient) never straddle splits.
Category ids come from the label map kept in the store at `state/label_map.json`, outside any run:
known names keep their ids, new names get the next free id.
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
import shutil
from collections import Counter, defaultdict
from pathlib import Path, PurePosixPath

from pipeline.errors import InputRejected

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
ANNOTATIONS = "annotations.json"
IMAGES = "images"
LABEL_MAP_KEY = "state/label_map.json"
MAX_LISTED = 20  # duplicate groups spelled out in a result


# -- splits --------------------------------------------------------------------------------------------
def group_key(file_name: str, pattern: str = "") -> tuple[str, bool]:
    """(group key, matched): the first regex group of `pattern` on the relative path, else the file stem."""
    if pattern:
        m = re.search(pattern, file_name)
        if m and m.groups() and m.group(1):
            return m.group(1), True
        return PurePosixPath(file_name).stem, False
    return PurePosixPath(file_name).stem, True


def assign_split(key: str, salt: str, ratios) -> str:
    """train / val / test from a uniform number in [0, 1) derived from sha1(salt + key)."""
    u = int(hashlib.sha1((salt + key).encode()).hexdigest()[:15], 16) / 16**15
    edge = 0.0
    for split, ratio in zip(SPLITS, ratios):
        edge += ratio
        if u < edge and ratio > 0:
            return split
    return next(s for s, r in reversed(list(zip(SPLITS, ratios))) if r > 0)


# -- label map -------------------------------------------------------------------------------------------
def load_label_map(store) -> dict[str, int]:
    """name -> category id from the store ({} before the first ingest)."""
    if not store.exists(LABEL_MAP_KEY):
        return {}
    data = store.get_json(LABEL_MAP_KEY)
    return {c["name"]: int(c["id"]) for c in data.get("categories", [])}


def extend_label_map(label_map: dict[str, int], names) -> dict[str, int]:
    """A new map: existing names keep their ids, unseen names get max id + 1, in the order given."""
    out = dict(label_map)
    next_id = max(out.values(), default=0) + 1
    for name in names:
        if name not in out:
            out[name] = next_id
            next_id += 1
    return out


def save_label_map(store, label_map: dict[str, int]) -> None:
    cats = [{"id": i, "name": n} for n, i in sorted(label_map.items(), key=lambda kv: kv[1])]
    store.put_json({"categories": cats}, LABEL_MAP_KEY)


# -- building ------------------------------------------------------------------------------------------
def file_sha1(path: Path) -> str:
    digest = hashlib.sha1()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def dhash(path: Path) -> str | None:
    """64-bit difference hash (9x8 grey thumbnail, left/right brightness steps); None if it does not decode."""
    from PIL import Image

    try:
        with Image.open(path) as img:
            img.draft("L", (64, 64))
            small = img.convert("L").resize((9, 8), Image.Resampling.BILINEAR)
            px = list(small.getdata())
    except Exception:  # noqa: BLE001 - undecodable images are the validate stage's finding
        return None
    bits = 0
    for row in range(8):
        for col in range(8):
            bits = (bits << 1) | (px[row * 9 + col] > px[row * 9 + col + 1])
    return f"{bits:016x}"


def build(ds, label_map: dict[str, int], group_pattern: str = "", split_salt: str = "nightshift",
          split_ratios=(0.8, 0.1, 0.1), task: str = "detection") -> tuple[dict, list[tuple[Path, str]], dict]:
    """Canonical COCO dict, [(local file, file_name)] to copy, and split bookkeeping from a reader's Dataset.

    Images are renumbered 1..N in file_name order and annotations 1..M in image order, so the same export
    always gives byte-identical annotations.json (and the same DVC hash). A `task` other than detection is
    recorded at the top (`"task"`, pipeline/tasks.py); an image-level label (classification) has no bbox.
    """
    cat_ids = {c["id"]: label_map[c["name"]] for c in ds.categories}
    categories = sorted(({**c, "id": label_map[c["name"]]} for c in ds.categories), key=lambda c: c["id"])
    images, files, misses = [], [], 0
    new_img_id = {}
    for n, img in enumerate(sorted(ds.images, key=lambda im: im["file_name"]), start=1):
        key, matched = group_key(img["file_name"], group_pattern)
        misses += not matched
        new_img_id[img["id"]] = n
        images.append({"id": n, "file_name": img["file_name"], "width": img["width"], "height": img["height"],
                       "split": assign_split(key, split_salt, split_ratios), "group": key,
                       "sha1": img.get("sha1") or file_sha1(img["path"])})
        if img.get("source"):  # provenance: the export's file that described this image
            images[-1]["source"] = img["source"]
        files.append((img["path"], img["file_name"]))
    annotations = []
    for m, ann in enumerate(sorted(ds.annotations, key=lambda a: (new_img_id[a["image_id"]], a["id"])), start=1):
        entry = {"id": m, "image_id": new_img_id[ann["image_id"]], "category_id": cat_ids[ann["category_id"]]}
        if "bbox" in ann:  # every detection / segmentation annotation; never a classification label
            entry.update(bbox=ann["bbox"], area=ann["area"], iscrowd=ann["iscrowd"])
        if "segmentation" in ann:
            entry["segmentation"] = ann["segmentation"]
        if ann.get("attributes"):
            entry["attributes"] = ann["attributes"]
        if ann.get("source"):  # provenance: {"file", "item"} of the export's line / object / shape
            entry["source"] = ann["source"]
        annotations.append(entry)
    coco = {"info": {"description": "Nightshift canonical dataset", "format": "coco"},
            "images": images, "annotations": annotations, "categories": categories}
    if task != "detection":  # absent = detection, so detection datasets keep their bytes (and DVC hash)
        coco["task"] = task
    return coco, files, {"group_pattern_misses": misses}


def write(coco: dict, files: list[tuple[Path, str]], out: Path, link: bool = False) -> Path:
    """Write annotations.json and copy images into `out` (which must not exist yet).

    `link`: hard-link instead of copying where possible; only for sources nobody else writes to (an archive
    extracted into scratch space), since a link shares later edits of the source file.
    """
    out = Path(out)
    (out / IMAGES).mkdir(parents=True)
    root = os.path.join(out, IMAGES)  # str paths: pathlib's joins cost more than the copies at 100k files
    made, copies = set(), []
    for src, name in files:
        dest = os.path.join(root, name)
        parent = os.path.dirname(dest)
        if parent not in made:
            os.makedirs(parent, exist_ok=True)
            made.add(parent)
        if link:
            try:
                os.link(src, dest)
                continue
            except OSError:
                link = False  # another file system: copy from now on
        copies.append((src, dest))
    _copy_files(copies)
    # compact and sorted: byte-identical for the same dataset, and written by json's C encoder (an indent would
    # switch it to the pure-Python one, ~20 s for a million boxes)
    (out / ANNOTATIONS).write_text(json.dumps(coco, sort_keys=True, separators=(",", ":")))
    return out


def _copy_files(pairs: list, workers: int = 4) -> None:
    """shutil.copyfile for each (src, dest); threads overlap the system calls (copies release the GIL)."""
    if len(pairs) < 256:
        for src, dest in pairs:
            shutil.copyfile(src, dest)
        return
    from concurrent.futures import ThreadPoolExecutor

    def copy_chunk(chunk):
        for src, dest in chunk:
            shutil.copyfile(src, dest)

    with ThreadPoolExecutor(max_workers=workers) as pool:
        for _ in pool.map(copy_chunk, [pairs[i:i + 512] for i in range(0, len(pairs), 512)]):
            pass  # re-raises the first error


def load(dataset_dir: Path) -> dict:
    """The canonical annotations.json of a dataset directory (InputRejected when missing or not JSON)."""
    path = Path(dataset_dir) / ANNOTATIONS
    if not path.is_file():
        raise InputRejected("no annotations.json: not a canonical dataset", path=str(dataset_dir))
    try:
        coco = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputRejected(f"not valid JSON: {exc}", path=str(path)) from None
    for key in ("images", "annotations", "categories"):
        if not isinstance(coco.get(key), list):
            raise InputRejected("missing or not a list", path=str(path), field=key)
    return coco


# -- summaries ---------------------------------------------------------------------------------------------
def counts(coco: dict) -> dict:
    """Images and boxes per split, boxes per class and split."""
    split_of = {img["id"]: img.get("split", "train") for img in coco["images"]}
    per_split = {s: {"images": 0, "annotations": 0} for s in SPLITS}
    for img in coco["images"]:
        per_split.setdefault(img.get("split", "train"), {"images": 0, "annotations": 0})["images"] += 1
    names = {c["id"]: c["name"] for c in coco["categories"]}
    per_class = {c["name"]: {**{s: 0 for s in SPLITS}, "total": 0} for c in coco["categories"]}
    # one C-counted pass over the boxes (a million: ~0.3 s), then a loop over the few (split, class) pairs;
    # crowd / ignore regions (KITTI DontCare) are not objects to learn or count
    tally = Counter((split_of.get(ann["image_id"], "train"), ann["category_id"])
                    for ann in coco["annotations"] if not ann.get("iscrowd"))
    ignore_regions = len(coco["annotations"]) - sum(tally.values())
    for (split, category_id), n in tally.items():  # first-seen order: unknown classes as they first appear
        per_split[split]["annotations"] += n
        name = names.get(category_id, str(category_id))
        row = per_class.get(name)
        if row is None:  # a category id not in categories (validate reports it)
            row = per_class[name] = {**{s: 0 for s in SPLITS}, "total": 0}
        row[split] += n
        row["total"] += n
    return {"images": len(coco["images"]), "annotations": len(coco["annotations"]) - ignore_regions,
            "ignore_regions": ignore_regions, "per_split": per_split, "per_class": per_class}


# -- statistics kept between snapshots ---------------------------------------------------------------------
STATS_KEY = "state/dataset_stats.json"
SIZE_BINS = (0, 64, 128, 256, 384, 512, 640, 768, 1024, 1280, 1600, 2048, 3000, 4096, 8192)  # pixels


def size_histogram(values) -> list[int]:
    """Counts of `values` in SIZE_BINS (the last bin is open-ended)."""
    import numpy as np

    edges = list(SIZE_BINS) + [math.inf]
    counts, _ = np.histogram(np.asarray(list(values), dtype=float), bins=edges)
    return [int(c) for c in counts]


def dataset_stats(coco: dict) -> dict:
    """What the next night's validation compares against: classes, counts, image-size histograms."""
    c = counts(coco)
    return {"images": c["images"], "annotations": c["annotations"],
            "classes": {name: v["total"] for name, v in c["per_class"].items()},
            "per_split": {s: v["images"] for s, v in c["per_split"].items()},
            "size_bins": list(SIZE_BINS),
            "width_hist": size_histogram(im.get("width") or 0 for im in coco["images"]),
            "height_hist": size_histogram(im.get("height") or 0 for im in coco["images"])}


def total_variation(a: list[int], b: list[int]) -> float:
    """Half the L1 distance between two histograms as distributions (0 = identical, 1 = disjoint)."""
    sa, sb = sum(a), sum(b)
    if not sa or not sb:
        return 0.0 if sa == sb else 1.0
    return 0.5 * sum(abs(x / sa - y / sb) for x, y in zip(a, b))


def duplicates(coco: dict, image_dir: Path | None = None, perceptual: bool = False) -> dict:
    """Images with identical bytes (and, with `perceptual`, identical dHash) that sit in different splits."""
    def cross(groups: dict) -> list[dict]:
        out = []
        for key, imgs in sorted(groups.items()):
            if len(imgs) > 1 and len({im["split"] for im in imgs}) > 1:
                out.append({"hash": key, "files": [{"file_name": im["file_name"], "split": im["split"]}
                                                   for im in imgs]})
        return out

    by_sha = defaultdict(list)
    for img in coco["images"]:
        by_sha[img["sha1"]].append(img)
    exact = cross(by_sha)
    result = {"exact_groups": sum(len(v) > 1 for v in by_sha.values()), "exact_cross_split": len(exact),
              "exact_cross_split_examples": exact[:MAX_LISTED]}
    if perceptual and image_dir is not None:
        by_dhash = defaultdict(list)
        exact_files = {f["file_name"] for g in exact for f in g["files"]}
        for img in coco["images"]:
            h = dhash(Path(image_dir) / img["file_name"])
            if h is not None and h != "0" * 16 and img["file_name"] not in exact_files:
                by_dhash[h].append(img)
        near = cross(by_dhash)
        result.update(near_cross_split=len(near), near_cross_split_examples=near[:MAX_LISTED])
    return result


def ingested_dataset(ctx, dest: Path) -> tuple[Path, bool]:
    """The run's ingested dataset on local disk: read in place from a local store, else fetched into `dest`
    (then True, and the caller removes it). InputRejected when ingest has not run."""
    from pipeline.errors import InputRejected
    from pipeline.store import LocalStore

    if isinstance(ctx.store, LocalStore):
        here = ctx.store.local_path(ctx.key("dataset", stage="ingest"))
        if (here / ANNOTATIONS).is_file():
            return here, False
    try:
        ctx.fetch_dir("ingest", "dataset", dest)
    except FileNotFoundError:
        raise InputRejected("no ingested dataset for this run: run `nightshift ingest` first",
                            path=ctx.url("dataset", stage="ingest")) from None
    return dest, True
