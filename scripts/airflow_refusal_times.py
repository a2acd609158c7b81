"""How long the real scheduler takes to refuse a run's bad params: trigger -> failed task, through /api/v2.

    .venv-airflow/bin/python scripts/airflow_refusal_times.py [--rounds 3] [--keep]

Starts `scripts/airflow_local.sh standalone` (what `make airflow-ui` runs: LocalExecutor scheduler,
dag-processor, API server, all on 127.0.0.1) in a temporary NIGHTSHIFT_HOME, then per round triggers

- a misspelt key, `{"epochz": 5}`: refused by the first task, `check_conf` (Airflow venv, no subprocess);
- a relaxed gate without a reason, `{"gates": {"map50_min": 0.1}}`: refused by `check` (`nightshift check`).

one after the other (the DAG has max_active_runs=1), and prints for each the seconds from the trigger to the
failed task, split into where they went: the scheduler creating the task instances and queueing each task
(`queued`), the executor starting it (`start`), the task itself (`run`). The load average is printed before and
after: the figures mean little without it. Stops Airflow with SIGINT (Ctrl-C) at the end and removes its
temporary home unless --keep.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DAG = "nightshift_retrain"
CASES = (("misspelt key", {"epochz": 5}, ("check_conf",)),
         ("relaxed gate without reason", {"gates": {"map50_min": 0.1}}, ("check_conf", "check")))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def when(stamp: str | None) -> float | None:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp() if stamp else None


class Api:
    def __init__(self, base: str):
        self.base, self.token = base, ""

    def call(self, method: str, path: str, body: dict | None = None) -> tuple[int, dict]:
        headers = {"Content-Type": "application/json"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        req = urllib.request.Request(self.base + path, method=method, headers=headers,
                                     data=json.dumps(body).encode() if body is not None else None)
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                return r.status, json.loads(r.read() or b"{}")
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read() or b"{}")

    def tasks(self, run_id: str) -> dict[str, dict]:
        quoted = urllib.parse.quote(run_id, safe="")
        _, body = self.call("GET", f"/api/v2/dags/{DAG}/dagRuns/{quoted}/taskInstances")
        return {t["task_id"]: t for t in body.get("task_instances", [])}


def wait_ready(api: Api, home: Path, proc: subprocess.Popen, timeout: float = 300) -> None:
    passwords = home / "airflow" / "simple_auth_manager_passwords.json.generated"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            sys.exit(f"Airflow exited with {proc.returncode}; see {home}/console.log")
        try:
            if not api.token and passwords.exists():
                status, body = api.call("POST", "/auth/token",
                                        {"username": "admin", "password": json.loads(passwords.read_text())["admin"]})
                api.token = body.get("access_token", "") if status in (200, 201) else ""
            if api.token and api.call("GET", f"/api/v2/dags/{DAG}")[0] == 200:
                return
        except (OSError, ValueError):
            pass
        time.sleep(0.5)
    sys.exit(f"Airflow did not answer in {timeout} s; see {home}/console.log")


def measure(api: Api, conf: dict, tasks: tuple[str, ...], timeout: float = 180) -> dict:
    """Trigger one run; wait until its last task in `tasks` failed; return the timings."""
    triggered = time.time()
    status, run = api.call("POST", f"/api/v2/dags/{DAG}/dagRuns", {"logical_date": None, "conf": conf})
    if status != 200:
        sys.exit(f"trigger refused: {status} {run}")
    run_id, last = run["dag_run_id"], tasks[-1]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        tis = api.tasks(run_id)
        if tis.get(last, {}).get("state") == "failed":
            break
        if any(tis.get(t, {}).get("state") == "failed" for t in tasks[:-1]):
            sys.exit(f"{run_id}: an earlier task failed: {[(t, tis[t]['state']) for t in tasks]}")
        time.sleep(0.2)
    else:
        sys.exit(f"{run_id}: {last} not failed after {timeout} s")
    seen = time.time()
    # wait for the run itself to end, so the next trigger is not held back by max_active_runs=1
    quoted = urllib.parse.quote(run_id, safe="")
    while time.monotonic() < deadline and api.call("GET", f"/api/v2/dags/{DAG}/dagRuns/{quoted}")[1].get("state") \
            not in ("failed", "success"):
        time.sleep(0.2)
    parts, previous = [], triggered
    for task in tasks:
        ti = tis[task]
        queued, started, ended = when(ti.get("queued_when")), when(ti.get("start_date")), when(ti.get("end_date"))
        parts.append(f"{task}: queued +{queued - previous:.1f} start +{started - queued:.1f} run {ended - started:.1f}")
        previous = ended
    return {"total": when(tis[last]["end_date"]) - triggered, "seen": seen - triggered, "parts": parts}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--keep", action="store_true", help="keep Airflow's home (logs, database) afterwards")
    args = parser.parse_args()
    home = Path(tempfile.mkdtemp(prefix="nightshift-refusal-times-"))
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "NIGHTSHIFT"))}
    env.update(NIGHTSHIFT_HOME=str(home), AIRFLOW_PORT=str(port))
    print(f"load average before start: {' '.join(f'{x:.2f}' for x in os.getloadavg())} ({os.cpu_count()} CPUs)")
    started = time.monotonic()
    proc = subprocess.Popen(["bash", str(ROOT / "scripts" / "airflow_local.sh"), "standalone"], cwd=ROOT, env=env,
                            stdout=(home / "console.log").open("w"), stderr=subprocess.STDOUT, start_new_session=True)
    api = Api(f"http://127.0.0.1:{port}")
    try:
        wait_ready(api, home, proc)
        print(f"Airflow answered after {time.monotonic() - started:.1f} s")
        for round_ in range(1, args.rounds + 1):
            for name, conf, tasks in CASES:
                figures = measure(api, conf, tasks)
                load = " ".join(f"{x:.2f}" for x in os.getloadavg())
                print(f"round {round_} {name}: {figures['total']:.1f} s trigger -> {tasks[-1]} failed "
                      f"(seen by polling at {figures['seen']:.1f} s; load {load})")
                for part in figures["parts"]:
                    print(f"    {part}")
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGINT)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
        print(f"load average at the end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
        if args.keep:
            print(f"Airflow's files (task logs, console.log): {home}")
        else:
            shutil.rmtree(home, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
