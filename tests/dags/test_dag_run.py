"""One real `airflow dags test` of nightshift_retrain through the task runner, with a fake `nightshift`:
the branch follows `changed`, each stage runs through the local operator, a refused gate fails at once
(no retry despite retries=1) with its checks in the log and no traceback, nothing downstream runs, and the
failure callback writes the alert."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.airflow, pytest.mark.slow]
REPO = Path(__file__).resolve().parents[2]

FAKE = """\
#!{python}
import json, os, sys
stage = sys.argv[1]
with open(os.environ["FAKE_TRACE"], "a") as fh:
    fh.write(json.dumps(sys.argv[1:]) + "\\n")
result = {{"status": "ok", "stage": stage}}
code = 0
if stage == "changed":
    result.update(changed=True, reason="new dataset snapshot")
if stage == "gate":
    code = 4
    result.update(status="gate_failed", error="gate refused the release: 1 of 3 checks failed",
                  failures=[{{"check": "map50_min", "expected": ">= 0.5", "actual": 0.41, "direction": ">=",
                                  "threshold": 0.5, "message": "map50_min: AP50 = 0.4100, must be >= 0.5"}}])
print("NIGHTSHIFT_RESULT " + json.dumps(result), flush=True)
sys.exit(code)
"""


def _airflow(tmp_path):
    fake = tmp_path / "nightshift"
    fake.write_text(FAKE.format(python=sys.executable))
    fake.chmod(0o755)
    trace = tmp_path / "trace.jsonl"
    airflow = str(Path(sys.executable).parent / "airflow")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW_CONN", "NIGHTSHIFT"))}
    env.update(AIRFLOW_HOME=str(tmp_path / "airflow-home"), AIRFLOW__CORE__UNIT_TEST_MODE="False",
               NIGHTSHIFT_PIPELINE_BIN=str(fake), NIGHTSHIFT_ALERT_SINK=str(tmp_path / "alerts.jsonl"),
               FAKE_TRACE=str(trace))
    migrate = subprocess.run([airflow, "db", "migrate"], env=env, capture_output=True, text=True, timeout=240)
    assert migrate.returncode == 0, migrate.stderr[-2000:]
    return airflow, env, trace


def test_retrain_runs_to_a_refused_gate_and_alerts(tmp_path):
    airflow, env, trace = _airflow(tmp_path)
    conf = {"epochs": 2, "gates": {"map50_min": 0.5}, "override_reason": "trial"}
    run = subprocess.run([airflow, "dags", "test", "nightshift_retrain", "-c", json.dumps(conf)],
                         env=env, cwd=REPO, capture_output=True, text=True, timeout=300)
    log = run.stdout + run.stderr
    assert run.returncode == 1, log[-3000:]

    calls = [json.loads(line) for line in trace.read_text().splitlines()]
    assert [c[0] for c in calls] == ["check", "ingest", "validate", "snapshot", "changed", "train", "evaluate",
                                     "gate"]
    assert "train.epochs=2" in calls[0] and 'gates.overrides={"map50_min": 0.5}' in calls[0]
    assert calls[4][-2:] == ["--force", "false"]
    assert "up_for_retry" not in log  # exit 4 fails fast although the task has retries=1
    # the refusal is said in the task log, once, without Airflow's traceback after it (refusal.py)
    assert "Task failed, not retried: nightshift gate: gate refused" in log and "map50_min: AP50 = 0.4100, must be >= 0.5" in log
    assert "Traceback" not in log and "Task failed with exception" not in log, log[-3000:]

    (alert,) = [json.loads(line) for line in (tmp_path / "alerts.jsonl").read_text().splitlines()]
    assert alert["dag_id"] == "nightshift_retrain" and alert["task_id"] == "gate"
    assert "map50_min" in alert["error"] and "gate refused" in alert["error"]
    assert alert["run_id"].startswith("manual__") and "/dags/nightshift_retrain/runs/" in alert["log_url"]


def test_a_misspelt_param_is_refused_before_any_stage_runs(tmp_path):
    airflow, env, trace = _airflow(tmp_path)
    run = subprocess.run([airflow, "dags", "test", "nightshift_retrain", "-c", json.dumps({"epochz": 5})],
                         env=env, cwd=REPO, capture_output=True, text=True, timeout=300)
    log = run.stdout + run.stderr
    assert run.returncode == 1, log[-3000:]
    assert not trace.exists(), "no nightshift stage may run for a conf with an unknown key"
    assert "Task failed, not retried: unknown param 'epochz'" in log and "Traceback" not in log, log[-3000:]
    (alert,) = [json.loads(line) for line in (tmp_path / "alerts.jsonl").read_text().splitlines()]
    assert alert["task_id"] == "check_conf"
    assert "unknown param 'epochz'" in alert["error"] and "known params: source, format, task, model, epochs" in alert["error"]
