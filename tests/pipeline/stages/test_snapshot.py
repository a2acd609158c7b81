"""snapshot: DVC add + push of the ingested dataset, to a directory remote and to S3 (moto); stable hashes;
one snapshot at a time per DVC project; data.dvc only ever names pushed data (kill -9, outage, timeout)."""
from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipeline import tracking
from pipeline.cli import main
from pipeline.config import load_config
from pipeline.datasets import dvc
from pipeline.datasets.synthetic import generate
from tests.helpers import result_line


@pytest.fixture
def tags(monkeypatch) -> list:
    """Record MLflow tagging instead of creating a sqlite MLflow per test (covered once in the slow test)."""
    calls = []
    monkeypatch.setattr(tracking, "run_for", lambda cfg, run_id, tags=None: calls.append((run_id, tags)) or "mlrun")
    return calls


@pytest.fixture
def ingested(nightshift_home, monkeypatch, tmp_path):
    """Ingest a 30-image export under run ids; returns a function run_id -> None. cwd is a clean tmp dir."""
    monkeypatch.chdir(tmp_path)  # no dvc.yaml above: the repo is always the configured one
    generate(tmp_path / "export", num_images=30, seed=2)

    def ingest(run_id: str, source: Path | None = None) -> None:
        assert main(["ingest", "--run-id", run_id, "--source", str(source or tmp_path / "export")]) == 0
    return ingest


def run(capsys, *args) -> tuple[int, dict, str]:
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, result_line(out, required=False) or {}, err


def remote_files(remote: Path) -> set[str]:
    return {p.relative_to(remote).as_posix() for p in remote.rglob("*") if p.is_file()}


def test_directory_remote_same_hash_nothing_new_failed_push_restores(capsys, ingested, tags, tmp_path,
                                                                    nightshift_home):
    repo, remote = tmp_path / "repo", tmp_path / "remote"
    sets = ["--set", f"snapshot.repo_dir={repo}", "--set", f"snapshot.remote={remote}"]
    ingested("r1")
    code, first, err = run(capsys, "snapshot", "--run-id", "r1", *sets)
    assert code == 0, err
    assert first["dataset_hash"].endswith(".dir") and first["files"] == 31 and first["size_bytes"] > 0
    assert first["pushed"] == 32  # 31 files + the .dir listing
    assert first["remote"] == str(remote)
    uploaded = remote_files(remote)
    assert len(uploaded) == 32
    data_dvc = (repo / "data.dvc").read_text()
    assert first["dataset_hash"] in data_dvc
    stored = nightshift_home / "artifacts" / "runs" / "r1" / "snapshot" / "data.dvc"
    assert stored.read_text() == data_dvc
    assert 'remote "nightshift"' in (repo / ".dvc" / "config.local").read_text()
    assert tags == [("r1", {"dataset_hash": first["dataset_hash"], "dataset_remote": str(remote)})]
    # the statistics the next validate compares with, and the dataset card
    stats = json.loads((nightshift_home / "artifacts" / "state" / "dataset_stats.json").read_text())
    assert stats["dataset_hash"] == first["dataset_hash"] and stats["run_id"] == "r1" and stats["images"] == 30
    assert sum(stats["width_hist"]) == 30 and set(stats["classes"]) == {"circle", "square", "triangle"}
    snap = nightshift_home / "artifacts" / "runs" / "r1" / "snapshot"
    assert first["dataset_hash"] in (snap / "card.html").read_text() and "data:image/png;base64," in \
        (snap / "card.html").read_text()
    assert "| train |" in (snap / "card.md").read_text()
    strip = (snap / "aug_strip.png").read_bytes()  # train's augmentation on a few train images, beside the card
    assert strip.startswith(b"\x89PNG") and "](aug_strip.png)" in (snap / "card.md").read_text()

    ingested("r2")  # the same export, another night
    code, second, err = run(capsys, "snapshot", "--run-id", "r2", *sets)
    assert code == 0, err
    assert second["dataset_hash"] == first["dataset_hash"]
    assert second["pushed"] == 0 and second["changed"] is False
    assert (nightshift_home / "artifacts" / "runs" / "r2" / "snapshot" / "card.md").is_file()  # unchanged: still a card
    # images read from the store this time: the same samples, the same strip
    assert (nightshift_home / "artifacts" / "runs" / "r2" / "snapshot" / "aug_strip.png").read_bytes() == strip
    assert remote_files(remote) == uploaded

    # a new dataset whose push fails (the remote's files/ folder is a plain file) leaves data.dvc as it was
    before = (repo / "data.dvc").read_bytes()
    generate(tmp_path / "export2", num_images=31, seed=2)
    ingested("r3", tmp_path / "export2")
    broken = tmp_path / "broken-remote"
    broken.mkdir()
    (broken / "files").write_text("not a folder")
    code, _, err = run(capsys, "snapshot", "--run-id", "r3", "--set", f"snapshot.repo_dir={repo}",
                       "--set", f"snapshot.remote={broken}",
                       "--set", "snapshot.push_retries=2", "--set", "snapshot.push_backoff_s=0")
    assert code == 5  # the remote failed, not the dataset
    assert f"{broken}: dvc push failed after 2 attempts" in err
    assert (repo / "data.dvc").read_bytes() == before
    assert len(list((repo / "data" / "images").iterdir())) == 30  # data/ still the snapshot data.dvc names
    assert not (repo / dvc.INCOMING).exists() and not (repo / f"{dvc.INCOMING}.dvc").exists()
    assert [t for t in tags if t[0] == "r3"] == []


def test_s3_remote_on_a_local_server(capsys, ingested, tags, tmp_path, s3_server):
    from pipeline.store import s3_client

    client = s3_client(s3_server)
    client.create_bucket(Bucket="dvc-store")
    sets = ["--set", f"snapshot.repo_dir={tmp_path / 'repo'}", "--set", "snapshot.remote=s3://dvc-store/nightshift",
            "--set", f"snapshot.remote_endpoint_url={s3_server}"]
    ingested("r1")
    code, first, err = run(capsys, "snapshot", "--run-id", "r1", *sets)
    assert code == 0, err
    keys = {o["Key"] for o in client.list_objects_v2(Bucket="dvc-store")["Contents"]}
    assert len(keys) == 32 and all(k.startswith("nightshift/files/md5/") for k in keys)
    assert any(k.endswith(first["dataset_hash"][2:]) for k in keys)
    assert "endpointurl" in (tmp_path / "repo" / ".dvc" / "config.local").read_text()


def test_snapshot_without_ingest_is_rejected(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, _, err = run(capsys, "snapshot", "--run-id", "none", "--set", f"snapshot.repo_dir={tmp_path / 'repo'}")
    assert code == 3 and "run `nightshift ingest` first" in err


@pytest.mark.slow
def test_dataset_hash_is_tagged_on_the_mlflow_run(capsys, ingested, tmp_path):
    import mlflow

    ingested("r1")
    code, result, err = run(capsys, "snapshot", "--run-id", "r1", "--set", f"snapshot.repo_dir={tmp_path / 'repo'}")
    assert code == 0, err
    cfg = load_config(None, []).resolved()
    mlrun = tracking.find_run(cfg, "r1")
    assert mlrun is not None and mlrun.info.run_id == result["mlflow_run_id"]
    assert mlrun.data.tags["dataset_hash"] == result["dataset_hash"]
    assert mlrun.data.tags["dataset_remote"] == cfg.snapshot.remote
    assert mlflow.get_tracking_uri().startswith("sqlite:")


# -- concurrency, kills and outages: real processes ------------------------------------------------------------
ROOT = Path(__file__).resolve().parents[3]

# `python -c WRAPPER snapshot ...`: the real CLI; at the point NIGHTSHIFT_TEST_STOP_AT names, the process
# announces itself (its pid in a file written whole, then renamed), then goes on ("announce"), waits there to be
# killed ("sleep"), or waits until the test creates FLAG.go ("hold", at most 300 s)
WRAPPER = """
import os, sys, time
from pipeline.datasets import dvc

stop_at, flag = os.environ.get("NIGHTSHIFT_TEST_STOP_AT", ""), os.environ.get("NIGHTSHIFT_TEST_FLAG", "")
mode = os.environ.get("NIGHTSHIFT_TEST_MODE", "announce")

def reached(point):
    if point != stop_at:
        return
    with open(flag + ".tmp", "w") as fh:
        fh.write(str(os.getpid()))
    os.replace(flag + ".tmp", flag)
    if mode == "sleep":
        time.sleep(3600)
    deadline = time.monotonic() + 300
    while mode == "hold" and not os.path.exists(flag + ".go") and time.monotonic() < deadline:
        time.sleep(0.05)

real_push = dvc.push
def push(*args, **kwargs):
    reached("dvc push")
    pushed = real_push(*args, **kwargs)
    reached("after push")
    return pushed
dvc.push = push

from pipeline import cli
sys.exit(cli.main(sys.argv[1:]))
"""


def start_snapshot(tmp_path: Path, run_id: str, sets: list[str], stop_at: str = "", mode: str = "announce"
                   ) -> tuple[subprocess.Popen, Path]:
    command = [sys.executable, "-c", WRAPPER, "snapshot", "--run-id", run_id]
    for s in sets:
        command += ["--set", s]
    log = tmp_path / f"{run_id}-{time.monotonic_ns()}.log"
    env = dict(os.environ, PYTHONPATH=str(ROOT), NIGHTSHIFT_TEST_STOP_AT=stop_at, NIGHTSHIFT_TEST_MODE=mode,
               NIGHTSHIFT_TEST_FLAG=str(tmp_path / f"{run_id}.reached"))
    with open(log, "wb") as fh:
        proc = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=fh, stderr=subprocess.STDOUT)
    STARTED.append(proc)
    return proc, log


STARTED: list[subprocess.Popen] = []  # snapshot processes a test started; killed after it, pass or fail


@pytest.fixture(autouse=True)
def _no_snapshot_outlives_its_test():
    yield
    while STARTED:
        proc = STARTED.pop()
        if proc.poll() is None:  # a test that failed before its kill (or a "sleep" stop it never released)
            proc.kill()
            proc.wait(timeout=30)


def wait_for(condition, what: str, timeout_s: float, proc: subprocess.Popen | None = None, log: Path | None = None):
    deadline = time.monotonic() + timeout_s
    while not condition():
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"exited ({proc.returncode}) before {what}:\n{log.read_text() if log else ''}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}:\n{log.read_text() if log else ''}")
        time.sleep(0.05)


def dvc_processes_in(repo: Path) -> list[int]:
    """Processes running dvc with `repo` as their working directory (a push that outlived its stage)."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and b"dvc" in (entry / "cmdline").read_bytes() and \
                    os.readlink(entry / "cwd") == str(repo):
                found.append(int(entry.name))
        except OSError:
            continue
    return found


def listing_matches(listing: list[dict], dataset: Path) -> bool:
    """A DVC .dir listing names exactly the files of `dataset`, with their md5."""
    files = {p.relative_to(dataset).as_posix(): hashlib.md5(p.read_bytes()).hexdigest()
             for p in dataset.rglob("*") if p.is_file()}
    return {e["relpath"]: e["md5"] for e in listing} == files


@pytest.fixture
def blackhole():
    """An S3 endpoint on 127.0.0.1 that accepts connections and never answers (an outage that hangs)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        sock.close()


@pytest.mark.slow
def test_two_snapshots_at_once_each_record_the_hash_they_pushed(ingested, tmp_path, s3_server, nightshift_home):
    """Two real `nightshift snapshot` processes of different datasets into one DVC project and one S3 remote,
    the second started while the first is held at its push: the second waits for the project lock instead of
    replacing data/ under the first; each result, data.dvc copy and MLflow tag names its own, pushed data."""
    import mlflow

    from pipeline.store import s3_client

    client = s3_client(s3_server)
    client.create_bucket(Bucket="dvc-store")
    generate(tmp_path / "export-b", num_images=24, seed=7)
    ingested("ra")
    ingested("rb", tmp_path / "export-b")
    repo = tmp_path / "repo"
    common = [f"snapshot.repo_dir={repo}", "snapshot.remote=s3://dvc-store/ns",
              f"snapshot.remote_endpoint_url={s3_server}"]
    procs = {}
    procs["ra"] = start_snapshot(tmp_path, "ra", [*common, f"mlflow.tracking_uri=sqlite:///{tmp_path / 'ra'}.db"],
                                 stop_at="dvc push", mode="hold")
    flag = tmp_path / "ra.reached"
    wait_for(lambda: flag.is_file() and flag.read_text() == str(procs["ra"][0].pid), "ra at its push", 300,
             *procs["ra"])
    procs["rb"] = start_snapshot(tmp_path, "rb", [*common, f"mlflow.tracking_uri=sqlite:///{tmp_path / 'rb'}.db"])
    wait_for(lambda: "waiting for another snapshot of this DVC project (pid " in procs["rb"][1].read_text(),
             "rb waiting for the lock ra holds", 300, *procs["rb"])
    (tmp_path / "ra.reached.go").touch()  # ra pushes and finishes; then rb gets the lock
    for run_id, (proc, log) in procs.items():
        assert proc.wait(timeout=600) == 0, log.read_text()
    results = {run_id: result_line(log.read_text(), required=False) or {} for run_id, (_, log) in procs.items()}
    assert results["ra"]["dataset_hash"] != results["rb"]["dataset_hash"]
    for run_id, result in results.items():
        md5 = result["dataset_hash"]
        # the remote holds this run's own data under the hash this run recorded
        listing = json.loads(client.get_object(Bucket="dvc-store", Key=f"ns/files/md5/{md5[:2]}/{md5[2:]}")["Body"].read())
        dataset = nightshift_home / "artifacts" / "runs" / run_id / "ingest" / "dataset"
        assert listing_matches(listing, dataset), run_id
        for entry in listing:
            client.head_object(Bucket="dvc-store", Key=f"ns/files/md5/{entry['md5'][:2]}/{entry['md5'][2:]}")
        stored = (nightshift_home / "artifacts" / "runs" / run_id / "snapshot" / "data.dvc").read_text()
        assert md5 in stored
        mlflow.set_tracking_uri(f"sqlite:///{tmp_path / run_id}.db")
        assert mlflow.MlflowClient().get_run(result["mlflow_run_id"]).data.tags["dataset_hash"] == md5
    assert dvc.read_out(repo / "data.dvc")["md5"] == results["rb"]["dataset_hash"]  # the later one
    assert not (repo / dvc.INCOMING).exists() and not (repo / f"{dvc.INCOMING}.dvc").exists()


def test_a_held_lock_is_waited_for_then_reported_in_one_line(capsys, ingested, tags, tmp_path):
    repo = tmp_path / "repo"
    ingested("r1")
    sets = ["--set", f"snapshot.repo_dir={repo}", "--set", f"snapshot.remote={tmp_path / 'remote'}"]
    with dvc.repo_lock(repo, 1):  # another snapshot of this DVC project, still working
        started = time.monotonic()
        code, _, err = run(capsys, "snapshot", "--run-id", "r1", *sets, "--set", "snapshot.lock_timeout_s=1.5")
        assert 1.5 <= time.monotonic() - started < 30
    assert code == 5
    lines = [ln for ln in err.splitlines() if "error:" in ln]
    assert len(lines) == 1 and "Traceback" not in err
    assert f"{repo / dvc.LOCK_FILE}: another snapshot (pid {os.getpid()} on {socket.gethostname()}" in lines[0]
    assert "snapshot.lock_timeout_s=1.5s" in lines[0]
    assert not (repo / "data.dvc").exists()
    code, result, err = run(capsys, "snapshot", "--run-id", "r1", *sets)  # released: it goes through
    assert code == 0, err
    assert result["dataset_hash"] in (repo / "data.dvc").read_text()


def test_an_outage_during_push_fails_in_bounded_time_and_keeps_data_dvc(capsys, ingested, tags, tmp_path,
                                                                      blackhole, monkeypatch):
    repo = tmp_path / "repo"
    ingested("r1")
    code, first, err = run(capsys, "snapshot", "--run-id", "r1", "--set", f"snapshot.repo_dir={repo}",
                           "--set", f"snapshot.remote={tmp_path / 'remote'}")
    assert code == 0, err
    before = (repo / "data.dvc").read_bytes()
    generate(tmp_path / "export2", num_images=31, seed=2)
    ingested("r2", tmp_path / "export2")
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.setenv(key, "testing")
    started = time.monotonic()
    code, _, err = run(capsys, "snapshot", "--run-id", "r2", "--set", f"snapshot.repo_dir={repo}",
                       "--set", "snapshot.remote=s3://dvc-store/ns", "--set", f"snapshot.remote_endpoint_url={blackhole}",
                       "--set", "snapshot.push_timeout_s=4", "--set", "snapshot.push_retries=2",
                       "--set", "snapshot.push_backoff_s=0")
    elapsed = time.monotonic() - started
    print(f"snapshot during an S3 outage (push_timeout_s=4, push_retries=2): exit {code} after {elapsed:.1f}s")
    assert code == 5, err
    assert "s3://dvc-store/ns: dvc push failed after 2 attempts: no answer within snapshot.push_timeout_s=4s" in err
    assert 8 <= elapsed < 90  # two attempts of 4 s, plus dvc add and start-ups; never the 869 s of a hang
    assert (repo / "data.dvc").read_bytes() == before
    assert len(list((repo / "data" / "images").iterdir())) == 30
    assert dvc_processes_in(repo) == []  # the killed pushes are gone


@pytest.mark.slow
@pytest.mark.parametrize("point", ["dvc push", "after push"])
def test_kill_9_during_or_after_the_push_keeps_the_previous_data_dvc(ingested, tags, tmp_path, s3_server, capsys,
                                                                   blackhole, point):
    """kill -9 of the stage while `dvc push` runs (the remote hangs) or right after it returned, before data.dvc
    is replaced: data.dvc and data/ stay the previous snapshot, no dvc process survives, and the retry pushes and
    records the new data."""
    from pipeline.store import s3_client

    s3_client(s3_server).create_bucket(Bucket="dvc-store")
    repo = tmp_path / "repo"
    sets = [f"snapshot.repo_dir={repo}", "snapshot.remote=s3://dvc-store/ns"]
    ingested("r1")
    code, first, err = run(capsys, "snapshot", "--run-id", "r1", *[a for s in sets for a in ("--set", s)],
                           "--set", f"snapshot.remote_endpoint_url={s3_server}")
    assert code == 0, err
    before = (repo / "data.dvc").read_bytes()
    generate(tmp_path / "export2", num_images=31, seed=2)
    ingested("r2", tmp_path / "export2")

    endpoint = blackhole if point == "dvc push" else s3_server
    proc, log = start_snapshot(tmp_path, "r2", [*sets, f"snapshot.remote_endpoint_url={endpoint}"], stop_at=point,
                               mode="announce" if point == "dvc push" else "sleep")
    flag = tmp_path / "r2.reached"
    wait_for(lambda: flag.is_file() and flag.read_text() == str(proc.pid), f"snapshot at {point!r}", 300, proc, log)
    if point == "dvc push":
        wait_for(lambda: dvc_processes_in(repo), "the dvc push process", 60, proc, log)
    os.kill(proc.pid, signal.SIGKILL)
    assert proc.wait(timeout=30) == -signal.SIGKILL
    wait_for(lambda: not dvc_processes_in(repo), "the orphaned dvc push to die with its parent", 30)
    assert (repo / "data.dvc").read_bytes() == before, point
    assert len(list((repo / "data" / "images").iterdir())) == 30
    assert not (tmp_path / "nightshift-home" / "artifacts" / "runs" / "r2" / "snapshot" / "result.json").exists()

    code, second, err = run(capsys, "snapshot", "--run-id", "r2", *[a for s in sets for a in ("--set", s)],
                            "--set", f"snapshot.remote_endpoint_url={s3_server}")  # the retry, S3 back
    assert code == 0, err
    assert second["dataset_hash"] != first["dataset_hash"] and second["dataset_hash"] in (repo / "data.dvc").read_text()
    assert len(list((repo / "data" / "images").iterdir())) == 31
    md5 = second["dataset_hash"]
    s3_client(s3_server).head_object(Bucket="dvc-store", Key=f"ns/files/md5/{md5[:2]}/{md5[2:]}")
    assert not (repo / dvc.INCOMING).exists() and not (repo / f"{dvc.INCOMING}.dvc").exists()


def test_snapshot_in_a_git_repository_with_the_projects_gitignore(capsys, ingested, tags, tmp_path):
    """`make demo` snapshots into this repository itself: a git checkout whose .gitignore lists the staging
    names. DVC refuses to write a .dvc file that git ignores, so the staged one must not be ignored."""
    repo, remote = tmp_path / "repo", tmp_path / "remote"
    repo.mkdir()
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    (repo / ".gitignore").write_text((Path(__file__).resolve().parents[3] / ".gitignore").read_text())
    dvc.run(repo, "init", "-q")  # with SCM, as the project's own .dvc/
    ingested("git1")
    code, result, err = run(capsys, "snapshot", "--run-id", "git1", "--set", f"snapshot.repo_dir={repo}",
                            "--set", f"snapshot.remote={remote}")
    assert code == 0, err
    assert result["dataset_hash"] in (repo / "data.dvc").read_text()
    assert (repo / "data").is_dir() and not (repo / ".data.incoming").exists()
    status = subprocess.run(["git", "status", "--porcelain", "--ignored"], cwd=repo, capture_output=True,
                            text=True, check=True).stdout
    assert "!! data/" in status and ".data.incoming" not in status
