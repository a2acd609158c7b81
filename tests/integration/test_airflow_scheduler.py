"""Nightshift under a real Airflow: `scripts/airflow_local.sh standalone` (what `make airflow-ui` runs) with
the LocalExecutor's scheduler, the dag-processor and the API server on 127.0.0.1, runs triggered through
/api/v2 as the ML lead's tools do, and a Slack-compatible receiver on 127.0.0.1 that answers the first post
with HTTP 500.

Bounded: only the light first tasks run to the end (check_conf, check: a few seconds each); the one run that
passes them (started from the trigger form in headless Chromium, every field left empty) is failed through the
API as soon as its checks pass. Beside our DAGs (linked, not copied) sits a fault-injection DAG whose one task
crashes (exit 1), to show that a refusal's task log has no traceback while a crash's still has one. The last
test stops Airflow with Ctrl-C (SIGINT to the launcher's process group) and requires that no process it started
is left, and that the webhook token appears in no log.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.integration, pytest.mark.slow]

SENTINEL = "webhook-token-sentinel-7c2d"
DAG = "nightshift_retrain"
FAULT_DAG = "nightshift_fault"
# a DAG of this test only: one stage task whose `nightshift` crashes (exit 1) without retrying
FAULT_DAG_FILE = """\
from datetime import datetime

from airflow.sdk import DAG
from nightshift_airflow import default_args
from nightshift_airflow.local import NightshiftLocalOperator

with DAG("nightshift_fault", schedule=None, start_date=datetime(2026, 1, 1), catchup=False,
         default_args=default_args(retries=0)):
    NightshiftLocalOperator(task_id="crash", arguments=["crash"], executable={crash!r}, require_result=False)
"""
# where a task log record carries an exception's traceback: the supervisor writes the task's structured
# `exception` as `error_detail` (execution_time/supervisor.py), which the UI shows as the traceback
TRACEBACK_KEYS = ("error_detail", "exception", "exc_info")
CRASH = """\
#!/bin/sh
echo "crashing on purpose (fault injection)"
exit 1
"""
START_TIMEOUT_S = 240
RUN_TIMEOUT_S = 150


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Receiver:
    """A Slack-compatible incoming webhook: records every POST; the first one gets HTTP 500."""

    def __init__(self):
        self.posts: list[dict] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                status = 500 if not outer.posts else 200
                outer.posts.append({"path": self.path, "text": json.loads(body or b"{}").get("text", ""),
                                    "status": status})
                self.send_response(status)
                self.end_headers()
                self.wfile.write(b"ok" if status == 200 else b"internal_error")

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/services/T/B/{SENTINEL}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def delivered(self, needle: str) -> list[str]:
        return [p["text"] for p in self.posts if p["status"] == 200 and needle in p["text"]]

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def _ours(airflow: "Airflow") -> list[int]:
    """Pids of every process Airflow started: the launcher's session and the sessions its components lead
    (each runs under setsid; Airflow's process titles overwrite /proc/<pid>/environ, so sessions it is)."""
    import psutil

    try:
        for child in psutil.Process(airflow.proc.pid).children(recursive=True):
            airflow.sessions.add(os.getsid(child.pid))
    except (psutil.Error, ProcessLookupError):
        pass
    pids = []
    for proc in psutil.process_iter(["pid"]):
        try:
            if os.getsid(proc.pid) in airflow.sessions:
                pids.append(proc.pid)
        except (ProcessLookupError, PermissionError):
            continue
    return pids


class Airflow:
    def __init__(self, home: Path, port: int, receiver: Receiver):
        self.home, self.port, self.receiver = home, port, receiver
        self.base = f"http://127.0.0.1:{port}"
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "NIGHTSHIFT"))}
        env.update(NIGHTSHIFT_HOME=str(home), AIRFLOW_PORT=str(port), STOP_TIMEOUT_S="30",
                   NIGHTSHIFT_DAGS_FOLDER=str(self.dags_folder(home)),
                   AIRFLOW_CONN_NIGHTSHIFT_CHAT=json.dumps({"conn_type": "slackwebhook", "password": receiver.url}))
        self.console = home / "console.log"
        self.started = time.monotonic()
        # a terminal's Ctrl-C finds SIGINT at its default; a CI job started in the background (`cmd &` in a
        # script) inherits it ignored, and bash cannot trap a signal ignored on entry: restore the default
        self.proc = subprocess.Popen(["bash", str(REPO / "scripts" / "airflow_local.sh"), "standalone"],
                                     cwd=REPO, env=env, stdout=self.console.open("w"), stderr=subprocess.STDOUT,
                                     start_new_session=True,
                                     preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        self.token = ""
        self.sessions = {self.proc.pid}

    @staticmethod
    def dags_folder(home: Path) -> Path:
        """Our DAG files (symlinks: the very files) and the fault-injection DAG."""
        folder = home / "dags"
        folder.mkdir()
        for dag_file in (REPO / "dags").glob("*.py"):
            (folder / dag_file.name).symlink_to(dag_file)
        crash = home / "crash.sh"
        crash.write_text(CRASH)
        crash.chmod(0o755)
        (folder / "nightshift_fault.py").write_text(FAULT_DAG_FILE.format(crash=str(crash)))
        return folder

    def task_log(self, run_id: str, task_id: str, dag_id: str = DAG) -> list[dict]:
        """The task's first attempt as Airflow wrote it: one JSON record a line (what the UI shows)."""
        path = (self.home / "airflow" / "logs" / f"dag_id={dag_id}" / f"run_id={run_id}" / f"task_id={task_id}"
                / "attempt=1.log")
        assert path.is_file(), f"no task log at {path}"
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

    def request(self, method: str, path: str, body: dict | None = None) -> tuple[int, dict]:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.base + path, data=data, method=method,
                                     headers={"Content-Type": "application/json",
                                              **({"Authorization": f"Bearer {self.token}"} if self.token else {})})
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                return r.status, json.loads(r.read() or b"{}")
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read() or b"{}")

    def wait_ready(self) -> float:
        deadline = time.monotonic() + START_TIMEOUT_S
        passwords = self.home / "airflow" / "simple_auth_manager_passwords.json.generated"
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.console.read_text()[-3000:]
            try:
                if not self.token and passwords.exists():
                    password = json.loads(passwords.read_text())["admin"]
                    status, body = self.request("POST", "/auth/token", {"username": "admin", "password": password})
                    if status in (200, 201):
                        self.token = body["access_token"]
                if self.token and self.request("GET", f"/api/v2/dags/{DAG}")[0] == 200:
                    return time.monotonic() - self.started
            except (OSError, ValueError):
                pass
            time.sleep(1)
        pytest.fail("Airflow did not come up: " + self.console.read_text()[-3000:])

    def trigger(self, conf: dict, dag_id: str = DAG) -> tuple[int, dict]:
        return self.request("POST", f"/api/v2/dags/{dag_id}/dagRuns", {"logical_date": None, "conf": conf})

    def task_instances(self, run_id: str, dag_id: str = DAG) -> dict[str, dict]:
        quoted = urllib.parse.quote(run_id, safe="")
        status, body = self.request("GET", f"/api/v2/dags/{dag_id}/dagRuns/{quoted}/taskInstances")
        assert status == 200, body
        return {t["task_id"]: t for t in body["task_instances"]}

    def tasks(self, run_id: str, dag_id: str = DAG) -> dict[str, str | None]:
        return {task: ti["state"] for task, ti in self.task_instances(run_id, dag_id).items()}

    def wait_for(self, run_id: str, condition, timeout: float = RUN_TIMEOUT_S, dag_id: str = DAG) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            states = self.tasks(run_id, dag_id)
            if condition(states):
                return states
            time.sleep(1)
        pytest.fail(f"run {run_id}: condition not met in {timeout} s; tasks {self.tasks(run_id, dag_id)}\n"
                    + self.console.read_text()[-2000:])

    def stop(self, timeout: float = 60) -> float:
        started = time.monotonic()
        if self.proc.poll() is None:
            # Ctrl-C: the terminal sends SIGINT to the whole foreground process group (the launcher leads it)
            os.killpg(self.proc.pid, signal.SIGINT)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        return time.monotonic() - started


@pytest.fixture(scope="module")
def airflow(tmp_path_factory):
    if not (REPO / ".venv-airflow" / "bin" / "airflow").exists():
        pytest.fail("no .venv-airflow: run `make envs` (make test creates it before these tests)")
    home = tmp_path_factory.mktemp("airflow-ui")
    receiver = Receiver()
    instance = Airflow(home, _free_port(), receiver)
    try:
        print(f"Airflow answered after {instance.wait_ready():.0f} s")
        yield instance
    finally:
        _ours(instance)  # learn the component sessions while they run
        instance.stop()
        for pid in _ours(instance):  # only if a test failed before test_stop_leaves_nothing: never leak
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        receiver.close()


def _listening(pids: list[int]) -> list[str]:
    import psutil

    out = []
    for pid in pids:
        try:
            for conn in psutil.Process(pid).net_connections(kind="inet"):
                if conn.status == psutil.CONN_LISTEN:
                    out.append(f"{conn.laddr.ip}:{conn.laddr.port}")
        except psutil.Error:
            continue
    return out


def test_laptop_sized_loopback_only_and_no_run_by_itself(airflow):
    status, dag = airflow.request("GET", f"/api/v2/dags/{DAG}")
    assert status == 200 and dag["is_paused"] is False
    assert dag["timetable_summary"] in (None, "None", "")  # NIGHTSHIFT_SCHEDULE defaults to none locally
    time.sleep(5)  # a scheduler that would start the latest interval does so within its first loops
    status, runs = airflow.request("GET", "/api/v2/dags/~/dagRuns")  # of every DAG: the weekly report too
    assert status == 200 and runs["total_entries"] == 0, runs
    pids = _ours(airflow)
    sockets = _listening(pids)
    print(f"{len(pids)} processes, listening on {sockets}")
    assert sockets and all(s.startswith(("127.0.0.1:", "::1:")) for s in sockets), sockets
    assert len(pids) <= 15, pids  # not 41: api-server, scheduler + AIRFLOW__CORE__PARALLELISM workers, dag-processor


def test_unknown_gate_is_refused_by_the_api(airflow):
    status, body = airflow.trigger({"gates": {"map50": 0.5}})
    assert status == 400 and "'map50' is not one of" in body["detail"], body


def test_bad_params_are_refused_in_seconds_with_a_chat_alert(airflow):
    started = time.monotonic()
    status, misspelt = airflow.trigger({"epochz": 5})
    assert status == 200, misspelt
    status, relaxed = airflow.trigger({"gates": {"map50_min": 0.1}})
    assert status == 200, relaxed

    states = airflow.wait_for(misspelt["dag_run_id"], lambda s: s["check_conf"] == "failed")
    took = time.monotonic() - started
    assert states["check"] in (None, "upstream_failed") and states["ingest"] in (None, "upstream_failed")
    print(f"misspelt key refused after {took:.0f} s (trigger to failed check_conf)")

    started = time.monotonic()
    states = airflow.wait_for(relaxed["dag_run_id"], lambda s: s["check"] == "failed")
    print(f"relaxed gate without reason refused after {time.monotonic() - started:.0f} s once its run started")
    assert states["check_conf"] == "success" and states["ingest"] in (None, "upstream_failed")

    deadline = time.monotonic() + 60  # the failure callback posts right after the task fails
    while time.monotonic() < deadline and not (airflow.receiver.delivered("check_conf")
                                               and airflow.receiver.delivered("*check*")):
        time.sleep(1)
    (misspelt_alert,) = airflow.receiver.delivered("epochz")
    assert misspelt["dag_run_id"] in misspelt_alert and "known params: source, format" in misspelt_alert
    (relaxed_alert,) = airflow.receiver.delivered("*check*")
    assert "map50_min 0.5 -> 0.1" in relaxed_alert and "`override_reason`" in relaxed_alert, relaxed_alert
    assert f"{airflow.base}/dags/{DAG}/runs/" in relaxed_alert  # api.base_url: a link that opens
    assert airflow.receiver.posts[0]["status"] == 500  # the first post failed and was retried, not lost

    # failed, on its first and only try (a refused gate with retries=1 does not retry either: test_dag_run.py)
    check = airflow.task_instances(relaxed["dag_run_id"])["check"]
    assert check["state"] == "failed" and check["try_number"] == 1, check
    # the task logs as the ML lead reads them: the refusal in a few lines, then no traceback
    for run, task, refusal in ((misspelt, "check_conf", "Task failed, not retried: unknown param 'epochz'"),
                               (relaxed, "check", "Task failed, not retried: nightshift check: input rejected")):
        records = airflow.task_log(run["dag_run_id"], task)
        events = [str(r.get("event", "")) for r in records]
        assert any(e.startswith(refusal) for e in events), events
        assert [r for r in records if any(key in r for key in TRACEBACK_KEYS)] == []
        assert not any("Traceback" in json.dumps(r) for r in records)
    events = [str(r.get("event", "")) for r in airflow.task_log(relaxed["dag_run_id"], "check")]
    assert any("map50_min 0.5 -> 0.1" in e and "override_reason" in e for e in events), events


def test_a_crash_keeps_its_traceback_in_the_task_log(airflow):
    """The other side of the refusal's quiet log: an unexpected failure (a stage exiting 1) is logged by the
    task runner with its exception, and alerted once."""
    deadline = time.monotonic() + 120  # the DAG processor lists the fault DAG beside ours
    while airflow.request("GET", f"/api/v2/dags/{FAULT_DAG}")[0] != 200:
        assert time.monotonic() < deadline, f"{FAULT_DAG} never appeared"
        time.sleep(1)
    status, run = airflow.trigger({}, dag_id=FAULT_DAG)
    assert status == 200, run
    airflow.wait_for(run["dag_run_id"], lambda s: s["crash"] == "failed", dag_id=FAULT_DAG)
    records = airflow.task_log(run["dag_run_id"], "crash", dag_id=FAULT_DAG)
    failures = [r for r in records if r.get("event") == "Task failed with exception"]
    assert len(failures) == 1 and "error_detail" in failures[0], records
    rendered = json.dumps(failures[0]["error_detail"])
    assert "AirflowException" in rendered and "nightshift crash: exit code 1" in rendered
    assert not any(str(r.get("event", "")).startswith("Task failed, not retried") for r in records)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not airflow.receiver.delivered("*crash*"):
        time.sleep(1)
    assert len(airflow.receiver.delivered("*crash*")) == 1


class Browser:
    """Headless Chromium (Debian's `chromium`) driven over the DevTools protocol on 127.0.0.1."""

    def __init__(self, profile: Path):
        import shutil

        binary = shutil.which("chromium") or shutil.which("chromium-browser")
        if binary is None:
            pytest.fail("no chromium: `make browser` installs Debian's package (make test does it first)")
        port = _free_port()
        self.proc = subprocess.Popen(
            [binary, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--window-size=1400,1000",
             f"--remote-debugging-port={port}", "--remote-debugging-address=127.0.0.1", f"--user-data-dir={profile}",
             "about:blank"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        deadline, targets = time.monotonic() + 60, []
        while time.monotonic() < deadline and not targets:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=5) as r:
                    targets = [t for t in json.loads(r.read()) if t["type"] == "page"]
            except OSError:
                time.sleep(0.5)
        assert targets, "chromium's DevTools endpoint did not answer"
        import websocket

        self.ws = websocket.create_connection(targets[0]["webSocketDebuggerUrl"], timeout=30)
        self.next_id = 0

    def call(self, method: str, **params) -> dict:
        self.next_id += 1
        self.ws.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        while True:
            message = json.loads(self.ws.recv())
            if message.get("id") == self.next_id:
                assert "error" not in message, message
                return message.get("result", {})

    def js(self, expression: str):
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        return result.get("result", {}).get("value")

    def wait_js(self, expression: str, timeout: float = 90):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = self.js(expression)
            if value:
                return value
            time.sleep(0.5)
        self.screenshot(Path(os.environ.get("NIGHTSHIFT_TEST_SCREENSHOT", "/tmp/nightshift-trigger-form.png")))
        pytest.fail(f"in the browser, never true: {expression}\n{self.js('document.body.innerText')[:2000]}")

    def screenshot(self, path: Path) -> None:
        import base64

        path.write_bytes(base64.b64decode(self.call("Page.captureScreenshot", format="png")["data"]))

    def close(self):
        self.ws.close()
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)


SUBMIT = "document.querySelector('[data-testid=trigger-dag-submit]')"


def test_trigger_form_in_a_browser_starts_a_run_with_every_field_empty(airflow, tmp_path):
    """The ML lead's path: open the DAG, press Trigger, touch nothing, press Trigger in the form."""
    _, before = airflow.request("GET", f"/api/v2/dags/{DAG}/dagRuns")
    known = {r["dag_run_id"] for r in before["dag_runs"]}
    browser = Browser(tmp_path / "chromium-profile")
    try:
        browser.call("Network.enable")
        browser.call("Network.setCookie", name="_token", value=airflow.token, url=airflow.base)  # logged in
        browser.call("Page.enable")
        browser.call("Page.navigate", url=f"{airflow.base}/dags/{DAG}")
        browser.wait_js("!!document.querySelector('[data-testid=trigger-dag-button]')")
        browser.js("document.querySelector('[data-testid=trigger-dag-button]').click()")
        browser.wait_js(f"!!{SUBMIT}")
        form = browser.js(f"({SUBMIT}.closest('[role=dialog]') || document.body).innerText")
        for label in ("Dataset source", "Annotation format", "(from the config file)", "Model", "Epochs",
                      "Gate overrides", "Override reason", "Force", "Empty: the config's train.model"):
            assert label in form, label
        assert "null" not in form.split("Run Parameters", 1)[-1].split("Gate overrides")[0], form
        assert browser.js(f"{SUBMIT}.disabled") is False, "Trigger is disabled with every field left empty"
        browser.screenshot(tmp_path / "trigger-form.png")
        browser.js(f"{SUBMIT}.click()")
        deadline, new = time.monotonic() + 60, []
        while time.monotonic() < deadline and not new:
            _, runs = airflow.request("GET", f"/api/v2/dags/{DAG}/dagRuns")
            new = [r for r in runs["dag_runs"] if r["dag_run_id"] not in known]
            time.sleep(1)
    finally:
        browser.close()
    assert len(new) == 1, "the form's Trigger button started no run"
    run = new[0]
    print(f"the form sent conf {run['conf']}")
    states = airflow.wait_for(run["dag_run_id"], lambda s: s["check"] in ("success", "failed")
                              or s["check_conf"] == "failed")
    assert states["check_conf"] == "success" and states["check"] == "success", states
    quoted = urllib.parse.quote(run["dag_run_id"], safe="")
    status, body = airflow.request("PATCH", f"/api/v2/dags/{DAG}/dagRuns/{quoted}", {"state": "failed"})
    assert status == 200, body


def test_stop_leaves_nothing_and_no_secret_in_any_log(airflow):
    assert _ours(airflow), "Airflow's processes are found by their sessions"
    took = airflow.stop()
    deadline = time.monotonic() + 15
    while _ours(airflow) and time.monotonic() < deadline:
        time.sleep(0.5)
    left = _ours(airflow)
    print(f"stopped in {took:.1f} s; {len(left)} processes left")
    assert airflow.proc.returncode == 130, airflow.proc.returncode  # the launcher's answer to Ctrl-C
    assert left == []
    logs = [airflow.console, *(airflow.home / "airflow" / "logs").rglob("*")]
    texts = {str(p): p.read_text(errors="replace") for p in logs if p.is_file()}
    assert len(texts) > 3 and any("check_conf" in str(p) for p in texts)
    leaked = [p for p, text in texts.items() if SENTINEL in text]
    assert leaked == []
    assert all(SENTINEL not in p["text"] for p in airflow.receiver.posts)
