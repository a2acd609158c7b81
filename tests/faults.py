"""A fault-injecting HTTP proxy on 127.0.0.1, for tests that put a real server (moto's S3, MLflow, Triton's
HTTP port ...) behind a network that misbehaves on cue.

    from tests.faults import FaultProxy, dead_endpoint

    with FaultProxy(s3_server) as proxy:          # forwards everything to the upstream URL, one thread a request
        client = boto3.client("s3", endpoint_url=proxy.url)
        proxy.fail(1, match=r"HEAD /bucket/state/")   # the next matching request gets 503 SlowDown
        proxy.fail(None, status=500, code="InternalError")  # every request from now on, until clear()
        proxy.drop(2)                               # read the next 2 requests, close without an answer
        proxy.blackhole(match=r"GET ")              # accept and never answer (until clear() or stop())
        proxy.fail(None, match=r"^PUT ", after=10)  # let 10 matching requests through, then fail them all
        proxy.clear()                               # forward everything again
        proxy.seen(r"HEAD ")                        # how many requests matching this arrived, faults included
    url = dead_endpoint()                           # an http://127.0.0.1:PORT where nothing listens (refused)

API:
- `FaultProxy(upstream, host="127.0.0.1")`: `start()` / `stop()` or a `with` block; `url` is the proxy's
  base URL. Only loopback: it refuses an upstream that is not 127.0.0.1 / localhost.
- Faults are rules tried in the order added; the first whose `match` (a regex searched in
  "METHOD /path?query") applies and whose count is not used up decides the request. `count=None` means
  until `clear()`; `after=N` lets the first N matching requests through before the rule starts to apply.
  Kinds: `fail(count, status=503, code="SlowDown", match=None)` answers an S3-style XML error;
  `drop(count, match=None)` closes the connection without an answer (botocore: ConnectionClosedError);
  `blackhole(count=None, match=None)` holds the connection open without answering until the rule is cleared
  or the proxy stops (the client's read timeout fires).
- `seen(pattern=None)` counts requests that arrived; `faults_applied` counts the faults injected.
- Bounded: `stop()` releases every held connection and joins the server thread (within 5 s); request
  threads are daemons, and bodies are read by Content-Length or chunked framing, never to EOF.
"""
from __future__ import annotations

import http.client
import re
import socket
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlparse

_HOP = {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "te", "trailer", "upgrade"}


def dead_endpoint() -> str:
    """An http://127.0.0.1:PORT URL with nothing listening: connecting to it is refused at once."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"


@dataclass
class _Rule:
    kind: str  # "fail", "drop", "blackhole"
    count: int | None
    match: re.Pattern | None
    status: int = 503
    code: str = "SlowDown"
    after: int = 0
    used: int = 0
    passed: int = 0

    def takes(self, line: str) -> bool:
        """Whether this rule decides the request (call with the state lock held: it counts)."""
        if self.count is not None and self.used >= self.count:
            return False
        if self.match is not None and not self.match.search(line):
            return False
        if self.passed < self.after:
            self.passed += 1
            return False
        return True


@dataclass
class _State:
    rules: list[_Rule] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)
    faults_applied: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)
    released: threading.Event = field(default_factory=threading.Event)


class FaultProxy:
    def __init__(self, upstream: str, host: str = "127.0.0.1"):
        parsed = urlparse(upstream)
        if parsed.hostname not in ("127.0.0.1", "localhost") or host != "127.0.0.1":
            raise ValueError("FaultProxy only proxies loopback to loopback")
        self.upstream = (parsed.hostname, parsed.port or 80)
        self.state = _State()
        self._server = ThreadingHTTPServer((host, 0), self._handler())
        self._server.daemon_threads = True
        self._thread: threading.Thread | None = None
        self.url = f"http://{host}:{self._server.server_address[1]}"

    # -- lifecycle --------------------------------------------------------------------------------
    def start(self) -> "FaultProxy":
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.1},
                                        name="fault-proxy", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self.state.released.set()  # black-holed requests return and close their connections
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> "FaultProxy":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- faults -----------------------------------------------------------------------------------
    def _add(self, kind: str, count: int | None, match: str | None, **kw) -> None:
        rule = _Rule(kind, count, re.compile(match) if match else None, **kw)
        with self.state.lock:
            if kind == "blackhole":
                self.state.released.clear()
            self.state.rules.append(rule)

    def fail(self, count: int | None = 1, status: int = 503, code: str = "SlowDown", match: str | None = None,
             after: int = 0):
        self._add("fail", count, match, status=status, code=code, after=after)

    def drop(self, count: int | None = 1, match: str | None = None, after: int = 0):
        self._add("drop", count, match, after=after)

    def blackhole(self, count: int | None = None, match: str | None = None, after: int = 0):
        self._add("blackhole", count, match, after=after)

    def clear(self) -> None:
        with self.state.lock:
            self.state.rules.clear()
        self.state.released.set()

    def seen(self, pattern: str | None = None) -> int:
        with self.state.lock:
            lines = list(self.state.requests)
        return sum(1 for line in lines if pattern is None or re.search(pattern, line))

    @property
    def faults_applied(self) -> int:
        return self.state.faults_applied

    # -- the handler ------------------------------------------------------------------------------
    def _handler(self):
        state, upstream = self.state, lambda: self.upstream

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # quiet: tests read `seen()`
                pass

            def _body(self) -> bytes:
                if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
                    out = bytearray()
                    while True:
                        size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                        if size == 0:
                            while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                                pass  # trailers
                            return bytes(out)
                        out += self.rfile.read(size)
                        self.rfile.readline()
                return self.rfile.read(int(self.headers.get("Content-Length") or 0))

            def _any(self):
                line = f"{self.command} {self.path}"
                body = self._body()
                with state.lock:
                    state.requests.append(line)
                    rule = next((r for r in state.rules if r.takes(line)), None)
                    if rule is not None:
                        rule.used += 1
                        state.faults_applied += 1
                if rule is None:
                    return self._forward(body)
                if rule.kind == "fail":
                    payload = (f'<?xml version="1.0" encoding="UTF-8"?><Error><Code>{rule.code}</Code>'
                               f"<Message>injected by FaultProxy</Message></Error>").encode()
                    self.send_response(rule.status)
                    self.send_header("Content-Type", "application/xml")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    if self.command != "HEAD":
                        self.wfile.write(payload)
                    return
                if rule.kind == "blackhole":
                    while not state.released.wait(0.1):
                        with state.lock:
                            if rule not in state.rules:
                                break
                self.close_connection = True  # drop, or a released black hole: no answer at all
                try:
                    self.connection.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

            def _forward(self, body: bytes):
                host, port = upstream()
                conn = http.client.HTTPConnection(host, port, timeout=60)
                try:
                    headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP}
                    headers["Content-Length"] = str(len(body))
                    conn.request(self.command, self.path, body=body if body or self.command in ("PUT", "POST")
                                 else None, headers=headers)
                    resp = conn.getresponse()
                    data = resp.read() if self.command != "HEAD" else b""
                    self.send_response(resp.status, resp.reason)
                    for k, v in resp.getheaders():
                        if k.lower() not in _HOP and not (k.lower() == "content-length" and self.command != "HEAD"):
                            self.send_header(k, v)
                    if self.command != "HEAD":
                        self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                finally:
                    conn.close()

            do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = do_PATCH = do_OPTIONS = _any

        return Handler
