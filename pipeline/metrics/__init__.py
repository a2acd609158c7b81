"""COCO evaluation: `score(gt, dt)` (12 COCO stats + per class), operating-point metrics, plots."""
from __future__ import annotations

import importlib

__all__ = ["STAT_KEYS", "Evaluation", "evaluate", "report", "score"]


def __getattr__(name: str):
    # lazy: importing pipeline.metrics.<module> (or reading this package's docstring) needs no numpy
    if name in __all__:
        return getattr(importlib.import_module("pipeline.metrics.coco"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
