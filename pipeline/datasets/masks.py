"""Instance masks as the canonical dataset stores them (COCO `segmentation`) and as training reads them.

A segmentation is one of COCO's three forms: polygons `[[x1, y1, x2, y2, ...], ...]` in image pixels, an
uncompressed RLE `{"size": [h, w], "counts": [int, ...]}` or a compressed RLE `{"size": [h, w], "counts":
"<string>"}`; RLE runs are column-major (Fortran order) over the whole image, starting with background.
pycocotools does the rasterising and the RLE arithmetic.

The annotation tools' own mask forms are converted here to COCO's compressed RLE at the image size:
- Labelme `shape_type: "mask"`: a base64 PNG of the mask's crop, placed at the first of the shape's two corner
  points (Labelme itself pastes it at `[y1:y2 + 1, x1:x2 + 1]` with the points cast to int);
- CVAT for images 1.1 `<mask rle="..." left top width height>`: CVAT's own RLE, runs over the
  `width` x `height` crop in row-major order starting with background, the crop at (`left`, `top`).

`rasterise` gives the training target: uint8 [N, S, S] masks for a resized S x S image. Polygons are scaled
and rasterised at S x S directly (exact, and fast at any original size); an RLE is decoded at its own size and
resized with nearest-neighbour sampling.
"""
from __future__ import annotations

import base64
import binascii
import io
import math

import numpy as np
import torch

SEGMENTATION = "segmentation"


def is_polygons(seg) -> bool:
    return isinstance(seg, list)


def compress(rle: dict) -> dict:
    """A pycocotools RLE as JSON can hold it: counts as a str."""
    counts = rle["counts"]
    return {"size": [int(rle["size"][0]), int(rle["size"][1])],
            "counts": counts.decode("ascii") if isinstance(counts, bytes) else counts}


def to_rle(seg, height: int, width: int) -> dict:
    """One pycocotools RLE (counts as bytes) for any COCO segmentation of an image `height` x `width`; polygons
    of one object are merged into one mask. Raises ValueError for a segmentation pycocotools cannot read."""
    from pycocotools import mask as mask_utils

    if is_polygons(seg):
        polys = [[float(v) for v in p] for p in seg]
        return mask_utils.merge(mask_utils.frPyObjects(polys, height, width))
    if not isinstance(seg, dict) or "counts" not in seg or "size" not in seg:
        raise ValueError("a segmentation must be a list of polygons or an RLE object {size, counts}")
    h, w = (int(v) for v in seg["size"])
    counts = seg["counts"]
    if isinstance(counts, list):
        if not all(isinstance(v, int) and v >= 0 for v in counts) or sum(counts) != h * w:
            raise ValueError(f"uncompressed RLE counts must be non-negative integers summing to height * width = "
                             f"{h * w}")
        return mask_utils.frPyObjects({"size": [h, w], "counts": counts}, h, w)
    if not isinstance(counts, (str, bytes)) or not counts:
        raise ValueError("RLE counts must be a list of integers or a compressed string")
    text = counts.decode("ascii", "replace") if isinstance(counts, bytes) else counts
    runs = string_counts(text)  # pycocotools decodes a corrupt string without complaint: check it here
    if min(runs, default=0) < 0 or sum(runs) != h * w:
        raise ValueError(f"compressed RLE counts do not cover height * width = {h * w} pixels (corrupt string?)")
    return {"size": [h, w], "counts": text.encode("ascii")}


def string_counts(text: str) -> list[int]:
    """The runs of a COCO compressed RLE string (pycocotools' rleFrString: 5 bits a character, offset 48, a
    continuation bit, the sign bit on the last, runs after the second stored as the difference to the run two
    before). ValueError for a character outside the alphabet or a string cut short."""
    runs, p = [], 0
    while p < len(text):
        x, k, more = 0, 0, True
        while more:
            if p >= len(text):
                raise ValueError("compressed RLE string ends inside a run")
            c = ord(text[p]) - 48
            if not 0 <= c < 64:
                raise ValueError(f"character {text[p]!r} is not in COCO's compressed RLE alphabet")
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            p += 1
            k += 1
            if not more and c & 0x10:
                x |= -1 << (5 * k)
        if len(runs) > 2:
            x += runs[-2]
        runs.append(x)
    return runs


def decode(seg, height: int, width: int) -> np.ndarray:
    """uint8 [H, W] (0/1) mask of a segmentation."""
    from pycocotools import mask as mask_utils

    return np.ascontiguousarray(mask_utils.decode(to_rle(seg, height, width)))


def bbox_area(seg, height: int, width: int) -> tuple[list[float], float]:
    """([x, y, w, h], pixel area) of a segmentation's mask, as COCO derives them."""
    from pycocotools import mask as mask_utils

    rle = to_rle(seg, height, width)
    return [float(v) for v in mask_utils.toBbox(rle)], float(mask_utils.area(rle))


def encode(mask: np.ndarray) -> dict:
    """A 2-D 0/1 array as COCO compressed RLE (JSON-ready)."""
    from pycocotools import mask as mask_utils

    return compress(mask_utils.encode(np.asfortranarray(mask.astype(np.uint8))))


# -- the tools' own mask forms -----------------------------------------------------------------------------
def labelme_mask(shape: dict, height: int, width: int) -> dict | str:
    """COCO RLE at the image size of a Labelme `shape_type: "mask"` shape, or why it cannot be read (a message
    for the quarantine report). `points` are the crop's two corners, `mask` a base64 PNG of the crop."""
    from PIL import Image, UnidentifiedImageError

    pts = shape.get("points")
    if not (isinstance(pts, list) and len(pts) == 2 and all(
            isinstance(p, list) and len(p) == 2 and all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                                       and math.isfinite(v) for v in p) for p in pts)):
        return "a mask needs 2 points: the top-left and bottom-right corners of its crop"
    raw = shape.get("mask")
    if not isinstance(raw, str) or not raw:
        return "a mask shape needs 'mask': the crop as a base64 PNG"
    try:
        crop = np.asarray(Image.open(io.BytesIO(base64.b64decode(raw, validate=True))))
    except (binascii.Error, ValueError, UnidentifiedImageError, OSError) as exc:
        return f"'mask' is not a base64 PNG ({type(exc).__name__})"
    if crop.ndim == 3:  # an RGB(A) PNG: any non-zero channel is the object
        crop = crop.any(axis=2)
    crop = crop.astype(bool)
    x1, y1 = int(pts[0][0]), int(pts[0][1])
    x2, y2 = int(pts[1][0]), int(pts[1][1])
    if (y2 - y1 + 1, x2 - x1 + 1) != crop.shape:
        return (f"the mask PNG is {crop.shape[1]} x {crop.shape[0]} pixels but its points span "
                f"{x2 - x1 + 1} x {y2 - y1 + 1}")
    return _paste(crop, x1, y1, height, width)


def cvat_mask(rle: str, left: int, top: int, crop_w: int, crop_h: int, height: int, width: int) -> dict | str:
    """COCO RLE at the image size of a CVAT `<mask rle left top width height>`, or why it cannot be read."""
    try:
        runs = [int(v) for v in rle.replace(" ", "").split(",") if v != ""]
    except ValueError:
        return f"rle must be comma-separated integers, got {rle[:40]!r}"
    if crop_w <= 0 or crop_h <= 0:
        return f"width and height must be > 0, got {crop_w} x {crop_h}"
    if any(r < 0 for r in runs) or sum(runs) != crop_w * crop_h:
        return (f"rle runs must be non-negative and sum to width * height = {crop_w * crop_h}, "
                f"got {sum(runs)}")
    flat = np.repeat(np.arange(len(runs)) % 2, runs).astype(bool)  # runs alternate, background first
    return _paste(flat.reshape(crop_h, crop_w), left, top, height, width)


def _paste(crop: np.ndarray, x: int, y: int, height: int, width: int) -> dict | str:
    full = np.zeros((height, width), dtype=np.uint8)
    x0, y0 = max(x, 0), max(y, 0)
    x1, y1 = min(x + crop.shape[1], width), min(y + crop.shape[0], height)
    if x1 <= x0 or y1 <= y0:
        return f"the mask's crop at ({x}, {y}) lies outside the {width} x {height} image"
    full[y0:y1, x0:x1] = crop[y0 - y:y1 - y, x0 - x:x1 - x]
    if not full.any():
        return "the mask is empty (no pixel set)"
    return encode(full)


# -- one object in pieces (Labelme and CVAT group_id) ------------------------------------------------------
def merge_groups(boxes: list, size, no_group: tuple = (None,)) -> list:
    """Segmentation: the shapes of one image (reader tuples `(label, bbox, flat polygon | RLE | None,
    attributes, where)`) that share a label and an `attributes["group_id"]` are one object drawn in pieces (an
    occluded person, a sofa behind a table), as Labelme's labelme2coco and CVAT's COCO export merge them: one
    shape whose segmentation holds every piece (a list of polygons, or one RLE when a piece is a mask) and whose
    box covers them all, named by all its pieces (`where` joined by "+"). Shapes whose group_id is in `no_group`
    (Labelme: None; CVAT also writes "0" for none) stay one object each; a group holding a plain box is left
    as it is. `size` gives the image's (height, width) when masks must be merged."""
    groups: dict[tuple, list] = {}
    order: list = []
    for b in boxes:
        gid = b[3].get("group_id")
        key = (b[0], str(gid)) if gid not in no_group else ("", id(b))
        if key not in groups:
            groups[key] = []
            order.append(key)
        groups[key].append(b)
    out = []
    for key in order:
        parts = groups[key]
        if len(parts) == 1:
            out.append(parts[0])
            continue
        label, attrs, where = parts[0][0], parts[0][3], "+".join(p[4] for p in parts)
        segs = [p[2] for p in parts]
        if any(s is None for s in segs):  # a plain box among the pieces: the object has no whole mask
            out.extend(parts)
            continue
        if all(isinstance(s, list) for s in segs):
            seg = list(segs)
            xs = [v for s in segs for v in s[0::2]]
            ys = [v for s in segs for v in s[1::2]]
            bbox = [min(xs), min(ys), max(xs) - min(xs), max(ys) - min(ys)]
        else:  # a mask piece: merge every piece into one RLE at the image size
            from pycocotools import mask as mask_utils

            h, w = size()
            rles = [to_rle(s if isinstance(s, dict) else [s], h, w) for s in segs]
            seg = compress(mask_utils.merge(rles))
            bbox = bbox_area(seg, h, w)[0]
        out.append((label, bbox, seg, attrs, where))
    return out



# -- checks (validate) -------------------------------------------------------------------------------------
def problems(seg, height: int, width: int, bbox: list[float], tol: float) -> list[tuple[str, str]]:
    """What is wrong with one annotation's segmentation against its image and bbox: [(field, message)], empty
    when it is fine. Polygons need >= 3 points inside the image (`tol` pixels of slack, as boxes have); an RLE's
    size must be the image's [height, width]; the mask's box must agree with `bbox` within `tol` pixels (plus 1,
    since rasterising moves an edge by up to a pixel)."""
    if seg is None or seg == []:
        return [("segmentation", "missing: a segmentation dataset needs a mask (polygons or RLE) on every "
                                 "annotation")]
    if is_polygons(seg):
        for k, poly in enumerate(seg):
            if not isinstance(poly, list) or len(poly) < 6 or len(poly) % 2:
                return [(f"segmentation[{k}]", "a polygon must be a flat list of at least 3 x, y pairs")]
            if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in poly):
                return [(f"segmentation[{k}]", "polygon coordinates must be finite numbers")]
            xs, ys = poly[0::2], poly[1::2]
            if min(xs) < -tol or min(ys) < -tol or max(xs) > width + tol or max(ys) > height + tol:
                return [(f"segmentation[{k}]", f"polygon reaches outside the {width} x {height} image "
                                               f"(x {min(xs):g}..{max(xs):g}, y {min(ys):g}..{max(ys):g})")]
    elif isinstance(seg, dict):
        size = seg.get("size")
        if size != [height, width]:
            return [("segmentation.size", f"RLE size {size} is not the image's [height, width] [{height}, {width}]")]
    else:
        return [("segmentation", "must be a list of polygons or an RLE object")]
    try:
        box, area = bbox_area(seg, height, width)
    except Exception as exc:  # noqa: BLE001 - pycocotools raises plain Exceptions for corrupt counts
        return [("segmentation.counts", f"cannot be decoded: {exc}")]
    if area <= 0:
        return [("segmentation", "the mask is empty (no pixel inside the image)")]
    if is_polygons(seg):  # the polygon's own extent, clipped to the image: no rasterisation error
        xs = [v for p in seg for v in p[0::2]]
        ys = [v for p in seg for v in p[1::2]]
        x0, y0 = max(min(xs), 0.0), max(min(ys), 0.0)
        box = [x0, y0, min(max(xs), width) - x0, min(max(ys), height) - y0]
        slack = tol
    else:
        slack = tol + 1.0
    ax, ay, aw, ah = (float(v) for v in bbox)
    bx, by, bw, bh = box
    worst = max(abs(ax - bx), abs(ay - by), abs(ax + aw - bx - bw), abs(ay + ah - by - bh))
    if worst > slack:
        return [("bbox", f"box {[round(v, 2) for v in bbox]} disagrees with its mask's box "
                         f"{[round(v, 2) for v in box]} by {worst:.1f} px (more than {slack:g})")]
    return []


# -- training targets --------------------------------------------------------------------------------------
def rasterise(segs: list, orig_h: int, orig_w: int, size: int) -> torch.Tensor:
    """uint8 [N, S, S] masks of `segs` (one COCO segmentation each) for the image resized from orig_h x orig_w
    to S x S (aspect ratio not preserved, as CanonicalDataset resizes the image)."""
    from pycocotools import mask as mask_utils

    out = torch.zeros((len(segs), size, size), dtype=torch.uint8)
    sx, sy = size / orig_w, size / orig_h
    for n, seg in enumerate(segs):
        if is_polygons(seg):
            scaled = [[float(v) * (sx if j % 2 == 0 else sy) for j, v in enumerate(p)] for p in seg]
            m = mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects(scaled, size, size)))
            out[n] = torch.from_numpy(np.ascontiguousarray(m))
        else:
            out[n] = torch.from_numpy(_sample_rle(seg, orig_h, orig_w, size))
    return out


def _sample_rle(seg: dict, height: int, width: int, size: int) -> np.ndarray:
    """uint8 [S, S] nearest-neighbour samples of an RLE mask of `height` x `width` (as F.interpolate's
    "nearest" picks them: source index floor(i * in / out)), read from the runs without decoding the whole
    image: a 3000 x 2000 crowd region or tool mask decodes to 6 M pixels, 50 ms each, every epoch."""
    rle = to_rle(seg, height, width)
    height, width = (int(v) for v in rle["size"])
    rows = np.floor(np.arange(size) * (height / size)).astype(np.int64)
    cols = np.floor(np.arange(size) * (width / size)).astype(np.int64)
    if len(rle["counts"]) > 20_000:  # a speckled mask of very many runs: pycocotools' C decoder is quicker
        from pycocotools import mask as mask_utils

        return np.ascontiguousarray(mask_utils.decode(rle)[np.ix_(rows, cols)])
    runs = np.asarray(string_counts(rle["counts"].decode("ascii")), dtype=np.int64)
    flat = cols[None, :] * height + rows[:, None]  # column-major positions of the samples, [S, S]
    run_of = np.searchsorted(np.cumsum(runs), flat, side="right")  # runs alternate, background first
    return (run_of % 2).astype(np.uint8)


# -- ingest ------------------------------------------------------------------------------------------------
def require_masks(ds, origin: str) -> tuple[int, int]:
    """Ingest with `data.task` segmentation: keep only annotations with a mask (a reader's `formats.Dataset`,
    image sizes known). A plain box (no polygon or RLE) is skipped and listed in the quarantine report (the mask
    head needs a mask per object), as is a mask with no pixel in the image (a degenerate polygon: like a box
    with no area); a segmentation pycocotools cannot rasterise sets its image aside naming the file and field.
    Each kept annotation's `area` becomes its mask's pixel area, as COCO's mask evaluation expects. Returns how
    many (plain boxes, empty masks) were skipped."""
    images = {img["id"]: img for img in ds.images}
    kept, skipped, empty = [], 0, 0
    for ann in ds.annotations:
        img = images.get(ann["image_id"])
        src = ann.get("source") or {}
        file = src.get("file") or (ds.files[0] if ds.files else origin)
        item = src.get("item") or f"annotations (id {ann['id']})"
        seg = ann.get(SEGMENTATION)
        if img is None:
            continue
        if seg is None or seg == []:
            ds.skip(file, item, "a plain box with no polygon or mask: skipped (data.task segmentation needs a mask "
                                "on every object)", img["file_name"])
            skipped += 1
            continue
        try:
            _box, area = bbox_area(seg, int(img["height"]), int(img["width"]))
        except Exception as exc:  # noqa: BLE001 - pycocotools raises plain Exceptions for corrupt input
            ds.set_aside(file, f"{item}.segmentation", f"cannot be rasterised: {exc}", img["file_name"])
            continue
        if area <= 0:  # a degenerate outline (collinear points, a sliver): like a box with no area, left out
            ds.skip(file, f"{item}.segmentation", "the mask has no pixel inside the image (a polygon with no "
                                                  "area, or one outside the image): skipped", img["file_name"])
            empty += 1
            continue
        kept.append({**ann, "area": area})
    ds.annotations = kept
    return skipped, empty


# -- validate ----------------------------------------------------------------------------------------------
def mask_columns(coco: dict, tol: float) -> dict[str, list]:
    """The validate stage's per-annotation mask columns for a segmentation dataset, in annotation order:
    `mask_valid` (a polygon or RLE that decodes, RLE size = the image's), `mask_inside` (polygons within `tol`
    px of the image), `mask_box_agrees` (the mask's box is the annotation's bbox within `tol` px) and
    `mask_problem` (what is wrong, naming the field; "" when nothing is)."""
    sizes = {im.get("id"): (im.get("height"), im.get("width")) for im in coco.get("images", [])}
    out = {"mask_valid": [], "mask_inside": [], "mask_box_agrees": [], "mask_problem": []}
    for ann in coco.get("annotations", []):
        h, w = sizes.get(ann.get("image_id"), (None, None))
        bbox = ann.get("bbox")
        if not (isinstance(h, int) and isinstance(w, int) and h > 0 and w > 0 and isinstance(bbox, list)
                and len(bbox) == 4):
            found = []  # an unknown image or a bad box: the box checks already name it
        else:
            found = problems(ann.get(SEGMENTATION), h, w, bbox, tol)
        field, message = found[0] if found else ("", "")
        outside = field.startswith("segmentation[") and "outside" in message
        out["mask_valid"].append(not found or field == "bbox" or outside)
        out["mask_inside"].append(not outside)
        out["mask_box_agrees"].append(field != "bbox")
        out["mask_problem"].append(f"{field}: {message}" if found else "")
    return out
