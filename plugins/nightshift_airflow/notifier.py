"""Chat alerts from Airflow callbacks: the `nightshift_chat` webhook, else a local JSONL sink.

Used as `on_failure_callback` on every task (and as `on_success_callback` where a success is news, e.g. a
rollback). A notifier never raises: a chat outage must not turn into a task failure or hide the original one.
"""
from __future__ import annotations

import datetime as dt
import json
import logging
import os
import re
import time
from pathlib import Path
from typing import Any

from airflow.sdk import BaseNotifier

from nightshift_airflow import settings
from nightshift_airflow.command import LINKS, failure_text, redact

MAX_ERROR_CHARS = 1500
MAX_FAILURES = 20  # failed checks listed one per line; more are counted, not listed
# environment values that must never appear in a message, whatever the error text contains
SECRET_ENV = ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN",
              "NIGHTSHIFT_WEBHOOK_URL")

log = logging.getLogger(__name__)
# loggers that may print the webhook URL while we post: slack_sdk logs "Going to retry the same request:
# POST <full URL>" on a retry, urllib3 its retries with the URL's path. Their records pass through
# _RedactFilter, and slack_sdk's INFO chatter is quietened.
HTTP_LOG = "nightshift_airflow.notifier.http"  # the logger slack_sdk's client gets
HTTP_LOGGERS = (HTTP_LOG, "slack_sdk", "slack_sdk.webhook.client", "slack_sdk.webhook.async_client", "slack_sdk.http_retry",
                "urllib3", "urllib3.connectionpool", "urllib3.util.retry")


class _RedactFilter(logging.Filter):
    """Rewrite a log record's message without the webhook URL, its token or any secret from SECRET_ENV."""

    def __init__(self) -> None:
        super().__init__("nightshift-redact")
        self.secrets: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a malformed record is not ours to fix
            return True
        clean = redact(message, sorted(self.secrets | {os.environ.get(n, "") for n in SECRET_ENV}, key=len,
                                       reverse=True))
        if clean != message:
            record.msg, record.args = clean, None
        return True


_REDACT = _RedactFilter()


def protect_http_logs(*secrets: str) -> None:
    """Make sure the HTTP client loggers cannot print `secrets` (the webhook URL and its token path)."""
    _REDACT.secrets.update(s for s in secrets if s)
    for name in HTTP_LOGGERS:
        logger = logging.getLogger(name)
        if _REDACT not in logger.filters:
            logger.addFilter(_REDACT)
        if name in (HTTP_LOG, "slack_sdk") and logger.getEffectiveLevel() < logging.WARNING:
            logger.setLevel(logging.WARNING)


class NightshiftChatNotifier(BaseNotifier):
    """Post "<dag> <event> at <task>" with the run id, the error, and links to the task log.

    For a failed stage the runner's exception carries the stage's result (`nightshift_result`, see
    command.stage_failure; a pod's result is also in XCom): every failed gate is listed with its value and
    threshold, and the MLflow run and the report are linked. They are listed outside the clipped error text,
    so a long error never cuts them off.
    """

    template_fields = ()

    def __init__(self, *, event: str = "failure", conn_id: str = settings.CHAT_CONN_ID, attempts: int = 3,
                 retry_delay: float = 2.0, sink: str | os.PathLike | None = None) -> None:
        super().__init__()
        if event not in ("failure", "success"):
            raise ValueError(f"event must be 'failure' or 'success', got {event!r}")
        self.event = event
        self.conn_id = conn_id
        self.attempts = max(1, attempts)
        self.retry_delay = retry_delay
        self.sink = sink

    # -- message -----------------------------------------------------------------------------------
    def alert(self, context: dict[str, Any]) -> dict[str, Any]:
        ti = context.get("ti") or context.get("task_instance")
        dag = context.get("dag")
        dag_id = getattr(dag, "dag_id", None) or getattr(ti, "dag_id", "?")
        task_id = getattr(ti, "task_id", None) or getattr(context.get("task"), "task_id", "?")
        record: dict[str, Any] = {
            "source": "airflow",
            "event": self.event,
            "time": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "dag_id": dag_id,
            "run_id": context.get("run_id") or getattr(ti, "run_id", None),
            "task_id": task_id,
            "try_number": getattr(ti, "try_number", None),
            "log_url": _log_url(ti),
        }
        if self.event == "failure":
            exception = context.get("exception")
            error = exception or context.get("reason") or "unknown error (see the task log)"
            record["error"] = _clip(str(error))
            stage = _stage_result(exception, ti)
            if stage.get("run_id") and stage["run_id"] != record["run_id"]:
                record["store_key"] = str(stage["run_id"])  # where the stage's outputs are: runs/<store_key>/
            failures = [f for f in stage.get("failures") or [] if not (isinstance(f, dict) and f.get("passed"))]
            if failures:
                record["failures"] = [failure_text(f) for f in failures]
            for key, _ in LINKS:
                link = stage.get(key) or _link_in_text(str(error), key)
                if link:
                    record[key] = str(link)
        else:
            result = _task_result(ti)
            if result is not None:
                record["result"] = _clip(json.dumps(result, default=str, sort_keys=True))
                record["result_lines"] = readable(result)
        secrets = [os.environ.get(name, "") for name in SECRET_ENV]
        for key in ("error", "result", "log_url", *(key for key, _ in LINKS)):
            if record.get(key):
                record[key] = redact(record[key], secrets)
        for key in ("failures", "result_lines"):
            if key in record:
                record[key] = [redact(line, secrets) for line in record[key]]
        record["text"] = self.text(record)
        return record

    @staticmethod
    def text(record: dict[str, Any]) -> str:
        icon, verb = (":red_circle:", "failed") if record["event"] == "failure" else (":large_green_circle:", "succeeded")
        lines = [f"{icon} Nightshift *{record['dag_id']}* {verb} at task *{record['task_id']}*",
                 f"run: `{record['run_id']}`" + (f" (store key `{record['store_key']}`)" if record.get("store_key")
                                                 else "")]
        failures = record.get("failures") or []
        if failures:  # the checks say it all; of the error keep the headline ("nightshift gate: gate refused")
            lines.append(record["error"].splitlines()[0] if record.get("error") else "")
            lines.append(f"*{len(failures)} failed check{'s' if len(failures) > 1 else ''}:*")
            lines.extend(f"• {line}" for line in failures[:MAX_FAILURES])
            if len(failures) > MAX_FAILURES:
                lines.append(f"• ... and {len(failures) - MAX_FAILURES} more (see the report)")
        elif record.get("error"):
            lines.append("```" + record["error"] + "```")
        if record.get("result_lines"):  # a success's result as "key: value" lines, never a raw dict
            lines.extend(record["result_lines"])
        if record.get("log_url"):
            lines.append(f"log: {_link(record['log_url'], 'task log')}")
        for key, label in LINKS:
            if record.get(key):
                lines.append(f"{label}: {_link(record[key], label)}")
        return "\n".join(line for line in lines if line)

    # -- delivery ------------------------------------------------------------------------------------
    def notify(self, context: dict[str, Any]) -> None:
        try:
            record = self.alert(context)
        except Exception:  # a broken context must not hide the task's own failure
            log.exception("nightshift notifier: cannot build the alert")
            return
        hook = self._webhook()
        if hook is not None:
            if self._post(hook, record["text"]):
                return
            record["webhook_failed"] = True
        self._append_sink(record)

    def _webhook(self):
        """The Slack webhook hook when the chat connection exists, else None (never raises)."""
        try:
            from airflow.sdk import BaseHook
            from airflow.sdk.exceptions import AirflowNotFoundException

            try:
                BaseHook.get_connection(self.conn_id)
            except AirflowNotFoundException:
                return None
            from airflow.providers.slack.hooks.slack_webhook import SlackWebhookHook

            from nightshift_airflow.local import chat_webhook_url

            url = chat_webhook_url(self.conn_id)
            if url:
                protect_http_logs(url, url.split("://", 1)[-1].split("/", 1)[-1])  # the URL and its path
            else:
                protect_http_logs()
            # slack_sdk logs through the logger it is given (by default the hook's, which is not a stdlib logger
            # and would print "Going to retry the same request: POST <full URL>"): give it one that redacts.
            # Retries are ours (self.attempts), so slack_sdk's own retry handlers are off.
            return SlackWebhookHook(slack_webhook_conn_id=self.conn_id, timeout=10, retry_handlers=[],
                                    logger=logging.getLogger(HTTP_LOG))
        except Exception as exc:
            log.warning("nightshift notifier: chat connection %r unusable (%s); using the alert sink",
                        self.conn_id, type(exc).__name__)
            return None

    def _post(self, hook, text: str) -> bool:
        for attempt in range(1, self.attempts + 1):
            try:
                hook.send_text(text)
                log.info("nightshift notifier: posted %s alert to chat", self.event)
                return True
            except Exception as exc:  # status != 200, connection refused, timeout ...
                # the exception text may hold the webhook URL: log only its type and a redacted message
                log.warning("nightshift notifier: webhook attempt %d/%d failed: %s: %s", attempt, self.attempts,
                            type(exc).__name__, redact(str(exc))[:300])
                if attempt < self.attempts:
                    time.sleep(self.retry_delay * attempt)
        log.error("nightshift notifier: webhook failed %d times; writing the alert to the sink", self.attempts)
        return False

    def _append_sink(self, record: dict[str, Any]) -> None:
        path = Path(self.sink) if self.sink else settings.alert_sink()
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with path.open("a", encoding="utf-8") as fh:
                fh.write(json.dumps(record, default=str, sort_keys=True) + "\n")
            log.info("nightshift alert -> %s:\n%s", path, record["text"])
        except OSError as exc:
            log.error("nightshift notifier: cannot write the alert sink %s (%s):\n%s", path, exc, record["text"])


# bookkeeping keys of a stage result that say nothing to a reader
_QUIET_KEYS = {"input_signature", "exit_code", "status", "duration_s", "stage", "run_id"}


def readable(result: Any, prefix: str = "", limit: int = 20) -> list[str]:
    """A task result as `key: value` lines (nested keys joined with '.'), for people rather than parsers."""
    if not isinstance(result, dict):
        return [f"{prefix or 'result'}: {result}"]
    lines: list[str] = []
    for key, value in result.items():
        if key in _QUIET_KEYS and not prefix:
            continue
        name = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, dict):
            lines.extend(readable(value, name, limit))
        elif isinstance(value, (list, tuple)):
            lines.append(f"{name}: " + ", ".join(map(str, value)))
        else:
            lines.append(f"{name}: {value if value is not None else '-'}")
    return lines[:limit] + ([f"... and {len(lines) - limit} more"] if len(lines) > limit else [])


def _log_url(ti) -> str | None:
    try:
        return ti.log_url if ti is not None else None
    except Exception:  # building the URL needs the api base url; a missing setting must not stop the alert
        return None


def _stage_result(exception, ti) -> dict:
    """The failed stage's result: from the runner's exception, else (a pod's) XCom when it records a failure."""
    carried = getattr(exception, "nightshift_result", None)
    if isinstance(carried, dict):
        return carried
    pushed = _task_result(ti)  # the pod operator pushes the pod's result even when the pod failed
    if isinstance(pushed, dict) and pushed.get("status") not in (None, "ok"):
        return pushed
    return {}


def _link_in_text(text: str, key: str) -> str | None:
    """A link describe_failure wrote as "<label>: <link>" (to the end of the line), for exceptions that lost
    their structured result on the way."""
    label = dict(LINKS)[key]
    match = re.search(rf"(?:^|[\s.]){re.escape(label)}: (\S[^\n]*)", text, flags=re.IGNORECASE)
    return match.group(1).strip() if match else None


def _link(url: str, label: str) -> str:
    """Slack's <url|label> for web links; anything else (file://, "mlflow run <id> (sqlite:...)") as is."""
    return f"<{url}|{label}>" if url.startswith(("http://", "https://")) else url


def _task_result(ti) -> Any:
    try:
        return ti.xcom_pull(task_ids=ti.task_id) if ti is not None else None
    except Exception:
        return None


def _clip(text: str) -> str:
    return text if len(text) <= MAX_ERROR_CHARS else text[: MAX_ERROR_CHARS - 20] + " ... (truncated)"
