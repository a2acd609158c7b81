"""The local runner against a tiny fake `nightshift`: results, exit codes, the chat webhook in the env."""
from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import textwrap
import types
from pathlib import Path

import pytest

pytestmark = pytest.mark.airflow
REPO = Path(__file__).resolve().parents[2]

FAKE = """\
#!{python}
# A stand-in for the pipeline's console script: behaviour from FAKE_* variables.
import json, os, sys
print("stage starting", sys.argv[1:], flush=True)
if os.environ.get("FAKE_STDERR"):
    print(os.environ["FAKE_STDERR"], file=sys.stderr, flush=True)
result = json.loads(os.environ.get("FAKE_RESULT", "null"))
if result is not None:
    result["argv"] = sys.argv[1:]
    result["webhook_in_env"] = os.environ.get("NIGHTSHIFT_WEBHOOK_URL")
    print("NIGHTSHIFT_RESULT " + json.dumps(result), flush=True)
sys.exit(int(os.environ.get("FAKE_EXIT", "0")))
"""


@pytest.fixture
def fake_nightshift(tmp_path):
    path = tmp_path / "nightshift"
    path.write_text(FAKE.format(python=sys.executable))
    path.chmod(0o755)
    return str(path)


@pytest.fixture
def local_operator(dagbag):
    from nightshift_airflow.local import NightshiftLocalOperator

    def make(fake, arguments=("gate", "--run-id", "{{ run_id }}")):
        return NightshiftLocalOperator(task_id="gate", arguments=list(arguments), executable=fake)

    return make


def _run(op, monkeypatch, exit_code=0, result=None, stderr=None, params=None):
    monkeypatch.setenv("FAKE_EXIT", str(exit_code))
    monkeypatch.setenv("FAKE_RESULT", json.dumps(result))
    if stderr:
        monkeypatch.setenv("FAKE_STDERR", stderr)
    context = {"run_id": "manual__2026-11-25T02:00:00+00:00", "params": params or {},
               "ti": types.SimpleNamespace(task_id=op.task_id)}
    op.render_template_fields(context, op.get_template_env() if op.has_dag() else _jinja())
    return op.execute(context)


def _jinja():
    import jinja2

    return jinja2.Environment()


def test_success_returns_the_result_as_xcom(local_operator, fake_nightshift, monkeypatch):
    op = local_operator(fake_nightshift)
    out = _run(op, monkeypatch, result={"status": "ok", "AP50": 0.71})
    assert out["status"] == "ok" and out["AP50"] == 0.71
    assert out["argv"] == ["gate", "--run-id", "manual__2026-11-25T02:00:00+00:00"]


def test_gate_refused_fails_without_retry_and_lists_checks(local_operator, fake_nightshift, monkeypatch):
    from airflow.sdk.exceptions import AirflowFailException

    result = {"status": "gate_failed", "error": "gate refused the release: 2 checks failed",
              "failures": [{"check": "map50_min", "expected": ">= 0.5", "actual": 0.41,
                            "message": "map50_min: AP50 = 0.4100, must be >= 0.5"},
                           {"check": "max_regression", "expected": "<= 0.02", "actual": 0.05,
                            "message": "max_regression: AP drop vs champion = 0.0500, must be <= 0.02"}]}
    with pytest.raises(AirflowFailException) as info:
        _run(local_operator(fake_nightshift), monkeypatch, exit_code=4, result=result)
    message = str(info.value)
    assert "gate refused" in message and "map50_min" in message and "max_regression" in message
    from nightshift_airflow.refusal import Refused

    assert isinstance(info.value, Refused)  # logged without a traceback (test_refusal.py)


def test_gate_failure_carries_values_thresholds_and_links(local_operator, fake_nightshift, monkeypatch):
    """What the failure alert reads: the message names every failed gate with value and threshold and ends
    with the MLflow run and the report; the same arrives structured as `nightshift_result`."""
    from airflow.sdk.exceptions import AirflowFailException

    report = "file:///store/runs/r/report/report.html"
    result = {"status": "gate_failed", "exit_code": 4,
              "error": f"2 of 3 gate checks failed: map50_min ...; max_regression .... Report: {report}",
              "failures": [{"check": "map50_min", "expected": ">= 0.5", "actual": 0.41, "direction": ">=",
                            "threshold": 0.5, "message": "map50_min: AP50 = 0.4100, must be >= 0.5"},
                           {"check": "per_class_max_regression", "class": "circle", "expected": "<= 0.05",
                            "actual": 0.1, "direction": "<=", "threshold": 0.05,
                            "message": "per_class_max_regression: AP drop vs champion [circle] = 0.1000, "
                                       "must be <= 0.05"}],
              "mlflow_run_url": "http://mlflow.local/#/experiments/1/runs/abc123", "report": report,
              "checks": [{"name": "map_min", "passed": True}]}
    with pytest.raises(AirflowFailException) as info:
        _run(local_operator(fake_nightshift), monkeypatch, exit_code=4, result=result)
    lines = str(info.value).splitlines()
    assert lines[0] == "nightshift gate: gate refused"
    assert "  - map50_min: AP50 = 0.4100, must be >= 0.5" in lines
    assert "  - per_class_max_regression: AP drop vs champion [circle] = 0.1000, must be <= 0.05" in lines
    assert lines[-1] == "MLflow run: http://mlflow.local/#/experiments/1/runs/abc123"
    assert sum(report in line for line in lines) == 1  # the gate's error already links the report
    carried = info.value.nightshift_result
    assert carried["failures"] == result["failures"] and carried["report"] == report
    assert carried["mlflow_run_url"] == result["mlflow_run_url"] and carried["exit_code"] == 4
    assert "checks" not in carried  # only what the alert needs


def test_crash_carries_the_links_too(local_operator, fake_nightshift, monkeypatch):
    from airflow.sdk.exceptions import AirflowException

    with pytest.raises(AirflowException) as info:
        _run(local_operator(fake_nightshift), monkeypatch, exit_code=1,
             result={"status": "error", "error": "RuntimeError: boom", "mlflow_run_url": "mlflow run abc (sqlite:///x)"})
    assert str(info.value).endswith("MLflow run: mlflow run abc (sqlite:///x)")
    assert info.value.nightshift_result == {"stage": "gate", "status": "error", "exit_code": 1,
                                            "error": "RuntimeError: boom",
                                            "mlflow_run_url": "mlflow run abc (sqlite:///x)"}


def test_rejected_input_fails_without_retry(local_operator, fake_nightshift, monkeypatch):
    from airflow.sdk.exceptions import AirflowFailException

    stderr = "nightshift validate: error: data/annotations.json: images[3].width: not a number"
    with pytest.raises(AirflowFailException) as info:
        _run(local_operator(fake_nightshift, ["validate", "--run-id", "r"]), monkeypatch, exit_code=3, stderr=stderr)
    assert "input rejected" in str(info.value) and "images[3].width" in str(info.value)


@pytest.mark.parametrize("exit_code", [1, 137])
def test_unexpected_error_is_retryable(local_operator, fake_nightshift, monkeypatch, exit_code):
    from airflow.sdk.exceptions import AirflowException, AirflowFailException

    with pytest.raises(AirflowException) as info:
        _run(local_operator(fake_nightshift), monkeypatch, exit_code=exit_code,
             result={"status": "error", "error": "RuntimeError: CUDA out of memory"})
    assert not isinstance(info.value, AirflowFailException)  # hence not a Refused: its traceback stays
    assert "CUDA out of memory" in str(info.value)


def test_missing_result_line_is_an_error(local_operator, fake_nightshift, monkeypatch):
    from airflow.sdk.exceptions import AirflowException

    with pytest.raises(AirflowException, match="without a NIGHTSHIFT_RESULT"):
        _run(local_operator(fake_nightshift), monkeypatch, exit_code=0, result=None)


def test_webhook_goes_through_the_environment_only(local_operator, fake_nightshift, monkeypatch):
    url = "http://127.0.0.1:9/services/T/B/very-secret"
    monkeypatch.setenv("AIRFLOW_CONN_NIGHTSHIFT_CHAT", json.dumps({"conn_type": "slackwebhook", "password": url}))
    out = _run(local_operator(fake_nightshift), monkeypatch, result={"status": "ok"})
    assert out["webhook_in_env"] == url
    assert not any("very-secret" in a for a in out["argv"])
    monkeypatch.delenv("AIRFLOW_CONN_NIGHTSHIFT_CHAT")
    assert _run(local_operator(fake_nightshift), monkeypatch, result={"status": "ok"})["webhook_in_env"] is None


def test_dag_task_renders_params_into_single_argv_elements(dagbag, fake_nightshift, monkeypatch):
    """The real `changed` task with trigger params: each override is one argv element, unset ones vanish."""
    dag = dagbag.dags["nightshift_retrain"]
    task = copy.deepcopy(dag.get_task("changed"))
    task.executable = fake_nightshift
    params = dict(dag.params.dump(), source="/data/export with spaces; rm -rf /", epochs=2, force=True,
                  gates={"map_min": 0.25})
    out = _run(task, monkeypatch, result={"status": "ok", "changed": True}, params=params)
    assert out["argv"] == [
        "changed", "--run-id", "manual__2026-11-25T02:00:00+00:00",
        "--set", 'data.source="/data/export with spaces; rm -rf /"',
        "--set", "train.epochs=2",
        "--set", 'gates.overrides={"map_min": 0.25}',
        "--force", "true",
    ]


def test_rendered_commands_are_accepted_by_the_pipeline_cli(dagbag):
    """Every task's rendered command parses with the real `nightshift` parser and its --set values load
    through the real pipeline.config (both in the pipeline venv)."""
    python = REPO / ".venv-pipeline" / "bin" / "python"
    if not python.exists():
        pytest.fail("no .venv-pipeline: run `make envs` (make test creates it before these tests)")
    commands = {}
    for dag_id, params in [
        ("nightshift_retrain", dict(source="s3://bucket/night: 1/it's \"quoted\"", format="kitti", model="yes",
                                    task="classification", epochs=5, gates={"map_min": 0.3, "map50_min": 0.5},
                                    override_reason="ok'd by <ops> & QA", force=True)),
        ("nightshift_rollback", dict(model="nightshift_detector", to_version=3)),
        ("nightshift_weekly_report", dict(since="14d")),
    ]:
        dag = dagbag.dags[dag_id]
        for task in dag.tasks:
            if not hasattr(task, "arguments"):
                continue
            task = copy.deepcopy(task)
            task.render_template_fields({"run_id": "manual__2026-11-25T02:00:00+00:00",
                                         "params": dict(dag.params.dump(), **params)}, dag.get_template_env())
            commands[f"{dag_id}.{task.task_id}"] = task.arguments
    code = textwrap.dedent("""
        import json, sys
        from pipeline.cli import build_parser
        from pipeline.config import load_config
        parser, out = build_parser(), {}
        for name, argv in json.loads(sys.argv[1]).items():
            args = parser.parse_args(argv)
            cfg = load_config(args.config, getattr(args, "overrides", []))
            out[name] = {"source": cfg.data.source, "format": cfg.data.format, "task": cfg.data.task,
                         "model": cfg.train.model,
                         "epochs": cfg.train.epochs, "gates": cfg.gates.overrides,
                         "reason": cfg.gates.override_reason, "force": str(getattr(args, "force", None))}
        print(json.dumps(out))
    """)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "NIGHTSHIFT_CONFIG"))}
    out = subprocess.run([str(python), "-c", code, json.dumps(commands)], cwd=REPO, capture_output=True, text=True,
                         timeout=180, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    parsed = json.loads(out.stdout.strip().splitlines()[-1])
    assert set(parsed) == set(commands) and len(parsed) == 13
    assert commands["nightshift_weekly_report.weekly"][-2:] == ["--since", "14d"]
    for name, values in parsed.items():
        if name.startswith("nightshift_retrain."):
            assert values == {"source": "s3://bucket/night: 1/it's \"quoted\"", "format": "kitti",
                              "task": "classification", "model": "yes",
                              "epochs": 5, "gates": {"map_min": 0.3, "map50_min": 0.5},
                              "reason": "ok'd by <ops> & QA",
                              "force": "true" if name.endswith(".changed") else "None"}, name
