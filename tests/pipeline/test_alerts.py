"""Chat delivery to a real HTTP receiver on 127.0.0.1, retries, and the JSONL fallback."""
import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest

from pipeline import alerts
from pipeline.config import load_config


@pytest.fixture
def receiver():
    """An incoming-webhook receiver; `statuses` is the list of HTTP codes to answer with, in order."""
    state = {"bodies": [], "statuses": []}

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802
            body = self.rfile.read(int(self.headers["Content-Length"]))
            state["bodies"].append(json.loads(body))
            code = state["statuses"].pop(0) if state["statuses"] else 200
            self.send_response(code)
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, *args):
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    state["url"] = f"http://127.0.0.1:{server.server_port}/services/T000/B000/SECRETTOKEN"
    yield state
    server.shutdown()


def test_webhook_delivery(receiver, monkeypatch):
    monkeypatch.setenv("NIGHTSHIFT_WEBHOOK_URL", receiver["url"])
    cfg = load_config().resolved()
    assert alerts.send(cfg, "gate failed: map_min 0.1 < 0.3", "failure") == "webhook"
    assert receiver["bodies"] == [{"text": "gate failed: map_min 0.1 < 0.3"}]


def test_webhook_errors_are_retried_then_fall_back_to_the_sink(receiver, monkeypatch, caplog):
    receiver["statuses"] = [500, 500]
    monkeypatch.setenv("NIGHTSHIFT_WEBHOOK_URL", receiver["url"])
    cfg = load_config(None, ["notify.retries=2"]).resolved()
    assert alerts.send(cfg, "hello", "success") == "sink (webhook failed)"
    assert len(receiver["bodies"]) == 2
    assert "SECRETTOKEN" not in caplog.text
    lines = open(cfg.notify.sink).read().splitlines()
    assert json.loads(lines[-1])["text"] == "hello"


def test_sink_without_webhook():
    cfg = load_config().resolved()
    assert alerts.send(cfg, "nothing changed", "unchanged", {"dataset_hash": "abc"}) == "sink"
    record = json.loads(open(cfg.notify.sink).read().splitlines()[-1])
    assert record["event"] == "unchanged" and record["fields"] == {"dataset_hash": "abc"}
