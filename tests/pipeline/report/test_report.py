"""The run report from hand-made runs in a tmp store: with and without champion, export, gate; and `compare`."""
from __future__ import annotations

import json
import random
import re

import pytest

from pipeline import cli
from pipeline.config import load_config
from pipeline.datasets.synthetic import generate
from pipeline.metrics.coco import STAT_KEYS, report
from pipeline.metrics.plots import pr_curve_png
from pipeline.report import build_report
from pipeline.report.build import gather
from pipeline import gates
from pipeline.store import LocalStore

SIZE = 64



def detections_for(gt: dict, seed: int, jitter: float, drop: float, false_pos: int) -> list[dict]:
    """Deterministic predictions: jittered copies of the GT boxes (some dropped) plus random false positives."""
    rng = random.Random(seed)
    out = []
    for ann in gt["annotations"]:
        if rng.random() < drop:
            continue
        x, y, w, h = ann["bbox"]
        box = [x + rng.uniform(-jitter, jitter), y + rng.uniform(-jitter, jitter), w, h]
        out.append({"image_id": ann["image_id"], "category_id": ann["category_id"], "bbox": box,
                    "score": round(rng.uniform(0.5, 0.99), 3)})
    for _ in range(false_pos):
        image = rng.choice(gt["images"])
        out.append({"image_id": image["id"], "category_id": rng.choice([1, 2, 3]),
                    "bbox": [rng.uniform(0, 40), rng.uniform(0, 40), 16.0, 16.0],
                    "score": round(rng.uniform(0.3, 0.9), 3)})
    return out


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("report-data")
    generate(root / "dataset", num_images=12, image_size=SIZE, seed=5, min_size=12, max_size=28)
    coco = json.loads((root / "dataset" / "annotations.json").read_text())
    for image in coco["images"]:
        image["split"] = "val" if image["id"] % 2 else "train"
        image["group"] = image["file_name"]
    (root / "dataset" / "annotations.json").write_text(json.dumps(coco))
    val = dict(coco, images=[i for i in coco["images"] if i["split"] == "val"])
    ids = {i["id"] for i in val["images"]}
    val["annotations"] = [a for a in coco["annotations"] if a["image_id"] in ids]
    return {"dir": root / "dataset", "val": val}


def export_report(p95=30.0, onnx_bytes=12_000_000):
    lat = {"p50": p95 * 0.8, "p95": p95, "p99": p95 * 1.1, "mean": p95 * 0.85, "std": 1.0, "min": 1.0, "max": p95 * 2}
    return {"format": "onnx", "opset": 17, "model": "ssdlite320_mobilenet_v3_large", "image_size": 320,
            "checks": {"outputs": {"images": 8, "vs_pytorch": {"match_fraction": 1.0}, "passed": True},
                       "parity": {"pytorch": {"AP": 0.5}, "onnxruntime": {"AP": 0.5}, "map_drop": 0.0,
                                  "max_map_drop": 0.001, "passed": True}},
            "speed": {"threads": 1, "image_size": 320,
                      "batches": {"1": {"eager": {"latency_ms": dict(lat, p95=p95 * 3), "throughput_ips": 10.0},
                                        "onnxruntime": {"latency_ms": lat, "throughput_ips": 40.0},
                                        "ort_vs_eager_speedup": 3.1}}},
            "size": {"onnx_bytes": onnx_bytes, "pytorch_state_dict_bytes": 14_000_000}}


def make_run(store: LocalStore, run_id: str, dataset, tmp_path, *, champion: bool, export: bool,
             gate_thresholds=None, with_plots: bool = True, budgets=None) -> dict:
    """Publish what ingest, evaluate, gate (and export) would have left for `run_id`; `budgets` are the
    policy's latency and size budgets, judged by export."""
    base = f"runs/{run_id}"
    store.put_dir(dataset["dir"], f"{base}/ingest/dataset")
    store.put_json({"status": "ok", "duration_s": 1.0}, f"{base}/ingest/result.json")
    dets = detections_for(dataset["val"], seed=1, jitter=1.5, drop=0.15, false_pos=6)
    metrics, ev = report(dataset["val"], dets, "bbox", 0.3)
    metrics.update(split="val", images=len(dataset["val"]["images"]), champion=None)
    champ_ev = None
    if champion:
        champ_dets = detections_for(dataset["val"], seed=2, jitter=0.5, drop=0.0, false_pos=1)
        champ_metrics, champ_ev = report(dataset["val"], champ_dets, "bbox", 0.3)
        metrics["champion"] = dict(champ_metrics, version="3", run_id="abc")
    store.put_json(metrics, f"{base}/evaluate/metrics.json")
    store.put_json(dets, f"{base}/evaluate/detections.json")
    store.put_json({"status": "ok", "AP": metrics["AP"]}, f"{base}/evaluate/result.json")
    if with_plots:
        png = pr_curve_png(tmp_path / f"{run_id}-pr.png", ev.recall_thresholds, ev.pr_curves,
                           champ_ev.pr_curves if champ_ev else None)
        store.put_file(png, f"{base}/evaluate/pr_curve.png")
    thresholds = gate_thresholds or {"map_min": 0.0, "map50_min": 0.0, "max_regression": 1.0}
    checks, summary = gates.check(metrics, thresholds, 1)
    passed = all(c["passed"] for c in checks)
    budgets = budgets or {}
    store.put_json({"status": "ok" if passed else "gate_failed", "passed": passed, "checks": checks,
                    "champion": summary, "overrides": {}, "thresholds": {**thresholds, **budgets},
                    "deferred": list(budgets)},
                   f"{base}/gate/result.json")
    if export:
        store.put_json(export_report(), f"{base}/export/report.json")
        deployment = gates.deployment_checks(budgets, export_report())
        failures = [f.to_dict() for f in gates.failures_of(deployment)]
        store.put_json({"status": "gate_failed" if failures else "ok", "deployment_checks": deployment,
                        "failures": failures}, f"{base}/export/result.json")
    return metrics


@pytest.fixture
def store(tmp_path):
    return LocalStore(tmp_path / "artifacts")


def config(store, *sets):
    return load_config(None, [f"store.uri={store.uri}", *sets]).resolved()


def html_of(store, keys) -> str:
    return store.get_bytes(keys["html"]).decode()


SECTIONS = ("recommendation", "overall", "per-class", "pr-curves", "confusion", "samples", "gates", "performance",
            "dataset", "stages")


def assert_self_contained(page: str) -> None:
    assert not re.search(r"""(src|href)\s*=\s*['"]?https?:""", page)
    assert "<script" not in page and "<link" not in page and "@import" not in page
    assert "url(http" not in page


def test_full_report_with_champion_and_export(store, dataset, tmp_path):
    metrics = make_run(store, "r-full", dataset, tmp_path, champion=True, export=True,
                       budgets={"latency_p95_ms_max": 50.0, "model_size_mb_max": 20.0})
    keys = build_report(config(store), "r-full", store, log_to_mlflow=False)
    assert keys["html"] == "runs/r-full/report/report.html" and keys["markdown"] == "runs/r-full/report/report.md"
    page = html_of(store, keys)
    for section in SECTIONS:
        assert f"id='{section}'" in page, section
    assert_self_contained(page)
    # PR curve + confusion matrix (redrawn from metrics.json) + best and worst samples, all inline PNGs
    pngs = re.findall(r"src='data:image/png;base64,([A-Za-z0-9+/=]+)'", page)
    assert len(pngs) >= 4
    import base64
    assert all(base64.b64decode(p)[:8] == b"\x89PNG\r\n\x1a\n" for p in pngs)
    assert "Best images" in page and "Worst images" in page
    # 12 stats and per-class rows with the champion's numbers and coloured deltas
    for key in STAT_KEYS:
        assert f"<td>{key}</td>" in page
    delta = metrics["AP"] - metrics["champion"]["AP"]
    assert f"{delta:+.3f}" in page and ("class='down'" in page or "class='up'" in page)
    for name in ("circle", "square", "triangle"):
        assert f"<td>{name}</td>" in page
    assert "ORT vs eager" in page and "3.10x" in page and "12.00 MB" in page
    assert "latency_p95_ms_max" in page and "model_size_mb_max" in page
    # the model is worse than the champion but max_regression=1.0 lets it through; budgets are met
    assert keys["decision"] == "promote" and "Recommendation: Promote" in page
    md = store.get_bytes(keys["markdown"]).decode()
    assert md == keys["text"] and "PROMOTE" in md and "vs champion v3" in md
    assert len(md.splitlines()) <= 12 and len(md) < 1200 and "report.html" in md


def test_gate_failed_without_export_holds_naming_the_failures(store, dataset, tmp_path):
    make_run(store, "r-held", dataset, tmp_path, champion=True, export=False, with_plots=False,
             gate_thresholds={"map_min": 0.99, "map50_min": 0.0, "max_regression": 0.0},
             budgets={"latency_p95_ms_max": 50.0})
    keys = build_report(config(store), "r-held", store, log_to_mlflow=False)
    page = html_of(store, keys)
    assert keys["decision"] == "hold" and "Recommendation: Hold" in page
    assert any("map_min" in r for r in keys["reasons"]) and any("max_regression" in r for r in keys["reasons"])
    assert "Not measured: export has not run" in page
    assert "judged on export&#x27;s report; export has not run" in page
    assert "Not available: evaluate wrote no pr_curve.png" in page
    assert_self_contained(page)
    md = keys["text"]
    assert md.startswith("*Nightshift run r-held: HOLD*") and "gate check failed: map_min" in md


def test_first_run_without_champion(store, dataset, tmp_path):
    make_run(store, "r-first", dataset, tmp_path, champion=False, export=True)
    keys = build_report(config(store), "r-first", store, log_to_mlflow=False)
    page = html_of(store, keys)
    assert "no champion yet" in page and keys["decision"] == "promote"
    assert "(no champion yet)" in keys["text"]
    # no champion: every delta is n/a
    assert "class='na'>n/a</td>" in page and "class='up'>+" not in page


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
    assert "model_size_mb_max" in html_of(store, keys)  # the budget export did judge, and met
    store.put_json({"status": "error", "error": "RuntimeError: boom"}, "runs/r-parity/export/result.json")
    data = gather(config(store), "r-parity", store, samples=0)
    assert data.deployment_checks == [] and data.deployment_note.startswith("not judged: export stopped")
    assert data.reasons == ["export failed verification: RuntimeError: boom"]


def test_run_that_stopped_before_evaluate(store, dataset):
    store.put_json({"status": "ok"}, "runs/r-early/ingest/result.json")
    store.put_json({"status": "rejected", "error": "2 of 11 checks failed"}, "runs/r-early/validate/result.json")
    store.put_json({"passed": False, "checks": 11, "failed": 2, "failed_checks": ["boxes_inside", "balance"],
                    "observed_tables": {"splits": [{"split": "train", "images": 9}]}},
                   "runs/r-early/validate/report.json")
    store.put_bytes(b"<html>docs</html>", "runs/r-early/validate/data_docs/index.html")
    store.put_bytes(b"# Shapes\nthree classes of synthetic shapes", "runs/r-early/snapshot/card.md")
    keys = build_report(config(store), "r-early", store, log_to_mlflow=False)
    page = html_of(store, keys)
    assert keys["decision"] == "hold" and "no evaluation metrics" in keys["reasons"][0]
    assert "boxes_inside, balance" in page and "three classes of synthetic shapes" in page
    assert "validate/data_docs/index.html" in page and "2 of 11 checks failed" in page
    assert_self_contained(page)


def test_sample_ranking_puts_perfect_images_first(store, dataset, tmp_path):
    make_run(store, "r-samples", dataset, tmp_path, champion=False, export=False)
    data = gather(config(store), "r-samples", store, samples=2)
    assert len(data.best) == 2 and len(data.worst) == 2
    assert {s.image_id for s in data.best}.isdisjoint(s.image_id for s in data.worst)
    assert min(s.f1 for s in data.best) >= max(s.f1 for s in data.worst)
    assert data.worst[0].fp + data.worst[0].fn > 0


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


# -- nightshift compare --------------------------------------------------------------------------------

@pytest.fixture
def tools_only(monkeypatch):
    monkeypatch.setattr(cli, "STAGES", ())
    monkeypatch.setattr(cli, "TOOLS", {"compare": "pipeline.report.compare"})


def test_compare_prints_both_runs_and_deltas(store, tools_only, capsys):
    per_class = lambda ap: {"circle": {"AP": ap, "AP50": 0.9, "AR100": 0.5, "support": 12},  # noqa: E731
                            "square": {"AP": 0.3, "AP50": 0.6, "AR100": 0.4, "support": 8}}
    a = {k: 0.5 for k in STAT_KEYS} | {"APs": None, "per_class": per_class(0.40), "split": "val", "images": 20}
    b = {k: 0.5 for k in STAT_KEYS} | {"AP": 0.55, "APs": None, "per_class": per_class(0.35), "split": "val",
                                       "images": 20}
    store.put_json(a, "runs/night-1/evaluate/metrics.json")
    store.put_json(b, "runs/night-2/evaluate/metrics.json")
    code = cli.main(["compare", "night-1", "night-2", "--set", f"store.uri={store.uri}"])
    out = capsys.readouterr().out
    assert code == 0
    ap_line = next(line for line in out.splitlines() if line.startswith("AP "))
    assert ap_line.split() == ["AP", "0.500", "0.550", "+0.050"]
    assert next(line for line in out.splitlines() if line.startswith("APs")).split() == ["APs", "n/a", "n/a", "n/a"]
    circle = [line for line in out.splitlines() if line.startswith("circle")]
    assert circle[0].split() == ["circle", "0.400", "0.350", "-0.050", "12"]  # AP block, then AP50
    assert circle[1].split() == ["circle", "0.900", "0.900", "0.000", "12"]
    assert "\033[" not in out  # no colour when not a terminal


def test_compare_missing_run_exits_3(store, tools_only, capsys):
    store.put_json({"AP": 0.5}, "runs/night-1/evaluate/metrics.json")
    code = cli.main(["compare", "night-1", "night-404", "--set", f"store.uri={store.uri}"])
    err = capsys.readouterr().err
    assert code == 3 and "night-404" in err and "evaluate/metrics.json not found" in err


def test_airflow_run_id_is_shown_beside_the_store_key(store, dataset):
    """Airflow's run id (recorded in every stage result) heads the page and the chat summary; the store's key
    stays beside it, so a teammate can find the run in either place."""
    from pipeline.context import safe_run_id

    airflow_id = "scheduled__2026-11-30T02:00:00+00:00"
    key = safe_run_id(airflow_id)
    assert key != airflow_id
    store.put_json({"status": "ok", "airflow_run_id": airflow_id}, f"runs/{key}/ingest/result.json")
    keys = build_report(config(store), airflow_id, store, log_to_mlflow=False)
    page = html_of(store, keys)
    assert f"<h1>Nightshift run {airflow_id}</h1>" in page
    assert f"Airflow run <code>{airflow_id}</code> &middot; store key <code>{key}</code>" in page
    summary = store.get_bytes(keys["markdown"]).decode()
    assert summary.startswith(f"*Nightshift run {airflow_id} (store key {key}): HOLD*")
