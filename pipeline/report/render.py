"""HTML (one self-contained page: inline CSS, PNGs as data URIs, no scripts) and short Markdown renderings of a
`ReportData`. Pure functions: nothing here reads the store."""
from __future__ import annotations

import html
import json
from datetime import datetime, timezone

from pipeline.report.comparison import class_rows, fmt, fmt_delta, stat_rows
from pipeline.report.data import ReportData, Sample
from pipeline.report.samples import png_data_uri

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:2rem auto;max-width:1100px;
color:#1d2330;background:#f6f7f9;padding:0 1rem}
h1{font-size:1.5rem;margin:0 0 .3rem} h2{font-size:1.15rem;margin:2.2rem 0 .6rem;border-bottom:1px solid #dde1e7}
h3{font-size:1rem;margin:1.2rem 0 .4rem} .meta,.small{color:#5b6475;font-size:.85rem}
.banner{padding:.9rem 1.1rem;border-radius:6px;margin:1rem 0} .banner b{font-size:1.15rem}
.promote{background:#e3f6e8;color:#17612e} .hold{background:#fde8e8;color:#8a1c1c}
table{border-collapse:collapse;background:#fff;box-shadow:0 1px 2px rgba(0,0,0,.08);margin:.3rem 0}
th,td{text-align:right;padding:.35rem .65rem;border-bottom:1px solid #e6e8ec;font-size:.86rem}
th:first-child,td:first-child{text-align:left} th{background:#eef0f4}
td.up{color:#17612e;font-weight:600} td.down{color:#b42318;font-weight:600} td.na,td.same{color:#8b93a3}
.badge{display:inline-block;padding:.1rem .45rem;border-radius:4px;font-size:.75rem;font-weight:700}
.pass{background:#d3f0dc;color:#17612e} .fail{background:#f9d0d0;color:#8a1c1c}
img.plot{max-width:100%;background:#fff;box-shadow:0 1px 2px rgba(0,0,0,.08)}
.grid{display:flex;flex-wrap:wrap;gap:.8rem} figure{margin:0;background:#fff;padding:.4rem;
box-shadow:0 1px 2px rgba(0,0,0,.08)} figcaption{font-size:.78rem;color:#3d4555;margin-top:.2rem}
pre{background:#fff;padding:.7rem;overflow:auto;font-size:.8rem;box-shadow:0 1px 2px rgba(0,0,0,.08)}
code{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:.82rem}
.legend span{display:inline-block;width:.8rem;height:.8rem;margin:0 .25rem 0 .8rem;vertical-align:middle}
"""

e = html.escape


def _td(value, cls: str = "") -> str:
    return f"<td class='{cls}'>{e(str(value))}</td>" if cls else f"<td>{e(str(value))}</td>"


def _badge(passed: bool) -> str:
    return "<span class='badge pass'>PASS</span>" if passed else "<span class='badge fail'>FAIL</span>"


def _table(head: list[str], rows: list[str]) -> str:
    return "<table><tr>" + "".join(f"<th>{e(h)}</th>" for h in head) + "</tr>" + "".join(rows) + "</table>"


def _ms(value) -> str:
    return "n/a" if not isinstance(value, (int, float)) else f"{value:.1f}"


def _check_value(c: dict) -> str:
    if c.get("value") is None:
        return f"n/a ({c.get('note') or 'nothing to measure'})"
    return f"{c['value']:.4f}"


# -- sections ----------------------------------------------------------------------------------------------

def _recommendation(d: ReportData) -> str:
    verb = "Promote" if d.decision == "promote" else "Hold"
    items = "".join(f"<li>{e(r)}</li>" for r in d.reasons)
    return (f"<section id='recommendation'><div class='banner {d.decision}'><b>Recommendation: {verb}</b>"
            f"<ul>{items}</ul></div></section>")


def _overall(d: ReportData) -> str:
    out = ["<section id='overall'><h2>Challenger vs champion: COCO metrics</h2>"]
    m = d.metrics
    if m is None:
        return out[0] + "<p>No metrics: the evaluate stage did not run or failed.</p></section>"
    champ = m.get("champion")
    what = (f"champion v{e(str(champ.get('version')))}" if champ else "no champion yet")
    out.append(f"<p class='meta'>{e(str(m.get('split', 'val')))} split, {e(str(m.get('images', '?')))} images; "
               f"{what}; both scored on the same images in this run.</p>")
    rows = [f"<tr>{_td(r.name)}{_td(fmt(r.new))}{_td(fmt(r.base))}{_td(fmt_delta(r.delta), r.trend.replace('/', ''))}"
            "</tr>" for r in stat_rows(m, champ)]
    out.append(_table(["stat", "challenger", "champion", "delta"], rows))
    op = m.get("operating_point")
    if op:
        champ_op = (champ or {}).get("operating_point") or {}
        out.append(f"<p class='meta'>At score &ge; {e(str(op.get('score_threshold')))} "
                   f"(IoU {e(str(op.get('iou_threshold')))}): "
                   f"precision {fmt(op.get('precision'))}, recall {fmt(op.get('recall'))}, F1 {fmt(op.get('f1'))}"
                   + (f" (champion F1 {fmt(champ_op.get('f1'))})" if champ_op else "") + "</p>")
    out.append("</section>")
    return "".join(out)


def _per_class(d: ReportData) -> str:
    m = d.metrics
    if m is None or not m.get("per_class"):
        return ""
    champ = m.get("champion")
    ap, ap50 = class_rows(m, champ, "AP"), {r.name: r for r in class_rows(m, champ, "AP50")}
    prf = (m.get("operating_point") or {}).get("per_class") or {}
    rows = []
    for r in ap:
        r50 = ap50[r.name]
        p = prf.get(r.name) or {}
        rows.append(f"<tr>{_td(r.name)}{_td('' if r.support is None else r.support)}{_td(fmt(r.new))}{_td(fmt(r.base))}"
                    f"{_td(fmt_delta(r.delta), r.trend.replace('/', ''))}{_td(fmt(r50.new))}{_td(fmt(r50.base))}"
                    f"{_td(fmt_delta(r50.delta), r50.trend.replace('/', ''))}{_td(fmt(p.get('precision')))}"
                    f"{_td(fmt(p.get('recall')))}{_td(fmt(p.get('f1')))}</tr>")
    return ("<section id='per-class'><h2>Per class</h2>"
            + _table(["class", "GT boxes", "AP", "champion AP", "delta", "AP50", "champion AP50", "delta",
                      "precision", "recall", "F1"], rows)
            + "<p class='small'>Precision, recall and F1 are the challenger's at the operating point.</p></section>")


def _img(png: bytes, alt: str) -> str:
    return f"<img class='plot' alt='{e(alt)}' src='{png_data_uri(png)}'>"


def _plots(d: ReportData) -> str:
    out = []
    pr = d.plots.get("pr_curve")
    out.append("<section id='pr-curves'><h2>Precision-recall curves (IoU 0.5)</h2>"
               + (_img(pr, "precision-recall curves") + "<p class='small'>Dashed: the champion.</p>" if pr
                  else "<p>Not available: evaluate wrote no pr_curve.png.</p>") + "</section>")
    cm = d.plots.get("confusion_matrix")
    out.append("<section id='confusion'><h2>Confusion matrix</h2>"
               + (_img(cm, "confusion matrix") if cm else "<p>Not available: no confusion matrix in the metrics.</p>")
               + "</section>")
    return "".join(out)


def _figure(s: Sample) -> str:
    return (f"<figure>{_img(s.png, s.file_name)}<figcaption><b>{e(s.file_name)}</b><br>F1 {s.f1:.2f} &middot; "
            f"TP {s.tp} &middot; FP {s.fp} &middot; FN {s.fn}</figcaption></figure>")


def _samples(d: ReportData) -> str:
    out = ["<section id='samples'><h2>Sample predictions</h2>"]
    if d.best or d.worst:
        out.append(f"<p class='legend small'>Per-image F1 at score &ge; {d.score_threshold:g}, IoU 0.5."
                   "<span style='background:#28c846'></span>ground truth<span style='background:#286ef0'></span>"
                   "correct detection<span style='background:#e62828'></span>false positive</p>")
        for title, group in (("Best images", d.best), ("Worst images", d.worst)):
            if group:
                out.append(f"<h3>{title}</h3><div class='grid'>" + "".join(map(_figure, group)) + "</div>")
    if d.samples_note:
        out.append(f"<p class='small'>{e(d.samples_note)}</p>")
    out.append("</section>")
    return "".join(out)


def _gates(d: ReportData) -> str:
    out = ["<section id='gates'><h2>Gate checks</h2>"]
    gate = d.results.get("gate")
    if gate is None:
        out.append("<p>The gate has not run.</p>")
    else:
        rows = [f"<tr><td>{_badge(c.get('passed', False))}</td>{_td(c['name'])}"
                f"{_td(c.get('metric', '') + (' [' + c['class'] + ']' if c.get('class') else ''))}"
                f"{_td(_check_value(c))}{_td(c.get('direction', '') + ' ' + format(c.get('threshold', 0), 'g'))}</tr>"
                for c in d.gate_checks]
        out.append(_table(["", "gate", "measures", "value", "threshold"], rows) if rows
                   else f"<p>No checks recorded ({e(str(gate.get('status')))}: {e(str(gate.get('error', '')))}).</p>")
        if gate.get("note"):
            out.append(f"<p class='small'>{e(gate['note'])}</p>")
        if gate.get("overrides"):
            out.append(f"<p><b>Threshold overrides for this run</b>: <code>{e(json.dumps(gate['overrides']))}</code>"
                       f"; reason: {e(gate.get('override_reason') or '(none)')}</p>")
    out.append("<h3>Deployment budgets (on export's report)</h3>")
    if d.deployment_checks:
        rows = [f"<tr><td>{_badge(c['passed'])}</td>{_td(c['name'])}{_td(c['metric'])}{_td(_check_value(c))}"
                f"{_td(c['direction'] + ' ' + format(c['threshold'], 'g'))}</tr>" for c in d.deployment_checks]
        out.append(_table(["", "gate", "measures", "value", "threshold"], rows))
    else:
        out.append(f"<p class='small'>{e(d.deployment_note or 'none')}</p>")
    out.append("</section>")
    return "".join(out)


def _performance(d: ReportData) -> str:
    out = ["<section id='performance'><h2>Inference performance (export)</h2>"]
    r = d.export_report
    if r is None:
        export = d.results.get("export")
        why = "export has not run" if export is None else f"export {export.get('status')}: {export.get('error', '')}"
        return out[0] + f"<p>Not measured: {e(why)}.</p></section>"
    speed = r.get("speed") or {}
    out.append(f"<p class='meta'>{e(str(r.get('format', '?')))} opset {e(str(r.get('opset', '?')))}, model "
               f"{e(str(r.get('model', '?')))} at {e(str(r.get('image_size', '?')))} px, "
               f"{e(str(speed.get('threads', '?')))} thread(s).</p>")
    rows = []
    for batch, row in (speed.get("batches") or {}).items():
        ratio = row.get("ort_vs_eager_speedup")
        for runtime in ("eager", "onnxruntime"):
            lat = (row.get(runtime) or {}).get("latency_ms") or {}
            ips = (row.get(runtime) or {}).get("throughput_ips")
            shown = f"{ratio:.2f}x" if runtime == "onnxruntime" and isinstance(ratio, (int, float)) else ""
            rows.append(f"<tr>{_td(runtime)}{_td(batch)}{_td(_ms(lat.get('p50')))}{_td(_ms(lat.get('p95')))}"
                        f"{_td(_ms(lat.get('p99')))}{_td(_ms(ips))}{_td(shown)}</tr>")
    if rows:
        out.append(_table(["runtime", "batch", "p50 ms", "p95 ms", "p99 ms", "images/s", "ORT vs eager"], rows))
    size = r.get("size") or {}
    if size.get("onnx_bytes"):
        out.append(f"<p>model.onnx: {size['onnx_bytes'] / 1e6:.2f} MB</p>")
    checks = r.get("checks") or {}
    parity, outputs = checks.get("parity") or {}, checks.get("outputs") or {}
    if parity:
        out.append(f"<p>Parity on the val split: AP PyTorch {fmt((parity.get('pytorch') or {}).get('AP'), 4)}, "
                   f"ONNX Runtime {fmt((parity.get('onnxruntime') or {}).get('AP'), 4)}, drop "
                   f"{fmt(parity.get('map_drop'), 4)} (allowed {fmt(parity.get('max_map_drop'), 4)}) "
                   f"{_badge(bool(parity.get('passed')))}</p>")
    if outputs:
        match = (outputs.get("vs_pytorch") or {}).get("match_fraction")
        out.append(f"<p>Raw outputs vs PyTorch on {e(str(outputs.get('images', '?')))} images: "
                   f"{fmt(match)} matched {_badge(bool(outputs.get('passed')))}</p>")
    out.append("</section>")
    return "".join(out)


def _dataset(d: ReportData) -> str:
    out = ["<section id='dataset'><h2>Dataset</h2>"]
    v = d.validate_report
    if v is None and not d.dataset_card:
        return out[0] + "<p>No dataset card: validate has not run.</p></section>"
    if v is not None:
        status = "all checks passed" if v.get("passed") else f"{v.get('failed')} of {v.get('checks')} checks failed: " \
                                                           + ", ".join(v.get("failed_checks") or [])
        out.append(f"<p>Validation: {_badge(bool(v.get('passed')))} {e(str(v.get('checks', '?')))} checks, "
                   f"{e(status)}.</p>")
        for name in ("splits", "classes"):
            rows = (v.get("observed_tables") or {}).get(name) or []
            if rows:
                cols = list(rows[0])
                out.append(f"<h3>{e(name)}</h3>" + _table(cols, ["<tr>" + "".join(_td(row.get(c, "")) for c in cols)
                                                                 + "</tr>" for row in rows]))
    if d.dataset_card:
        out.append("<h3>Dataset card</h3><pre>" + e(d.dataset_card) + "</pre>")
    if d.data_docs_url:
        out.append(f"<p class='small'>Full validation report (Data Docs): <a href='{e(d.data_docs_url)}'>"
                   f"{e(d.data_docs_url)}</a></p>")
    out.append("</section>")
    return "".join(out)


def _stages(d: ReportData) -> str:
    rows = [f"<tr>{_td(stage)}{_td(r.get('status', '?'), 'up' if r.get('status') == 'ok' else 'down')}"
            f"{_td(_ms(r.get('duration_s')))}{_td((r.get('error') or '')[:160])}</tr>"
            for stage, r in d.results.items()]
    return ("<section id='stages'><h2>Stages</h2>"
            + (_table(["stage", "status", "seconds", "error"], rows) if rows else "<p>No stage has finished.</p>")
            + "</section>")


def render_html(d: ReportData) -> str:
    when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    mlflow = f" &middot; MLflow: {e(d.mlflow_url)}" if d.mlflow_url else ""
    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>Nightshift run {e(d.run_id)}</title><style>{CSS}</style></head><body>",
        f"<h1>Nightshift run {e(d.airflow_run_id or d.run_id)}</h1>",
        f"<div class='meta'>Airflow run <code>{e(d.airflow_run_id)}</code> &middot; store key "
        f"<code>{e(d.run_id)}</code></div>" if d.airflow_run_id and d.airflow_run_id != d.run_id else "",
        f"<div class='meta'>Artifacts: <code>{e(d.run_url)}</code>{mlflow} &middot; generated {when}</div>",
        _recommendation(d), _overall(d), _per_class(d), _plots(d), _samples(d), _gates(d), _performance(d),
        _dataset(d), _stages(d),
        "</body></html>",
    ]
    return "\n".join(p for p in parts if p)


def render_markdown(d: ReportData, html_url: str, max_reasons: int = 5) -> str:
    """A few lines for chat: the recommendation and why, headline metrics, the biggest class drops, speed."""
    name = d.run_id if not d.airflow_run_id or d.airflow_run_id == d.run_id else \
        f"{d.airflow_run_id} (store key {d.run_id})"
    lines = [f"*Nightshift run {name}: {'PROMOTE' if d.decision == 'promote' else 'HOLD'}*"]
    lines += [f"- {r}" for r in d.reasons[:max_reasons]]
    if len(d.reasons) > max_reasons:
        lines.append(f"- ... and {len(d.reasons) - max_reasons} more")
    m = d.metrics
    if m is not None:
        champ = m.get("champion")
        rows = {r.name: r for r in stat_rows(m, champ)}
        if champ:
            lines.append(f"mAP {fmt(rows['AP'].new)} ({fmt_delta(rows['AP'].delta)} vs champion "
                         f"v{champ.get('version')}), mAP@0.5 {fmt(rows['AP50'].new)} ({fmt_delta(rows['AP50'].delta)})")
            drops = sorted((r for r in class_rows(m, champ) if r.delta is not None and r.delta < 0),
                           key=lambda r: r.delta)[:3]
            if drops:
                lines.append("largest class drops: " + ", ".join(f"{r.name} {fmt_delta(r.delta)}" for r in drops))
        else:
            lines.append(f"mAP {fmt(rows['AP'].new)}, mAP@0.5 {fmt(rows['AP50'].new)} (no champion yet)")
    if d.export_report:
        row = ((d.export_report.get("speed") or {}).get("batches") or {}).get("1") or {}
        p95 = ((row.get("onnxruntime") or {}).get("latency_ms") or {}).get("p95")
        size = (d.export_report.get("size") or {}).get("onnx_bytes")
        lines.append(f"ONNX Runtime p95 {_ms(p95)} ms at batch 1"
                     + (f", {size / 1e6:.1f} MB" if isinstance(size, (int, float)) else ""))
    lines.append(f"report: {html_url}")
    return "\n".join(lines) + "\n"
