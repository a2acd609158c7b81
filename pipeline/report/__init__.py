"""The run report: one self-contained HTML page and a short Markdown summary of a pipeline run.

    from pipeline.report import build_report
    keys = build_report(cfg, ctx)   # or build_report(cfg, "nightly-1", store)

writes `runs/<run_id>/report/report.html` (challenger vs champion, per-class AP, PR curves, confusion matrix,
best/worst sample predictions, inference performance, the dataset card, gate checks and a promote/hold
recommendation) and `report.md`, and logs both to the pipeline run's MLflow run. `nightshift compare A B`
prints the same metric comparison for two runs in a terminal.
"""
from __future__ import annotations

import importlib

__all__ = ["build_report"]


def __getattr__(name: str):
    # lazy: `nightshift compare` imports pipeline.report.compare without the report builder's imports
    if name in __all__:
        return getattr(importlib.import_module("pipeline.report.build"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
