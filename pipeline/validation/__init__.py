"""Dataset validation with Great Expectations: tables built from the canonical dataset, one suite each."""
from pipeline.validation.checks import build_tables, validate_dataset
from pipeline.validation.report import render_html, write_report

__all__ = ["build_tables", "validate_dataset", "render_html", "write_report"]
