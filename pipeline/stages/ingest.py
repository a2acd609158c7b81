"""Read a dataset export (COCO; also Pascal VOC and YOLO) and write the canonical COCO dataset.

The source (`data.source`, or --source) is a directory, a .zip / .tar / .tar.gz archive (extracted safely)
or an s3://bucket/prefix; empty means the generated demo set. The export is checked (every problem names
the file and the field, exit 3) and written as `annotations.json` + `images/` to
runs/<run_id>/ingest/dataset/. Each image gets a split from a hash of its group key (new images never move
old ones), category ids come from the store's label map (stable across nights), and images duplicated
across splits are flagged in the result.

Standalone: `nightshift ingest --format coco --source SRC --out DIR` writes the canonical dataset to DIR
(DIR appears only on success; category ids still come from the store's label map, which is not updated).
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
from pipeline.config import FORMATS, Config
from pipeline.datasets import canonical_io
from pipeline.errors import ConfigError, InputRejected
from pipeline.formats.sources import materialize
from pipeline.store import open_store

log = logging.getLogger(__name__)

UPSTREAM: tuple[str, ...] = ()
SKIP_IF_DONE = True
STANDALONE = True


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--source", help="export to read: a directory, .zip/.tar/.tar.gz or s3://bucket/prefix "
                                         "(sets data.source; empty = the generated demo set)")
    parser.add_argument("--format", choices=FORMATS, help="annotation format of the export (sets data.format)")
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


def convert(cfg: Config, work: Path, label_map: dict[str, int]) -> tuple[Path, dict, dict[str, int], dict]:
    """Read the configured source into `work/dataset`; returns (dataset dir, coco, new label map, result)."""
    data = cfg.data
    source, fmt = data.source, data.format
    if not source:
        from pipeline.datasets.synthetic import generate

        source, fmt = str(work / "demo"), "coco"
        generate(source, num_images=data.demo_images, seed=data.demo_seed)
        origin = "demo"
        log.info("data.source is empty: generated the demo set (%d images, seed %d)", data.demo_images,
                 data.demo_seed)
    else:
        origin = source
    (work / "source").mkdir(parents=True, exist_ok=True)
    export = materialize(source, work / "source", data.source_endpoint_url)
    ds = formats.read(fmt, export, origin=origin)
    if not ds.images:
        raise InputRejected("the export lists no images", path=", ".join(ds.files) or origin, field="images")
    new_map = canonical_io.extend_label_map(label_map, [c["name"] for c in ds.categories])
    coco, files, info = canonical_io.build(ds, new_map, data.group_pattern, data.split_salt, data.split_ratios)
    out = canonical_io.write(coco, files, work / "dataset")
    if info["group_pattern_misses"]:
        log.warning("data.group_pattern %r matched no group in %d of %d file names: those use their file stem",
                    data.group_pattern, info["group_pattern_misses"], len(coco["images"]))
    dups = canonical_io.duplicates(coco, out / canonical_io.IMAGES, perceptual=data.perceptual_hash)
    if dups["exact_cross_split"]:
        log.warning("%d groups of byte-identical images sit in different splits (leakage): %s",
                    dups["exact_cross_split"], dups["exact_cross_split_examples"][:3])
    summary = canonical_io.counts(coco)
    result = {
        "source": origin, "format": fmt, "annotation_files": ds.files,
        "images": summary["images"], "annotations": summary["annotations"],
        "per_split": summary["per_split"], "per_class": summary["per_class"],
        "categories": [{"id": c["id"], "name": c["name"]} for c in coco["categories"]],
        "new_categories": sorted(set(new_map) - set(label_map)),
        "duplicates": dups, "group_pattern_misses": info["group_pattern_misses"],
    }
    return out, coco, new_map, result


def run(cfg: Config, ctx) -> dict:
    work = ctx.workdir / "tmp"
    shutil.rmtree(work, ignore_errors=True)  # leftovers of an interrupted attempt
    work.mkdir(parents=True)
    try:
        label_map = canonical_io.load_label_map(ctx.store)
        out, _coco, new_map, result = convert(cfg, work, label_map)
        ctx.store.delete_prefix(ctx.key("dataset"))  # a re-run must not leave files of an older export
        n = ctx.publish_dir(out, "dataset")
        if new_map != label_map:
            canonical_io.save_label_map(ctx.store, new_map)
            log.info("label map: added %s", result["new_categories"])
    finally:
        shutil.rmtree(work, ignore_errors=True)
    result.update(dataset=ctx.url("dataset"), files=n)
    log.info("ingested %d images, %d boxes: %s", result["images"], result["annotations"],
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
        if out.exists():  # a previous canonical dataset: swap it out only now that the new one is complete
            old = tmp / "previous"
            os.replace(out, old)
        os.replace(dataset, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    result.update(dataset=str(out), status="ok")
    print("NIGHTSHIFT_RESULT " + json.dumps(result, sort_keys=True), flush=True)
    return 0
