"""The checks of an image-classification dataset (annotations.json `"task": "classification"`).

What detection checks about images, splits and drift is kept as it is (ids, file names, splits, every image
decodes at its declared size, images per split, class vocabulary / counts / image sizes against the last
snapshot); box checks do not apply and do not run. In their place, over image-level labels:

- `labels` (one row per image): every image has exactly one label (`every_image_has_one_label`);
- `annotations` (one row per label): label ids unique, every label belongs to an image and names a category;
- `classes`: every class in use has at least `validate.min_annotations_per_class` train IMAGES
  (`min_images_per_class`) and at least one val image (`classes_in_val`: evaluate's per-class metrics and
  export's per-class recall parity are measured on val, a class without val images is not judged there),
  classes declared but never used are a warning;
- `summary`: largest / smallest class in images <= `validate.max_class_imbalance` (`class_balance`);
  both class statistics are warnings or failures as `validate.class_stats_action` says;
- `conflicts` (one row per group of byte-identical images): copies of one image never carry different classes
  (`duplicates_agree`; a copy in another split is also ingest's cross-split duplicate warning).

Every failing row is named by the export's file and item it came from (`where`), as detection's are.
"""
from __future__ import annotations

import logging
from collections import defaultdict

from pipeline.config import ValidateConfig
from pipeline.datasets import canonical_io

log = logging.getLogger(__name__)

# the detection checks that stay: images, splits and drift against the last snapshot
KEPT_TABLES = ("images", "splits", "drift_vocabulary", "drift_classes", "drift_sizes")


def _where(entry: dict, fallback: str, file: str = "") -> str:
    """`<export file>: <item>: ` a canonical row came from (`file`: its image's, when the row names none)."""
    src = entry.get("source") if isinstance(entry.get("source"), dict) else {}
    file, item = src.get("file") or file, src.get("item") or ""
    return f"{file}: {item}: " if file and item else f"{file}: " if file else f"{fallback}: "


def build_tables(tables: dict, coco: dict) -> dict:
    """Detection's image, split and drift tables (`tables`, from checks.build_tables) kept, the classification
    tables in place of the box ones."""
    import pandas as pd

    tables = dict(tables)
    for name in list(tables):
        if name not in KEPT_TABLES:
            del tables[name]
    if "drift_classes" in tables:  # a class's count is its images here
        tables["drift_classes"]["where"] = [f"class {n!r}: {p} -> {c} images ({ch:.0%})" for n, p, c, ch in zip(
            tables["drift_classes"]["name"], tables["drift_classes"]["previous"], tables["drift_classes"]["current"],
            tables["drift_classes"]["change"])]
    imgs, anns = coco["images"], coco["annotations"]
    names = {c.get("id"): c.get("name") for c in coco["categories"]}
    image_ids = {im.get("id") for im in imgs}
    by_image = defaultdict(list)
    for a in anns:
        by_image[a.get("image_id")].append(a)
    def class_names(image_id) -> str:
        return ", ".join(str(names.get(a.get("category_id"), a.get("category_id"))) for a in by_image.get(image_id, []))

    labels = pd.DataFrame({
        "index": range(len(imgs)), "id": [im.get("id") for im in imgs],
        "labels": [len(by_image.get(im.get("id"), [])) for im in imgs],
        "where": [f"{_where(im, 'annotations.json')}images/{im.get('file_name')} has "
                  f"{len(by_image.get(im.get('id'), []))} labels"
                  + (f" ({class_names(im.get('id'))})" if by_image.get(im.get("id")) else "")
                  + f" (canonical annotations.json images[{i}])" for i, im in enumerate(imgs)]},
        columns=["index", "id", "labels", "where"])
    file_of = {im.get("id"): im.get("file_name") for im in imgs}
    source_of = {im.get("id"): (im.get("source") or {}).get("file") or "" for im in imgs if isinstance(im, dict)}
    annotations = pd.DataFrame({
        "index": range(len(anns)), "id": [a.get("id") for a in anns],
        "image_known": [a.get("image_id") in image_ids for a in anns],
        "category_id": [a.get("category_id") for a in anns],
        "where": [f"{_where(a, 'annotations.json', source_of.get(a.get('image_id'), ''))}image "
                  f"{file_of.get(a.get('image_id'), a.get('image_id'))}, "
                  f"category_id {a.get('category_id')} (canonical annotations.json annotations[{i}])"
                  for i, a in enumerate(anns)]},
        columns=["index", "id", "image_known", "category_id", "where"])
    counts = canonical_io.counts(coco)  # one label per image: its per-class counts are images
    rows = []
    for c in coco["categories"]:
        row = counts["per_class"].get(c.get("name"), {})
        rows.append({"category_id": c.get("id"), "name": c.get("name"), "train_images": row.get("train", 0),
                     "val_images": row.get("val", 0), "total_images": row.get("total", 0)})
    classes = pd.DataFrame(rows, columns=["category_id", "name", "train_images", "val_images", "total_images"])
    classes["used"] = classes["total_images"] > 0
    classes["train_images_if_used"] = classes["train_images"].where(classes["used"]).astype("float")
    classes["val_images_if_used"] = classes["val_images"].where(classes["used"]).astype("float")
    classes["where"] = [f"class {n!r} (id {i}): {t} train images, {v} val, {a} in all" for n, i, t, v, a in
                        zip(classes["name"], classes["category_id"], classes["train_images"], classes["val_images"],
                            classes["total_images"])]
    used = sorted((int(t), str(n)) for t, n, u in zip(classes["total_images"], classes["name"], classes["used"]) if u)
    ratio = used[-1][0] / used[0][0] if used else 1.0
    summary = pd.DataFrame([{"classes": len(classes), "used_classes": len(used),
                             "unused_classes": int((~classes["used"]).sum()) if len(classes) else 0,
                             "class_imbalance_ratio": ratio,
                             "largest_class": used[-1][0] if used else 0, "smallest_class": used[0][0] if used else 0,
                             "largest_name": used[-1][1] if used else "", "smallest_name": used[0][1] if used else ""}])
    summary["where"] = [f"largest class {r['largest_name']!r} {r['largest_class']} images / smallest "
                        f"{r['smallest_name']!r} {r['smallest_class']} = {r['class_imbalance_ratio']:.1f}, over "
                        f"{r['used_classes']} classes in use" for r in summary.to_dict(orient="records")]
    tables.update(labels=labels, annotations=annotations, classes=classes, summary=summary,
                  conflicts=_conflicts(coco, by_image, names))
    return tables


def _conflicts(coco: dict, by_image: dict, names: dict):
    """One row per group of byte-identical images: how many different classes its copies carry."""
    import pandas as pd

    groups = defaultdict(list)
    for im in coco["images"]:
        if im.get("sha1"):
            groups[im["sha1"]].append(im)
    rows = []
    for sha1, imgs in sorted(groups.items()):
        if len(imgs) < 2:
            continue
        classes = {a.get("category_id") for im in imgs for a in by_image.get(im["id"], [])}
        rows.append({"sha1": sha1, "copies": len(imgs), "classes": len(classes),
                     "where": "identical images with different classes: " + "; ".join(
                         f"{_where(im, 'annotations.json')}images/{im['file_name']} ({im.get('split')}): "
                         + ", ".join(str(names.get(a.get("category_id"))) for a in by_image.get(im["id"], []))
                         for im in imgs)})
    return pd.DataFrame(rows, columns=["sha1", "copies", "classes", "where"])


def checks(detection: list[dict], coco: dict, cfg: ValidateConfig) -> list[dict]:
    """Detection's image, split and drift checks (from `detection`, checks._checks over the same tables), and
    the label checks; thresholds only from cfg."""
    import great_expectations as gx

    E = gx.expectations
    kept = [c for c in detection if c["table"] in KEPT_TABLES]
    for c in kept:  # one label per image: a class's count is its images
        c["description"] = c["description"].replace("box count", "image count")
    cat_ids = sorted({c.get("id") for c in coco["categories"] if isinstance(c.get("id"), int)})
    stats = "warning" if cfg.class_stats_action == "warn" else "failure"
    mine = [
        ("every_image_has_one_label", "labels", "every image has exactly one class label", "failure",
         E.ExpectColumnValuesToBeBetween(column="labels", min_value=1, max_value=1)),
        ("annotation_ids_unique", "annotations", "every label id appears once", "failure",
         E.ExpectColumnValuesToBeUnique(column="id")),
        ("annotation_images_known", "annotations", "every label belongs to an image in the dataset", "failure",
         E.ExpectColumnValuesToBeInSet(column="image_known", value_set=[True])),
        ("category_ids_known", "annotations", "every label has a category listed in categories", "failure",
         E.ExpectColumnValuesToBeInSet(column="category_id", value_set=cat_ids)),
        ("min_images_per_class", "classes", f"every class in use has >= {cfg.min_annotations_per_class} images in "
                                            "train (validate.min_annotations_per_class)", stats,
         E.ExpectColumnValuesToBeBetween(column="train_images_if_used", min_value=cfg.min_annotations_per_class)),
        ("classes_in_val", "classes", "every class in use has at least one val image (evaluate's per-class metrics "
                                      "and export's per-class recall parity are measured on val)", stats,
         E.ExpectColumnValuesToBeBetween(column="val_images_if_used", min_value=1)),
        ("declared_classes_used", "classes", "every declared class has at least one image (unused ones are left out "
                                             "of the per-class minimum and the balance ratio)", "warning",
         E.ExpectColumnValuesToBeInSet(column="used", value_set=[True])),
        ("class_balance", "summary", f"largest class / smallest class in use, in images, <= {cfg.max_class_imbalance}",
         stats, E.ExpectColumnValuesToBeBetween(column="class_imbalance_ratio", max_value=cfg.max_class_imbalance)),
        ("has_categories", "summary", "the dataset declares at least one category", "failure",
         E.ExpectColumnValuesToBeBetween(column="classes", min_value=1)),
        ("duplicates_agree", "conflicts", "byte-identical images carry the same class", "failure",
         E.ExpectColumnValuesToBeBetween(column="classes", max_value=1)),
    ]
    return kept + [{"name": n, "table": t, "description": d, "severity": s, "expectation": e}
                   for n, t, d, s, e in mine]
