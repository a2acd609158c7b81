"""Runs written by hand into a tmp store, the way ingest, evaluate, gate and export leave them, for the report's
tests (test_build.py, test_render.py). The gate's checks come from the gate itself, so the report shows what a
real gate would have recorded."""
from __future__ import annotations

import random

from pipeline.config import load_config
from pipeline.metrics.coco import report
from pipeline.metrics.plots import pr_curve_png
from pipeline import gates
from pipeline.store import LocalStore


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
             gate_thresholds=None, with_plots: bool = True, budgets=None, stability: bool = False) -> dict:
    """Publish what ingest, evaluate, gate (and export) would have left for `run_id`; `budgets` are the
    policy's latency and size budgets, judged by export; `stability` adds evaluate's stability suite (slices and
    bootstrap intervals, judged by the gate in bootstrap mode)."""
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
    if stability:
        from pipeline.metrics.stability import suite

        metrics["stability"] = suite(dataset["val"], dets, champ_dets if champion else None, resamples=50,
                                     min_support=5)  # each image is its own group here: no group slice
        metrics["robustness"] = {"clean": metrics["AP"], "corruptions": {"jpeg@1": {
            "challenger": metrics["AP"] - 0.2, "drop_vs_clean": 0.2, "champion": None, "drop_vs_champion": None}}}
    store.put_json(metrics, f"{base}/evaluate/metrics.json")
    store.put_json(dets, f"{base}/evaluate/detections.json")
    store.put_json({"status": "ok", "AP": metrics["AP"]}, f"{base}/evaluate/result.json")
    if with_plots:
        png = pr_curve_png(tmp_path / f"{run_id}-pr.png", ev.recall_thresholds, ev.pr_curves,
                           champ_ev.pr_curves if champ_ev else None)
        store.put_file(png, f"{base}/evaluate/pr_curve.png")
    thresholds = gate_thresholds or {"map_min": 0.0, "map50_min": 0.0, "max_regression": 1.0}
    checks, summary = gates.check(metrics, thresholds, 1, "bootstrap" if stability else "point", 1)
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


def config(store, *sets):
    return load_config(None, [f"store.uri={store.uri}", *sets]).resolved()
