"""KITTI object exports: `label_2/<frame>.txt` beside `image_2/<frame>.png` (KITTI's own `training/`, or the
`<subset>/label_2` + `<subset>/image_2` that CVAT / Datumaro write).

A label line has 15 space-separated fields (16 in result files, the last being a score): type, truncated
(0..1), occluded (0..3), alpha, the 2D box left top right bottom in 0-based pixels, 3D height width length,
3D location x y z and rotation_y. The box becomes COCO [left, top, right - left, bottom - top]; truncation,
occlusion, alpha and the 3D fields are kept as attributes. `DontCare` lines are regions where objects were
not labelled: they become ignore regions, one `iscrowd: 1` annotation per class, which training skips and
COCO scoring treats as "detections here count neither way". A line with the wrong field count or bad numbers
sets its image aside (quarantine), naming the file and the line.
"""
from __future__ import annotations

import math
from pathlib import Path

from pipeline.errors import InputRejected
from pipeline.formats.base import Dataset, display, inside, provenance
from pipeline.formats.coco import export_root

DONTCARE = "DontCare"
SUFFIXES = (".png", ".jpg", ".jpeg")
NUMERIC = ("truncated", "occluded", "alpha", "left", "top", "right", "bottom", "height_3d", "width_3d",
           "length_3d", "x_3d", "y_3d", "z_3d", "rotation_y")


def _parse(line: str) -> dict | str:
    fields = line.split()
    if len(fields) not in (15, 16):
        return f"expected 15 fields (type, truncated, occluded, alpha, 4 box, 3 dimensions, 3 location, " \
               f"rotation_y), got {len(fields)}"
    try:
        vals = [float(v) for v in fields[1:15]]
    except ValueError:
        return f"fields 2-15 must be numbers, got {' '.join(fields[1:15])!r}"
    if not all(math.isfinite(v) for v in vals):
        return "fields 2-15 must be finite numbers"
    rec = dict(zip(NUMERIC, vals))
    rec["type"] = fields[0]
    return rec


def read_kitti(root, origin: str = "") -> Dataset:
    top = Path(root)  # messages name files from the export's top (KITTI wraps everything in training/)
    root = export_root(top)
    origin = origin or str(top)
    label_dirs = sorted(d for d in root.rglob("label_2") if d.is_dir())
    if not label_dirs:
        raise InputRejected("no KITTI labels: expected label_2/*.txt beside image_2/", path=origin)
    ds = Dataset([], [], [], [display(origin, top, d) for d in label_dirs])
    records, names, dontcare = [], set(), []
    for label_dir in label_dirs:
        image_dir = label_dir.parent / "image_2"
        labels = {p.stem: p for p in sorted(label_dir.glob("*.txt"))}
        images = {p.stem: p for p in sorted(image_dir.glob("*")) if p.suffix.lower() in SUFFIXES} \
            if image_dir.is_dir() else {}
        if not labels:
            raise InputRejected("holds no label files (empty split)", path=display(origin, top, label_dir))
        for stem in sorted(set(labels) | set(images)):
            ds.listed_images += 1
            image = images.get(stem)
            label = labels.get(stem)
            lname = display(origin, top, label) if label else display(origin, top, label_dir / f"{stem}.txt")
            if image is None:
                ds.set_aside(lname, "image", f"no image {stem}.png in {display(origin, top, image_dir)}", None)
                continue
            if not inside(image, root) or (label is not None and not inside(label, root)):
                raise InputRejected("symlink leaves the dataset", path=lname)
            rel = image.relative_to(root).as_posix()
            objects, bad = [], None
            if label is not None:
                for n, line in enumerate(label.read_text(errors="replace").splitlines(), start=1):
                    if not line.strip():
                        continue
                    rec = _parse(line)
                    if isinstance(rec, str):
                        bad = (f"line {n}", rec)
                        break
                    rec["source"] = provenance(lname, f"line {n}")
                    objects.append(rec)
            if bad:
                ds.set_aside(lname, bad[0], bad[1], rel)
                continue
            names.update(o["type"] for o in objects if o["type"] != DONTCARE)
            records.append((rel, image, objects, lname))
    cat_id = {n: i for i, n in enumerate(sorted(names), start=1)}
    for rel, image, objects, lname in records:
        image_id = len(ds.images) + 1
        ds.images.append({"id": image_id, "file_name": rel, "width": None, "height": None, "path": image,
                          "source": provenance(lname, "")})
        for o in objects:
            box = [o["left"], o["top"], o["right"] - o["left"], o["bottom"] - o["top"]]
            attrs = {k: o[k] for k in NUMERIC[:3]}
            attrs["occluded"] = int(attrs["occluded"])
            attrs.update({k: o[k] for k in NUMERIC[8:]})
            if o["type"] == DONTCARE:
                # an ignore region covers every class: one crowd annotation per class
                for cid in cat_id.values():
                    ds.annotations.append({"id": len(ds.annotations) + 1, "image_id": image_id, "category_id": cid,
                                           "bbox": box, "area": box[2] * box[3], "iscrowd": 1,
                                           "attributes": {"kitti_type": DONTCARE, "ignore": True},
                                           "source": o["source"]})
                continue
            attrs["alpha"] = o["alpha"]
            ds.annotations.append({"id": len(ds.annotations) + 1, "image_id": image_id,
                                   "category_id": cat_id[o["type"]], "bbox": box, "area": box[2] * box[3],
                                   "iscrowd": 0, "attributes": attrs, "source": o["source"]})
    ds.categories = [{"id": i, "name": n} for n, i in cat_id.items()]
    return ds
