"""validate/report.json and a Data Docs-like HTML page that reads offline (inline CSS, no scripts, no CDN), from
the templates every Nightshift page shares (pipeline/report/pages.py)."""
from __future__ import annotations

import json
from pathlib import Path

from pipeline.report import pages


def render_html(report: dict, title: str = "Nightshift dataset validation") -> str:
    """The report as one self-contained page (templates/validation.html.j2 on the shared layout)."""
    tables = list(dict.fromkeys(r["table"] for r in report["results"]))  # in the order the checks ran
    return pages.render("validation.html.j2", report=report, title=title, tables=tables)


def write_report(report: dict, out_dir: Path) -> Path:
    """Write `report.json` and `data_docs/index.html` under out_dir; returns out_dir."""
    out_dir = Path(out_dir)
    (out_dir / "data_docs").mkdir(parents=True, exist_ok=True)
    (out_dir / "report.json").write_text(json.dumps(report, indent=2, sort_keys=True, default=str))
    (out_dir / "data_docs" / "index.html").write_text(render_html(report))
    return out_dir
