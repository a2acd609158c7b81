"""DAG integrity: they import, parse fast, and are wired as docs/architecture.md describes."""
from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DAGS, PLUGINS = REPO / "dags", REPO / "plugins"

pytestmark = pytest.mark.airflow

RETRAIN_ORDER = ["check_conf", "check", "ingest", "validate", "snapshot", "changed", "branch_on_change", "train", "evaluate", "gate",
                 "export", "promote", "notify"]


def test_no_import_errors(dagbag):
    assert dagbag.import_errors == {}
    assert set(dagbag.dag_ids) == {"nightshift_retrain", "nightshift_rollback", "nightshift_weekly_report"}


def test_retrain_dag_settings(dagbag):
    dag = dagbag.dags["nightshift_retrain"]
    assert dag.catchup is False
    assert dag.max_active_runs == 1
    assert dag.schedule == "0 2 * * *"


def test_schedule_from_environment(monkeypatch):
    from nightshift_airflow import settings

    monkeypatch.setenv("NIGHTSHIFT_SCHEDULE", "30 3 * * 1-5")
    assert settings.schedule() == "30 3 * * 1-5"
    monkeypatch.setenv("NIGHTSHIFT_SCHEDULE", "none")
    assert settings.schedule() is None
    monkeypatch.delenv("NIGHTSHIFT_SCHEDULE")
    assert settings.schedule() == "0 2 * * *"
    monkeypatch.delenv("NIGHTSHIFT_WEEKLY_SCHEDULE", raising=False)
    assert settings.weekly_schedule() == "0 6 * * 1"
    monkeypatch.setenv("NIGHTSHIFT_WEEKLY_SCHEDULE", "none")
    assert settings.weekly_schedule() is None


def test_rollback_dag_settings(dagbag):
    dag = dagbag.dags["nightshift_rollback"]
    assert dag.schedule is None
    assert type(dag.timetable).__name__ == "NullTimetable"
    assert [t.task_id for t in dag.tasks] == ["rollback"]
    task = dag.get_task("rollback")
    assert task.arguments[0] == "rollback"
    assert "--run-id" not in task.arguments
    # the rollback tool announces itself, in words; a success callback would announce it a second time
    assert not task.on_success_callback


def test_weekly_report_dag_settings(dagbag):
    dag = dagbag.dags["nightshift_weekly_report"]
    assert dag.schedule == "0 6 * * 1"  # weekly; manual triggers too
    assert dag.catchup is False and dag.max_active_runs == 1
    assert [t.task_id for t in dag.tasks] == ["weekly"]
    task = dag.get_task("weekly")
    assert task.arguments[0] == "weekly"
    assert "--run-id" not in task.arguments
    assert task.arguments[-2:] == ["--since", "{{ params.since }}"]
    assert dag.params.dump() == {"since": "7d"}
    import re

    pattern = re.compile(_param_schema(dag, "since")["pattern"])
    assert all(pattern.match(v) for v in ("7d", "36h", "2w", "2026-11-23"))
    assert not any(pattern.match(v) for v in ("", "soon", "7 days"))


def _param_schema(dag, name):
    return dag.params.get_param(name).schema


def test_retrain_params(dagbag):
    from airflow.sdk.exceptions import ParamValidationError
    from nightshift_airflow import settings

    dag = dagbag.dags["nightshift_retrain"]
    assert set(dag.params.keys()) == {"source", "format", "task", "model", "epochs", "gates", "override_reason",
                                      "force"}
    defaults = dag.params.dump()
    assert defaults == {"source": None, "format": None, "task": None, "model": None, "epochs": None, "gates": None,
                        "override_reason": None, "force": False}
    assert _param_schema(dag, "source")["type"] == ["null", "string"]
    assert _param_schema(dag, "force")["type"] == ["null", "boolean"]
    assert set(_param_schema(dag, "format")["enum"]) == {None, *settings.FORMAT_CHOICES}
    assert _param_schema(dag, "task")["enum"] == [None, "detection", "classification", "segmentation"]
    assert _param_schema(dag, "epochs")["type"] == ["null", "integer"] and _param_schema(dag, "epochs")["minimum"] == 1
    assert _param_schema(dag, "gates")["type"] == ["null", "object"]

    def check(name, value):
        param = dag.params.get_param(name)
        return param.resolve(value=value)

    assert check("epochs", 3) == 3
    assert check("gates", {"map_min": 0.3, "map50_min": 0.5}) == {"map_min": 0.3, "map50_min": 0.5}
    assert check("task", "classification") == "classification"
    for name, bad in [("epochs", 0), ("epochs", "three"), ("format", "pascal"), ("task", "keypoints"), ("gates", {"map_min": "high"}),
                      ("gates", {"map50": 0.5}), ("force", "yes")]:
        with pytest.raises(ParamValidationError):
            check(name, bad)


def test_trigger_form_runs_with_every_field_empty(dagbag):
    """Airflow 3's trigger form marks a param required when its schema type does not include "null" and then
    keeps Trigger disabled while the field is empty (ui/src FlexibleForm: isRequired). No retrain param may be
    required; every one explains itself, and a choice list shows words, not `null`."""
    dag = dagbag.dags["nightshift_retrain"]
    for name in dag.params.keys():
        param = dag.params.get_param(name)
        schema = param.schema
        assert isinstance(schema["type"], list) and "null" in schema["type"], f"{name} would be required in the form"
        assert schema.get("title") and param.description, name
        assert param.resolve(value=None) is None or name == "force", name  # empty passes validation
        if "enum" in schema:
            labels = schema["values_display"]
            assert all(labels.get("null" if v is None else v) for v in schema["enum"]), labels
            assert "null" not in labels.values() and "None" not in labels.values()


def test_gate_names_match_pipeline_gate():
    """settings.GATES duplicates pipeline.gates.GATES (the Airflow venv cannot import the pipeline)."""
    from nightshift_airflow import settings

    source = (REPO / "pipeline" / "gates.py").read_text()
    block = source[source.index("GATES = {g.name"):source.index("DEPLOYMENT_GATES")]
    import re

    assert tuple(re.findall(r'Gate\("(\w+)"', block)) == settings.GATES


@pytest.mark.parametrize("conf, problem", [
    ({}, None),
    (None, None),
    ({"epochs": 3, "gates": {"map50_min": 0.99}}, None),
    ({"epochz": 5}, "unknown param 'epochz' in the run's conf; known params: source, format"),
    ({"gates": {"map50": 0.5}}, "unknown gate 'map50' in param 'gates'; known gates: map_min, map50_min"),
    ({"gates": [1]}, "param 'gates' must be an object"),
    ([1, 2], "conf must be a JSON object"),
])
def test_unknown_conf_names_the_key_and_the_known_ones(dagbag, conf, problem):
    from nightshift_airflow.factory import unknown_conf

    known = list(dagbag.dags["nightshift_retrain"].params.keys())
    found = unknown_conf(conf, known)
    if problem is None:
        assert found is None
    else:
        assert found is not None and found.startswith(problem), found


def test_formats_match_pipeline_config():
    """settings.FORMATS duplicates pipeline.config.FORMATS (the Airflow venv cannot import the pipeline),
    and the trigger form offers exactly the config's choices ("auto" first)."""
    from nightshift_airflow import settings

    tree = ast.parse((REPO / "pipeline" / "config.py").read_text())
    found = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", None) in ("FORMATS", "FORMAT_CHOICES"):
            found[node.targets[0].id] = node
    assert "FORMATS" in found, "pipeline/config.py defines no FORMATS"
    assert tuple(ast.literal_eval(found["FORMATS"].value)) == settings.FORMATS
    assert settings.FORMAT_CHOICES == ("auto", *settings.FORMATS)
    assert "FORMAT_CHOICES" in found and ast.unparse(found["FORMAT_CHOICES"].value) == "('auto', *FORMATS)"


def test_tasks_match_pipeline_tasks():
    """settings.TASKS duplicates pipeline.tasks.TASKS (the Airflow venv cannot import the pipeline): the trigger
    form offers exactly the tasks the pipeline runs."""
    from nightshift_airflow import settings

    tree = ast.parse((REPO / "pipeline" / "tasks.py").read_text())
    found = [n for n in tree.body if isinstance(n, ast.Assign) and getattr(n.targets[0], "id", None) == "TASKS"]
    assert found, "pipeline/tasks.py defines no TASKS"
    assert tuple(ast.literal_eval(found[0].value)) == settings.TASKS


def test_rollback_params(dagbag):
    dag = dagbag.dags["nightshift_rollback"]
    assert dag.params.dump() == {"model": "nightshift_detector", "to_version": None}
    assert _param_schema(dag, "to_version")["type"] == ["null", "integer"]


@pytest.mark.parametrize("dag_id", ["nightshift_retrain", "nightshift_rollback", "nightshift_weekly_report"])
def test_every_task_retries_and_alerts(dagbag, dag_id):
    from nightshift_airflow import NightshiftChatNotifier

    for task in dagbag.dags[dag_id].tasks:
        # params are judged once: waiting five minutes cannot fix a typo
        assert task.retries == (0 if task.task_id in ("check_conf", "check") else 1), task.task_id
        assert task.retry_delay == timedelta(minutes=5), task.task_id
        callbacks = task.on_failure_callback if isinstance(task.on_failure_callback, list) else [task.on_failure_callback]
        assert any(type(cb).__name__ == NightshiftChatNotifier.__name__ for cb in callbacks), task.task_id


def test_retrain_topology(dagbag):
    dag = dagbag.dags["nightshift_retrain"]
    assert {t.task_id for t in dag.tasks} == set(RETRAIN_ORDER)
    edges = {(t.task_id, d) for t in dag.tasks for d in t.downstream_task_ids}
    expected = {(a, b) for a, b in zip(RETRAIN_ORDER, RETRAIN_ORDER[1:])}
    expected.add(("branch_on_change", "notify"))  # nothing changed: straight to the summary
    assert edges == expected
    assert dag.get_task("notify").trigger_rule == "none_failed_min_one_success"
    for task in dag.tasks:
        if task.task_id != "notify":
            assert task.trigger_rule == "all_success", task.task_id


def test_stage_tasks_use_the_one_factory(dagbag):
    from nightshift_airflow.local import NightshiftLocalOperator

    dag = dagbag.dags["nightshift_retrain"]
    for task in dag.tasks:
        if task.task_id == "branch_on_change":
            assert task.task_type.startswith("_BranchPython")
            continue
        if task.task_id == "check_conf":  # light: runs in the Airflow worker, no subprocess
            assert task.task_type.startswith("_Python")
            continue
        assert type(task).__name__ == NightshiftLocalOperator.__name__, task.task_id
        assert task.arguments[:3] == [task.task_id, "--run-id", "{{ run_id }}"]
    changed = dag.get_task("changed")
    assert changed.arguments[-2] == "--force"


# CPU seconds of this process, not wall time: on a machine shared by others the wall clock measures their load
PARSE_SCRIPT = r"""
import json, sys, time, runpy
t0 = time.process_time()
import airflow.sdk, nightshift_airflow   # what the DAG processor pre-imports before parsing a file
timings = {"pre_import_s": time.process_time() - t0}
for path in sys.argv[1:]:
    t1 = time.process_time()
    runpy.run_path(path, run_name="dag_file")
    timings[path.rsplit("/", 1)[-1]] = time.process_time() - t1
print(json.dumps(timings))
"""


@pytest.mark.parametrize("runner", ["local", "kubernetes"])
def test_parse_time_under_one_second(runner, dummy_kubeconfig):
    """Each DAG file parses in < 1 s of CPU in a fresh interpreter once Airflow and the plugin are imported
    (the DAG processor pre-imports a file's imports before parsing it)."""
    env = dict(os.environ, NIGHTSHIFT_RUNNER=runner, PYTHONPATH=str(PLUGINS), KUBECONFIG=str(dummy_kubeconfig))
    files = [str(DAGS / name) for name in ("nightshift_retrain.py", "nightshift_rollback.py", "nightshift_weekly_report.py")]
    out = subprocess.run([sys.executable, "-c", PARSE_SCRIPT, *files], env=env, cwd=REPO,
                         capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stderr[-3000:]
    timings = json.loads(out.stdout.strip().splitlines()[-1])
    print(f"[{runner}] " + ", ".join(f"{k} {v:.3f}s" for k, v in timings.items()))
    for name in ("nightshift_retrain.py", "nightshift_rollback.py", "nightshift_weekly_report.py"):
        assert timings[name] < 1.0, timings


def test_dag_files_stay_wiring():
    """No heavy imports and no Variables/connections at the top of a DAG file."""
    heavy = {"torch", "torchvision", "pipeline", "mlflow", "kubernetes", "pandas", "numpy"}
    for path in DAGS.glob("*.py"):
        source = path.read_text()
        tree = ast.parse(source)
        for node in tree.body:
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            else:
                continue
            for name in names:
                assert name.split(".")[0] not in heavy, f"{path.name} imports {name}"
        assert "Variable" not in source and "get_connection" not in source, path.name


@pytest.mark.parametrize("dag_id", ["nightshift_retrain", "nightshift_rollback", "nightshift_weekly_report"])
def test_dags_serialize_for_the_scheduler(dagbag, dag_id):
    from airflow.serialization.serialized_objects import DagSerialization

    dag = dagbag.dags[dag_id]
    back = DagSerialization.from_dict(DagSerialization.to_dict(dag))
    assert {t.task_id for t in back.tasks} == {t.task_id for t in dag.tasks}
    assert back.params.dump() == dag.params.dump()


def test_settings_reject_bad_values(monkeypatch):
    from nightshift_airflow import settings

    monkeypatch.setenv("NIGHTSHIFT_RUNNER", "docker")
    with pytest.raises(ValueError, match="NIGHTSHIFT_RUNNER"):
        settings.runner()
    for bad in ("two", "-1"):
        monkeypatch.setenv("NIGHTSHIFT_GPUS", bad)
        with pytest.raises(ValueError, match="NIGHTSHIFT_GPUS"):
            settings.gpus()
    monkeypatch.delenv("NIGHTSHIFT_PIPELINE_BIN", raising=False)
    assert settings.pipeline_bin() == str(REPO / ".venv-pipeline" / "bin" / "nightshift")


def test_compact_drops_only_flags_whose_value_rendered_empty():
    from nightshift_airflow.command import compact

    assert compact(["gate", "--run-id", "r", "--set", "", "--set", "train.epochs=3", "--to", " ", "--force", "false"]) \
        == ["gate", "--run-id", "r", "--set", "train.epochs=3", "--force", "false"]


def test_airflow_plugin_loader_leaves_the_package_alone():
    """plugins/ holds a library, not AirflowPlugins: the loader must not import its files as top-level
    modules (a `kubernetes.py` or `settings.py` there would shadow the real packages)."""
    from airflow._shared.plugins_manager.plugins_manager import _load_plugins_from_plugin_directory

    before = set(sys.modules)
    plugins, errors = _load_plugins_from_plugin_directory(str(PLUGINS))
    assert plugins == [] and errors == {}
    loaded = {name for name in set(sys.modules) - before
              if str(PLUGINS) in str(getattr(sys.modules[name], "__file__", "") or "")}
    assert loaded == set()
