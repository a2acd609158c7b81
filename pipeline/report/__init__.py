"""The run report: one self-contained HTML page and a short Markdown summary of a pipeline run.

    from pipeline.report import build_report
    keys = build_report(cfg, ctx)   # or build_report(cfg, "nightly-1", store)

writes `runs/<run_id>/report/report.html` (challenger vs champion, per-class AP, PR curves, confusion matrix,
best/worst sample predictions, inference performance, the dataset card, gate checks and a promote/hold
recommendation) and `report.md`, and logs both to the pipeline run's MLflow run. `nightshift compare A B`
prints the same metric comparison for two runs in a terminal.
"""
from pipeline.report.build import build_report

__all__ = ["build_report"]
