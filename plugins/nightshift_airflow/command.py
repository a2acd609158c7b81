"""The `nightshift <stage>` command line both runners execute, and reading its result back.

Every element of the argument list is one Jinja template rendered to exactly one argv element: no shell
ever sees it. An override whose param is unset renders to "" and is dropped together with its flag
(`compact`), so an empty param leaves the value from `--config` or the schema default alone.
"""
from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence

RESULT_MARKER = "NIGHTSHIFT_RESULT "
# exit codes from pipeline/errors.py that retrying cannot fix: usage/config error, input rejected, gate refused
FAIL_FAST = {2: "usage error", 3: "input rejected", 4: "gate refused"}

# DAG param -> config key it overrides with --set (see pipeline/config.py)
PARAM_OVERRIDES: tuple[tuple[str, str], ...] = (
    ("source", "data.source"),
    ("format", "data.format"),
    ("task", "data.task"),
    ("model", "train.model"),
    ("epochs", "train.epochs"),
    ("gates", "gates.overrides"),
    ("override_reason", "gates.override_reason"),
)


def override_template(param: str, key: str) -> str:
    """`key=<value as JSON>` when the param is set, else "" (dropped by `compact`).

    JSON is a YAML flow value, which is how `--set` parses values: strings stay strings whatever they
    contain ("yes", "3", "a: b"), and a gates mapping arrives as a mapping.
    """
    return f"{{% if params.{param} %}}{key}={{{{ params.{param} | tojson }}}}{{% endif %}}"


def stage_arguments(
    name: str,
    *,
    run_id: bool = True,
    overrides: Iterable[tuple[str, str]] = PARAM_OVERRIDES,
    extra_sets: Sequence[str] = (),
    extra_args: Sequence[str] = (),
    config: str | None = None,
) -> list[str]:
    """Arguments after `nightshift`: the stage, --run-id, --config, --set overrides, extra arguments.

    `run_id=False` is for tool commands (rollback, demo-data) that take no --run-id and no --set.
    """
    args = [name]
    if run_id:
        args += ["--run-id", "{{ run_id }}"]
    if config:
        args += ["--config", config]
    if run_id:
        for param, key in overrides:
            args += ["--set", override_template(param, key)]
        for item in extra_sets:
            args += ["--set", item]
    args += list(extra_args)
    return args


def compact(argv: Sequence[str]) -> list[str]:
    """Drop every `--flag` whose value rendered empty, together with that value."""
    out: list[str] = []
    i = 0
    while i < len(argv):
        item = str(argv[i])
        if item.startswith("--") and i + 1 < len(argv) and str(argv[i + 1]).strip() == "":
            i += 2
            continue
        out.append(item)
        i += 1
    return out


def parse_result(line: str) -> dict | None:
    """The JSON of a `NIGHTSHIFT_RESULT {...}` line, else None."""
    line = line.strip()
    if not line.startswith(RESULT_MARKER):
        return None
    try:
        value = json.loads(line[len(RESULT_MARKER):])
    except json.JSONDecodeError:
        return None
    return value if isinstance(value, dict) else None


# links a failed stage's result carries for its alert: result key -> label
LINKS = (("mlflow_run_url", "MLflow run"), ("report", "Report"))
# the part of a failed stage's result that its alert needs; it rides on the raised exception
# (`run_id` is the store key the stage wrote under: the alert shows it beside Airflow's run id)
ALERT_KEYS = ("stage", "status", "exit_code", "error", "failures", "run_id") + tuple(key for key, _ in LINKS)


def failure_text(failure) -> str:
    """One failed check as a line: its `message`, written by the stage (pipeline.gates.Failure, the one shape
    of `result["failures"]`), e.g. `map50_min: AP50 = 0.4100, must be >= 0.5`."""
    if isinstance(failure, dict) and failure.get("message"):
        return str(failure["message"])
    return str(failure)  # not a Failure: shown as it came rather than dropped


def describe_failure(stage: str, code: int | None, result: dict | None, output_tail: Sequence[str] = ()) -> str:
    """One message for a failed stage: what went wrong, for a gate every failed check, and the links
    (MLflow run, report) the stage put into its result."""
    what = FAIL_FAST.get(code, f"exit code {code}") if code is not None else "failed"
    lines = [f"nightshift {stage}: {what}"]
    if result and result.get("error"):
        lines.append(str(result["error"]))
        for failure in result.get("failures") or []:
            lines.append(f"  - {failure_text(failure)}")
    elif output_tail:
        lines.append("last output:")
        lines.extend(f"  {line}" for line in output_tail)
    for key, label in LINKS:
        link = (result or {}).get(key)
        if link and str(link) not in "\n".join(lines):  # gate's error already ends with "Report: <url>"
            lines.append(f"{label}: {link}")
    return "\n".join(lines)


def stage_failure(exc_type: type[Exception], stage: str, code: int | None, result: dict | None,
                  output_tail: Sequence[str] = ()) -> Exception:
    """The exception a runner raises for a failed stage: describe_failure's message, plus the alert's part of
    the result as `exc.nightshift_result` (the failure callback gets this very object as context["exception"])."""
    exc = exc_type(describe_failure(stage, code, result, output_tail))
    alert = {key: result[key] for key in ALERT_KEYS if result and result.get(key) is not None}
    alert.setdefault("stage", stage)
    alert.setdefault("exit_code", code)
    exc.nightshift_result = alert
    return exc


_URL_USERINFO = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://)[^/\s:@]+(:[^/\s@]*)?@")
_SLACK_HOOK = re.compile(r"(https?://[^/\s]+/services/)[^\s\"'>]+")


def redact(text: str, secrets: Iterable[str] = ()) -> str:
    """Remove credentials from a message: URL user:password, webhook paths, and any known secret value."""
    for secret in secrets:
        if secret and len(secret) >= 4:
            text = text.replace(secret, "***")
    text = _URL_USERINFO.sub(lambda m: m.group("scheme") + "***@", text)
    return _SLACK_HOOK.sub(r"\1***", text)


__all__ = [
    "ALERT_KEYS", "FAIL_FAST", "LINKS", "PARAM_OVERRIDES", "RESULT_MARKER", "compact", "describe_failure",
    "failure_text", "override_template", "parse_result", "redact", "stage_arguments", "stage_failure",
]
