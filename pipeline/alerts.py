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


def run_label(run_key: str) -> str:
    """How messages name a run: Airflow's own run id (what the ML lead sees in the UI) beside the store key
    it was rewritten to (`runs/<key>/`), or just the key outside Airflow or when the two are equal."""
    airflow_id = os.environ.get("AIRFLOW_CTX_DAG_RUN_ID", "").strip()
    if airflow_id and airflow_id != run_key:
        return f"{airflow_id} (store key {run_key})"
    return run_key


def report_link(cfg: Config, store, key: str, run_key: str) -> str:
    """A link to the run's report that a teammate can open from chat, in order of preference: the report
    artifact in the MLflow UI (`mlflow.ui_url`), an S3 presigned URL (`notify.report_link_expiry_s`) when the
    store is S3, else the store URL (a file:// path on the local demo). Never raises."""
    from pipeline import tracking

    try:
        if tracking.ui_base(cfg):
            found = tracking.find_run(cfg, run_key)
            if found is not None:
                return tracking.run_url(cfg, found.info.run_id, artifact="report/" + key.rsplit("/", 1)[-1])
    except Exception as exc:  # noqa: BLE001 - the link is a courtesy; its error text may hold the URI
        log.warning("no MLflow link for the report (%s)", type(exc).__name__)
    client = getattr(store, "client", None)
    if client is not None and hasattr(store, "bucket"):
        try:
            return client.generate_presigned_url(
                "get_object", Params={"Bucket": store.bucket, "Key": store._key(key)},
                ExpiresIn=cfg.notify.report_link_expiry_s)
        except Exception as exc:  # noqa: BLE001
            log.warning("no presigned link for the report (%s)", type(exc).__name__)
    return store.url(key)


def run_report(cfg: Config, ctx) -> dict:
    """Build the run report of `ctx` (pipeline.report) from what its stages left in the store; its keys and
    decision (see build_report) with `link`: where a teammate opens it from chat (report_link)."""
    from pipeline.report import build_report

    report = build_report(cfg, ctx)
    return dict(report, link=report_link(cfg, ctx.store, report["html"], ctx.run_id))


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
