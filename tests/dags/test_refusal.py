"""A refusal is logged as one line without a traceback; every other exception keeps its traceback.

The processor is exercised on a structlog chain like the task runner's (exception rendering, JSON), and
installed the way the task process needs it: into a logger that was bound before the refusal existed.
The real task runner and scheduler paths: tests/dags/test_dag_run.py and
tests/integration/test_airflow_scheduler.py.
"""
from __future__ import annotations

import io
import json

import pytest

pytestmark = pytest.mark.airflow

GATE_MESSAGE = ("nightshift gate: gate refused\n2 of 3 gate checks failed\n  - map50_min: 0.41, must be >= 0.5\n"
                "override: trigger again with gates and override_reason")


def _chain(out: io.StringIO):
    import structlog
    from structlog.processors import ExceptionRenderer, JSONRenderer

    from nightshift_airflow.refusal import drop_refusal_traceback

    return structlog.wrap_logger(structlog.PrintLogger(file=out),
                                 processors=[drop_refusal_traceback, ExceptionRenderer(), JSONRenderer()])


def _log_failure(log, exc: BaseException) -> dict:
    """What the task runner does with a failed task's exception: log.exception inside the except block."""
    try:
        raise exc
    except BaseException:
        log.exception("Task failed with exception")
    return json.loads(log._logger._file.getvalue().splitlines()[-1])


def test_a_refusal_is_one_line_without_traceback():
    from nightshift_airflow.refusal import Refused

    out = io.StringIO()
    record = _log_failure(_chain(out), Refused(GATE_MESSAGE))
    assert record == {"event": "Task failed, not retried: nightshift gate: gate refused"}
    assert "Traceback" not in out.getvalue()


@pytest.mark.parametrize("make", [
    lambda: __import__("airflow.sdk.exceptions", fromlist=["x"]).AirflowFailException("a plain fail-fast"),
    lambda: __import__("airflow.sdk.exceptions", fromlist=["x"]).AirflowException("nightshift train: exit code 1"),
    lambda: RuntimeError("a bug"),
    lambda: KeyError("missing"),
], ids=["AirflowFailException", "AirflowException", "RuntimeError", "KeyError"])
def test_every_other_exception_keeps_its_traceback(make):
    out = io.StringIO()
    exc = make()
    record = _log_failure(_chain(out), exc)
    assert record["event"] == "Task failed with exception"
    assert record["exception"].startswith("Traceback (most recent call last)")
    assert type(exc).__name__ in record["exception"]


def test_exc_info_given_as_the_exception_or_a_tuple_is_recognised():
    from nightshift_airflow.refusal import Refused, drop_refusal_traceback

    exc = Refused("nightshift check: input rejected")
    for exc_info in (exc, (Refused, exc, None)):
        event = drop_refusal_traceback(None, "error", {"event": "Task failed", "exc_info": exc_info})
        assert event == {"event": "Task failed, not retried: nightshift check: input rejected"}
    other = RuntimeError("x")
    assert drop_refusal_traceback(None, "error", {"event": "e", "exc_info": other}) == {"event": "e", "exc_info": other}
    assert drop_refusal_traceback(None, "info", {"event": "no exception"}) == {"event": "no exception"}


@pytest.fixture
def task_runner_logging():
    """structlog configured as the task process has it when our code runs (a processor list, cached loggers),
    and restored afterwards."""
    import structlog
    from structlog.processors import ExceptionRenderer, JSONRenderer

    saved = structlog.get_config()
    saved = {**saved, "processors": list(saved["processors"])}
    out = io.StringIO()
    structlog.configure(processors=[ExceptionRenderer(), JSONRenderer()], cache_logger_on_first_use=True,
                        logger_factory=lambda *args: structlog.PrintLogger(file=out),
                        wrapper_class=structlog.make_filtering_bound_logger(0))
    try:
        yield out
    finally:
        structlog.configure(**saved)


def test_creating_a_refusal_quiets_an_already_bound_logger_once(task_runner_logging):
    """The task runner binds its logger before the DAG file is parsed; the processor must still reach it."""
    import structlog

    from nightshift_airflow.refusal import Refused, drop_refusal_traceback

    log = structlog.get_logger("task")
    log.info("bound before any refusal")  # first use: cached with the configured processor list
    Refused("first")
    refusal = Refused("nightshift check: input rejected")
    assert structlog.get_config()["processors"].count(drop_refusal_traceback) == 1
    for exc in (refusal, RuntimeError("a bug")):
        try:
            raise exc
        except Exception:
            log.exception("Task failed with exception")
    records = [json.loads(line) for line in task_runner_logging.getvalue().splitlines()]
    assert records[1] == {"event": "Task failed, not retried: nightshift check: input rejected"}
    assert records[2]["event"] == "Task failed with exception" and "RuntimeError: a bug" in records[2]["exception"]


def test_a_refusal_is_still_a_fail_fast_failure_with_its_result():
    from airflow.sdk.exceptions import AirflowFailException

    from nightshift_airflow.command import stage_failure
    from nightshift_airflow.refusal import Refused

    exc = stage_failure(Refused, "gate", 4, {"error": "2 of 3 gate checks failed", "failures": ["map50_min"]})
    assert isinstance(exc, AirflowFailException)  # the task runner's no-retry branch
    assert exc.nightshift_result["exit_code"] == 4 and str(exc).startswith("nightshift gate: gate refused")
