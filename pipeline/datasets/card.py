"""The dataset card: what one snapshot holds, as self-contained HTML and Markdown.

Counts per split and per class (and whether the splits are the export's own or Nightshift's hash), image
width/height histograms and sample images with their boxes drawn (for a classification dataset, annotations.json
`"task": "classification"`: images per class per split, and samples captioned with their class, classes taking
turns; no boxes and no augmentation strip) (PNG
and JPEG embedded as data: URIs, so the card reads offline and travels as one file), the validation summary of
the same run when there is one, and the DVC dataset hash that names the snapshot. The snapshot stage writes it
to runs/<run_id>/snapshot/card.html and card.md.

With the run's train config, the card also shows a strip of augmented training samples
(`augmentation_strip`): a few train images through exactly the augmentation train applies
(`pipeline.training.augment.Augment` built from the same `train.aug_*` keys, the same seeds), boxes and class
names of the transformed targets drawn, captioned with the active steps and their settings. The PNG is
embedded in card.html and published beside it as aug_strip.png, which card.md links.
"""
from __future__ import annotations

import base64
import hashlib
import io
import json
import logging
import tempfile
import time
from pathlib import Path
from typing import Callable

from pipeline.datasets import canonical_io
from pipeline.datasets.strip import Strip
from pipeline.errors import ConfigError
from pipeline.report import pages
from pipeline.report.pages import data_uri

log = logging.getLogger(__name__)

STRIP_NAME = "aug_strip.png"  # beside card.html / card.md
COLOURS = ("#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#42d4f4", "#f032e6", "#9a6324")


def _histogram_png(values: list[int], title: str) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    fig, ax = plt.subplots(figsize=(4.2, 2.6), dpi=90)
    ax.hist(values, bins=min(30, max(1, len(set(values)))), color="#4363d8", edgecolor="white")
    ax.set_title(title, fontsize=10)
    ax.set_xlabel("pixels", fontsize=8)
    ax.set_ylabel("images", fontsize=8)
    ax.tick_params(labelsize=7)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def _sample_jpeg(raw: bytes, boxes: list[tuple[list[float], str, bool]], names: list[str]) -> bytes | None:
    from PIL import Image, ImageDraw

    try:
        img = Image.open(io.BytesIO(raw))
        img.load()
    except Exception:  # noqa: BLE001 - a sample that does not decode is left out of the card
        return None
    img = img.convert("RGB")
    draw = ImageDraw.Draw(img)
    for (x, y, w, h), name, crowd in boxes:
        colour = "#888888" if crowd else COLOURS[names.index(name) % len(COLOURS)] if name in names else "#ffffff"
        draw.rectangle([x, y, x + w, y + h], outline=colour, width=max(1, round(max(img.size) / 200)))
        draw.text((x + 2, y + 1), "ignore" if crowd else name, fill=colour)
    img.thumbnail((320, 320))
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=85)
    return buf.getvalue()


def split_method(coco: dict) -> str:
    """Which splits the dataset uses, as ingest recorded it in annotations.json's info (data.splits)."""
    how = (coco.get("info") or {}).get("splits", "hash")
    if how == "source":
        return ("Splits: as the export defines them (data.splits=source: VOC ImageSets, COCO split files, "
                "Roboflow folders, YOLO train/val lists or CVAT subsets).")
    return ("Splits: Nightshift's stable group-aware hash of each image's group key (data.splits=hash); the "
            "export's own splits, if any, were not used.")


def pick_samples(coco: dict, n: int) -> list[dict]:
    """n images with boxes, spread over the classes, chosen by content hash (the same dataset, the same samples)."""
    with_boxes = {a["image_id"] for a in coco["annotations"]}
    ranked = sorted((im for im in coco["images"] if im["id"] in with_boxes), key=lambda im: im.get("sha1", ""))
    return ranked[:n]


def pick_class_samples(coco: dict, n: int) -> list[tuple[dict, str]]:
    """n labelled images of a classification dataset with their class names, the classes taking turns (by id)
    and each class's images in content-hash order: the same dataset, the same samples."""
    names = {c["id"]: c["name"] for c in coco["categories"]}
    label = {a["image_id"]: names.get(a["category_id"], str(a["category_id"])) for a in coco["annotations"]}
    per_class: dict[str, list[dict]] = {}
    for im in sorted((im for im in coco["images"] if im["id"] in label), key=lambda im: im.get("sha1", "")):
        per_class.setdefault(label[im["id"]], []).append(im)
    order = [names[i] for i in sorted(names) if names[i] in per_class]
    picked: list[tuple[dict, str]] = []
    while len(picked) < n and any(per_class.values()):
        for name in order:
            if per_class[name] and len(picked) < n:
                picked.append((per_class[name].pop(0), name))
    return picked


STRIP_VERSION = 1  # bump when the strip's drawing changes, so strips kept in the store are redrawn
STRIP_CACHE = "state/aug_strip/{}.json"  # artifact-store key of a strip, by the digest of all it depends on


def _strip_digest(train, epochs: int, indices: list[int], picked: list[dict], raw: list[bytes], coco: dict) -> str:
    """Everything the strip depends on: the code, torchvision, the train settings it reads, the categories,
    the picked images (bytes and boxes) and their training indices."""
    from importlib import metadata

    wanted = {im["id"] for im in picked}
    parts = {"version": STRIP_VERSION, "torchvision": metadata.version("torchvision"), "epochs": epochs,
             "train": {k: v for k, v in train.model_dump().items() if k.startswith("aug_")
                       or k in ("seed", "image_size")},
             "categories": sorted((c["id"], c["name"]) for c in coco["categories"]), "indices": indices,
             "images": [(im.get("width"), im.get("height"), hashlib.sha256(data).hexdigest())
                        for im, data in zip(picked, raw)],
             "boxes": sorted((a["image_id"], a["category_id"], list(a["bbox"]), bool(a.get("iscrowd")))
                             for a in coco["annotations"] if a["image_id"] in wanted)}
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=list).encode()).hexdigest()


def augmentation_strip(coco: dict, read_image: Callable[[str], bytes | None], train, images: int = 4,
                       epochs: int = 2, store=None):
    """A `Strip` of `images` train-split images with boxes (picked by content hash)
    over `epochs` epochs, as `train` (a TrainConfig) augments them; or one line saying why there is none.

    The picked images are copied to a temporary folder and read by CanonicalDataset over the whole train split
    of `coco`, so each sample has its training index and is exactly the one train sees in that epoch. With
    an artifact `store`, a strip of the same inputs (images, boxes, settings, code) drawn before is reused from
    state/aug_strip/ instead of importing torch again (the nightly unchanged dataset)."""
    if images <= 0:
        return "no augmentation strip: snapshot.card_strip_images=0"
    if coco.get("task") == "classification":
        return ("no augmentation strip: it draws boxes through the detection augmentation; this is a classification "
                "dataset")
    started = time.perf_counter()
    train_images = [im for im in coco["images"] if im.get("split") == "train"]
    position = {im["id"]: i for i, im in enumerate(train_images)}
    picked = pick_samples({"images": train_images, "annotations": coco["annotations"]}, images)
    if not picked:
        return "no augmentation strip: the train split has no image with boxes"
    kept, raw = [], []
    for im in picked:
        data = read_image(im["file_name"])
        if data is not None:
            kept.append(im)
            raw.append(data)
    if not kept:
        return "no augmentation strip: none of the picked train images could be read"
    indices = [position[im["id"]] for im in kept]
    key = STRIP_CACHE.format(_strip_digest(train, epochs, indices, kept, raw, coco)) if store is not None else None
    if key is not None and store.exists(key):
        obj = store.get_json(key)  # no torch import on this path
        out = Strip(png=base64.b64decode(obj["png"]), caption=obj["caption"], tiles=obj["tiles"],
                    scale=obj["scale"])
        log.info("augmentation strip: reused %s (the same images and train.aug_* settings) in %.2f s", key,
                 time.perf_counter() - started)
        return out
    try:
        out = _draw_strip(coco, train, epochs, kept, raw, indices)
    except (ConfigError, ImportError, OSError, RuntimeError, ValueError) as exc:  # the card still says why
        log.warning("augmentation strip not drawn: %s", exc)
        return f"augmentation strip not drawn: {exc}"
    if key is not None:
        store.put_json({"png": base64.b64encode(out.png).decode(), "caption": out.caption, "tiles": out.tiles,
                        "scale": out.scale}, key)
    log.info("augmentation strip: %d images x %d epochs in %.2f s", len(indices), epochs,
             time.perf_counter() - started)
    return out


def _draw_strip(coco: dict, train, epochs: int, kept: list[dict], raw: list[bytes], indices: list[int]):
    from pipeline.datasets.canonical import CanonicalDataset
    from pipeline.training.augment import strip

    with tempfile.TemporaryDirectory(prefix="nightshift-strip-") as tmp:
        root = Path(tmp).resolve()
        for im, data in zip(kept, raw):
            path = (root / "images" / im["file_name"]).resolve()
            if not path.is_relative_to(root):
                raise ValueError(f"image file name {im['file_name']!r} leaves the images folder")
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
        return strip(CanonicalDataset(root, "train", train.image_size, coco=coco), train, indices, epochs)


def outputs(page: str, md: str, augmentation=None) -> dict[str, bytes]:
    """The card's files by name: card.html, card.md and, when there is a strip, aug_strip.png."""
    files = {"card.html": page.encode(), "card.md": md.encode()}
    if augmentation is not None and not isinstance(augmentation, str):
        files[STRIP_NAME] = augmentation.png
    return files


def build(coco: dict, read_image: Callable[[str], bytes | None], dataset_hash: str = "", validation: dict | None = None,
          samples: int = 6, title: str = "Dataset card", audit: dict | None = None,
          augmentation=None) -> tuple[str, str]:
    """(html, markdown) for the canonical dataset `coco`; `read_image(file_name)` returns an image's bytes;
    `audit` is the run's `nightshift audit` result, when there is one; `augmentation` is what
    `augmentation_strip` returned (a Strip, or a line saying why there is none), or None for no such section."""
    classification = coco.get("task") == "classification"  # one label per image: counts are images, no boxes
    counts = canonical_io.counts(coco)
    names = [c["name"] for c in sorted(coco["categories"], key=lambda c: c["id"])]
    widths = [int(im.get("width") or 0) for im in coco["images"]]
    heights = [int(im.get("height") or 0) for im in coco["images"]]
    hists = [("Image widths", data_uri(_histogram_png(widths, "Image widths"), "image/png")),
             ("Image heights", data_uri(_histogram_png(heights, "Image heights"), "image/png"))] if widths else []
    cat_name = {c["id"]: c["name"] for c in coco["categories"]}
    by_image: dict[int, list] = {}
    picked = [] if classification else pick_samples(coco, samples)  # classification: its own samples below
    wanted = {im["id"] for im in picked}
    for a in coco["annotations"]:
        if a["image_id"] in wanted:
            by_image.setdefault(a["image_id"], []).append((a["bbox"], cat_name.get(a["category_id"], "?"),
                                                           bool(a.get("iscrowd"))))
    sample_uris = []
    for im in picked:
        raw = read_image(im["file_name"])
        jpeg = _sample_jpeg(raw, by_image.get(im["id"], []), names) if raw else None
        if jpeg:
            sample_uris.append((im["file_name"], im.get("split", ""), data_uri(jpeg, "image/jpeg")))
    if classification:  # the image and its class name, nothing drawn on it
        for im, name in pick_class_samples(coco, samples):
            raw = read_image(im["file_name"])
            jpeg = _sample_jpeg(raw, [], names) if raw else None
            if jpeg:
                sample_uris.append((im["file_name"], f"{im.get('split', '')}, class {name}",
                                    data_uri(jpeg, "image/jpeg")))

    split_rows = [(s, v["images"], v["annotations"]) for s, v in counts["per_split"].items()]
    split_line = split_method(coco)
    class_rows = [(n, *(counts["per_class"].get(n, {}).get(s, 0) for s in (*canonical_io.SPLITS, "total")))
                  for n in names]
    if validation:
        verdict = "passed" if validation.get("passed") else "FAILED"
        vline = (f"{verdict}: {validation.get('checks', 0)} checks, failed: "
                 f"{', '.join(validation.get('failed_checks') or validation.get('failed') or []) or 'none'}; "
                 f"warnings: {', '.join(validation.get('warnings') or []) or 'none'}")
    else:
        vline = "not validated in this run"
    aline = audit_line(audit)
    unit = "labels" if classification else "boxes"  # what the counts count
    summary = (f"{counts['images']} images, {counts['annotations']} {'class labels' if classification else 'boxes'}, "
               f"{len(names)} classes" + (f", {counts['ignore_regions']} ignore regions" if counts["ignore_regions"]
                                         else ""))

    page = pages.render("card.html.j2", title=title, dataset_hash=dataset_hash, summary=summary, validation=vline,
                        audit=aline, split_rows=split_rows, split_line=split_line, class_rows=class_rows,
                        class_columns=(*canonical_io.SPLITS, "total"), histograms=hists, samples=sample_uris,
                        split_unit=unit, class_unit="images" if classification else "boxes",
                        augmentation=augmentation is not None,
                        strip_uri=None if isinstance(augmentation, str) or augmentation is None
                        else data_uri(augmentation.png, "image/png"),
                        strip_caption=augmentation if isinstance(augmentation, str) or augmentation is None
                        else augmentation.caption, strip_name=STRIP_NAME)
    md = [f"# {title}", "", f"Dataset hash `{dataset_hash or 'not snapshotted'}`: {summary}.", "",
          "## Validation", "", vline, "", "## Label audit", "", aline, "", "## Splits", "", f"| split | images | {unit} |", "|---|---:|---:|"]
    md += [f"| {s} | {i} | {a} |" for s, i, a in split_rows]
    md += ["", split_line]
    md += ["", f"## Classes ({'images' if classification else 'boxes'})", "", "| class | " + " | ".join((*canonical_io.SPLITS, "total")) + " |",
           "|---|" + "---:|" * 4]
    md += ["| " + " | ".join(str(v) for v in row) + " |" for row in class_rows]
    md += ["", "## Image sizes", ""] + [f"![{t}]({u})" for t, u in hists]
    md += ["", "## Samples", ""] + [f"![{n} ({s})]({u})" for n, s, u in sample_uris]
    if isinstance(augmentation, str):
        md += ["", "## Augmentation", "", augmentation]
    elif augmentation is not None:
        md += ["", "## Augmentation", "", f"![augmented training samples]({STRIP_NAME})", "",
               f"{augmentation.caption} (`{STRIP_NAME}`, beside this card)"]
    return page, "\n".join(md) + "\n"


def audit_line(audit: dict | None) -> str:
    """One line of the label audit's counts (pipeline/stages/audit.py's result)."""
    if not audit:
        return "not audited in this run"
    if audit.get("skipped") or "annotations" not in audit:
        return f"not audited: {audit.get('reason') or audit.get('error') or 'no counts'}"
    reasons = ", ".join(f"{n} {r}" for r, n in (audit.get("per_reason") or {}).items())
    limit = audit.get("max_label_issue_rate")
    return (f"{audit['issues']} likely label issues among {audit['annotations']} annotations ({reasons}); "
            f"rate {audit['rate']:.3f}" + (f" (limit {limit:g})" if limit is not None else "")
            + f", scored with {audit.get('model', '?')}")


def write(out_dir: str | Path, coco: dict, image_dir: str | Path, train=None, **kwargs) -> tuple[Path, Path]:
    """Write card.html and card.md for the dataset whose images are under `image_dir` (and aug_strip.png
    beside them, given the train config)."""
    out_dir, image_dir = Path(out_dir), Path(image_dir)

    def read_image(name: str) -> bytes | None:
        path = image_dir / name
        return path.read_bytes() if path.is_file() else None

    augmentation = augmentation_strip(coco, read_image, train) if train is not None else None
    page, md = build(coco, read_image, augmentation=augmentation, **kwargs)
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, data in outputs(page, md, augmentation).items():
        (out_dir / name).write_bytes(data)
    return out_dir / "card.html", out_dir / "card.md"
