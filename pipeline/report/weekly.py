"""weekly: the week in one self-contained HTML page (runs, champion history, trends), logged to MLflow and announced.

    nightshift weekly [--since 7d] [--config FILE] [--set key=value ...] [--out FILE]

Reads every pipeline run that started in the period from MLflow (one MLflow run per pipeline run) and the
artifact store (each stage's result.json under runs/<run_id>/): its outcome (promoted, held with the failed
checks, unchanged, failed at a stage); the champion's history (promotions, rollbacks, gate overrides with
their reasons); overall and per-class metric trends; inference figures per promoted version (export's
report.json); lead time from a dataset's first snapshot to its promotion; the share of `nightshift reproduce`
checks that matched; data changes (new images, class-count drift). The page (plots as embedded PNGs, no
external URL) goes to reports/weekly/<end date>/weekly.html in the store and to an MLflow run tagged
nightshift.report=weekly; a chat summary links to it. `--since` takes 7d, 36h or an ISO date.
"""
from __future__ import annotations

import argparse
import io
import json
import logging
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

from pipeline import results as stage_results
from pipeline.errors import ConfigError
from pipeline.report import pages
from pipeline.results import GateResult, IngestResult, SnapshotResult, StageResult

log = logging.getLogger(__name__)

STAGES = ("ingest", "validate", "snapshot", "changed", "train", "evaluate", "gate", "export", "promote", "notify")
REPORT_TAG = "nightshift.report"
REPRODUCTION_PREFIX = "reproduce-"
_SINCE = re.compile(r"^\s*(\d+)\s*([dhw])\s*$")


# -- arguments --------------------------------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--since", default="7d", help="start of the period: 7d, 36h, 2w or an ISO date (default 7d)")
    parser.add_argument("--config", help="YAML config file (store, mlflow, promote, notify sections)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override one config value, e.g. --set store.uri=s3://bucket/nightshift (repeatable)")
    parser.add_argument("--out", help="also write the HTML page to this local file")


def parse_since(text: str, now: datetime) -> datetime:
    """'7d' / '36h' / '2w' before `now`, or an ISO date/time (UTC unless it says otherwise)."""
    m = _SINCE.match(text or "")
    if m:
        n, unit = int(m.group(1)), m.group(2)
        if n <= 0:
            raise ConfigError(f"--since {text!r}: must be a positive period")
        return now - {"h": timedelta(hours=n), "d": timedelta(days=n), "w": timedelta(weeks=n)}[unit]
    try:
        start = datetime.fromisoformat(text.strip())
    except (ValueError, AttributeError):
        raise ConfigError(f"--since {text!r}: expected a period like 7d, 36h, 2w or an ISO date") from None
    start = start if start.tzinfo else start.replace(tzinfo=UTC)
    if start >= now:
        raise ConfigError(f"--since {text!r}: is not in the past")
    return start


# -- reading the store ------------------------------------------------------------------------------------
def _children(store, prefix: str) -> list[str]:
    """Names directly under `prefix` (runs/ holds whole datasets: never list it recursively)."""
    from pipeline.store import LocalStore

    prefix = prefix.rstrip("/") + "/"
    if isinstance(store, LocalStore):
        path = store.local_path(prefix.rstrip("/"))
        return sorted(p.name for p in path.iterdir() if p.is_dir()) if path.is_dir() else []
    names = set()
    for page in store.client.get_paginator("list_objects_v2").paginate(
            Bucket=store.bucket, Prefix=store._key(prefix), Delimiter="/"):
        for common in page.get("CommonPrefixes", []):
            names.add(common["Prefix"].rstrip("/").rsplit("/", 1)[-1])
    return sorted(names)


def _modified(store, key: str) -> datetime | None:
    from pipeline.store import LocalStore

    if isinstance(store, LocalStore):
        path = store.local_path(key)
        return datetime.fromtimestamp(path.stat().st_mtime, UTC) if path.is_file() else None
    try:
        return store.client.head_object(Bucket=store.bucket, Key=store._key(key))["LastModified"]
    except Exception:  # noqa: BLE001 - missing: no time
        return None


def _json(store, key: str):
    try:
        return store.get_json(key) if store.exists(key) else None
    except (ValueError, OSError) as exc:
        log.warning("%s: unreadable (%s): left out of the report", store.url(key), exc)
        return None


def _result(store, run_id: str, stage: str) -> StageResult | None:
    """A stage's result for the run, or None: absent, or unreadable (then a warning names the file and field)."""
    try:
        return stage_results.read_if_any(store, run_id, stage)
    except (stage_results.ResultError, OSError) as exc:
        log.warning("%s: unreadable (%s): left out of the report", store.url(stage_results.key(run_id, stage)), exc)
        return None


def _ms(t: datetime) -> int:
    return int(t.timestamp() * 1000)


def _dt(ms: int | None) -> datetime | None:
    return datetime.fromtimestamp(ms / 1000, UTC) if ms else None


# -- what a run came to -----------------------------------------------------------------------------------
def failed_checks(result: StageResult) -> list[str]:
    """The names of the failed checks in a gate (or export) result."""
    names = [c.get("name") or c.get("check") for c in result.failures or []]
    if not names:
        checks = getattr(result, "checks", None) or []  # only the gate's result lists its checks
        names = [c.get("name") for c in checks if isinstance(c, dict) and c.get("passed") is False]
    return list(dict.fromkeys(n for n in names if n))


def outcome(results: dict[str, StageResult]) -> dict:
    """{'outcome': promoted | held | unchanged | failed | incomplete, 'detail': ..., ...} from stage results."""
    promote = results.get("promote")
    if promote and promote.status == "ok":
        return {"outcome": "promoted", "version": promote.registry_version,
                "detail": f"registry version {promote.registry_version}, Triton version {promote.version}"}
    for stage in ("gate", "export"):
        r = results.get(stage)
        if r and (r.status == "gate_failed" or (stage == "gate" and r.passed is False)):
            checks = failed_checks(r)
            return {"outcome": "held", "stage": stage, "failed_checks": checks,
                    "detail": f"{stage} refused: " + (", ".join(checks) or (r.error if r.error is not None else "?"))}
    changed = results.get("changed")
    if changed and changed.status == "ok" and changed.changed is False:
        return {"outcome": "unchanged", "detail": changed.reason if changed.reason is not None else "nothing changed"}
    for stage in STAGES:
        r = results.get(stage)
        if r and r.status not in ("ok", None):
            return {"outcome": "failed", "stage": stage,
                    "detail": f"{stage}: {r.status} (exit {r.exit_code}): {str(r.error or '')[:200]}"}
    last = next((s for s in reversed(STAGES) if s in results), None)
    return {"outcome": "incomplete", "stage": last, "detail": f"last stage with a result: {last or 'none'}"}


# -- collecting the week ----------------------------------------------------------------------------------
def collect(cfg, start: datetime, end: datetime) -> dict:
    """Everything the page shows, as plain JSON-able data."""
    import mlflow

    from pipeline import tracking
    from pipeline.store import open_store

    store = open_store(cfg.store.uri, cfg.store.s3_endpoint_url)
    exp_id = tracking.setup(cfg)
    client = mlflow.MlflowClient()
    by_id = _pipeline_mlruns(client, exp_id, start, end)

    names = _children(store, "runs")
    runs = []
    reproductions = []
    for rid in sorted(set(names) | set(by_id)):
        if rid.startswith(REPRODUCTION_PREFIX):
            check = _reproduction(store, rid, start, end)
            if check is not None:
                reproductions.append(check)
            continue
        results, times = _stage_results(store, rid)
        mlrun = by_id.get(rid)
        started = _dt(mlrun.info.start_time) if mlrun else min((t for t in times if t), default=None)
        if started is None or not (start <= started < end):
            continue
        if mlrun is None and rid not in by_id:  # no MLflow run in the period: one may exist from before
            earlier = tracking.find_run(cfg, rid)
            if earlier is not None and _dt(earlier.info.start_time) < start:
                continue
            mlrun = earlier
        metrics = dict(mlrun.data.metrics) if mlrun else {}
        tags = dict(mlrun.data.tags) if mlrun else {}
        ingest = results.get("ingest") or IngestResult()
        gate = results.get("gate") or GateResult()
        snapshot = results.get("snapshot") or SnapshotResult()
        runs.append({
            "run_id": rid, "started": started.isoformat(timespec="minutes"), "t": started.timestamp(),
            **outcome(results),
            "mlflow_run_id": mlrun.info.run_id if mlrun else None,
            "AP": metrics.get("eval_AP"), "AP50": metrics.get("eval_AP50"),
            "per_class_AP": _per_class(metrics, "eval_AP_"),
            **run_metrics(metrics),
            "dataset_hash": tags.get("dataset_hash") or snapshot.dataset_hash,
            "images": ingest.images, "annotations": ingest.annotations,
            "per_class": {name: row.get("total") for name, row in (ingest.per_class or {}).items()},
            "overrides": gate.overrides or {k.rsplit(".", 1)[-1]: v for k, v in tags.items()
                                            if k.startswith("nightshift.gate.override.")},
            "override_reason": gate.override_reason or tags.get("nightshift.gate.override_reason") or "",
        })
    runs.sort(key=lambda r: r["t"])

    champion = _champion_history(cfg, client, runs, start, end)
    inference = _inference(store, runs)
    return {
        "period": {"start": start.isoformat(timespec="minutes"), "end": end.isoformat(timespec="minutes")},
        "model": cfg.promote.model_name, "alias": cfg.promote.alias,
        "runs": runs,
        "counts": {k: sum(r["outcome"] == k for r in runs) for k in ("promoted", "held", "unchanged", "failed",
                                                                       "incomplete")},
        "champion": champion,
        "inference": inference,
        "lead_times": _lead_times(cfg, client, exp_id, runs, champion),
        "reproducibility": {"checked": len(reproductions), "matched": sum(r["reproduced"] for r in reproductions),
                            "share": (sum(r["reproduced"] for r in reproductions) / len(reproductions))
                            if reproductions else None, "checks": reproductions},
        "data": _data_changes(runs),
    }


# what a run of each task is judged on, as (MLflow metric, label on the page); the per-class figure's prefix and name
HEADLINE = {"detection": (("eval_AP", "mAP"), ("eval_AP50", "mAP@0.5")),
            "segmentation": (("eval_segm_AP", "mask mAP"), ("eval_segm_AP50", "mask mAP@0.5"), ("eval_AP", "box mAP")),
            "classification": (("eval_accuracy", "accuracy"), ("eval_macro_f1", "macro F1"))}
PER_CLASS = {"detection": ("eval_AP_", "AP"), "segmentation": ("eval_segm_AP_", "mask AP"),
             "classification": ("eval_recall_", "recall")}
_NOT_A_CLASS = re.compile(r"^drop_ci_(low|high)$")  # eval_AP_drop_ci_low is the regression interval, not a class


def _per_class(metrics: dict, prefix: str) -> dict:
    return {k[len(prefix):]: v for k, v in metrics.items()
            if k.startswith(prefix) and not _NOT_A_CLASS.match(k[len(prefix):])}


def run_metrics(metrics: dict) -> dict:
    """A run's task (read from which metrics its evaluate logged), its headline metrics ({label: value}, in the
    order the page shows them) and its per-class figure (`class_metric`: AP, mask AP or recall, per class)."""
    task = ("classification" if "eval_accuracy" in metrics else
            "segmentation" if "eval_segm_AP" in metrics else "detection")
    prefix, name = PER_CLASS[task]
    return {"task": task, "headline": {label: metrics[k] for k, label in HEADLINE[task] if k in metrics},
            "class_metric": name, "per_class_metric": _per_class(metrics, prefix)}


def _pipeline_mlruns(client, exp_id: str, start: datetime, end: datetime) -> dict:
    """run id -> the MLflow run of each pipeline run started in [start, end) (report and reproduction runs left
    out; the first found when several carry the same run id)."""
    from pipeline import tracking
    from pipeline.training.reproduce import REPRODUCTION_TAG

    mlruns = client.search_runs([exp_id], filter_string=f"attributes.start_time >= {_ms(start)} "
                                f"and attributes.start_time < {_ms(end)}", max_results=5000)
    by_id = {}
    for r in mlruns:
        rid = r.data.tags.get(tracking.RUN_TAG)
        if rid and REPORT_TAG not in r.data.tags and REPRODUCTION_TAG not in r.data.tags:
            by_id.setdefault(rid, r)
    return by_id


def _reproduction(store, rid: str, start: datetime, end: datetime) -> dict | None:
    """A `nightshift reproduce` check (run `rid`) whose report was written in [start, end), else None."""
    report = _json(store, f"runs/{rid}/reproduce/report.json")
    when = _modified(store, f"runs/{rid}/reproduce/report.json")
    if report is None or when is None or not start <= when < end:
        return None
    return {"run_id": report.get("run_id"), "reproduction": rid, "reproduced": bool(report.get("reproduced")),
            "tolerance": report.get("tolerance"), "time": when.isoformat(timespec="minutes")}


def _stage_results(store, rid: str) -> tuple[dict[str, StageResult], list]:
    """Each stage's result of run `rid` by stage, and when each was written."""
    results, times = {}, []
    for stage in STAGES:
        r = _result(store, rid, stage)
        if r is not None:
            results[stage] = r
            times.append(_modified(store, stage_results.key(rid, stage)))
    return results, times


def _champion_history(cfg, client, runs: list[dict], start: datetime, end: datetime) -> dict:
    from pipeline.tracking import ROLLED_BACK_TAG, RUN_TAG, current_alias, registered_versions

    name, alias = cfg.promote.model_name, cfg.promote.alias
    versions = registered_versions(client, name)
    run_by_id = {r["run_id"]: r for r in runs}
    events = []
    for mv in versions:
        created = _dt(mv.creation_timestamp)
        rid = mv.tags.get(RUN_TAG)
        if created and start <= created < end:
            r = run_by_id.get(rid, {})
            events.append({"time": created.isoformat(timespec="minutes"), "t": created.timestamp(),
                           "event": "promotion", "version": int(mv.version), "run_id": rid, "AP": r.get("AP"),
                           "detail": ("gate override: " + r["override_reason"]) if r.get("overrides") else
                           "gate passed"})
        rolled = mv.tags.get(ROLLED_BACK_TAG)
        if rolled and rolled.isdigit():
            when = datetime.fromtimestamp(int(rolled), UTC)
            if start <= when < end:
                events.append({"time": when.isoformat(timespec="minutes"), "t": when.timestamp(),
                               "event": "rollback", "version": int(mv.version), "run_id": rid, "AP": None,
                               "detail": f"version {mv.version} rolled back (no longer @{alias})"})
    for r in runs:
        if r["overrides"]:
            events.append({"time": r["started"], "t": r["t"], "event": "override", "version": None,
                           "run_id": r["run_id"], "AP": r["AP"],
                           "detail": ", ".join(f"{k}={v}" for k, v in sorted(r["overrides"].items()))
                           + f"; reason: {r['override_reason'] or '(none given)'}; outcome: {r['outcome']}"})
    events.sort(key=lambda e: e["t"])
    current = current_alias(client, name, alias)
    return {"events": events, "current": None if current is None else
            {"version": int(current.version), "run_id": current.tags.get(RUN_TAG)}}


def _inference(store, runs: list[dict]) -> list[dict]:
    """p50/p95 latency and throughput at batch 1 (and the largest batch), ONNX size, per promoted version."""
    rows = []
    for r in runs:
        if r["outcome"] != "promoted":
            continue
        report = _json(store, f"runs/{r['run_id']}/export/report.json")
        if report is None:
            rows.append({"version": r.get("version"), "run_id": r["run_id"], "note": "no export report"})
            continue
        batches = (report.get("speed") or {}).get("batches") or {}
        one = (batches.get("1") or {}).get("onnxruntime") or {}
        largest = max(batches, key=int) if batches else None
        big = (batches.get(largest) or {}).get("onnxruntime") or {}
        rows.append({
            "version": r.get("version"), "run_id": r["run_id"],
            "p50_ms": (one.get("latency_ms") or {}).get("p50"), "p95_ms": (one.get("latency_ms") or {}).get("p95"),
            "throughput_ips": one.get("throughput_ips"), "largest_batch": int(largest) if largest else None,
            "throughput_ips_largest": big.get("throughput_ips"),
            "onnx_mb": ((report.get("size") or {}).get("onnx_bytes") or 0) / 1e6 or None, "note": None,
        })
    return rows


def _lead_times(cfg, client, exp_id: str, runs: list[dict], champion: dict) -> list[dict]:
    """Hours from the first MLflow run that recorded a dataset hash (its snapshot) to the promotion of a model
    trained on it."""
    promoted = {e["run_id"]: e for e in champion["events"] if e["event"] == "promotion"}
    rows = []
    for r in runs:
        event = promoted.get(r["run_id"])
        if event is None or not r["dataset_hash"]:
            continue
        first = client.search_runs([exp_id], filter_string=f"tags.dataset_hash = '{r['dataset_hash']}'",
                                   order_by=["attributes.start_time ASC"], max_results=1)
        if not first:
            continue
        snap = _dt(first[0].info.start_time)
        rows.append({"version": event["version"], "run_id": r["run_id"], "dataset_hash": r["dataset_hash"],
                     "snapshot": snap.isoformat(timespec="minutes"), "promoted": event["time"],
                     "hours": round((event["t"] - snap.timestamp()) / 3600, 2)})
    return rows


def _data_changes(runs: list[dict]) -> dict:
    """New images per run (against the previous run that ingested) and each class's share, first vs last."""
    ingested = [r for r in runs if r["images"] is not None]
    rows, previous = [], None
    for r in ingested:
        rows.append({"run_id": r["run_id"], "images": r["images"], "annotations": r["annotations"],
                     "new_images": None if previous is None else r["images"] - previous["images"],
                     "dataset_hash": r["dataset_hash"]})
        previous = r
    drift = []
    if ingested:
        first, last = ingested[0]["per_class"], ingested[-1]["per_class"]
        total_a, total_b = sum(v or 0 for v in first.values()) or 1, sum(v or 0 for v in last.values()) or 1
        for name in sorted(set(first) | set(last)):
            a, b = first.get(name) or 0, last.get(name) or 0
            drift.append({"class": name, "first": a, "last": b, "share_first": a / total_a, "share_last": b / total_b,
                          "share_change": b / total_b - a / total_a})
    return {"per_run": rows, "class_drift": drift,
            "new_images_total": (ingested[-1]["images"] - ingested[0]["images"]) if len(ingested) > 1 else 0}


# -- the page ---------------------------------------------------------------------------------------------
def _png(fig) -> str:
    from matplotlib import pyplot as plt

    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return pages.data_uri(buf.getvalue())


def plots(week: dict) -> list[dict]:
    """[{'title', 'uri'}]: the figures, as PNG data URIs."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    out = []
    runs = [r for r in week["runs"] if r.get("headline")]
    labels = [r["run_id"] for r in runs]
    if runs:
        # every task's headline metrics (a week may hold a detector's and a classifier's runs side by side)
        fig, ax = plt.subplots(figsize=(7, 3), dpi=90)
        for key in dict.fromkeys(k for r in runs for k in r["headline"]):
            ax.plot(labels, [r["headline"].get(key) for r in runs], marker="o", label=key)
        for i, r in enumerate(runs):
            if r["outcome"] == "promoted":
                ax.annotate(f"v{r.get('version')}", (i, next(iter(r["headline"].values()))),
                            textcoords="offset points", xytext=(0, 6), fontsize=7, ha="center")
        ax.set_ylim(0, 1)
        ax.set_title("Overall metrics per evaluated run", fontsize=10)
        ax.legend(fontsize=7)
        ax.tick_params(axis="x", labelrotation=30, labelsize=7)
        out.append({"title": "Overall metric trend", "uri": _png(fig)})
        kinds = sorted({r["class_metric"] for r in runs})
        series = sorted({(c, r["class_metric"]) for r in runs for c in r["per_class_metric"]})
        fig, ax = plt.subplots(figsize=(7, 3), dpi=90)
        for c, kind in series:
            ax.plot(labels, [r["per_class_metric"].get(c) if r["class_metric"] == kind else None for r in runs],
                    marker=".", label=c if len(kinds) == 1 else f"{c} ({kind})")
        ax.set_ylim(0, 1)
        ax.set_title(f"Per-class {' / '.join(kinds)} per evaluated run", fontsize=10)
        ax.legend(fontsize=7, ncol=3)
        ax.tick_params(axis="x", labelrotation=30, labelsize=7)
        out.append({"title": "Per-class metric trend", "uri": _png(fig)})
    inf = [row for row in week["inference"] if row.get("p50_ms") is not None]
    if inf:
        names = [f"v{row['version']}" for row in inf]
        fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(8, 3), dpi=90)
        ax1.plot(names, [row["p50_ms"] for row in inf], marker="o", label="p50")
        ax1.plot(names, [row["p95_ms"] for row in inf], marker="o", label="p95")
        ax1.set_title("ONNX Runtime latency, batch 1 (ms)", fontsize=9)
        ax1.legend(fontsize=7)
        ax2.bar(names, [row["throughput_ips"] or 0 for row in inf], color="#3cb44b")
        ax2.set_title("Throughput, batch 1 (images/s)", fontsize=9)
        out.append({"title": "Inference per promoted version", "uri": _png(fig)})
    data = [r for r in week["runs"] if r["per_class"]]
    if data:
        fig, ax = plt.subplots(figsize=(7, 3), dpi=90)
        bottom = [0] * len(data)
        for c in sorted({c for r in data for c in r["per_class"]}):
            values = [r["per_class"].get(c) or 0 for r in data]
            ax.bar([r["run_id"] for r in data], values, bottom=bottom, label=c)
            bottom = [b + v for b, v in zip(bottom, values)]
        ax.set_title("Annotations per class per ingested run (boxes, masks or image labels)", fontsize=10)
        ax.legend(fontsize=7, ncol=3)
        ax.tick_params(axis="x", labelrotation=30, labelsize=7)
        out.append({"title": "Data: class counts", "uri": _png(fig)})
    return out


def render(week: dict) -> str:
    return pages.render("weekly.html.j2", week=week, plots=plots(week))


def summary_text(week: dict, link: str) -> str:
    c = week["counts"]
    champ = week["champion"]["current"]
    rep = week["reproducibility"]
    lead = [row["hours"] for row in week["lead_times"]]
    held = [f"{r['run_id']} ({', '.join(r.get('failed_checks') or []) or r['detail']})"
            for r in week["runs"] if r["outcome"] == "held"]
    failed = [f"{r['run_id']} at {r['stage']}" for r in week["runs"] if r["outcome"] == "failed"]
    rollbacks = sum(e["event"] == "rollback" for e in week["champion"]["events"])
    lines = [
        (f"[nightshift_weekly_report] {week['period']['start'][:10]} to {week['period']['end'][:10]}: "
         f"{len(week['runs'])} runs: {c['promoted']} promoted, {c['held']} held, {c['unchanged']} unchanged, "
         f"{c['failed']} failed" + (f", {c['incomplete']} incomplete" if c["incomplete"] else "") + "."),
        (f"Champion: {'v' + str(champ['version']) if champ else 'none'} @{week['alias']}; "
         f"{rollbacks} rollback(s) this week."),
    ]
    if held:
        lines.append("Held: " + "; ".join(held))
    if failed:
        lines.append("Failed: " + "; ".join(failed))
    if lead:
        lines.append(f"Lead time snapshot to promotion: median {sorted(lead)[len(lead) // 2]:.1f} h.")
    if rep["checked"]:
        lines.append(f"Reproduced: {rep['matched']}/{rep['checked']}.")
    lines.append(f"Report: {link}")
    return "\n".join(lines)


# -- the command ------------------------------------------------------------------------------------------
def publish(cfg, week: dict, page: str) -> dict:
    """The page and its data to the store and to an MLflow run of their own; returns the links."""
    import tempfile

    import mlflow

    from pipeline import tracking
    from pipeline.store import open_store

    store = open_store(cfg.store.uri, cfg.store.s3_endpoint_url)
    stamp = week["period"]["end"][:10]
    base = f"reports/weekly/{stamp}"
    html_url = store.put_bytes(page.encode(), f"{base}/weekly.html")
    store.put_json(week, f"{base}/weekly.json")
    exp_id = tracking.setup(cfg)
    client = mlflow.MlflowClient()
    existing = client.search_runs([exp_id], filter_string=f"tags.`{REPORT_TAG}` = 'weekly' and "
                                  f"tags.`nightshift.report_end` = '{stamp}'", max_results=1)
    mlrun = existing[0].info.run_id if existing else client.create_run(
        exp_id, run_name=f"weekly-{stamp}", tags={REPORT_TAG: "weekly", "nightshift.report_end": stamp}).info.run_id
    with tempfile.TemporaryDirectory() as tmp:
        for name, data in (("weekly.html", page), ("weekly.json", json.dumps(week, indent=1, default=str))):
            (Path(tmp) / name).write_text(data)
            client.log_artifact(mlrun, str(Path(tmp) / name), artifact_path="weekly_report")
    c = week["counts"]
    for key, value in {"weekly_runs": len(week["runs"]), **{f"weekly_{k}": v for k, v in c.items()}}.items():
        client.log_metric(mlrun, key, value)
    if week["reproducibility"]["share"] is not None:
        client.log_metric(mlrun, "weekly_reproduced_share", week["reproducibility"]["share"])
    client.set_terminated(mlrun)
    return {"html": html_url, "mlflow_run_id": mlrun, "mlflow": tracking.run_url(cfg, mlrun)}


def main(args: argparse.Namespace) -> int:
    from pipeline import alerts
    from pipeline.resultline import RESULT_MARKER
    from pipeline.config import load_config

    cfg = load_config(args.config, args.overrides).resolved()
    end = datetime.now(UTC)
    start = parse_since(args.since, end)
    log.info("weekly report start: %s to %s", start.isoformat(timespec="minutes"), end.isoformat(timespec="minutes"))
    week = collect(cfg, start, end)
    page = render(week)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(page)
    links = publish(cfg, week, page)
    text = summary_text(week, f"{links['html']} (MLflow: {links['mlflow']})")
    delivered = alerts.send(cfg, text, "weekly_report", {"runs": len(week["runs"]), **week["counts"]})
    result = {"runs": len(week["runs"]), **week["counts"], **links, "announced_to": delivered}
    log.info("weekly report end: %d runs, page %s", len(week["runs"]), links["html"])
    print(RESULT_MARKER + json.dumps(result, sort_keys=True), flush=True)
    return 0
