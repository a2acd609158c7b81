"""Shared fixtures: every test gets its own Nightshift workspace, so nothing touches ./.nightshift."""
from __future__ import annotations

import logging
import socket

import pytest


@pytest.fixture(autouse=True)
def nightshift_home(tmp_path, monkeypatch):
    home = tmp_path / "nightshift-home"
    home.mkdir()
    monkeypatch.setenv("NIGHTSHIFT_HOME", str(home))
    monkeypatch.delenv("NIGHTSHIFT_WEBHOOK_URL", raising=False)
    return home


@pytest.fixture(autouse=True)
def keep_logging():
    """cli.main points the root logger at the running test's captured stderr; put it back afterwards."""
    handlers, level = logging.root.handlers[:], logging.root.level
    yield
    logging.root.handlers[:] = handlers
    logging.root.setLevel(level)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def free_port():
    """A function returning an unused TCP port on 127.0.0.1."""
    return _free_port


@pytest.fixture
def s3_server(monkeypatch):
    """A local S3-compatible server (moto) on 127.0.0.1 with fake credentials; yields its endpoint URL."""
    from moto.server import ThreadedMotoServer

    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    for key, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                       "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": endpoint}.items():
        monkeypatch.setenv(key, value)
    try:
        yield endpoint
    finally:
        server.stop()
