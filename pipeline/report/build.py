"""Gather what a run left in the artifact store and write `runs/<run_id>/report/report.{html,md}`.

Every input is optional except the run itself: a run that stopped at the gate (no export) or at validate (no
metrics) still gets a report saying how far it got and why it holds.
"""
from __future__ import annotations

import logging
import tempfile
from pathlib import Path

from pipeline.config import Config
from pipeline.report.data import ReportData, Sample
from pipeline.results import StageResult, read_if_any
from pipeline.store import ArtifactStore, open_store

log = logging.getLogger(__name__)

STAGES = ("ingest", "validate", "snapshot", "changed", "train", "evaluate", "gate", "export", "promote")
CARD_PLACES = (("snapshot", "card.md"),)  # the snapshot stage writes the dataset card


class _Run:
    """Read-only access to runs/<run_id>/ in the store."""

    def __init__(self, store: ArtifactStore, run_id: str):
        self.store, self.run_id = store, run_id

    def key(self, stage: str, rel: str) -> str:
        return f"runs/{self.run_id}/{stage}/{rel}"

    def exists(self, stage: str, rel: str) -> bool:
        return self.store.exists(self.key(stage, rel))

    def json(self, stage: str, rel: str):
        return self.store.get_json(self.key(stage, rel)) if self.exists(stage, rel) else None

    def bytes(self, stage: str, rel: str) -> bytes | None:
        return self.store.get_bytes(self.key(stage, rel)) if self.exists(stage, rel) else None


def _plots(run: _Run, metrics: dict | None) -> dict[str, bytes]:
    plots = {}
    for name in ("pr_curve", "confusion_matrix"):
        png = run.bytes("evaluate", f"{name}.png")
        if png:
            plots[name] = png
    if "confusion_matrix" not in plots and metrics and metrics.get("confusion_matrix"):
        # evaluate's PNG is missing but the matrix is in metrics.json: draw it again
        from pipeline.metrics.plots import confusion_matrix_png

        with tempfile.TemporaryDirectory() as tmp:
            png = confusion_matrix_png(Path(tmp) / "cm.png", metrics["confusion_matrix"])
            plots["confusion_matrix"] = png.read_bytes()
    return plots


def _samples(run: _Run, metrics: dict | None, threshold: float, n: int) -> tuple[list[Sample], list[Sample], str]:
    from pipeline.metrics.coco import category_names
    from pipeline.report.samples import draw, pick, score_images

    if n <= 0:
        return [], [], "sample predictions switched off"
    if metrics is None:
        return [], [], "no metrics: evaluate did not run"
    if metrics.get("task") == "classification":
        return [], [], "no drawn samples for a classifier: its per-image predictions are in evaluate/predictions.json"
    detections = run.json("evaluate", "detections.json")
    coco = run.json("ingest", "dataset/annotations.json")
    if detections is None or coco is None:
        missing = "evaluate/detections.json" if detections is None else "ingest/dataset/annotations.json"
        return [], [], f"no sample predictions: {missing} is not in the store"
    split = metrics.get("split", "val")
    # as pipeline.datasets.canonical.split_coco, without importing torch for it
    images = [im for im in coco.get("images", []) if im.get("split") == split]
    ids = {im["id"] for im in images}
    gt = dict(coco, images=images, annotations=[a for a in coco.get("annotations", []) if a.get("image_id") in ids])
    if not gt["images"]:
        return [], [], f"no sample predictions: the {split} split is empty"
    names = category_names(gt)
    best, worst = pick(score_images(gt, detections, threshold), n)
    out, missing = ([], []), []
    for group, picked in zip(out, (best, worst)):
        for s in picked:
            raw = run.bytes("ingest", f"dataset/images/{s.image['file_name']}")
            if raw is None:
                missing.append(s.image["file_name"])
                continue
            group.append(Sample(s.image["id"], s.image["file_name"], s.f1, s.tp, s.fp, s.fn, draw(raw, s, names)))
    note = f"images not in the store: {', '.join(missing)}" if missing else ""
    return out[0], out[1], note


def _dataset_card(run: _Run) -> str:
    for stage, name in CARD_PLACES:
        raw = run.bytes(stage, name)
        if raw:
            return raw.decode(errors="replace")
    return ""


def _deployment(results: dict[str, StageResult]) -> tuple[list[dict], str]:
    """The latency and size budgets as export judged them (its result's `deployment_checks`), or why there are
    none; the budgets that are on come from the gate's result (`deferred`) while export has not run."""
    export, gate = results.get("export"), results.get("gate")
    if export is not None and export.deployment_checks is not None:
        checks = list(export.deployment_checks)
        return checks, "" if checks else "no latency or size budget set"
    if export is not None:
        return [], f"not judged: export stopped before its deployment checks ({export.status})"
    if gate is None or gate.deferred is None:
        return [], "judged on export's report once the gate and export have run"
    if not gate.deferred:
        return [], "no latency or size budget set"
    return [], f"{', '.join(gate.deferred)}: judged on export's report; export has not run"


def recommend(data: ReportData) -> tuple[str, list[str]]:
    """("promote" | "hold", reasons): hold while anything failed or the gate has not judged the model.
    The verdicts are the stages' own (gate's checks, export's deployment checks); nothing is judged again."""
    from pipeline.gates import describe

    results = data.results
    reasons = []
    if data.metrics is None:
        reasons.append("no evaluation metrics (evaluate did not run or failed)")
    gate = results.get("gate")
    if gate is None:
        reasons.append("the gate has not run")
    elif gate.status not in ("ok", "gate_failed"):
        reasons.append(f"the gate could not judge the model: {gate.error or gate.status}")
    reasons += [f"gate check failed: {describe(c)}" for c in data.gate_checks if not c.get("passed")]
    reasons += [f"deployment budget failed: {describe(c)}" for c in data.deployment_checks if not c.get("passed")]
    export = results.get("export")
    if export is not None and export.status != "ok":
        # export's own failures (parity, outputs...); its failed budgets are listed above already
        budgets = {c.get("name") for c in data.deployment_checks}
        failures = [f for f in export.failures or [] if isinstance(f, dict)]
        reasons += [f"export failed verification: {f.get('message') or f.get('check')}" for f in failures
                    if f.get("check") not in budgets]
        if not failures:
            reasons.append(f"export failed verification: {export.error or export.status}")
    if reasons:
        return "hold", reasons
    promote = results.get("promote")
    if promote is not None and promote.status == "ok" and promote.version is not None:
        return "promote", [f"every check passed; promoted as version {promote.version}"]
    ok = [f"all {len(data.gate_checks)} gate checks passed"]
    if data.deployment_checks:
        n = len(data.deployment_checks)
        ok.append(f"{'both' if n == 2 else 'the'} deployment budget{'s' if n > 1 else ''} met")
    if export is None:
        ok.append("export (ONNX verification, speed) has not run yet")
    if gate is not None and gate.note:
        ok.append(gate.note)
    return "promote", ok


def gather(cfg: Config, run_id: str, store: ArtifactStore, samples: int = 4) -> ReportData:
    """Read everything the report shows for `run_id` from `store`."""
    run = _Run(store, run_id)
    data = ReportData(run_id=run_id, run_url=store.url(f"runs/{run_id}"),
                      score_threshold=cfg.evaluate.score_threshold)
    data.results = {s: r for s in STAGES if (r := read_if_any(store, run_id, s)) is not None}
    data.airflow_run_id = next((r.airflow_run_id for r in data.results.values() if r.airflow_run_id), "")
    data.metrics = run.json("evaluate", "metrics.json")
    if data.metrics is not None:
        op = data.metrics.get("operating_point") or {}
        data.score_threshold = op.get("score_threshold", data.score_threshold)
    data.plots = _plots(run, data.metrics)
    data.best, data.worst, data.samples_note = _samples(run, data.metrics, data.score_threshold, samples)
    data.export_report = run.json("export", "report.json")
    data.validate_report = run.json("validate", "report.json")
    if run.exists("validate", "data_docs/index.html"):
        data.data_docs_url = store.url(run.key("validate", "data_docs/index.html"))
    data.dataset_card = _dataset_card(run)
    data.gate_checks = list(data.results["gate"].checks or []) if "gate" in data.results else []
    data.deployment_checks, data.deployment_note = _deployment(data.results)
    data.decision, data.reasons = recommend(data)
    return data


def build_report(cfg: Config, run, store: ArtifactStore | None = None, *, samples: int = 4,
                 log_to_mlflow: bool = True) -> dict:
    """Write `runs/<run_id>/report/report.html` (self-contained) and `report.md` (short, for chat).

    `run` is a RunContext or a run id; `store` defaults to the context's, else `cfg.store`. Both files are
    logged to the pipeline run's MLflow run under `report/` unless `log_to_mlflow` is false. Returns
    {"html": key, "markdown": key, "decision": "promote" | "hold", "reasons": [...], "text": the Markdown}.
    """
    from pipeline.context import safe_run_id
    from pipeline.report.render import render_html, render_markdown

    run_id = safe_run_id(run if isinstance(run, str) else run.run_id)
    if store is None:
        store = run.store if not isinstance(run, str) else open_store(cfg.store.uri, cfg.store.s3_endpoint_url)
    data = gather(cfg, run_id, store, samples)
    keys = {"html": f"runs/{run_id}/report/report.html", "markdown": f"runs/{run_id}/report/report.md"}
    with tempfile.TemporaryDirectory() as tmp:
        html_path, md_path = Path(tmp) / "report.html", Path(tmp) / "report.md"
        if log_to_mlflow:
            try:
                data.mlflow_url = tracking_url(cfg, run_id)
            except Exception as exc:  # noqa: BLE001 - the report is still worth writing without the link
                log.warning("report: MLflow run of %s not found (%s)", run_id, exc)
        html_path.write_text(render_html(data))
        markdown = render_markdown(data, store.url(keys["html"]))
        md_path.write_text(markdown)
        store.put_file(html_path, keys["html"])
        store.put_file(md_path, keys["markdown"])
        if log_to_mlflow:
            import mlflow

            from pipeline import tracking

            with tracking.active_run(cfg, run_id):
                mlflow.log_artifact(str(html_path), artifact_path="report")
                mlflow.log_artifact(str(md_path), artifact_path="report")
                mlflow.set_tag("nightshift.recommendation", data.decision)
    log.info("report for run %s: %s (%s)", run_id, store.url(keys["html"]), data.decision)
    return dict(keys, decision=data.decision, reasons=data.reasons, text=markdown)


def tracking_url(cfg: Config, run_id: str) -> str:
    """A link to the pipeline run's MLflow run ("" if it has none yet)."""
    from pipeline import tracking

    found = tracking.find_run(cfg, run_id)
    return tracking.run_url(cfg, found.info.run_id) if found is not None else ""

