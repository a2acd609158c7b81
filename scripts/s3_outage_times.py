"""How long `nightshift ingest` takes to give up on an s3:// source whose endpoint black-holes requests
(accepts, never answers) or refuses connections, with the default S3 time bounds (or those in the environment:
NIGHTSHIFT_S3_CONNECT_TIMEOUT_S, NIGHTSHIFT_S3_READ_TIMEOUT_S, NIGHTSHIFT_S3_RETRY_BUDGET_S).

    PYTHONPATH=$PWD .venv-pipeline/bin/python scripts/s3_outage_times.py

Prints one line per fault: exit code, seconds, and the error line. Everything runs on 127.0.0.1 (moto's S3
server behind tests/faults.py's proxy) and takes about a minute and a half with the defaults.
"""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> int:
    import boto3
    from moto.server import ThreadedMotoServer

    from tests.faults import FaultProxy, dead_endpoint

    import logging

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # moto's per-request lines
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    creds = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}
    env = {**os.environ, **creds, "PYTHONPATH": str(ROOT)}
    try:
        with tempfile.TemporaryDirectory() as home, FaultProxy(f"http://127.0.0.1:{port}") as proxy:
            env["NIGHTSHIFT_HOME"] = home
            boto3.client("s3", endpoint_url=f"http://127.0.0.1:{port}", aws_access_key_id="testing",
                         aws_secret_access_key="testing", region_name="us-east-1").create_bucket(Bucket="exports")
            proxy.blackhole()
            for name, endpoint in (("black hole", proxy.url), ("refused", dead_endpoint())):
                started = time.monotonic()
                done = subprocess.run([sys.executable, "-m", "pipeline", "ingest", "--run-id", f"outage-{len(name)}",
                                       "--source", "s3://exports/x", "--set", f"data.source_endpoint_url={endpoint}"],
                                      cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
                lines = [line for line in done.stderr.splitlines() if line.startswith("nightshift")]
                print(f"{name:>10}: exit {done.returncode} after {time.monotonic() - started:5.1f} s: "
                      f"{lines[-1] if lines else done.stderr[-300:]}", flush=True)
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
