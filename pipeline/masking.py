"""Secrets out of text: the `***` mask, which config fields hold secrets, and URL passwords.

Used by the config (its redacted copies), the CLI (every log line, stderr, reproduce.sh) and the errors
(an unreachable service's URL): it imports nothing of the package, so all of them can.
"""
from __future__ import annotations

import re

MASK = "***"
# field names whose values are secrets: masked wherever the config is written, logged or tracked
SECRET_FIELD = re.compile(r"(^|_)(webhook_url|webhook|token|password|passwd|secret|key|api_key|credentials?)$")
_URL_PASSWORD = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)(?P<user>[^/:@\s]*):(?P<pw>[^@/\s]+)@")


def is_secret(name: str) -> bool:
    """Whether a config field (`webhook_url` or `notify.webhook_url`) holds a secret."""
    return bool(SECRET_FIELD.search(name.rsplit(".", 1)[-1]))


def mask_text(text: str, secrets: tuple[str, ...] | list[str] = ()) -> str:
    """`text` with every known secret value and every URL password replaced by ***."""
    for value in sorted((v for v in secrets if v and len(v) >= 4), key=len, reverse=True):
        text = text.replace(value, MASK)
    return _URL_PASSWORD.sub(lambda m: f"{m['scheme']}{m['user']}:{MASK}@", text)


def mask_args(argv: list[str]) -> list[str]:
    """A command line for logs: `--set section.secret=VALUE` and URL passwords masked."""
    out = []
    for arg in argv:
        key, eq, _value = arg.partition("=")
        out.append(f"{key}={MASK}" if eq and "." in key and is_secret(key) else mask_text(arg))
    return out
