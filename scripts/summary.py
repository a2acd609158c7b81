"""Print where a run's outputs are: the newest pipeline run in the local artifact store."""
from __future__ import annotations

import argparse
import json
import os

from pipeline.config import load_config
from pipeline.store import LocalStore

STAGES = ("check", "ingest", "validate", "snapshot", "changed", "train", "evaluate", "gate", "export", "promote",
          "notify")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--since", type=float, default=0, help="only runs touched after this epoch time")
    args = parser.parse_args()
    cfg = load_config(os.environ.get("NIGHTSHIFT_CONFIG") or None).resolved()
    store = LocalStore(cfg.store.uri.removeprefix("file://"))
    runs_dir = store.root / "runs"
    runs = [p for p in runs_dir.glob("*") if p.is_dir() and p.stat().st_mtime >= args.since - 1] if runs_dir.exists() else []
    if not runs:
        print("no pipeline run found in", runs_dir)
        return 1
    run = max(runs, key=lambda p: max(f.stat().st_mtime for f in p.rglob("*")))
    results = {}
    for stage in STAGES:
        path = run / stage / "result.json"
        if path.exists():
            results[stage] = json.loads(path.read_text())
    home = os.environ.get("NIGHTSHIFT_HOME", ".nightshift")
    bar = "=" * 78
    airflow_id = next((r.get("airflow_run_id") for r in results.values() if r.get("airflow_run_id")), None)
    title = f"{airflow_id} (store key {run.name})" if airflow_id and airflow_id != run.name else run.name
    print(f"\n{bar}\nNightshift run {title}\n{bar}")
    for stage in STAGES:
        r = results.get(stage)
        print(f"  {stage:<9} {r['status'] if r else 'not run'}" + (f"  ({r.get('duration_s')} s)" if r else ""))
    snap, changed, train = results.get("snapshot", {}), results.get("changed", {}), results.get("train", {})
    evaluate, promote, notify = results.get("evaluate", {}), results.get("promote", {}), results.get("notify", {})
    print()
    if snap:
        print(f"  dataset    DVC hash {snap.get('dataset_hash')} pushed to {snap.get('remote')}")
    if changed and not changed.get("changed", True):
        print(f"  changed?   {changed.get('reason')}")
    if train:
        print(f"  MLflow     run {train.get('mlflow_run_id')} in {cfg.mlflow.tracking_uri}")
    if evaluate:
        where = store.url(f"runs/{run.name}/evaluate/metrics.json")
        if evaluate.get("task") == "classification":
            figures = f"accuracy {evaluate.get('accuracy')}  macro F1 {evaluate.get('macro_f1')}"
        else:
            figures = f"mAP {evaluate.get('AP')}  mAP@0.5 {evaluate.get('AP50')}"
            segm = evaluate.get("segm") or {}
            if segm:
                figures += f"  mask mAP {segm.get('AP')}  mask mAP@0.5 {segm.get('AP50')}"
        print(f"  metrics    {figures}  ({where})")
    if (run / "export" / "report.json").exists():
        print(f"  export     {store.url(f'runs/{run.name}/export/report.json')}")
    if promote:
        print(f"  Triton     {promote.get('model')} version {promote.get('version')} in {promote.get('repository')}")
    if notify:
        where = notify.get("delivered_to") or "nowhere (notify.on_success is false)"
        if str(where).startswith("sink"):
            where = f"{where.replace('sink', 'the local alert sink', 1)}: {cfg.notify.sink}"
        elif where == "webhook":
            where = "the chat webhook (connection nightshift_chat)"
        print(f"  chat       {notify.get('event')} message sent to {where}")
    print(f"  artifacts  {run}")
    print("\n  Airflow UI: make airflow-ui   (http://127.0.0.1:8080, login printed when it starts)")
    print("  MLflow UI:  make mlflow-ui    (http://127.0.0.1:5000)")
    print(f"  workspace:  {home}  (make clean removes it)\n{bar}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
