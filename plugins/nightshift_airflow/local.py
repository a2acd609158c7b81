"""The local runner: `nightshift <stage> ...` as a subprocess of the Airflow worker, in the pipeline venv.

The Airflow venv has no torch; the stages run with the pipeline venv's console script. Output streams into
the task log line by line; the last `NIGHTSHIFT_RESULT {json}` line becomes the task's XCom.
"""
from __future__ import annotations

import collections
import os
import signal
import subprocess
from collections.abc import Sequence
from typing import Any

from airflow.sdk import BaseOperator
from airflow.sdk.exceptions import AirflowException, AirflowNotFoundException

from nightshift_airflow import settings
from nightshift_airflow.command import FAIL_FAST, compact, parse_result, stage_failure
from nightshift_airflow.refusal import Refused

TAIL_LINES = 30


def chat_webhook_url(conn_id: str = settings.CHAT_CONN_ID) -> str | None:
    """The incoming-webhook URL of the chat connection, or None when it is not defined."""
    from airflow.sdk import BaseHook

    try:
        conn = BaseHook.get_connection(conn_id)
    except AirflowNotFoundException:
        return None
    token = (conn.password or "").strip()
    if not token:
        return None
    if "://" in token:
        return token
    base = conn.host if conn.host and "://" in conn.host else f"{conn.schema or 'https'}://{conn.host or 'hooks.slack.com/services'}"
    return base.rstrip("/") + "/" + token.lstrip("/")


class NightshiftLocalOperator(BaseOperator):
    """Run one `nightshift` command locally and return its result.

    Exit 0 returns the result as XCom; 2 (usage), 3 (input rejected) and 4 (gate refused) raise `Refused` (an
    AirflowFailException) with the stage's error text, so the task fails without retrying and its log shows that
    text without a traceback (refusal.py); anything else
    raises AirflowException and the task's retries apply. Either carries the stage's failed checks and its
    MLflow run and report links as `nightshift_result`, for the failure alert.
    """

    template_fields: Sequence[str] = ("arguments",)
    ui_color = "#e8e1f5"

    def __init__(
        self,
        *,
        arguments: Sequence[str],
        executable: str | None = None,
        require_result: bool = True,
        chat_conn_id: str = settings.CHAT_CONN_ID,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.arguments = list(arguments)
        self.executable = executable or settings.pipeline_bin()
        self.require_result = require_result
        self.chat_conn_id = chat_conn_id
        self._proc: subprocess.Popen | None = None

    def render_template_fields(self, context, jinja_env=None) -> None:
        super().render_template_fields(context, jinja_env)
        self.arguments = compact(self.arguments)

    def _env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.setdefault("NIGHTSHIFT_HOME", str(settings.home()))
        env["PYTHONUNBUFFERED"] = "1"
        env["NIGHTSHIFT_LOG_TIMESTAMPS"] = "0"  # each line gets the task log's timestamp: no second one
        webhook = chat_webhook_url(self.chat_conn_id)
        if webhook:  # through the environment only: never on a command line that `ps` or the log shows
            env["NIGHTSHIFT_WEBHOOK_URL"] = webhook
        return env

    def execute(self, context) -> dict | None:
        stage = self.arguments[0] if self.arguments else "?"
        argv = [self.executable, *self.arguments]
        self.log.info("running: %s", " ".join(argv))
        result: dict | None = None
        tail: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)
        try:
            self._proc = subprocess.Popen(
                argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1,
                cwd=str(settings.REPO), env=self._env(), start_new_session=True,
            )
        except OSError as exc:
            raise AirflowException(f"cannot start {self.executable}: {exc}") from exc
        assert self._proc.stdout is not None
        for line in self._proc.stdout:
            line = line.rstrip("\n")
            self.log.info("%s", line)
            parsed = parse_result(line)
            if parsed is not None:
                result = parsed
            else:
                tail.append(line)
        code = self._proc.wait()
        self._proc = None

        if code == 0:
            if result is None and self.require_result:
                raise AirflowException(f"nightshift {stage} exited 0 without a NIGHTSHIFT_RESULT line")
            return result
        failure = stage_failure(Refused if code in FAIL_FAST else AirflowException, stage, code, result,
                                list(tail))
        # said here, in the task's own log lines, rather than only in the traceback and the callback's alert
        # that Airflow folds under "Post Execute"
        for line in str(failure).splitlines():
            self.log.error("%s", line)
        raise failure

    def on_kill(self) -> None:
        proc = self._proc
        if proc is not None and proc.poll() is None:
            self.log.info("killing nightshift (pid %s) and its children", proc.pid)
            try:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
