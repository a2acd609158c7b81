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
    """A gate refused the release. `failures` lists every failed check as JSON: `pipeline.gates.Failure.to_dict()`
    (raise it with `pipeline.gates.refuse`), the one shape result.json and the Airflow alert read."""

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


class StageBusy(NightshiftError):
    """The same stage of the same run is running in another process; nothing was read or written."""

    exit_code = EXIT_INFRA


# exception types (by module prefix and name) that mean "could not talk to a service", whatever the client
_NETWORK_NAMES = ("ConnectionError", "ConnectTimeout", "ReadTimeout", "MaxRetryError",
                  "NewConnectionError", "ProtocolError", "RemoteDisconnected", "EndpointConnectionError",
                  "ConnectionClosedError", "ReadTimeoutError", "ConnectTimeoutError", "ServiceUnavailable")
_NETWORK_TEXT = ("Connection refused", "Max retries exceeded", "Failed to establish a new connection",
                 "Name or service not known", "Connection reset", "Temporary failure in name resolution")


def infrastructure_error(exc: BaseException, services: dict[str, str] | None = None) -> InfrastructureError | None:
    """An InfrastructureError (exit 5, one line) for `exc` when it, or an error it was raised from, means that a
    service could not be reached (refused, reset, timed out, DNS); None when it is something else.

    The message names the service's URL when the error text carries one, else the services the config points
    at (`services`: config key -> URL), so "Connection refused" never comes without a place. Passwords in
    URLs are masked.
    """
    import re

    from pipeline.masking import mask_text

    chain, seen, current = [], set(), exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        chain.append(current)
        current = current.__cause__ or current.__context__
    network = None
    for err in chain:
        name = type(err).__name__
        if isinstance(err, (ConnectionError, TimeoutError)) or any(n in name for n in _NETWORK_NAMES) \
                or any(t in str(err) for t in _NETWORK_TEXT):
            network = err
            break
    if network is None:
        return None
    text = " ".join(str(e) for e in chain)
    urls = re.findall(r"\b(?:https?|grpc|s3)://[^\s'\"<>),]+", text)
    first = (str(network).splitlines() or [""])[0].strip()
    reason = f"{type(network).__name__}: {first}" if first else type(network).__name__
    if urls:
        return InfrastructureError(f"cannot reach the service ({mask_text(reason)})", uri=mask_text(urls[0]))
    where = ", ".join(f"{key}={mask_text(url)}" for key, url in (services or {}).items())
    hint = f"; the services configured: {where}" if where else ""
    return InfrastructureError(f"cannot reach a service ({mask_text(reason)}){hint}")
