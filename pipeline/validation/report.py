"""validate/report.json and a Data Docs-like HTML page that reads offline (inline CSS, no scripts, no CDN)."""
from __future__ import annotations

import html
import json
from pathlib import Path

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:2rem;color:#1d2330;
background:#f6f7f9}
h1{font-size:1.5rem;margin:0 0 .3rem} h2{font-size:1.1rem;margin:2rem 0 .5rem}
.meta{color:#5b6475;font-size:.9rem} .banner{padding:.8rem 1rem;border-radius:6px;margin:1rem 0;font-weight:600}
.ok{background:#e3f6e8;color:#17612e} .bad{background:#fde8e8;color:#8a1c1c}
table{border-collapse:collapse;width:100%;background:#fff;box-shadow:0 1px 2px rgba(0,0,0,.08)}
th,td{text-align:left;vertical-align:top;padding:.45rem .6rem;border-bottom:1px solid #e6e8ec;font-size:.88rem}
th{background:#eef0f4} code{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:.82rem}
.badge{display:inline-block;padding:.1rem .45rem;border-radius:4px;font-size:.78rem;font-weight:700}
.pass{background:#d3f0dc;color:#17612e} .fail{background:#f9d0d0;color:#8a1c1c}
.warnb{background:#fdf0c8;color:#7a5600} .warn{background:#fff6dc;color:#7a5600}
ul{margin:.2rem 0 0 1rem;padding:0} .small{color:#5b6475;font-size:.8rem}
"""


def _cell(value) -> str:
    return f"<code>{html.escape(json.dumps(value, default=str))}</code>"


def render_html(report: dict, title: str = "Nightshift dataset validation") -> str:
    passed = report["passed"]
    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>{html.escape(title)}</title><style>{CSS}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
        f"<div class='meta'>Dataset <code>{html.escape(report['dataset'])}</code> &middot; "
        f"Great Expectations {html.escape(str(report.get('great_expectations', '')))} &middot; "
        f"{report['checks']} checks in {report.get('duration_s', 0)} s &middot; rows: "
        + ", ".join(f"{html.escape(k)} {v}" for k, v in report["tables"].items()) + "</div>",
        f"<div class='banner {'ok' if passed else 'bad'}'>"
        + ("All checks passed." if passed else
           f"{report['failed']} of {report['checks']} checks failed: "
           + html.escape(", ".join(report["failed_checks"])))
        + "</div>",
    ]
    if report.get("warnings"):
        parts.append(f"<div class='banner warn'>Warnings (drift ones compared with the last snapshot "
                     f"<code>{html.escape(str(report.get('previous_snapshot') or ''))}</code>): "
                     + html.escape(", ".join(report["warnings"])) + "</div>")
    tables = list(dict.fromkeys(r["table"] for r in report["results"]))
    for table in tables:
        parts.append(f"<h2>Table <code>{html.escape(table)}</code></h2>")
        parts.append("<table><tr><th>Status</th><th>Check</th><th>Expectation</th><th>Observed</th>"
                     "<th>Failing rows</th></tr>")
        for r in (r for r in report["results"] if r["table"] == table):
            badge = "<span class='badge pass'>PASS</span>" if r["success"] else \
                "<span class='badge warnb'>WARN</span>" if r.get("severity") == "warning" else \
                "<span class='badge fail'>FAIL</span>"
            examples = "".join(f"<li>{html.escape(e)}</li>" for e in r["examples"])
            error = f"<div class='small'>error: {html.escape(r['error'])}</div>" if r.get("error") else ""
            parts.append(
                f"<tr><td>{badge}</td><td><b>{html.escape(r['name'])}</b><div class='small'>"
                f"{html.escape(r['description'])}</div></td>"
                f"<td><code>{html.escape(r['expectation'])}</code><div class='small'>{_cell(r['kwargs'])}</div></td>"
                f"<td>{_cell(r['observed'])}{error}</td>"
                f"<td>{'<ul>' + examples + '</ul>' if examples else ''}</td></tr>")
        parts.append("</table>")
    for name, rows in report.get("observed_tables", {}).items():
        if not rows:
            continue
        cols = list(rows[0])
        parts.append(f"<h2>Observed: <code>{html.escape(name)}</code></h2><table><tr>"
                     + "".join(f"<th>{html.escape(c)}</th>" for c in cols) + "</tr>")
        parts += ["<tr>" + "".join(f"<td>{html.escape(str(row[c]))}</td>" for c in cols) + "</tr>" for row in rows]
        parts.append("</table>")
    parts.append("<h2>Thresholds (validate section of the config)</h2>" + _cell(report["thresholds"]))
    parts.append("</body></html>")
    return "\n".join(parts)


def write_report(report: dict, out_dir: Path) -> Path:
    """Write `report.json` and `data_docs/index.html` under out_dir; returns out_dir."""
    out_dir = Path(out_dir)
    (out_dir / "data_docs").mkdir(parents=True, exist_ok=True)
    (out_dir / "report.json").write_text(json.dumps(report, indent=2, sort_keys=True, default=str))
    (out_dir / "data_docs" / "index.html").write_text(render_html(report))
    return out_dir
