"""The checks run on a canonical dataset, as Great Expectations 1.x suites over pandas tables.

Tables: `images` (one row per image: declared and decoded size, split), `annotations` (one row per box,
with its image's size), `splits` (images per split against its minimum), `classes` (train boxes per class)
and `summary` (the class-balance ratio). Thresholds come only from `ValidateConfig`. Defects that break
training outright (undecodable images, non-finite or empty boxes, unknown ids) must be absent;
`max_bad_fraction` tolerates a few boxes sticking out of their image and images whose declared size differs.
`image_check: header` reads only each image's header and end marker instead of decoding it.

With the statistics of the last snapshot, three more tables compare tonight's dataset with it: the class
vocabulary (`drift_vocabulary`), each class's box count (`drift_classes`) and the image width/height
histograms (`drift_sizes`). Their checks carry a severity from ValidateConfig: a `warning` is reported but
does not fail the dataset.
"""
from __future__ import annotations

import logging
import math
import os
import time
from pathlib import Path

from pipeline.config import ValidateConfig
from pipeline.datasets import canonical_io

log = logging.getLogger(__name__)

MAX_EXAMPLES = 10
MAX_CLASSES_LISTED = 1000


def _decode(path: Path) -> tuple[bool, int | None, int | None, str]:
    """(decodes, real width, real height, error) after a full decode, so truncated files are caught."""
    from PIL import Image

    if not path.is_file():
        return False, None, None, "missing file"
    try:
        with Image.open(path) as img:
            img.load()
            return True, img.size[0], img.size[1], ""
    except Exception as exc:  # noqa: BLE001 - any decoder error means the image is unusable
        return False, None, None, f"{type(exc).__name__}: {exc}"


def _image_columns(image_dir: Path, names: list, mode: str) -> dict:
    """decodes / real_width / real_height / decode_error for every image, by full decode or header probe."""
    from concurrent.futures import ThreadPoolExecutor

    from pipeline.formats.images import probe_many

    paths = [image_dir / str(n) for n in names]
    if mode == "header":
        probes = probe_many(paths)
        rows = [(not p.error and p.width is not None, p.width, p.height, p.error) for p in probes]
    else:
        chunks = [paths[i:i + 256] for i in range(0, len(paths), 256)]
        with ThreadPoolExecutor(max_workers=2) as pool:  # decoders release the GIL
            rows = [r for chunk in pool.map(lambda c: [_decode(p) for p in c], chunks) for r in chunk]
    return {"decodes": [r[0] for r in rows], "real_width": [r[1] for r in rows],
            "real_height": [r[2] for r in rows], "decode_error": [r[3] for r in rows]}


def _box_array(anns: list):
    """(n, 4) float array of the boxes; rows that are not 4 numbers become NaN (found by boxes_finite)."""
    import numpy as np

    try:
        arr = np.array([a["bbox"] for a in anns], dtype=float)
        if arr.shape == (len(anns), 4):
            return arr
    except (KeyError, TypeError, ValueError):
        pass
    out = np.full((len(anns), 4), np.nan)
    for i, a in enumerate(anns):
        b = a.get("bbox")
        if isinstance(b, list) and len(b) == 4 and all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                                       for v in b):
            out[i] = b
    return out


def build_tables(dataset_dir: Path, coco: dict, cfg: ValidateConfig, previous: dict | None = None) -> dict:
    """The pandas tables the suites run on (built column-wise: a million boxes take about a second)."""
    import numpy as np
    import pandas as pd

    image_dir = Path(dataset_dir) / canonical_io.IMAGES
    imgs = coco["images"]
    images = pd.DataFrame({"index": np.arange(len(imgs)), "id": [im.get("id") for im in imgs],
                           "file_name": [im.get("file_name") for im in imgs],
                           "source_file": [_source(im)[0] for im in imgs],
                           "split": [im.get("split") for im in imgs],
                           "width": [im.get("width") for im in imgs], "height": [im.get("height") for im in imgs]})
    if cfg.check_image_decode:
        for col, values in _image_columns(image_dir, list(images["file_name"]), cfg.image_check).items():
            images[col] = values
    anns = coco["annotations"]
    box = _box_array(anns)
    annotations = pd.DataFrame({"index": np.arange(len(anns)), "id": [a.get("id") for a in anns],
                                "image_id": [a.get("image_id") for a in anns],
                                "category_id": [a.get("category_id") for a in anns],
                                "x": box[:, 0], "y": box[:, 1], "w": box[:, 2], "h": box[:, 3],
                                "source_file": [_source(a)[0] for a in anns],
                                "source_item": [_source(a)[1] for a in anns]})
    # a box's file is its image's unless it names its own (ingest keeps only what differs)
    image_source = dict(zip(images["id"], images["source_file"]))
    annotations["source_file"] = [f or image_source.get(i, "") for f, i in zip(annotations["source_file"],
                                                                               annotations["image_id"])]
    annotations["finite"] = np.isfinite(box).all(axis=1)
    annotations["image_known"] = annotations["image_id"].isin([i for i in images["id"] if isinstance(i, int)])
    by_id = images.drop_duplicates("id").set_index("id")
    key = annotations["image_id"]
    annotations["file_name"] = key.map(by_id["file_name"])
    tol = cfg.box_tolerance_px
    iw = pd.to_numeric(key.map(by_id["width"]), errors="coerce")
    ih = pd.to_numeric(key.map(by_id["height"]), errors="coerce")
    annotations["image_width"], annotations["image_height"] = iw, ih
    annotations["x2"] = annotations["x"] + annotations["w"]
    annotations["y2"] = annotations["y"] + annotations["h"]
    annotations["max_x"], annotations["max_y"] = iw + tol, ih + tol
    if coco.get("task") == "segmentation":  # instance masks: decodable, inside the image, matching their box
        from pipeline.datasets.masks import mask_columns

        for col, values in mask_columns(coco, tol).items():
            annotations[col] = values
    counts = canonical_io.counts(coco)
    wanted = list(dict.fromkeys([*canonical_io.SPLITS, *cfg.min_images_per_split]))
    splits = pd.DataFrame([{"split": s, "images": counts["per_split"].get(s, {}).get("images", 0),
                            "min_images": int(cfg.min_images_per_split.get(s, 0))} for s in wanted])
    classes = pd.DataFrame([{"category_id": c.get("id"), "name": c.get("name"),
                             "train_annotations": counts["per_class"].get(c.get("name"), {}).get("train", 0),
                             "total_annotations": counts["per_class"].get(c.get("name"), {}).get("total", 0)}
                            for c in coco["categories"]], columns=["category_id", "name", "train_annotations",
                                                                   "total_annotations"])
    # a class the export declares but never uses (Roboflow's supercategory, COCO128's 9 absent classes) is a
    # named warning: it takes part in neither the per-class minimum nor the balance ratio
    classes["used"] = classes["total_annotations"] > 0
    classes["train_annotations_if_used"] = classes["train_annotations"].where(classes["used"]).astype("float")
    used_rows = sorted(((int(c), str(n)) for c, n, used in zip(classes["total_annotations"], classes["name"],
                                                             classes["used"]) if used), key=lambda r: r[0])
    per_class = [c for c, _ in used_rows]
    ratio = max(per_class) / min(per_class) if per_class else 1.0
    summary = pd.DataFrame([{"classes": len(classes), "used_classes": len(per_class),
                             "unused_classes": int((~classes["used"]).sum()) if len(classes) else 0,
                             "class_imbalance_ratio": ratio,
                             "largest_class": int(max(per_class, default=0)),
                             "smallest_class": int(min(per_class, default=0)),
                             "largest_name": used_rows[-1][1] if used_rows else "",
                             "smallest_name": used_rows[0][1] if used_rows else ""}])
    tables = {"images": images, "annotations": annotations, "splits": splits, "classes": classes,
              "summary": summary}
    if previous:
        tables.update(_drift_tables(coco, previous, cfg))
    return tables


def _drift_tables(coco: dict, previous: dict, cfg: ValidateConfig) -> dict:
    """Comparisons with the statistics of the last snapshot (state/dataset_stats.json)."""
    import pandas as pd

    now = canonical_io.dataset_stats(coco)
    before, after = previous.get("classes", {}), now["classes"]
    added, removed = sorted(set(after) - set(before)), sorted(set(before) - set(after))
    out = {"drift_vocabulary": pd.DataFrame([{"added": len(added), "removed": len(removed),
                                              "added_names": ", ".join(added), "removed_names": ", ".join(removed),
                                              "previous_snapshot": previous.get("dataset_hash", "")}])}
    rows = [{"name": n, "previous": before[n], "current": after[n],
             "change": abs(after[n] - before[n]) / before[n]} for n in sorted(set(before) & set(after)) if before[n]]
    if rows:
        out["drift_classes"] = pd.DataFrame(rows)
    if previous.get("size_bins") == now["size_bins"]:
        out["drift_sizes"] = pd.DataFrame([
            {"dimension": dim, "distance": canonical_io.total_variation(previous[f"{dim}_hist"], now[f"{dim}_hist"]),
             "previous_hist": previous[f"{dim}_hist"], "current_hist": now[f"{dim}_hist"]}
            for dim in ("width", "height")])
    return out


def _checks(tables: dict, coco: dict, cfg: ValidateConfig) -> list[dict]:
    """(name, table, description, expectation) for every check; thresholds only from cfg."""
    import great_expectations as gx

    E = gx.expectations
    tolerated = max(0.0, 1.0 - cfg.max_bad_fraction)
    cat_ids = sorted({c.get("id") for c in coco["categories"] if isinstance(c.get("id"), int)})
    tol = cfg.box_tolerance_px
    checks = [
        ("image_ids_unique", "images", "every image id appears once", E.ExpectColumnValuesToBeUnique(column="id")),
        ("image_ids_present", "images", "every image has an id", E.ExpectColumnValuesToNotBeNull(column="id")),
        ("image_files_unique", "images", "no two images share a file name",
         E.ExpectColumnValuesToBeUnique(column="file_name")),
        ("image_splits_known", "images", "every image is in train, val or test",
         E.ExpectColumnValuesToBeInSet(column="split", value_set=list(canonical_io.SPLITS))),
        ("declared_width_positive", "images", "declared width is positive",
         E.ExpectColumnValuesToBeBetween(column="width", min_value=1)),
        ("declared_height_positive", "images", "declared height is positive",
         E.ExpectColumnValuesToBeBetween(column="height", min_value=1)),
    ]
    if cfg.check_image_decode:
        checks += [
            ("images_decode", "images", "every image file exists and decodes completely",
             E.ExpectColumnValuesToBeInSet(column="decodes", value_set=[True])),
            ("decoded_width_matches", "images", "decoded width equals the declared width",
             E.ExpectColumnPairValuesToBeEqual(column_A="width", column_B="real_width",
                                               ignore_row_if="either_value_is_missing", mostly=tolerated)),
            ("decoded_height_matches", "images", "decoded height equals the declared height",
             E.ExpectColumnPairValuesToBeEqual(column_A="height", column_B="real_height",
                                               ignore_row_if="either_value_is_missing", mostly=tolerated)),
        ]
    checks += [
        ("annotation_ids_unique", "annotations", "every annotation id appears once",
         E.ExpectColumnValuesToBeUnique(column="id")),
        # membership is computed in pandas: a value_set of 100k ids inside the expectation makes GX serialise
        # it again and again (minutes); the boolean column keeps the check a one-liner for GX
        ("annotation_images_known", "annotations", "every box belongs to an image in the dataset",
         E.ExpectColumnValuesToBeInSet(column="image_known", value_set=[True])),
        ("category_ids_known", "annotations", "every box has a category listed in categories",
         E.ExpectColumnValuesToBeInSet(column="category_id", value_set=cat_ids)),
        ("boxes_finite", "annotations", "every box is four finite numbers",
         E.ExpectColumnValuesToBeInSet(column="finite", value_set=[True])),
        ("box_width_positive", "annotations", "box width > 0",
         E.ExpectColumnValuesToBeBetween(column="w", min_value=0, strict_min=True)),
        ("box_height_positive", "annotations", "box height > 0",
         E.ExpectColumnValuesToBeBetween(column="h", min_value=0, strict_min=True)),
        ("box_left_inside", "annotations", f"box x >= -{tol} px",
         E.ExpectColumnValuesToBeBetween(column="x", min_value=-tol, mostly=tolerated)),
        ("box_top_inside", "annotations", f"box y >= -{tol} px",
         E.ExpectColumnValuesToBeBetween(column="y", min_value=-tol, mostly=tolerated)),
        ("box_right_inside", "annotations", f"box x + w <= image width + {tol} px",
         E.ExpectColumnPairValuesAToBeGreaterThanB(column_A="max_x", column_B="x2", or_equal=True,
                                                   ignore_row_if="either_value_is_missing", mostly=tolerated)),
        ("box_bottom_inside", "annotations", f"box y + h <= image height + {tol} px",
         E.ExpectColumnPairValuesAToBeGreaterThanB(column_A="max_y", column_B="y2", or_equal=True,
                                                   ignore_row_if="either_value_is_missing", mostly=tolerated)),
        ("min_images_per_split", "splits", f"images per split >= {dict(cfg.min_images_per_split)}",
         E.ExpectColumnPairValuesAToBeGreaterThanB(column_A="images", column_B="min_images", or_equal=True)),
        ("min_annotations_per_class", "classes", f"every class in use has >= {cfg.min_annotations_per_class} "
                                                 "boxes in train",
         E.ExpectColumnValuesToBeBetween(column="train_annotations_if_used", min_value=cfg.min_annotations_per_class)),
        ("class_balance", "summary", f"largest class / smallest class in use <= {cfg.max_class_imbalance}",
         E.ExpectColumnValuesToBeBetween(column="class_imbalance_ratio", max_value=cfg.max_class_imbalance)),
        ("has_categories", "summary", "the dataset declares at least one category",
         E.ExpectColumnValuesToBeBetween(column="classes", min_value=1)),
    ]
    if coco.get("task") == "segmentation":
        checks += [
            ("masks_valid", "annotations", "every annotation has a polygon (>= 3 points) or an RLE of its image's "
                                           "size that decodes",
             E.ExpectColumnValuesToBeInSet(column="mask_valid", value_set=[True])),
            ("masks_inside", "annotations", f"polygons within {tol} px of their image",
             E.ExpectColumnValuesToBeInSet(column="mask_inside", value_set=[True], mostly=tolerated)),
            ("mask_box_agrees", "annotations", f"each mask's box equals its annotation's bbox within {tol} px",
             E.ExpectColumnValuesToBeInSet(column="mask_box_agrees", value_set=[True], mostly=tolerated)),
        ]
    stats = "warning" if cfg.class_stats_action == "warn" else "failure"
    out = [{"name": n, "table": t, "description": d, "expectation": e,
            "severity": stats if n in ("min_annotations_per_class", "class_balance") else "failure"}
           for n, t, d, e in checks]
    out.append({"name": "declared_classes_used", "table": "classes", "severity": "warning",
                "description": "every declared class has at least one box (unused ones are left out of the "
                               "per-class minimum and the balance ratio)",
                "expectation": E.ExpectColumnValuesToBeInSet(column="used", value_set=[True])})
    drift = "warning" if cfg.drift_action == "warn" else "failure"
    if "drift_vocabulary" in tables and cfg.vocabulary_change != "ignore":
        severity = "warning" if cfg.vocabulary_change == "warn" else "failure"
        out += [{"name": "no_classes_added", "table": "drift_vocabulary", "severity": severity,
                 "description": "no class appears that the last snapshot did not have",
                 "expectation": E.ExpectColumnValuesToBeBetween(column="added", max_value=0)},
                {"name": "no_classes_removed", "table": "drift_vocabulary", "severity": severity,
                 "description": "every class of the last snapshot is still there",
                 "expectation": E.ExpectColumnValuesToBeBetween(column="removed", max_value=0)}]
    if "drift_classes" in tables:
        out.append({"name": "class_counts_stable", "table": "drift_classes", "severity": drift,
                    "description": f"each class's box count changed by <= {cfg.max_class_count_change:.0%} "
                                   "since the last snapshot",
                    "expectation": E.ExpectColumnValuesToBeBetween(column="change",
                                                                   max_value=cfg.max_class_count_change)})
    if "drift_sizes" in tables:
        out.append({"name": "image_sizes_stable", "table": "drift_sizes", "severity": drift,
                    "description": f"image width/height histograms moved by <= {cfg.max_size_drift} (total "
                                   "variation distance) since the last snapshot",
                    "expectation": E.ExpectColumnValuesToBeBetween(column="distance", max_value=cfg.max_size_drift)})
    return out


def _examples(table: str, df, indices) -> list[str]:
    """Where the failing rows are, in the dataset's own terms (file and field)."""
    out = []
    limit = MAX_CLASSES_LISTED if table == "classes" else MAX_EXAMPLES  # every class below the minimum is named
    for i in list(indices)[:limit]:
        row = df.loc[i]
        if "where" in df.columns:  # a table that spells out its rows itself (pipeline/validation/classification.py)
            out.append(str(row["where"]))
        elif table == "images":
            extra = f" ({row['decode_error']})" if "decode_error" in df and row.get("decode_error") else ""
            where = f"{row['source_file']}: " if row.get("source_file") else ""
            out.append(f"{where}images/{row['file_name']}{extra} (canonical annotations.json images[{row['index']}])")
        elif table == "annotations":
            box = [round(float(v), 3) for v in (row['x'], row['y'], row['w'], row['h'])]
            if row.get("source_file"):
                out.append(f"{row['source_file']}: {row['source_item'] or 'box'}: image {row['file_name']} "
                           f"({row['image_width']} x {row['image_height']}), box [x, y, w, h] {box} "
                           f"(canonical annotations.json annotations[{row['index']}])"
                           + (f": {row['mask_problem']}" if row.get("mask_problem") else ""))
            else:
                out.append(f"annotations.json: annotations[{row['index']}].bbox (id {row['id']}, "
                           f"image {row['file_name']}, box {box})"
                           + (f": {row['mask_problem']}" if row.get("mask_problem") else ""))
        elif table == "splits":
            out.append(f"split {row['split']}: {row['images']} images < {row['min_images']}")
        elif table == "classes":
            out.append(f"class {row['name']!r} (id {row['category_id']}): {row['train_annotations']} train boxes, "
                       f"{row['total_annotations']} in all")
        elif table == "summary":
            out.append(f"largest class {row['largest_name']!r} {row['largest_class']} boxes / smallest "
                       f"{row['smallest_name']!r} {row['smallest_class']} = {row['class_imbalance_ratio']:.1f}, over "
                       f"{row['used_classes']} classes in use ({row['unused_classes']} declared but unused)")
        elif table == "drift_classes":
            out.append(f"class {row['name']!r}: {row['previous']} -> {row['current']} boxes ({row['change']:.0%})")
        elif table == "drift_vocabulary":
            out.append(f"added: {row['added_names'] or '-'}; removed: {row['removed_names'] or '-'}")
        elif table == "drift_sizes":
            out.append(f"{row['dimension']}: distance {row['distance']:.3f}, histogram {row['previous_hist']} -> "
                       f"{row['current_hist']}")
        else:
            out.append(", ".join(f"{k}={v}" for k, v in row.items()))
    return out


def _source(entry: dict) -> tuple[str, str]:
    """(file, item) of the export's line / object / shape a canonical row came from ("" when unknown)."""
    src = entry.get("source") if isinstance(entry, dict) else None
    if isinstance(src, dict):
        return str(src.get("file") or ""), str(src.get("item") or "")
    return "", ""


def _jsonable(value):
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if hasattr(value, "item"):  # numpy scalars
        return _jsonable(value.item())
    return value


def validate_dataset(dataset_dir: Path, cfg: ValidateConfig, previous: dict | None = None) -> dict:
    """Run every check on the canonical dataset in `dataset_dir`; returns the report (JSON-able).

    `previous`: the statistics of the last snapshot (canonical_io.dataset_stats); drift checks compare with
    them, and fail the report or only warn as ValidateConfig says.
    """
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    logging.getLogger("great_expectations").setLevel(logging.WARNING)  # its INFO lines are set-up chatter
    started = time.time()
    dataset_dir = Path(dataset_dir)
    coco = canonical_io.load(dataset_dir)
    if coco.get("task") == "classification":  # image-level labels: no box checks (validation/classification.py)
        from pipeline.validation import classification

        log.info("classification dataset (annotations.json task): image-level label checks; box checks do not "
                 "apply and do not run")
        tables = classification.build_tables(build_tables(dataset_dir, coco, cfg, previous), coco)
        checks = classification.checks(_checks(tables, coco, cfg), coco, cfg)
    else:
        tables = build_tables(dataset_dir, coco, cfg, previous)
        checks = _checks(tables, coco, cfg)
    unused = [str(n) for n, used in zip(tables["classes"]["name"], tables["classes"]["used"]) if not used]
    if unused:
        log.warning("%d declared classes have no box and are left out of the per-class minimum and the balance "
                    "ratio: %s", len(unused), ", ".join(unused))

    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False, metric_calculations=False)
    source = context.data_sources.add_pandas("nightshift_dataset")
    results = []
    for table, df in tables.items():
        mine = [c for c in checks if c["table"] == table]
        if not mine:
            continue
        batch = source.add_dataframe_asset(table).add_batch_definition_whole_dataframe(f"{table}_all")
        suite = context.suites.add(gx.ExpectationSuite(name=f"nightshift_{table}"))
        for c in mine:
            suite.add_expectation(c["expectation"])
        vd = context.validation_definitions.add(gx.ValidationDefinition(name=f"validate_{table}", data=batch,
                                                                        suite=suite))
        run = vd.run(batch_parameters={"dataframe": df}, result_format="COMPLETE")
        by_id = {r.expectation_config.id: r for r in run.results}
        for c in mine:
            r = by_id[c["expectation"].id].to_json_dict()
            res = r.get("result") or {}
            kwargs = {k: v for k, v in r["expectation_config"]["kwargs"].items() if k != "batch_id"}
            observed = {k: res[k] for k in ("observed_value", "element_count", "unexpected_count",
                                            "unexpected_percent", "missing_count") if k in res}
            if res.get("partial_unexpected_list"):
                observed["unexpected_sample"] = res["partial_unexpected_list"][:MAX_EXAMPLES]
            failing_rows = res.get("unexpected_index_list") or []
            exception = (r.get("exception_info") or {})
            results.append(_jsonable({
                "name": c["name"], "table": table, "description": c["description"], "severity": c["severity"],
                "expectation": r["expectation_config"]["type"], "kwargs": kwargs, "success": bool(r["success"]),
                "observed": observed,
                "examples": _examples(table, df, failing_rows) if failing_rows and not r["success"] else [],
                "error": exception.get("exception_message") if exception.get("raised_exception") else None,
            }))
    failed = [r for r in results if not r["success"] and r["severity"] == "failure"]
    warned = [r for r in results if not r["success"] and r["severity"] == "warning"]
    return {
        "dataset": str(dataset_dir), "task": coco.get("task") or "detection", "passed": not failed,
        "checks": len(results), "failed": len(failed),
        "failed_checks": [r["name"] for r in failed], "warnings": [r["name"] for r in warned],
        "unused_classes": unused,
        "previous_snapshot": (previous or {}).get("dataset_hash"),
        "tables": {name: int(len(df)) for name, df in tables.items()},
        "observed_tables": {name: _jsonable(tables[name].to_dict(orient="records"))
                            for name in ("splits", "classes", "summary", "drift_vocabulary", "drift_classes",
                                         "drift_sizes") if name in tables},
        "thresholds": cfg.model_dump(mode="json"),
        "results": results, "great_expectations": gx.__version__, "duration_s": round(time.time() - started, 2),
    }
