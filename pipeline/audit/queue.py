"""The audit's review queue: an HTML page (each item's reason, score and an image crop) and a CVAT for images 1.1
annotations.xml to fix the labels in CVAT (the same file Nightshift ingests with `data.format=cvat`).

In the XML every image of the queue carries all of its annotations, so fixing it in CVAT loses nothing; the
flagged boxes have a `review` attribute with the reason and score, and a missing box the model found is added
with `source="auto"` and `review="missing box ..."` for the reviewer to keep or delete.
"""
from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path
from xml.etree import ElementTree as ET

from pipeline.audit.scoring import MISSING, Item
from pipeline.report import pages

REVIEW = "review"


def _crop(raw: bytes, item: Item, margin: float = 0.6, side: int = 160) -> str | None:
    """The item's box with some context around it, outlined, as a JPEG data URI."""
    from PIL import Image, ImageDraw

    try:
        img = Image.open(io.BytesIO(raw))
        img.load()
    except Exception:  # noqa: BLE001 - an image that does not decode gets no crop
        return None
    img = img.convert("RGB")
    x, y, w, h = item.bbox
    mx, my = max(8.0, w * margin), max(8.0, h * margin)
    box = (max(0, int(x - mx)), max(0, int(y - my)), min(img.width, int(x + w + mx)), min(img.height, int(y + h + my)))
    if box[2] <= box[0] or box[3] <= box[1]:
        box = (0, 0, img.width, img.height)
    draw = ImageDraw.Draw(img)
    colour = "#f58231" if item.reason == MISSING else "#e6194b"
    draw.rectangle([x, y, x + w, y + h], outline=colour, width=1)
    crop = img.crop(box)
    scale = side / max(crop.size)
    crop = crop.resize((max(1, round(crop.width * scale)), max(1, round(crop.height * scale))))
    buf = io.BytesIO()
    crop.save(buf, format="JPEG", quality=85)
    return pages.data_uri(buf.getvalue(), "image/jpeg")


def html_page(items: list[Item], counts: dict, read_image: Callable[[str], bytes | None], title: str,
              model: str) -> str:
    rows = []
    for rank, item in enumerate(items, 1):
        raw = read_image(item.file_name)
        rows.append({"rank": rank, **item.to_dict(), "crop": _crop(raw, item) if raw else None})
    return pages.render("audit.html.j2", title=title, items=rows, counts=counts, model=model)


def _fmt(v: float) -> str:
    return f"{v:.2f}"


def cvat_xml(coco: dict, items: list[Item]) -> bytes:
    """CVAT for images 1.1 annotations of the queue's images, flagged boxes carrying a `review` attribute."""
    names = {c["id"]: c["name"] for c in coco["categories"]}
    flagged = {it.ann_id: it for it in items if it.ann_id is not None}
    missing: dict[int, list[Item]] = {}
    for it in items:
        if it.ann_id is None:
            missing.setdefault(it.image_id, []).append(it)
    queue_images = list(dict.fromkeys(it.image_id for it in items))
    images = {im["id"]: im for im in coco["images"]}
    anns_of: dict[int, list[dict]] = {}
    for a in coco["annotations"]:
        anns_of.setdefault(a["image_id"], []).append(a)

    root = ET.Element("annotations")
    ET.SubElement(root, "version").text = "1.1"
    task = ET.SubElement(ET.SubElement(root, "meta"), "task")
    ET.SubElement(task, "name").text = "nightshift label audit"
    ET.SubElement(task, "size").text = str(len(queue_images))
    labels = ET.SubElement(task, "labels")
    for cid in sorted(names):
        label = ET.SubElement(labels, "label")
        ET.SubElement(label, "name").text = names[cid]
        attribute = ET.SubElement(ET.SubElement(label, "attributes"), "attribute")
        for key, value in (("name", REVIEW), ("mutable", "True"), ("input_type", "text"), ("default_value", ""),
                           ("values", "")):
            ET.SubElement(attribute, key).text = value
    for n, image_id in enumerate(queue_images):
        im = images[image_id]
        el = ET.SubElement(root, "image", id=str(n), name=im["file_name"], width=str(im["width"]),
                           height=str(im["height"]))

        def box(label: str, bbox, source: str, review: str, attrs: dict | None = None, el=el) -> None:
            x, y, w, h = bbox
            b = ET.SubElement(el, "box", label=label, occluded="0", source=source, xtl=_fmt(x), ytl=_fmt(y),
                              xbr=_fmt(x + w), ybr=_fmt(y + h), z_order="0")
            ET.SubElement(b, "attribute", name=REVIEW).text = review
            for key, value in (attrs or {}).items():
                if key not in (REVIEW, "occluded", "z_order", "source", "group_id"):
                    ET.SubElement(b, "attribute", name=str(key)).text = str(value)

        for a in anns_of.get(image_id, []):
            it = flagged.get(a["id"])
            review = "" if it is None else (f"{it.reason} (score {it.score:.3f}"
                                            + (f"; model says {it.predicted} {it.predicted_score:.2f}"
                                               if it.predicted else "") + ")")
            box(names[a["category_id"]], a["bbox"], "manual", review, a.get("attributes"))
        for it in missing.get(image_id, []):
            box(it.category, it.bbox, "auto", f"{MISSING} (score {it.score:.3f}; model {it.predicted_score:.2f})")
    ET.indent(root)
    return b'<?xml version="1.0" encoding="utf-8"?>\n' + ET.tostring(root, encoding="utf-8")


def write(out: Path, coco: dict, items: list[Item], counts: dict, read_image, title: str, model: str) -> dict:
    """queue.html and cvat/annotations.xml under `out`; returns their paths."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "queue.html").write_text(html_page(items, counts, read_image, title, model))
    (out / "cvat").mkdir(exist_ok=True)
    (out / "cvat" / "annotations.xml").write_bytes(cvat_xml(coco, items))
    return {"html": out / "queue.html", "cvat": out / "cvat" / "annotations.xml"}


def review_path(out: Path) -> Path:
    return Path(out) / "cvat" / "annotations.xml"
