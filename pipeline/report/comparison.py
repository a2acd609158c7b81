"""Challenger vs champion (or run A vs run B) as rows: the 12 COCO stats and per-class AP (box and, for
segmentation runs, mask), with deltas.

Shared by the HTML/Markdown report and `nightshift compare`, so both always show the same numbers.
Every stat is "higher is better"; a delta is `new - base` and None when either side is missing.
"""
from __future__ import annotations

from dataclasses import dataclass

from pipeline.metrics.coco import STAT_KEYS

# below this an AP difference is noise from ties and rounding, not a change worth colouring
NOISE = 1e-4


@dataclass(frozen=True)
class Row:
    name: str
    new: float | None
    base: float | None
    support: int | None = None  # GT boxes of the class in the split (per-class rows only)

    @property
    def delta(self) -> float | None:
        return None if self.new is None or self.base is None else self.new - self.base

    @property
    def trend(self) -> str:
        """'up', 'down', 'same' or 'n/a' (for colouring)."""
        d = self.delta
        if d is None:
            return "n/a"
        return "same" if abs(d) < NOISE else ("up" if d > 0 else "down")


def stat_rows(new: dict, base: dict | None) -> list[Row]:
    """The 12 COCO stats; for a classifier's metrics (`"task": "classification"`) accuracy, top-k and macro F1."""
    base = base or {}
    if new.get("task") == "classification":
        rows = [Row("accuracy", new.get("accuracy"), base.get("accuracy"))]
        theirs = base.get("top_k") or {}
        rows += [Row(f"top-{k} accuracy", v, theirs.get(k)) for k, v in (new.get("top_k") or {}).items()]
        return rows + [Row("macro F1", new.get("macro_f1"), base.get("macro_f1"))]
    return [Row(k, new.get(k), base.get(k)) for k in STAT_KEYS]


def class_rows(new: dict, base: dict | None, key: str = "AP") -> list[Row]:
    """One row per class of either side (the new side's order first); support from the new side."""
    ours = new.get("per_class") or {}
    theirs = (base or {}).get("per_class") or {}
    names = list(ours) + [n for n in theirs if n not in ours]
    return [Row(n, (ours.get(n) or {}).get(key), (theirs.get(n) or {}).get(key),
                (ours.get(n) or theirs.get(n) or {}).get("support")) for n in names]


def fmt(value: float | None, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def fmt_delta(value: float | None, digits: int = 3) -> str:
    if value is None:
        return "n/a"
    if abs(value) < NOISE:
        return f"{0:.{digits}f}"
    return f"{value:+.{digits}f}"


def text_table(new: dict, base: dict | None, new_label: str, base_label: str, colour: bool = False) -> str:
    """A terminal table: the 12 stats, then per-class AP / AP50 (a classifier's: accuracy, top-k, macro F1, then
    per-class recall / F1; a segmentation run's box ones, then the 12 mask stats and per-class mask AP), each with
    `new - base`."""
    paint = {"up": "\033[32m", "down": "\033[31m"} if colour else {}
    reset = "\033[0m" if colour else ""

    def block(title: str, rows: list[Row], with_support: bool) -> list[str]:
        width = max([len(title)] + [len(r.name) for r in rows])
        cols = max(8, len(base_label), len(new_label))
        head = f"{title:<{width}}  {base_label:>{cols}}  {new_label:>{cols}}  {'delta':>8}"
        lines = [head + ("  support" if with_support else ""), "-" * (len(head) + (9 if with_support else 0))]
        for r in rows:
            delta = f"{fmt_delta(r.delta):>8}"
            delta = f"{paint.get(r.trend, '')}{delta}{reset if r.trend in paint else ''}"
            line = f"{r.name:<{width}}  {fmt(r.base):>{cols}}  {fmt(r.new):>{cols}}  {delta}"
            if with_support:
                line += f"  {'' if r.support is None else r.support:>7}"
            lines.append(line)
        return lines

    lines = block("stat", stat_rows(new, base), False)
    # a classifier's per-class figures are recall and F1 (classes have images, not boxes)
    for key in (("recall", "f1") if new.get("task") == "classification" else ("AP", "AP50")):
        rows = class_rows(new, base, key)
        if rows:
            lines += [""] + block(f"class {key}", rows, True)
    # a segmentation run's mask metrics (`segm`) after its box ones, against the other run's masks
    segm, base_segm = new.get("segm"), (base or {}).get("segm")
    if segm:
        lines += [""] + block("mask stat", stat_rows(segm, base_segm), False)
        rows = class_rows(segm, base_segm, "AP")
        if rows:
            lines += [""] + block("class mask AP", rows, True)
    return "\n".join(lines)
