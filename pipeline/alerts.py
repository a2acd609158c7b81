"""Chat messages from the pipeline side: a Slack-compatible incoming webhook, or a local JSONL sink.

The webhook URL is a secret: it comes from config or the environment (NIGHTSHIFT_WEBHOOK_URL, which the
Airflow task fills from the `nightshift_chat` connection) and never appears in a message, a result or a log.
Delivery errors are retried and logged; they never fail the pipeline.
"""
from __future__ import annotations

import json
import logging
import os
import time
import urllib.error
import urllib.request
from datetime import datetime, timezone
from pathlib import Path

from pipeline.config import Config

log = logging.getLogger(__name__)


def webhook_url(cfg: Config) -> str:
    return cfg.notify.webhook_url or os.environ.get("NIGHTSHIFT_WEBHOOK_URL", "")


def _post(url: str, payload: dict, retries: int) -> bool:
    body = json.dumps(payload).encode()
    for attempt in range(1, retries + 1):
        request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                if 200 <= response.status < 300:
                    return True
                reason = f"HTTP {response.status}"
        except urllib.error.HTTPError as exc:
            reason = f"HTTP {exc.code}"
        except (urllib.error.URLError, OSError) as exc:
            reason = type(exc).__name__
        # the URL is a secret: log the failure without it
        log.warning("chat webhook delivery failed (%s), attempt %d/%d", reason, attempt, retries)
        if attempt < retries:
            time.sleep(min(0.5 * 2 ** (attempt - 1), 4.0))
    return False


def send(cfg: Config, text: str, event: str, fields: dict | None = None) -> str:
    """Deliver one message; returns where it went: 'webhook', 'sink' or 'sink (webhook failed)'."""
    record = {
        "time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "event": event,
        "text": text,
        **({"fields": fields} if fields else {}),
    }
    url = webhook_url(cfg)
    if url:
        if _post(url, {"text": text}, max(1, cfg.notify.retries)):
            log.info("chat message sent (%s)", event)
            return "webhook"
        where = "sink (webhook failed)"
    else:
        where = "sink"
    sink = Path(cfg.notify.sink)
    sink.parent.mkdir(parents=True, exist_ok=True)
    with sink.open("a") as fh:
        fh.write(json.dumps(record, default=str) + "\n")
    log.info("chat message (%s) written to %s:\n%s", event, sink, text)
    return where
