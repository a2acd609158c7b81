"""A refusal is not a crash: the task fails, without retry and with one alert, and without a Python traceback.

Airflow 3's task runner logs every AirflowFailException with `log.exception("Task failed with exception")`
(task-sdk `execution_time/task_runner.py`; no setting changes that, up to task-sdk 1.3.2), so a gate's clean
refusal, whose message already lists every failed check and how to override, used to be followed by thirty
lines of Airflow's own frames in the ML lead's task log.

`Refused` marks our own refusals: a stage's exit 2 (usage), 3 (input rejected) or 4 (gate refused), and a run's
conf that names an unknown param. Creating one installs, once per process, `drop_refusal_traceback`: a structlog
processor that removes the exception info from a log event only when that exception is a `Refused`, and says in
the event itself that the task failed without retry and why. Any other exception (a crash, an infrastructure
failure, Airflow's own) keeps its traceback.
"""
from __future__ import annotations

import sys
from typing import Any

from airflow.sdk.exceptions import AirflowFailException


class Refused(AirflowFailException):
    """Fail the task at once (no retry, as AirflowFailException) and log no traceback for it: its message says
    everything the reader needs."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        quiet_refusals()  # here, so that no raise site can forget it; this runs in the task's own process


def _exception(exc_info: Any) -> BaseException | None:
    """The exception a structlog `exc_info` value stands for (True: the one being handled)."""
    if exc_info is True:
        return sys.exc_info()[1]
    if isinstance(exc_info, BaseException):
        return exc_info
    if isinstance(exc_info, tuple) and len(exc_info) == 3:
        return exc_info[1]
    return None


def drop_refusal_traceback(logger: Any, method_name: str, event_dict: dict) -> dict:
    """structlog processor: a `Refused` is logged as one line, `Task failed, not retried: <its first line>`
    (the lines before it in the task log hold the rest), without exception info; anything else passes as is."""
    exc = _exception(event_dict.get("exc_info"))
    if isinstance(exc, Refused):
        del event_dict["exc_info"]
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        event_dict["event"] = f"Task failed, not retried: {first}"
    return event_dict


def quiet_refusals() -> None:
    """Put `drop_refusal_traceback` first in structlog's configured processors, once.

    In place, because the task runner's logger was bound before the DAG file was even parsed and holds that
    very list (structlog binds `get_config()["processors"]` by reference); `structlog.configure` would reach
    only loggers made afterwards. A later reconfiguration drops it, and refusals get their traceback back.
    """
    import structlog

    processors = structlog.get_config()["processors"]
    if not isinstance(processors, list):  # configured with a tuple: leave it, a traceback is not worth a crash
        return
    if drop_refusal_traceback not in processors:
        processors.insert(0, drop_refusal_traceback)


__all__ = ["Refused", "drop_refusal_traceback", "quiet_refusals"]
