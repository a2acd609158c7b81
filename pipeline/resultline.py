"""The `NIGHTSHIFT_RESULT {json}` line: the last line a command prints on stdout, read by the Airflow side
(plugins/nightshift_airflow/command.py keeps its own copy of the marker: it must not import this package)."""
from __future__ import annotations

import json

RESULT_MARKER = "NIGHTSHIFT_RESULT "


def print_result(result: dict) -> None:
    """Print `result` as the result line (keys sorted; values JSON cannot hold written as text)."""
    print(RESULT_MARKER + json.dumps(result, default=str, sort_keys=True), flush=True)
