"""HTML (one self-contained page from templates/report.html.j2: inline CSS, PNGs as data URIs, no scripts) and
short Markdown renderings of a `ReportData`. Pure functions: nothing here reads the store."""
from __future__ import annotations

from datetime import datetime, timezone

from pipeline.report import pages
from pipeline.report.comparison import class_rows, fmt, fmt_delta, stat_rows
from pipeline.report.data import ReportData


def _check_row(c: dict) -> dict:
    """One gate or deployment check as the page shows it."""
    from pipeline.gates import interval_text

    value = f"n/a ({c.get('note') or 'nothing to measure'})" if c.get("value") is None else f"{c['value']:.4f}"
    if c.get("ci"):  # a bootstrap-judged drop: the check failed only if the whole interval is over the threshold
        value += interval_text(c["ci"], c.get("confidence"))
    label = c.get("class") or c.get("slice")
    return {"passed": bool(c.get("passed", False)), "name": c["name"], "value": value,
            "measures": c.get("metric", "") + (f" [{label}]" if label else ""),
            "threshold": f"{c.get('direction', '')} {format(c.get('threshold', 0), 'g')}"}


def _class_rows(m: dict | None) -> list[dict]:
    """Per class: AP and AP50 rows against the champion, and the challenger's P/R/F1 at the operating point."""
    if m is None or not m.get("per_class"):
        return []
    champ = m.get("champion")
    if m.get("task") == "classification":  # recall and F1 against the champion; precision/recall/F1 of the split
        f1 = {r.name: r for r in class_rows(m, champ, "f1")}
        return [{"ap": r, "ap50": f1[r.name], "prf": m["per_class"].get(r.name) or {}}
                for r in class_rows(m, champ, "recall")]
    ap50 = {r.name: r for r in class_rows(m, champ, "AP50")}
    prf = (m.get("operating_point") or {}).get("per_class") or {}
    return [{"ap": r, "ap50": ap50[r.name], "prf": prf.get(r.name) or {}} for r in class_rows(m, champ, "AP")]


def _speed_rows(export_report: dict | None) -> list[dict]:
    """Latency and throughput per batch size and runtime, from export's report."""
    rows = []
    for batch, row in (((export_report or {}).get("speed") or {}).get("batches") or {}).items():
        ratio = row.get("ort_vs_eager_speedup")
        for runtime in ("eager", "onnxruntime"):
            lat = (row.get(runtime) or {}).get("latency_ms") or {}
            shown = f"{ratio:.2f}x" if runtime == "onnxruntime" and isinstance(ratio, (int, float)) else ""
            rows.append({"runtime": runtime, "batch": batch, "p50": lat.get("p50"), "p95": lat.get("p95"),
                         "p99": lat.get("p99"), "ips": (row.get(runtime) or {}).get("throughput_ips"), "ratio": shown})
    return rows


def _slice_rows(m: dict | None) -> list[dict]:
    """The stability suite's slices: support, AP of both models and the drop with its bootstrap interval."""
    from pipeline.gates import interval_text

    stability = (m or {}).get("stability") or {}
    rows = []
    for name, row in (stability.get("slices") or {}).items():
        drop = row.get("drop")
        rows.append({"name": name, "support": row.get("support"), "images": row.get("images"),
                     "challenger": fmt(row.get("challenger")), "champion": fmt(row.get("champion")),
                     "drop": "" if drop is None else f"{drop:.4f}" + interval_text(row.get("ci"),
                                                                                  stability.get("confidence"))})
    return rows


def _robustness_rows(m: dict | None) -> list[dict]:
    """AP under each corruption: the challenger's, its drop vs clean data, the champion's and the drop vs it."""
    from pipeline.gates import interval_text

    rows = []
    section = (m or {}).get("robustness") or {}
    for name, row in (section.get("corruptions") or {}).items():
        drop = row.get("drop_vs_champion")
        rows.append({"name": name, "challenger": fmt(row.get("challenger")), "vs_clean": fmt(row.get("drop_vs_clean")),
                     "champion": fmt(row.get("champion")),
                     "vs_champion": fmt(drop) if drop is None else
                     f"{drop:.4f}" + interval_text(row.get("ci"), section.get("confidence"))})
    return rows


def _segm_rows(m: dict | None) -> tuple[list, dict]:
    """A segmentation run's mask metrics beside the box ones: (the 12 COCO stats on masks, aligned with the box
    stats; per class name the mask AP row), both against the champion's masks; ([], {}) without `segm`."""
    segm = (m or {}).get("segm")
    if not segm:
        return [], {}
    champ = ((m.get("champion") or {}).get("segm")) or None
    return stat_rows(segm, champ), {r.name: r for r in class_rows(segm, champ, "AP")}


def render_html(d: ReportData) -> str:
    """The run report: one self-contained page from templates/report.html.j2 (the shared layout)."""
    return pages.render(
        "report.html.j2", d=d, generated=datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        stats=stat_rows(d.metrics, d.metrics.get("champion")) if d.metrics is not None else [],
        classes=_class_rows(d.metrics), speed_rows=_speed_rows(d.export_report),
        gate_rows=[_check_row(c) for c in d.gate_checks],
        deployment_rows=[_check_row(c) for c in d.deployment_checks], slice_rows=_slice_rows(d.metrics),
        robustness_rows=_robustness_rows(d.metrics), segm=_segm_rows(d.metrics))


def _classification_line(m: dict, champ: dict | None, rows: dict) -> str:
    """A classifier's headline: accuracy and macro F1 (with deltas vs the champion) and the largest recall drops."""
    acc, f1 = rows["accuracy"], rows["macro F1"]
    if not champ:
        return f"accuracy {fmt(acc.new)}, macro F1 {fmt(f1.new)} (no champion yet)"
    line = (f"accuracy {fmt(acc.new)} ({fmt_delta(acc.delta)} vs champion v{champ.get('version')}), "
            f"macro F1 {fmt(f1.new)} ({fmt_delta(f1.delta)})")
    drops = sorted((r for r in class_rows(m, champ, "recall") if r.delta is not None and r.delta < 0),
                   key=lambda r: r.delta)[:3]
    if drops:
        line += "\nlargest class recall drops: " + ", ".join(f"{r.name} {fmt_delta(r.delta)}" for r in drops)
    return line


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
        if m.get("task") == "classification":
            lines.append(_classification_line(m, champ, rows))
        elif champ:
            lines.append(f"mAP {fmt(rows['AP'].new)} ({fmt_delta(rows['AP'].delta)} vs champion "
                         f"v{champ.get('version')}), mAP@0.5 {fmt(rows['AP50'].new)} ({fmt_delta(rows['AP50'].delta)})")
            drops = sorted((r for r in class_rows(m, champ) if r.delta is not None and r.delta < 0),
                           key=lambda r: r.delta)[:3]
            if drops:
                lines.append("largest class drops: " + ", ".join(f"{r.name} {fmt_delta(r.delta)}" for r in drops))
        else:
            lines.append(f"mAP {fmt(rows['AP'].new)}, mAP@0.5 {fmt(rows['AP50'].new)} (no champion yet)")
        if m.get("segm"):  # a segmentation run: the mask metrics beside the box ones
            mask = {r.name: r for r in _segm_rows(m)[0]}
            vs = f" ({fmt_delta(mask['AP'].delta)} vs champion)" if mask["AP"].base is not None else ""
            lines.append(f"mask mAP {fmt(mask['AP'].new)}{vs}, mask mAP@0.5 {fmt(mask['AP50'].new)}")
    if d.export_report:
        row = ((d.export_report.get("speed") or {}).get("batches") or {}).get("1") or {}
        p95 = ((row.get("onnxruntime") or {}).get("latency_ms") or {}).get("p95")
        size = (d.export_report.get("size") or {}).get("onnx_bytes")
        lines.append(f"ONNX Runtime p95 {pages.milliseconds(p95)} ms at batch 1"
                     + (f", {size / 1e6:.1f} MB" if isinstance(size, (int, float)) else ""))
    lines.append(f"report: {html_url}")
    return "\n".join(lines) + "\n"
