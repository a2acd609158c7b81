"""Gathering a run from the store and writing report.html / report.md: the recommendation, its reasons, the
chat summary, the sample ranking, MLflow logging. The page's content is test_render.py's."""
from __future__ import annotations

from pipeline import gates
from pipeline.report import build_report
from pipeline.report.build import gather
from pipeline.report.render import render_markdown
from tests.html_page import parse
from tests.pipeline.report.fake_runs import config, make_run


def test_full_run_with_champion_and_export_promotes(store, dataset, tmp_path):
    make_run(store, "r-full", dataset, tmp_path, champion=True, export=True,
             budgets={"latency_p95_ms_max": 50.0, "model_size_mb_max": 20.0})
    keys = build_report(config(store), "r-full", store, log_to_mlflow=False)
    assert keys["html"] == "runs/r-full/report/report.html" and keys["markdown"] == "runs/r-full/report/report.md"
    # the model is worse than the champion but max_regression=1.0 lets it through; budgets are met
    assert keys["decision"] == "promote"
    assert keys["reasons"] == ["all 3 gate checks passed", "both deployment budgets met"]
    page = parse(store.get_bytes(keys["html"]).decode())
    assert page.title == "Nightshift run r-full" and "Recommendation: Promote" in page.section("recommendation")
    md = store.get_bytes(keys["markdown"]).decode()
    assert md == keys["text"] and "PROMOTE" in md and "vs champion v3" in md
    assert len(md.splitlines()) <= 12 and len(md) < 1200 and "report.html" in md
    assert "ONNX Runtime p95 30.0 ms at batch 1, 12.0 MB" in md


def test_gate_failed_without_export_holds_naming_the_failures(store, dataset, tmp_path):
    make_run(store, "r-held", dataset, tmp_path, champion=True, export=False, with_plots=False,
             gate_thresholds={"map_min": 0.99, "map50_min": 0.0, "max_regression": 0.0},
             budgets={"latency_p95_ms_max": 50.0})
    cfg = config(store)
    keys = build_report(cfg, "r-held", store, log_to_mlflow=False)
    assert keys["decision"] == "hold"
    assert any("map_min" in r for r in keys["reasons"]) and any("max_regression" in r for r in keys["reasons"])
    data = gather(cfg, "r-held", store)
    assert data.deployment_checks == [] and data.deployment_note == (
        "latency_p95_ms_max: judged on export's report; export has not run")
    md = keys["text"]
    assert md.startswith("*Nightshift run r-held: HOLD*") and "gate check failed: map_min" in md


def test_first_run_without_champion(store, dataset, tmp_path):
    make_run(store, "r-first", dataset, tmp_path, champion=False, export=True)
    keys = build_report(config(store), "r-first", store, log_to_mlflow=False)
    assert keys["decision"] == "promote"
    assert "(no champion yet)" in keys["text"]


def test_deployment_budget_failure_holds(store, dataset, tmp_path):
    make_run(store, "r-slow", dataset, tmp_path, champion=False, export=True, budgets={"latency_p95_ms_max": 10.0})
    # the verdict is export's, read from its result: the report's own config judges nothing
    keys = build_report(config(store, "gates.latency_p95_ms_max=100"), "r-slow", store, log_to_mlflow=False)
    assert keys["decision"] == "hold"
    assert keys["reasons"] == ["deployment budget failed: latency_p95_ms_max: ONNX Runtime p95 latency at batch 1 "
                               "(ms) = 30.0000, must be <= 10"]


def test_export_verdicts_are_read_from_its_result(store, dataset, tmp_path):
    """A parity refusal is listed by its own message; an export that crashed judged no budget."""
    make_run(store, "r-parity", dataset, tmp_path, champion=False, export=True, budgets={"model_size_mb_max": 50.0})
    failure = gates.Failure.threshold_check("parity", "val mAP drop, PyTorch - ONNX Runtime", 0.05, "<=", 0.01)
    result = store.get_json("runs/r-parity/export/result.json")
    store.put_json(dict(result, status="gate_failed", failures=[failure.to_dict()]), "runs/r-parity/export/result.json")
    keys = build_report(config(store), "r-parity", store, log_to_mlflow=False)
    assert keys["decision"] == "hold"
    assert keys["reasons"] == [f"export failed verification: {failure.message}"]
    assert "model_size_mb_max" in parse(store.get_bytes(keys["html"]).decode()).text  # judged by export, and met
    store.put_json({"status": "error", "error": "RuntimeError: boom"}, "runs/r-parity/export/result.json")
    data = gather(config(store), "r-parity", store, samples=0)
    assert data.deployment_checks == [] and data.deployment_note.startswith("not judged: export stopped")
    assert data.reasons == ["export failed verification: RuntimeError: boom"]


def test_run_that_stopped_before_evaluate(store):
    store.put_json({"status": "ok"}, "runs/r-early/ingest/result.json")
    store.put_json({"status": "rejected", "error": "2 of 11 checks failed"}, "runs/r-early/validate/result.json")
    store.put_json({"passed": False, "checks": 11, "failed": 2, "failed_checks": ["boxes_inside", "balance"]},
                   "runs/r-early/validate/report.json")
    store.put_bytes(b"<html>docs</html>", "runs/r-early/validate/data_docs/index.html")
    store.put_bytes(b"# Shapes\nthree classes of synthetic shapes", "runs/r-early/snapshot/card.md")
    keys = build_report(config(store), "r-early", store, log_to_mlflow=False)
    assert keys["decision"] == "hold" and "no evaluation metrics" in keys["reasons"][0]
    assert "the gate has not run" in keys["reasons"]
    data = gather(config(store), "r-early", store)
    assert data.metrics is None and data.samples_note == "no metrics: evaluate did not run"
    assert data.data_docs_url.endswith("runs/r-early/validate/data_docs/index.html")
    assert data.dataset_card == "# Shapes\nthree classes of synthetic shapes"
    assert data.validate_report["failed_checks"] == ["boxes_inside", "balance"]


def test_sample_ranking_puts_perfect_images_first(store, dataset, tmp_path):
    make_run(store, "r-samples", dataset, tmp_path, champion=False, export=False)
    data = gather(config(store), "r-samples", store, samples=2)
    assert len(data.best) == 2 and len(data.worst) == 2
    assert {s.image_id for s in data.best}.isdisjoint(s.image_id for s in data.worst)
    assert min(s.f1 for s in data.best) >= max(s.f1 for s in data.worst)
    assert data.worst[0].fp + data.worst[0].fn > 0


def test_confusion_matrix_is_redrawn_from_metrics_when_its_png_is_missing(store, dataset, tmp_path):
    make_run(store, "r-cm", dataset, tmp_path, champion=False, export=False)
    assert not store.exists("runs/r-cm/evaluate/confusion_matrix.png")
    data = gather(config(store), "r-cm", store)
    assert data.plots["confusion_matrix"][:8] == b"\x89PNG\r\n\x1a\n" and "pr_curve" in data.plots


def test_report_is_logged_to_mlflow(store, dataset, tmp_path):
    import mlflow

    from pipeline import tracking

    make_run(store, "r-mlflow", dataset, tmp_path, champion=False, export=False)
    cfg = config(store, f"mlflow.tracking_uri=sqlite:///{tmp_path / 'mlflow.db'}")
    keys = build_report(cfg, "r-mlflow", store)
    run = tracking.find_run(cfg, "r-mlflow")
    names = {a.path for a in mlflow.MlflowClient().list_artifacts(run.info.run_id, "report")}
    assert names == {"report/report.html", "report/report.md"}
    assert run.data.tags["nightshift.recommendation"] == keys["decision"] == "promote"


def test_airflow_run_id_is_read_from_the_stage_results(store):
    """Airflow's run id (recorded in every stage result) is found under the store's safe key."""
    from pipeline.context import safe_run_id

    airflow_id = "scheduled__2026-11-30T02:00:00+00:00"
    key = safe_run_id(airflow_id)
    assert key != airflow_id
    store.put_json({"status": "ok", "airflow_run_id": airflow_id}, f"runs/{key}/ingest/result.json")
    keys = build_report(config(store), airflow_id, store, log_to_mlflow=False)
    assert keys["html"] == f"runs/{key}/report/report.html"
    data = gather(config(store), key, store)
    assert data.run_id == key and data.airflow_run_id == airflow_id
    assert keys["text"] == render_markdown(data, store.url(keys["html"]))
