"""What the run report shows, gathered by `pipeline.report.build` and drawn by `pipeline.report.render`.

Plain data: both sides import it, neither imports the other's module for it.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from pipeline.results import StageResult


@dataclass
class Sample:
    image_id: int
    file_name: str
    f1: float
    tp: int
    fp: int
    fn: int
    png: bytes


@dataclass
class ReportData:
    """Everything the renderers need; None/empty where a stage did not run or left nothing."""

    run_id: str  # the store's key (pipeline.context.safe_run_id)
    run_url: str  # the run's folder in the artifact store
    airflow_run_id: str = ""  # Airflow's own run id when the run came from a DAG (kept in every stage result)
    results: dict[str, StageResult] = field(default_factory=dict)  # stage -> its result.json (pipeline.results)
    metrics: dict | None = None  # evaluate/metrics.json
    plots: dict[str, bytes] = field(default_factory=dict)  # "pr_curve" / "confusion_matrix" -> PNG
    best: list[Sample] = field(default_factory=list)
    worst: list[Sample] = field(default_factory=list)
    samples_note: str = ""
    score_threshold: float = 0.3
    export_report: dict | None = None
    validate_report: dict | None = None
    data_docs_url: str = ""
    dataset_card: str = ""
    gate_checks: list[dict] = field(default_factory=list)
    deployment_checks: list[dict] = field(default_factory=list)
    deployment_note: str = ""
    decision: str = "hold"  # "promote" or "hold"
    reasons: list[str] = field(default_factory=list)
    mlflow_url: str = ""
