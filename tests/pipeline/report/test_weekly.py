"""`nightshift weekly`: a synthetic week written the way the stages write it, and every section of the report."""
from __future__ import annotations

import base64
import json
import re
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from pipeline import cli, tracking
from pipeline.config import load_config
from pipeline.context import RunContext
from pipeline.report import weekly
from pipeline.results import from_run
from pipeline.stages import evaluate, gate
from pipeline.training.reproduce import REPRODUCTION_TAG
from tests.helpers import last_result, only_commands
from tests.html_page import assert_self_contained, browser_problems, chromium, parse

CLASSES = ("circle", "square", "triangle")
NOW = datetime.now(UTC)


def _metrics(ap: float) -> dict:
    """An evaluate/metrics.json as evaluate writes it (the fields mlflow_metrics reads)."""
    stats = {k: ap for k in evaluate.STAT_KEYS}
    stats["AP50"] = min(1.0, ap + 0.2)
    per_class = {c: {"AP": ap - 0.05 * i, "AP50": min(1.0, ap + 0.2 - 0.05 * i), "support": 20}
                 for i, c in enumerate(CLASSES)}
    return {**stats, "operating_point": {"precision": 0.8, "recall": 0.7, "f1": 0.75}, "per_class": per_class,
            "champion": None}


def _export_report(p50: float, p95: float, ips: float, onnx_bytes: int) -> dict:
    row = lambda s: {"latency_ms": {"p50": p50 * s, "p95": p95 * s, "mean": p50 * s, "std": 0.1},
                     "throughput_ips": ips * s}
    return {"format": "onnx", "speed": {"batches": {"1": {"onnxruntime": row(1), "eager": row(2)},
                                                   "8": {"onnxruntime": row(4), "eager": row(8)}}},
            "size": {"onnx_bytes": onnx_bytes, "pytorch_state_dict_bytes": onnx_bytes}}


class Week:
    """Writes one pipeline run's traces: result.json per stage in the store, the MLflow run with its tags and
    metrics (through the stages' own helpers), and registry versions for promotions."""

    def __init__(self, cfg):
        import mlflow

        from pipeline import tracking

        self.cfg = cfg
        self.exp = tracking.setup(cfg)
        self.client = mlflow.MlflowClient()

    def result(self, run_id, stage, **fields):
        ctx = RunContext.create(run_id, stage, self.cfg)
        ctx.publish_json({"status": "ok", "run_id": run_id, "stage": stage, "exit_code": 0, **fields}, "result.json")
        return ctx

    def night(self, run_id, day, images, per_class, dataset_hash, changed=True):
        from pipeline import tracking

        start = NOW - timedelta(days=7 - day)
        self.client.create_run(self.exp, run_name=run_id, start_time=int(start.timestamp() * 1000),
                               tags={tracking.RUN_TAG: run_id})
        self.result(run_id, "ingest", images=images, annotations=sum(per_class.values()),
                    per_class={c: {"train": n, "val": 0, "test": 0, "total": n} for c, n in per_class.items()})
        self.result(run_id, "validate", passed=True, checks=14, failed=[])
        tracking.run_for(self.cfg, run_id, tags={"dataset_hash": dataset_hash, "dataset_remote": "local"})
        self.result(run_id, "snapshot", dataset_hash=dataset_hash)
        self.result(run_id, "changed", changed=changed, reason="changed: dataset_hash" if changed else
                    "nothing changed since champion v1")

    def trained(self, run_id, ap, overrides=None, reason=""):
        from pipeline import tracking

        mlrun = tracking.run_for(self.cfg, run_id)
        self.result(run_id, "train", mlflow_run_id=mlrun)
        metrics = _metrics(ap)
        ctx = self.result(run_id, "evaluate", AP=ap, AP50=metrics["AP50"])
        ctx.publish_json(metrics, "metrics.json")
        self.client.log_batch(mlrun, metrics=[
            __import__("mlflow").entities.Metric(k, v, int(time.time() * 1000), 0)
            for k, v in evaluate.mlflow_metrics(metrics).items()])
        return mlrun

    def gate(self, run_id, passed, failed=(), overrides=None, reason=""):
        checks = [{"name": "min_map", "metric": "AP", "value": 0.5, "threshold": 0.3, "direction": ">=",
                   "passed": True}] + [{"name": n, "metric": "AP", "value": 0.1, "threshold": 0.3, "direction": ">=",
                                        "passed": False} for n in failed]
        result = {"passed": passed, "checks": checks, "overrides": overrides or {}, "override_reason": reason,
                  "relaxed": sorted(overrides or {})}
        ctx = RunContext.create(run_id, "gate", self.cfg)
        gate._record(self.cfg, ctx, result)  # the MLflow tags the gate writes
        if passed:
            self.result(run_id, "gate", **result)
        else:  # as cli.run_stage writes a GateFailed
            ctx.publish_json({**result, "status": "gate_failed", "exit_code": 4, "run_id": run_id, "stage": "gate",
                              "error": "1 of 2 gate checks failed", "failures": [
                                  {k: c[k] for k in ("name", "value", "threshold", "direction", "passed")}
                                  for c in checks if not c["passed"]]}, "result.json")

    def promote(self, run_id, mlrun, triton_version, report):
        self.result(run_id, "export", onnx_mb=report["size"]["onnx_bytes"] / 1e6).publish_json(report, "report.json")
        client = tracking.registry_client(self.cfg)
        mv, _ = tracking.register(client, self.cfg.promote.model_name, mlrun, run_id, triton_version, "/repo")
        client.set_registered_model_alias(self.cfg.promote.model_name, self.cfg.promote.alias, mv.version)
        self.result(run_id, "promote", model=self.cfg.promote.model_name, version=triton_version,
                    registry_version=int(mv.version), alias=self.cfg.promote.alias)
        return mv

    def failed(self, run_id, stage, code, error):
        ctx = RunContext.create(run_id, stage, self.cfg)
        ctx.publish_json({"status": "error", "run_id": run_id, "stage": stage, "exit_code": code, "error": error},
                         "result.json")

    def reproduction(self, of, n, reproduced):
        from pipeline import tracking

        new_id = f"reproduce-{of}-{n}"
        tracking.run_for(self.cfg, new_id, tags={REPRODUCTION_TAG: of})
        self.cfg_store().put_json({"run_id": of, "reproduction": new_id, "tolerance": 0.001,
                                   "reproduced": reproduced, "metrics": []}, f"runs/{new_id}/reproduce/report.json")

    def cfg_store(self):
        from pipeline.store import open_store

        return open_store(self.cfg.store.uri)


@pytest.fixture
def week(tmp_path):
    cfg = load_config(None, [f"promote.model_name=weekly_{tmp_path.name[-12:]}"]).resolved()
    w = Week(cfg)
    base = {"circle": 100, "square": 100, "triangle": 100}
    # an old run, before the period: must not be reported
    w.night("old-night", -3, 250, base, "h0")
    # 1: new data, promoted as v1 (first champion)
    w.night("night-1", 1, 300, base, "h1")
    mlrun = w.trained("night-1", 0.50)
    w.gate("night-1", True)
    w.promote("night-1", mlrun, 1, _export_report(4.0, 6.0, 250.0, 4_000_000))
    # 2: nothing changed
    w.night("night-2", 2, 300, base, "h1", changed=False)
    # 3: new data, the gate refuses (a per-class regression)
    w.night("night-3", 3, 340, {**base, "triangle": 140}, "h3")
    w.trained("night-3", 0.40)
    w.gate("night-3", False, failed=["per_class_min"])
    # 4: more data, promoted as v2 through a gate override with a reason
    w.night("night-4", 4, 400, {"circle": 120, "square": 110, "triangle": 170}, "h4")
    mlrun = w.trained("night-4", 0.55)
    w.gate("night-4", True, overrides={"min_map": 0.2}, reason="labels fixed upstream, see ticket 42")
    w.promote("night-4", mlrun, 2, _export_report(4.5, 7.0, 220.0, 4_100_000))
    # 5: training crashes
    w.night("night-5", 5, 400, {"circle": 120, "square": 110, "triangle": 170}, "h4b")
    w.failed("night-5", "train", 1, "RuntimeError: CUDA out of memory")
    # 6: promoted as v3 ...
    w.night("night-6", 6, 420, {"circle": 130, "square": 110, "triangle": 180}, "h6")
    mlrun = w.trained("night-6", 0.60)
    w.gate("night-6", True)
    mv3 = w.promote("night-6", mlrun, 3, _export_report(5.0, 9.0, 200.0, 4_200_000))
    # 7: nothing changed
    w.night("night-7", 7, 420, {"circle": 130, "square": 110, "triangle": 180}, "h6", changed=False)
    # ... and v3 rolled back to v2 (what `nightshift rollback` does to the registry)
    client = tracking.registry_client(cfg)
    client.set_registered_model_alias(cfg.promote.model_name, cfg.promote.alias, "2")
    client.set_model_version_tag(cfg.promote.model_name, mv3.version, tracking.ROLLED_BACK_TAG, str(int(time.time())))
    # reproductions: one matched, one did not
    w.reproduction("night-1", 1, True)
    w.reproduction("night-4", 1, False)
    return cfg


def test_every_section_matches_the_synthetic_week(week, capsys):
    cfg = week
    start = NOW - timedelta(days=7, hours=1)
    data = weekly.collect(cfg, start, datetime.now(UTC) + timedelta(seconds=1))

    # runs and their outcomes
    outcomes = {r["run_id"]: r["outcome"] for r in data["runs"]}
    assert outcomes == {"night-1": "promoted", "night-2": "unchanged", "night-3": "held", "night-4": "promoted",
                        "night-5": "failed", "night-6": "promoted", "night-7": "unchanged"}
    assert [r["run_id"] for r in data["runs"]] == [f"night-{i}" for i in range(1, 8)]
    runs = {r["run_id"]: r for r in data["runs"]}
    assert runs["night-3"]["failed_checks"] == ["per_class_min"]
    assert runs["night-5"]["stage"] == "train" and "out of memory" in runs["night-5"]["detail"]
    assert [runs[f"night-{i}"]["version"] for i in (1, 4, 6)] == [1, 2, 3]
    assert data["counts"] == {"promoted": 3, "held": 1, "unchanged": 2, "failed": 1, "incomplete": 0}

    # champion history: three promotions, the override with its reason, the rollback; v2 serves now
    events = [(e["event"], e["version"], e["run_id"]) for e in data["champion"]["events"]]
    assert ("promotion", 1, "night-1") in events and ("promotion", 2, "night-4") in events
    assert ("promotion", 3, "night-6") in events and ("rollback", 3, "night-6") in events
    override = next(e for e in data["champion"]["events"] if e["event"] == "override")
    assert override["run_id"] == "night-4" and "ticket 42" in override["detail"] and "min_map=0.2" in override["detail"]
    assert data["champion"]["current"] == {"version": 2, "run_id": "night-4"}

    # metric trends: overall and per class from MLflow
    assert runs["night-4"]["AP"] == pytest.approx(0.55) and runs["night-4"]["AP50"] == pytest.approx(0.75)
    assert runs["night-6"]["per_class_AP"] == pytest.approx({"circle": 0.60, "square": 0.55, "triangle": 0.50})
    assert runs["night-2"]["AP"] is None

    # inference per promoted version, from export's report.json
    inf = {row["version"]: row for row in data["inference"]}
    assert inf[1]["p50_ms"] == 4.0 and inf[1]["p95_ms"] == 6.0 and inf[1]["throughput_ips"] == 250.0
    assert inf[3]["p95_ms"] == 9.0 and inf[3]["onnx_mb"] == pytest.approx(4.2)
    assert inf[2]["largest_batch"] == 8 and inf[2]["throughput_ips_largest"] == pytest.approx(880.0)

    # lead time: from the first run that snapshotted the dataset (night-1, six days before NOW; night-6, one day
    # before) to the promotion, registered while the fixture ran (its own clock time, however slow the machine)
    lead = {row["version"]: row for row in data["lead_times"]}
    assert set(lead) == {1, 2, 3}
    import mlflow

    registry = mlflow.MlflowClient()

    def hours_since(version: int, days_before_now: int) -> float:
        created = registry.get_model_version(cfg.promote.model_name, str(version)).creation_timestamp / 1000
        return (created - (NOW - timedelta(days=days_before_now)).timestamp()) / 3600

    assert lead[1]["hours"] == pytest.approx(hours_since(1, 6), abs=0.01)
    assert lead[3]["hours"] == pytest.approx(hours_since(3, 1), abs=0.01)

    # reproducibility
    assert data["reproducibility"]["checked"] == 2 and data["reproducibility"]["share"] == 0.5

    # data changes: new images between ingests, class shares first vs last
    per_run = {row["run_id"]: row["new_images"] for row in data["data"]["per_run"]}
    assert per_run["night-1"] is None and per_run["night-3"] == 40 and per_run["night-4"] == 60
    assert data["data"]["new_images_total"] == 120
    drift = {row["class"]: row for row in data["data"]["class_drift"]}
    assert drift["triangle"]["first"] == 100 and drift["triangle"]["last"] == 180
    assert drift["triangle"]["share_change"] == pytest.approx(180 / 420 - 1 / 3)


def test_the_command_writes_a_self_contained_page_logs_it_and_announces_it(week, tmp_path, capsys, monkeypatch):
    import mlflow

    only_commands(monkeypatch, "weekly")
    out = tmp_path / "weekly.html"
    assert cli.main(["weekly", "--since", "7d", "--out", str(out)]) == 0
    result = last_result(capsys)
    assert result["runs"] == 7 and result["promoted"] == 3

    page = out.read_text()
    parsed = parse(page)
    sections = [attrs.get("id") for tag, attrs in parsed.tags if tag == "h2"]
    assert sections == ["runs", "champion", "metrics", "inference", "lead-time", "reproducibility", "data"]
    # every plot is an embedded PNG; nothing is fetched from anywhere
    imgs = [img["src"] for img in parsed.imgs]
    assert len(imgs) == 4
    for src in imgs:
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"
    assert all(ref.startswith(("data:", "#")) for ref in parsed.refs), parsed.refs
    assert not re.search(r"(?:https?:)?//[A-Za-z0-9]", re.sub(r"data:[^\"']+", "", page)), "an external URL"
    for run_id in (f"night-{i}" for i in range(1, 8)):
        assert run_id in page
    assert "old-night" not in page
    assert "labels fixed upstream, see ticket 42" in page and "per_class_min" in page

    # logged to MLflow, in the store, announced with a link
    assert Path(result["html"].removeprefix("file://")).read_text() == page
    files = [f.path for f in mlflow.MlflowClient().list_artifacts(result["mlflow_run_id"], "weekly_report")]
    assert sorted(files) == ["weekly_report/weekly.html", "weekly_report/weekly.json"]
    sink = [json.loads(line) for line in Path(week.notify.sink).read_text().splitlines()]
    assert sink[-1]["event"] == "weekly_report"
    text = sink[-1]["text"]
    assert "7 runs: 3 promoted, 1 held, 2 unchanged, 1 failed" in text
    assert "night-3 (per_class_min)" in text and "night-5 at train" in text
    assert "Reproduced: 1/2" in text and result["html"] in text


@pytest.mark.parametrize("since, message", [("0d", "positive"), ("soon", "expected a period"),
                                            ("2999-01-01", "not in the past")])
def test_bad_since_is_a_usage_error(since, message, capsys, monkeypatch):
    only_commands(monkeypatch, "weekly")
    assert cli.main(["weekly", "--since", since]) == 2
    assert message in capsys.readouterr().err


def test_outcome_of_a_run_still_going_and_an_export_refusal():
    def typed(results: dict) -> dict:
        return {stage: from_run(stage, r) for stage, r in results.items()}

    assert weekly.outcome(typed({"ingest": {"status": "ok"}, "train": {"status": "ok"}})) == {
        "outcome": "incomplete", "stage": "train", "detail": "last stage with a result: train"}
    export = {"status": "gate_failed", "failures": [{"check": "latency_p95_ms_max"}]}
    refused = weekly.outcome(typed({"gate": {"status": "ok", "passed": True}, "export": export}))
    assert refused["outcome"] == "held" and refused["failed_checks"] == ["latency_p95_ms_max"]


def test_each_tasks_runs_are_reported_on_their_own_metrics_and_classes():
    from pipeline.metrics import classification_run, segm

    det = weekly.run_metrics(evaluate.mlflow_metrics(_metrics(0.5)) | {"eval_AP_drop_ci_low": -0.02,
                                                                       "eval_AP_drop_ci_high": 0.03})
    assert det["task"] == "detection" and det["headline"] == {"mAP": 0.5, "mAP@0.5": 0.7}
    assert set(det["per_class_metric"]) == set(CLASSES)  # the regression interval is not a class
    masks = {"segm": {k: 0.3 for k in evaluate.STAT_KEYS} | {"per_class": {"cell": {"AP": 0.25, "AP50": 0.5}}}}
    seg = weekly.run_metrics(evaluate.mlflow_metrics(_metrics(0.5)) | segm.mlflow_metrics(masks))
    assert seg["task"] == "segmentation" and list(seg["headline"]) == ["mask mAP", "mask mAP@0.5", "box mAP"]
    assert seg["class_metric"] == "mask AP" and seg["per_class_metric"] == {"cell": 0.25}
    cls = weekly.run_metrics(classification_run.mlflow_metrics({
        "accuracy": 0.9, "macro_f1": 0.8, "top_k": {}, "champion": None,
        "per_class": {"cat": {"recall": 0.95, "f1": 0.9}, "dog": {"recall": 0.85, "f1": 0.7}}}))
    assert cls["headline"] == {"accuracy": 0.9, "macro F1": 0.8}
    assert cls["class_metric"] == "recall" and cls["per_class_metric"] == {"cat": 0.95, "dog": 0.85}
    runs = [{"run_id": f"r{i}", "outcome": "promoted", "version": i, "per_class": {}, **m}
            for i, m in enumerate((det, seg, cls))]
    week = {"runs": runs, "inference": []}
    figures = weekly.plots(week)
    assert [f["title"] for f in figures] == ["Overall metric trend", "Per-class metric trend"]


@pytest.mark.skipif(chromium() is None, reason="no chromium (make browser installs it)")
def test_the_page_renders_in_a_browser_without_errors(week, tmp_path):
    data = weekly.collect(week, NOW - timedelta(days=7, hours=1), datetime.now(UTC) + timedelta(seconds=1))
    page = weekly.render(data)
    assert_self_contained(page)
    assert browser_problems(page, tmp_path) == ["images: 4"]
