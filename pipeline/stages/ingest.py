"""Read a dataset export (COCO, VOC, YOLO, Labelme, CVAT, KITTI; class folders, CSV/JSON manifests) as a canonical set.

The source (`data.source`, or --source) is a directory, a .zip / .tar / .tar.gz archive (extracted safely)
or an s3://bucket/prefix; empty means the generated demo set. The export may sit up to two folders below
the source, in any layout its tool or dataset repository uses, and `data.format: auto` detects the format
(pipeline/formats/layout.py; the log says what was found and why). The export is checked (every problem names
the file and the field, exit 3) and written as `annotations.json` + `images/` to
runs/<run_id>/ingest/dataset/. Each image gets a split from a hash of its group key (new images never move
old ones; `data.splits: source` keeps the splits the export defines instead, and annotations.json's
`info.splits` records which), category ids come from the store's label map (stable across nights), and
images duplicated across splits are flagged in the result. Every image and box keeps `source`, the export's
file and item (line, object, shape) it came from, so later checks name what the user must fix.
With `data.task: classification` (pipeline/tasks.py) the export is read for image-level labels instead (class
folders, a CSV/JSON manifest, Labelme flags, CVAT tags: `formats.CLASSIFICATION_READERS`), annotations.json
gets `"task": "classification"` and one `{"id", "image_id", "category_id"}` per image; an export of the other
kind (boxes for a classification run, class folders for a detection run) is refused naming data.task.
With `data.task: segmentation` every object needs a mask: COCO polygons and RLE, Labelme polygons and mask
shapes, CVAT polygons and `<mask>`s, YOLO-seg polygons (pipeline/datasets/masks.py); a plain box is skipped and
listed in the quarantine report, a mask that cannot be rasterised sets its image aside, an export with no mask
at all is refused, each area becomes its mask's, and annotations.json gets `"task": "segmentation"` (the
generated demo set then carries polygons too).

Per-item defects (an unreadable or truncated image, a declared size that is not the real one, a box with bad
numbers, an unknown class) set that image aside: every one is listed in ingest/quarantine.json, as are the
shapes left out while their image is kept (an empty label, a shape that is not a box, a box with no area:
reported, never grown into a valid one), and the stage fails (exit 3) only when set-aside images are more than
validate.max_bad_fraction of the export. Whole-export problems (unsafe XML, paths or symlinks leaving the
export, an image header declaring more than data.max_image_pixels, an archive beyond data.max_archive_bytes /
_members, an empty dataset or split) reject it at once.

Standalone: `nightshift ingest [--format coco] --source SRC --out DIR` writes the canonical dataset to DIR
(DIR appears only on success, its quarantine report beside it as DIR.quarantine.json; category ids still come
from the store's label map, which is not updated).

Two ingests of the same run id at once: the second is refused at once ("another ingest of run X is in
progress", exit 5) and changes nothing. The dataset is published with `annotations.json` last, so an upload
cut short (S3 down) never looks like a whole dataset; an s3:// source or store that cannot be reached fails
with exit 5 (infrastructure), never exit 3 (the export is not at fault).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

from pipeline import formats
from pipeline.config import FORMAT_CHOICES, Config
from pipeline.datasets import canonical_io
from pipeline.errors import ConfigError, InputRejected
from pipeline.formats.base import display
from pipeline.formats.images import QUARTER_TURNS, orientation, probe, probe_many, write_upright
from pipeline.formats.sources import Limits, materialize
from pipeline.spec import StageSpec
from pipeline.store import open_store

log = logging.getLogger(__name__)

def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--source", help="export to read: a directory, .zip/.tar/.tar.gz or s3://bucket/prefix "
                                         "(sets data.source; empty = the generated demo set)")
    parser.add_argument("--format", choices=FORMAT_CHOICES, help="annotation format of the export (sets data.format; "
                                                               "auto = detect it; imagefolder = class folders and "
                                                               "manifest = a CSV/JSON of file and class are "
                                                               "classification's, as are Labelme flags and CVAT tags)")
    parser.add_argument("--out", help="without --run-id: directory to write the canonical dataset to "
                                      "(created only on success; a previous canonical dataset there is replaced)")


def overrides_from_args(args: argparse.Namespace) -> list[str]:
    out = []
    source = getattr(args, "source", None)
    if source is not None:
        if source and "://" not in source:  # absolute, so reproduce.sh (which cds to its folder) finds it
            source = str(Path(source).expanduser().resolve())
        out.append(f"data.source={json.dumps(source)}")  # quoted: a path is never read as a number
    if getattr(args, "format", None):
        out.append(f"data.format={args.format}")
    return out


def _check_images(ds, cfg: Config, origin: str, export: Path, scratch: Path) -> None:
    """Read every image's header once (size, truncation, sha1); set defective images aside.

    A header declaring more than data.max_image_pixels is a decompression bomb and rejects the export; an
    unreadable or truncated file, a declared size that differs from the header, or a box with no area sets
    the image aside (quarantine). A JPEG turned a quarter by its EXIF orientation and declared upright is
    written upright, as the tools showed it (`_upright`).
    """
    probes = probe_many([img["path"] for img in ds.images])
    limit = cfg.data.max_image_pixels
    turned = raw_kept = unknown = 0
    for img, pr in zip(ds.images, probes):
        where = display(origin, export, img["path"])
        if pr.pixels > limit or pr.error.startswith("decompression bomb"):
            raise InputRejected(f"the header declares {pr.width} x {pr.height} pixels, more than "
                                f"data.max_image_pixels={limit} (decompression bomb?)", path=where, field="size")
        if pr.error:
            ds.set_aside(where, "image", pr.error, img["file_name"])
            continue
        if pr.format == "jpeg":
            done = _upright(img, pr, scratch)
            turned += done == "turned"
            raw_kept += done == "raw"
            unknown += done == "unknown"
            if done == "turned":
                pr = probe(img["path"])
        img["sha1"] = pr.sha1
        declared_in = (img.get("source") or {}).get("file") or (ds.files[0] if ds.files else where)
        for key, real in (("width", pr.width), ("height", pr.height)):
            if img.get(key) is None:
                img[key] = real  # formats that do not declare sizes (KITTI, some Labelme files)
            elif img[key] != real:
                ds.set_aside(declared_in, f"{img['file_name']}: {key}",
                             f"declared {key} {img[key]} differs from the image's real {key} {real}",
                             img["file_name"])
                break
    if turned:
        log.info("%d JPEGs turned a quarter by their EXIF orientation and declared upright: written upright "
                 "(orientation applied, re-encoded at quality 95), as the annotation tools showed them", turned)
    if raw_kept:
        log.warning("%d JPEGs carry an EXIF orientation that turns them a quarter, but their declared size is "
                    "the stored one: kept as stored (labelled without the orientation applied)", raw_kept)
    if unknown:
        log.warning("%d JPEGs carry an EXIF orientation that mirrors them or turns them upside down (2-4): kept "
                    "as stored, since their size cannot tell whether the tool labelled them upright; if it did "
                    "(CVAT, Labelme, Roboflow), their labels are mirrored: re-save them upright", unknown)
    _skip_degenerate(ds, origin)


def _upright(img: dict, pr, scratch: Path) -> str:
    """A JPEG with an EXIF orientation other than 1. Most annotation tools (CVAT, Labelme, Roboflow, Ultralytics)
    label it with the orientation applied; some (labelImg) label the stored pixels; training decodes the stored
    pixels. Only the declared size tells them apart, and only for a quarter turn (5-8): declared upright, the
    canonical copy gets upright pixels (written under `scratch`, `img["path"]` pointed at it: "turned");
    declared as stored, the stored pixels are kept ("raw"). A mirror or half turn (2-4) keeps the size, so it
    cannot be told: kept as stored ("unknown"), and the caller warns. "" when there is nothing to do."""
    turn = orientation(img["path"])
    if turn == 1:
        return ""
    if turn not in QUARTER_TURNS:
        return "unknown"
    stored = (pr.width, pr.height)
    declared = (img.get("width"), img.get("height"))
    if declared == stored and stored[0] != stored[1]:
        return "raw"
    dest = scratch / "upright" / img["file_name"]
    write_upright(img["path"], dest)
    img["path"] = dest  # the declared size is checked against the upright pixels next
    return "turned"


def _skip_degenerate(ds, origin: str) -> None:
    """Leave out boxes with no area after conversion (zero or negative width or height), each reported in the
    quarantine report with the file and item it came from; its image and other boxes are kept. A box is never
    grown to make it valid."""
    names = {img["id"]: img["file_name"] for img in ds.images}
    kept = []
    for ann in ds.annotations:
        if "bbox" not in ann:  # an image-level class label (classification): nothing to measure
            kept.append(ann)
            continue
        w, h = ann["bbox"][2], ann["bbox"][3]
        if ann.get("iscrowd") or (w > 0 and h > 0):
            kept.append(ann)
            continue
        src = ann.get("source") or {}
        ds.skip(src.get("file") or (ds.files[0] if ds.files else origin), src.get("item") or "bbox",
                f"degenerate box {[round(v, 3) for v in ann['bbox']]} (width and height must be > 0): skipped",
                names.get(ann["image_id"]))
    ds.annotations = kept


def _enforce_quarantine(ds, cfg: Config, origin: str) -> dict:
    """Drop quarantined images; reject the export when they are more than validate.max_bad_fraction of it."""
    listed = ds.listed_images or len(ds.images)
    bad_images = {q["image"] for q in ds.quarantine if q.get("image")}
    orphans = sum(1 for q in ds.quarantine if not q.get("image"))
    bad = len(bad_images) + orphans
    ds.drop_quarantined()
    report = {"listed_images": listed, "quarantined_images": len(bad_images), "orphan_items": orphans,
              "bad_fraction": round(bad / listed, 6) if listed else 0.0,
              "max_bad_fraction": cfg.validate_.max_bad_fraction, "items": ds.quarantine,
              # shapes left out with their image kept (empty labels, shapes that are not boxes, no-area boxes)
              "skipped_shapes": len(ds.skipped), "skipped": ds.skipped}
    if ds.skipped:
        log.warning("skipped %d %s, e.g. %s: %s: %s -- all listed in the quarantine report", len(ds.skipped),
                    "items (files that are not images, images without a class, repeated rows)"
                    if ds.annotations and "bbox" not in ds.annotations[0] else "shapes (kept their images)",
                    ds.skipped[0]["file"], ds.skipped[0]["field"], ds.skipped[0]["reason"])
    if not listed:
        raise InputRejected("the export lists no images (empty dataset)", path=", ".join(ds.files) or origin,
                            field="images")
    if ds.quarantine and (bad / listed > cfg.validate_.max_bad_fraction or not ds.images):
        first = ds.quarantine[0]
        more = "; ".join(f"{q['file']}: {q['field']}: {q['reason']}" for q in ds.quarantine[1:5])
        exc = InputRejected(
            f"{first['reason']} -- {bad} of {listed} items are defective ({100 * bad / listed:.2f} %), more than "
            f"validate.max_bad_fraction={cfg.validate_.max_bad_fraction}"
            + (f"; also {more}" if more else "") + (f" (and {len(ds.quarantine) - 5} more)"
                                                   if len(ds.quarantine) > 5 else ""),
            path=first["file"], field=first["field"])
        exc.result = {"quarantine": {**report, "items": ds.quarantine[:50], "skipped": ds.skipped[:50]}}
        raise exc
    if ds.quarantine:
        log.warning("quarantined %d of %d images (%.2f %%, tolerated up to %.2f %%): e.g. %s: %s: %s",
                    len(bad_images), listed, 100 * bad / listed, 100 * cfg.validate_.max_bad_fraction,
                    ds.quarantine[0]["file"], ds.quarantine[0]["field"], ds.quarantine[0]["reason"])
    return report


def _demo_source(data, task: str, work: Path) -> tuple[str, str, str]:
    """Generate the task's demo data into work/demo: (source, format, origin). Classification: class folders of
    shapes, one per image; detection and segmentation: COCO shapes (with polygons for segmentation)."""
    if task == "classification":
        from pipeline.datasets.synthetic import generate_classification

        generate_classification(work / "demo", num_images=data.demo_images, seed=data.demo_seed)
        log.info("data.source is empty: generated the classification demo set (%d images in class folders, seed %d)",
                 data.demo_images, data.demo_seed)
        return str(work / "demo"), "imagefolder", "demo"
    from pipeline.datasets.synthetic import generate

    generate(work / "demo", num_images=data.demo_images, seed=data.demo_seed, segmentation=task == "segmentation")
    log.info("data.source is empty: generated the demo set (%d images, seed %d%s)", data.demo_images,
             data.demo_seed, ", with instance masks" if task == "segmentation" else "")
    return str(work / "demo"), "coco", "demo"


def _crowd(ds, mode: str) -> None:
    """The export's own iscrowd=1 annotations (not the ignore regions a reader makes of KITTI DontCare or
    Labelme __ignore__): ignore regions as COCO means them, or, with data.crowd=objects, objects. Either way
    the log says how many, since CVAT's COCO export marks every mask iscrowd=1 and they would otherwise be left
    out of training without a word."""
    crowd = [a for a in ds.annotations if a.get("iscrowd") and not (a.get("attributes") or {}).get("ignore")]
    if not crowd:
        return
    if mode == "objects":
        for ann in crowd:
            ann["iscrowd"] = 0
        log.info("data.crowd=objects: %d iscrowd=1 annotations are trained and scored as objects", len(crowd))
        return
    log.warning("%d of %d annotations are iscrowd=1: kept as ignore regions (not learnt, not counted by "
                "evaluation). CVAT's COCO export marks every mask iscrowd=1: if these are objects, set "
                "data.crowd=objects", len(crowd), len(ds.annotations))


def _masks_only(ds, origin: str, fmt: str) -> None:
    """Segmentation: every object needs a mask. Plain boxes are skipped (and listed), bad masks set aside; an
    export with no mask at all is refused."""
    from pipeline.datasets.masks import require_masks

    plain, empty = require_masks(ds, origin)
    if empty:
        log.warning("data.task segmentation: skipped %d masks with no pixel in their image (degenerate polygons; "
                    "listed in the quarantine report)", empty)
    if plain and not ds.annotations:
        raise InputRejected(f"data.task is segmentation but none of the {plain} annotations has a polygon or "
                            f"mask ({fmt} export): export instance masks, or ingest with "
                            "data.task=detection", path=", ".join(ds.files) or origin, field="segmentation")
    if plain:
        log.warning("data.task segmentation: skipped %d plain boxes with no polygon or mask (listed in the "
                    "quarantine report)", plain)


def convert(cfg: Config, work: Path, label_map: dict[str, int]) -> tuple[Path, dict, dict[str, int], dict]:
    """Read the configured source into `work/dataset`; returns (dataset dir, coco, new label map, result).

    The result carries `quarantine` (every item set aside, for ingest/quarantine.json).
    """
    from pipeline.tasks import task_of

    data = cfg.data
    source, fmt = data.source, data.format
    task = task_of(cfg)
    formats.check_task_format(task, fmt)  # data.format=coco with data.task=classification: ConfigError, nothing read
    if not source:
        source, fmt, origin = _demo_source(data, task, work)
    else:
        origin = source
    (work / "source").mkdir(parents=True, exist_ok=True)
    limits = Limits(max_bytes=data.max_archive_bytes, max_members=data.max_archive_members)
    export = materialize(source, work / "source", data.source_endpoint_url, limits)
    private = Path(export).resolve().is_relative_to(work.resolve())  # extracted or downloaded by us
    ds, found = formats.locate_and_read(fmt, export, origin=origin, scratch=work / "embedded",
                                        one_based=data.voc_one_based, task=task)
    where = found.root.relative_to(export).as_posix()
    log.info("reading %s as %s%s%s: %s", origin, found.format, " (detected: data.format=auto)" if fmt == "auto" else "",
             "" if where == "." else f" from {where}/", found.reason)
    if found.format == "voc":
        log.info("VOC boxes read as %s pixel corners (data.voc_one_based=%s)",
                 "1-based (devkit)" if data.voc_one_based else "0-based (labelImg, CVAT, Roboflow)", data.voc_one_based)
    _check_images(ds, cfg, origin, export, work / "embedded")
    _crowd(ds, data.crowd)
    if task == "segmentation":
        _masks_only(ds, origin, found.format)
    quarantine = _enforce_quarantine(ds, cfg, origin)
    _compact_provenance(ds, origin)
    new_map = canonical_io.extend_label_map(label_map, [c["name"] for c in ds.categories])
    coco, files, info = canonical_io.build(ds, new_map, data.group_pattern, data.split_salt, data.split_ratios,
                                           task=task)
    splits = _apply_source_splits(coco, ds, data.splits)
    out = canonical_io.write(coco, files, work / "dataset", link=private)
    if info["group_pattern_misses"]:
        log.warning("data.group_pattern %r matched no group in %d of %d file names: those use their file stem",
                    data.group_pattern, info["group_pattern_misses"], len(coco["images"]))
    dups = canonical_io.duplicates(coco, out / canonical_io.IMAGES, perceptual=data.perceptual_hash)
    if dups["exact_cross_split"]:
        log.warning("%d groups of byte-identical images sit in different splits (leakage): %s",
                    dups["exact_cross_split"], dups["exact_cross_split_examples"][:3])
    summary = canonical_io.counts(coco)
    result = {
        "source": origin, "task": task, "format": found.format, "format_detected": fmt == "auto",
        "layout": found.reason,
        "export_root": where, "splits": splits, "annotation_files": ds.files,
        "images": summary["images"], "annotations": summary["annotations"],
        "ignore_regions": summary["ignore_regions"],
        "per_split": summary["per_split"], "per_class": summary["per_class"],
        "categories": [{"id": c["id"], "name": c["name"]} for c in coco["categories"]],
        "new_categories": sorted(set(new_map) - set(label_map)),
        "duplicates": dups, "group_pattern_misses": info["group_pattern_misses"],
        "quarantined": quarantine["quarantined_images"] + quarantine["orphan_items"],
        "quarantine": quarantine,
    }
    return out, coco, new_map, result


def _compact_provenance(ds, origin: str) -> None:
    """Provenance as it is kept in annotations.json: file paths relative to the source (so the dataset's hash
    does not depend on where the export was read from), and on a box only when its file is not its image's."""
    prefixes = (origin.rstrip("/") + "/", origin + ":")

    def rel(name: str) -> str:
        return next((name[len(p):] for p in prefixes if name.startswith(p)), name)

    image_file = {}
    for img in ds.images:
        if img.get("source"):
            img["source"] = {"file": rel(img["source"]["file"])}
            image_file[img["id"]] = img["source"]["file"]
    for ann in ds.annotations:
        src = ann.get("source")
        if src:
            file = rel(src["file"])
            ann["source"] = {"item": src["item"]} if file == image_file.get(ann["image_id"]) else \
                {"file": file, "item": src["item"]}


def _apply_source_splits(coco: dict, ds, mode: str) -> dict:
    """With data.splits=source, each image takes the split its export gave it; returns what was used.

    Images the export gave no split keep their hash split (counted and logged); an export that defines no
    splits at all is an error, since `source` was asked for explicitly.
    """
    given = {img["file_name"]: img["split"] for img in ds.images if img.get("split")}
    info = {"mode": mode, "export_defines_splits": bool(given)}
    if mode != "source":
        if given:
            log.info("the export defines its own splits for %d images; data.splits=hash draws Nightshift's stable "
                     "group-hash splits instead (set data.splits=source to keep the export's)", len(given))
        coco["info"]["splits"] = "hash"
        return info
    if not given:
        raise ConfigError("data.splits=source: this export defines no train/val/test splits (VOC ImageSets/Main, "
                          "COCO split files, Roboflow split folders, YOLO train/val lists, CVAT subsets, ImageFolder "
                          "split folders, a manifest's split column); use data.splits=hash")
    missing = 0
    for img in coco["images"]:
        if img["file_name"] in given:
            img["split"] = given[img["file_name"]]
        else:
            missing += 1
    if missing:
        log.warning("data.splits=source: %d of %d images are in no split of the export: they keep their hash split",
                    missing, len(coco["images"]))
    coco["info"]["splits"] = "source"
    info["images_without_source_split"] = missing
    log.info("splits as the export defines them (data.splits=source)")
    return info


def publish_dataset(ctx, out: Path) -> int:
    """Put the dataset under runs/<id>/ingest/dataset: one rename into a local store, else file by file."""
    from pipeline.store import LocalStore

    if isinstance(ctx.store, LocalStore):
        dest = ctx.store.local_path(ctx.key("dataset"))
        if not dest.exists():
            dest.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.rename(out, dest)  # atomic: readers see the whole dataset or none of it
                return sum(len(f) for _, _, f in os.walk(dest))
            except OSError:
                pass  # another file system: copy
    return ctx.publish_dir(out, "dataset")


def run(cfg: Config, ctx) -> dict:
    work = ctx.workdir / "tmp"
    shutil.rmtree(work, ignore_errors=True)  # leftovers of an interrupted attempt
    work.mkdir(parents=True)
    try:
        label_map = canonical_io.load_label_map(ctx.store)
        out, _coco, new_map, result = convert(cfg, work, label_map)
        quarantine = result.pop("quarantine")
        ctx.publish_json(quarantine, "quarantine.json")
        ctx.store.delete_prefix(ctx.key("dataset"))  # a re-run must not leave files of an older export
        n = publish_dataset(ctx, out)
        if new_map != label_map:
            canonical_io.save_label_map(ctx.store, new_map)
            log.info("label map: added %s", result["new_categories"])
    finally:
        shutil.rmtree(work, ignore_errors=True)
    result.update(dataset=ctx.url("dataset"), files=n, quarantine_report=ctx.url("quarantine.json"))
    log.info("ingested %d images, %d %s: %s", result["images"], result["annotations"],
             "class labels" if result.get("task") == "classification" else "boxes",
             {s: v["images"] for s, v in result["per_split"].items()})
    return result


def run_standalone(cfg: Config, args: argparse.Namespace) -> int:
    if not getattr(args, "out", None):
        raise ConfigError("ingest without --run-id needs --out DIR (and --source SRC, --format FMT)")
    out = Path(args.out).resolve()
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / canonical_io.ANNOTATIONS).exists())):
        raise ConfigError(f"--out {out}: exists and is not a canonical dataset; refusing to replace it")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        label_map = canonical_io.load_label_map(open_store(cfg.store.uri, cfg.store.s3_endpoint_url))
        dataset, _coco, _map, result = convert(cfg, tmp / "work", label_map)
        report = out.with_name(out.name + ".quarantine.json")  # beside, not inside: the dataset's hash is its content
        report.write_text(json.dumps(result.pop("quarantine"), indent=2, default=str))
        if out.exists():  # a previous canonical dataset: swap it out only now that the new one is complete
            old = tmp / "previous"
            os.replace(out, old)
        os.replace(dataset, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    result.update(dataset=str(out), status="ok", quarantine_report=str(report))
    print("NIGHTSHIFT_RESULT " + json.dumps(result, sort_keys=True), flush=True)
    return 0


# exclusive: one ingest of a run at a time, a second is refused at once (its scratch space is shared)
SPEC = StageSpec(exclusive=True, add_arguments=add_arguments, overrides_from_args=overrides_from_args,
                 standalone=run_standalone)
