"""Exceptions that map to the stage contract's exit codes.

0 success, 1 unexpected error, 2 usage error (argparse), 3 input rejected by a check, 4 a gate refused,
5 infrastructure unavailable (storage, tracking server, Triton: retried, then given up; the input is not at fault).
"""
from __future__ import annotations

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_REJECTED = 3
EXIT_GATE = 4
EXIT_INFRA = 5


class NightshiftError(Exception):
    """Base class; `exit_code` is what the CLI returns."""

    exit_code = EXIT_ERROR


class ConfigError(NightshiftError):
    """A configuration file or --set override is invalid (names the key)."""

    exit_code = EXIT_USAGE


class InputRejected(NightshiftError):
    """The stage's input failed a check: bad dataset, bad annotation file, bad results file.

    `path` and `field` say where, so the message can name the file and the field.
    """

    exit_code = EXIT_REJECTED

    def __init__(self, message: str, path: str | None = None, field: str | None = None):
        self.path = path
        self.field = field
        where = ""
        if path:
            where = f"{path}"
            if field:
                where += f": {field}"
            where += ": "
        super().__init__(where + message)


class GateFailed(NightshiftError):
    """A gate refused the release. `failures` lists every failed check (dicts)."""

    exit_code = EXIT_GATE

    def __init__(self, message: str, failures: list[dict] | None = None, result: dict | None = None):
        self.failures = failures or []
        self.result = result or {}
        super().__init__(message)


class InfrastructureError(NightshiftError):
    """A service the stage depends on failed after retries (S3, DVC remote, MLflow, Triton).

    Distinct from InputRejected: nothing is wrong with the user's input, so retrying later may succeed.
    `uri` names the endpoint or object that failed (never with credentials in it).
    """

    exit_code = EXIT_INFRA

    def __init__(self, message: str, uri: str | None = None):
        self.uri = uri
        super().__init__(f"{uri}: {message}" if uri else message)
