"""Version the ingested dataset with DVC and push it to the remote; the result names its hash.

Copies runs/<run_id>/ingest/dataset/ into `<repo>/data/`, runs `dvc add data` (data.dvc) and
`dvc push -r nightshift data.dvc`, retried with backoff, each attempt killed after snapshot.push_timeout_s
(a remote that stays down fails the stage with exit 5 in bounded time). The DVC project is `snapshot.repo_dir`, else the
nearest folder above the current one holding dvc.yaml and .dvc/, else <NIGHTSHIFT_HOME>/dvc (created with
`dvc init --no-scm`). The remote `nightshift` (snapshot.remote: a directory or s3://bucket/prefix, with
snapshot.remote_endpoint_url or AWS_ENDPOINT_URL for S3-compatible servers) is written to
.dvc/config.local. The same dataset always gives the same hash and pushes nothing new.

One snapshot at a time per DVC project: the whole stage runs under an flock on
<repo>/.nightshift-snapshot.lock (released when its holder dies; a waiter gives up after
snapshot.lock_timeout_s with one line naming the holder). The new data is staged and added as
<repo>/.data.incoming (its own .dvc file) and pushed from there; only once the push has succeeded is
data.dvc replaced, atomically (write + rename), and .data.incoming renamed to data/. A kill, a timeout or an
outage at any point leaves the previous data.dvc and data/ as they were (the debris is cleared by the
next snapshot), and the hash a run records is the one it pushed. data.dvc is also stored at runs/<run_id>/snapshot/data.dvc and
the hash is tagged on the run's MLflow run (dataset_hash, dataset_remote).

An unchanged dataset (the same annotations.json, which lists the sha1 of every image, as the last snapshot
recorded in state/dataset_stats.json, with data.dvc and the remote's listing still in place) is neither
copied nor re-added nor pushed. After every successful snapshot the dataset's statistics go to
state/dataset_stats.json (the next validate compares with them) and the dataset card to
snapshot/card.html and card.md.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import yaml

from pipeline.config import Config, nightshift_home
from pipeline.datasets import canonical_io
from pipeline.errors import InfrastructureError, InputRejected, NightshiftError
from pipeline.spec import StageSpec

log = logging.getLogger(__name__)

SPEC = StageSpec(upstream=("ingest",))
REMOTE = "nightshift"
DATA = "data"
INCOMING = ".data.incoming"  # the new data, added and pushed under its own .dvc file before data.dvc names it
LOCK_FILE = ".nightshift-snapshot.lock"


class DvcError(NightshiftError):
    """A dvc command failed (exit 1: infrastructure, not the dataset's fault)."""


class DvcTimeout(DvcError):
    """A dvc command ran past its time limit and was killed."""


def _die_with_parent() -> None:
    """In the dvc child: be killed when the stage process dies (a kill -9 of the stage leaves no push running)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # not Linux: the child may outlive a killed parent
        pass


def dvc(repo: Path, *args: str, check: bool = True, timeout_s: float | None = None) -> subprocess.CompletedProcess:
    """Run `python -m dvc ARGS` in `repo` with this interpreter (the dvc of this environment).

    With `timeout_s`, the command (its whole process group) is killed after that many seconds: DvcTimeout.
    """
    env = dict(os.environ, DVC_NO_ANALYTICS="1")
    command = [sys.executable, "-m", "dvc", *args]
    child = subprocess.Popen(command, cwd=repo, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                             start_new_session=True, preexec_fn=_die_with_parent)
    try:
        stdout, stderr = child.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(child.pid, signal.SIGKILL)
        child.communicate()
        raise DvcTimeout(f"`dvc {' '.join(args)}` in {repo} did not finish within {timeout_s:g}s: killed") from None
    except BaseException:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(child.pid, signal.SIGKILL)
        raise
    proc = subprocess.CompletedProcess(command, child.returncode, stdout, stderr)
    log.debug("dvc %s -> %d\n%s%s", " ".join(args), proc.returncode, proc.stdout, proc.stderr)
    if check and proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
        raise DvcError(f"`dvc {' '.join(args)}` in {repo} failed (exit {proc.returncode}): " + " | ".join(tail))
    return proc


def repo_path(cfg: Config, start: Path | None = None) -> Path:
    """The DVC project to use: snapshot.repo_dir, else the nearest project above `start`, else <home>/dvc."""
    if cfg.snapshot.repo_dir:
        return Path(cfg.snapshot.repo_dir).expanduser().resolve()
    here = (start or Path.cwd()).resolve()
    return next((d for d in (here, *here.parents) if (d / "dvc.yaml").is_file() and (d / ".dvc").is_dir()),
                nightshift_home() / "dvc")


def find_repo(cfg: Config, start: Path | None = None) -> Path:
    """The DVC project to use, initialised when it is the configured or the home one and has no .dvc/ yet."""
    return _init(repo_path(cfg, start))


def _init(repo: Path) -> Path:
    if not (repo / ".dvc").is_dir():
        repo.mkdir(parents=True, exist_ok=True)
        dvc(repo, "init", "--no-scm", "-q")
        log.info("initialised a DVC project (no SCM) at %s", repo)
    return repo


def configure_remote(repo: Path, cfg: Config) -> str:
    """Point the remote `nightshift` at snapshot.remote in .dvc/config.local; returns the URL used."""
    url = cfg.snapshot.remote
    if url.startswith("file://"):
        url = url[len("file://"):]
    if not url.startswith("s3://"):
        url = str(Path(url).expanduser().resolve())
        Path(url).mkdir(parents=True, exist_ok=True)
    endpoint = cfg.snapshot.remote_endpoint_url or os.environ.get("AWS_ENDPOINT_URL_S3") \
        or os.environ.get("AWS_ENDPOINT_URL", "")
    wanted = {"url": url, **({"endpointurl": endpoint} if url.startswith("s3://") and endpoint else {})}
    if _local_remote(repo) == wanted:
        return url  # already configured: spare two dvc start-ups
    dvc(repo, "remote", "add", "--local", "-f", REMOTE, url)
    if "endpointurl" in wanted:
        dvc(repo, "remote", "modify", "--local", REMOTE, "endpointurl", endpoint)
    return url


@contextlib.contextmanager
def repo_lock(repo: Path, timeout_s: float) -> Iterator[None]:
    """One snapshot at a time in `repo`: an flock on <repo>/.nightshift-snapshot.lock, which the kernel releases
    when its holder dies (so a crashed holder never blocks anyone). The holder writes who it is into the file
    for the message a waiter gives after `timeout_s` (InfrastructureError, exit 5)."""
    from pipeline.locking import LockBusy, file_lock

    path = repo / LOCK_FILE
    try:
        with file_lock(path, timeout_s, on_wait=lambda holder: log.info(
                "%s: waiting for another snapshot of this DVC project (%s)", path, holder)):
            yield
    except LockBusy as busy:
        raise InfrastructureError(f"another snapshot ({busy.holder}) held the DVC project lock for more than "
                                  f"snapshot.lock_timeout_s={timeout_s:g}s", uri=str(path)) from None


def _local_remote(repo: Path) -> dict:
    """The `nightshift` remote's settings in .dvc/config.local ({} when absent or unreadable)."""
    import configparser

    parser = configparser.ConfigParser(interpolation=None)
    try:
        parser.read(repo / ".dvc" / "config.local")
    except configparser.Error:
        return {}
    # DVC writes the section as ['remote "nightshift"'] (configobj quoting); older files have it bare
    for section in (f"'remote \"{REMOTE}\"'", f'remote "{REMOTE}"'):
        if parser.has_section(section):
            return dict(parser[section])
    return {}


def push(repo: Path, cfg: Config, target: str = f"{DATA}.dvc", remote: str = "") -> int:
    """`dvc push` of `target` with retries and exponential backoff, each attempt killed after
    snapshot.push_timeout_s; returns how many files were uploaded. InfrastructureError (exit 5) after the last."""
    attempts = max(1, cfg.snapshot.push_retries)
    timeout_s = cfg.snapshot.push_timeout_s
    for attempt in range(1, attempts + 1):
        try:
            proc = dvc(repo, "push", "-r", REMOTE, target, check=False, timeout_s=timeout_s)
        except DvcTimeout:
            proc, tail = None, f"no answer within snapshot.push_timeout_s={timeout_s:g}s"
        if proc is not None and proc.returncode == 0:
            m = re.search(r"(\d+) files? pushed", proc.stdout + proc.stderr)
            return int(m.group(1)) if m else 0
        if proc is not None:
            tail = " | ".join((proc.stderr or proc.stdout).strip().splitlines()[-3:])
        if attempt == attempts:
            raise InfrastructureError(f"dvc push failed after {attempts} attempts: {tail}",
                                      uri=remote or cfg.snapshot.remote)
        delay = cfg.snapshot.push_backoff_s * 2 ** (attempt - 1)
        log.warning("dvc push failed (attempt %d/%d): %s; retrying in %.1fs", attempt, attempts, tail, delay)
        time.sleep(delay)
    return 0


def read_out(dvc_file: Path) -> dict:
    """The `data` out of data.dvc: md5 ("...dir"), nfiles, size."""
    spec = yaml.safe_load(dvc_file.read_text())
    out = next(o for o in spec["outs"] if o.get("path") == DATA)
    return {"md5": out["md5"], "nfiles": out.get("nfiles"), "size": out.get("size")}


def clear_debris(repo: Path) -> None:
    """What a killed snapshot left beside data/ and data.dvc (call with the repo lock held)."""
    for name in (INCOMING, f".{DATA}.old"):
        if (repo / name).exists():
            log.warning("%s: removing what an interrupted snapshot left", repo / name)
            shutil.rmtree(repo / name, ignore_errors=True)
    for name in (f"{INCOMING}.dvc", f".{DATA}.dvc.tmp"):
        (repo / name).unlink(missing_ok=True)


def snapshot_dir(dataset: Path, repo: Path, cfg: Config) -> dict:
    """Add `dataset` as .data.incoming, push it, and only then make it data.dvc and data/ (call under the lock).

    Until the push has succeeded nothing a reader sees changes: data.dvc and data/ stay the previous snapshot.
    """
    dvc_file = repo / f"{DATA}.dvc"
    previous = dvc_file.read_bytes() if dvc_file.exists() else None
    clear_debris(repo)
    staging, incoming_dvc = repo / INCOMING, repo / f"{INCOMING}.dvc"
    try:
        shutil.copytree(dataset, staging)
        dvc(repo, "add", INCOMING, "-q")  # hashes and caches the new data; writes .data.incoming.dvc only
        remote = configure_remote(repo, cfg)
        pushed = push(repo, cfg, incoming_dvc.name, remote)
        # pushed: from here on data.dvc may name it. Same outs entry, path data, written whole then renamed.
        spec = yaml.safe_load(incoming_dvc.read_text())
        for out in spec["outs"]:
            if out.get("path") == INCOMING:
                out["path"] = DATA
        tmp = repo / f".{DATA}.dvc.tmp"
        with open(tmp, "w") as fh:
            yaml.safe_dump(spec, fh, sort_keys=False)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, dvc_file)
        # the workspace copy follows (data/ is only a checkout of what data.dvc names)
        old = repo / f".{DATA}.old"
        if (repo / DATA).exists():
            os.rename(repo / DATA, old)
        os.rename(staging, repo / DATA)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        incoming_dvc.unlink(missing_ok=True)
    out = read_out(dvc_file)
    return {"dataset_hash": out["md5"], "files": out["nfiles"], "size_bytes": out["size"], "remote": remote,
            "pushed": pushed, "repo": str(repo), "changed": previous != dvc_file.read_bytes()}


def _remote_has(remote: str, md5: str, cfg: Config) -> bool:
    """Whether the remote holds the .dir listing of `md5` (DVC pushes it once the files are there)."""
    rel = f"files/md5/{md5[:2]}/{md5[2:]}"
    if remote.startswith("s3://"):
        from pipeline.store import S3NotFound, s3_call, s3_client

        bucket, _, prefix = remote[len("s3://"):].partition("/")
        key = f"{prefix.rstrip('/')}/{rel}".lstrip("/")
        client = s3_client(cfg.snapshot.remote_endpoint_url, attempts=1)
        # only a definite not-found means "not pushed"; an outage is exit 5 in bounded time, not a silent re-push
        try:
            s3_call(lambda: client.head_object(Bucket=bucket, Key=key), "HEAD", f"s3://{bucket}/{key}", log=log)
            return True
        except S3NotFound:
            return False
    return (Path(remote) / rel).is_file()


def unchanged(repo: Path, content_key: str, state: dict | None, remote: str, cfg: Config) -> bool:
    """The ingested dataset is byte-for-byte the last snapshot, and that snapshot is still in repo and remote.

    annotations.json lists every image with the sha1 of its bytes, so equal annotations.json means equal data.
    """
    if not state or state.get("content_key") != content_key or state.get("remote") != remote:
        return False
    dvc_file = repo / f"{DATA}.dvc"
    if not dvc_file.is_file():
        return False
    try:
        current = read_out(dvc_file)
    except (yaml.YAMLError, StopIteration, KeyError, TypeError):
        return False
    return current["md5"] == state.get("dataset_hash") and _remote_has(remote, current["md5"], cfg)


def _annotations(ctx) -> bytes:
    from pipeline.store import LocalStore

    key = ctx.key(f"dataset/{canonical_io.ANNOTATIONS}", stage="ingest")
    if isinstance(ctx.store, LocalStore) and ctx.store.local_path(key).is_file():
        return ctx.store.local_path(key).read_bytes()  # no temporary copy of a large file
    if not ctx.store.exists(key):
        raise InputRejected("no ingested dataset for this run: run `nightshift ingest` first",
                            path=ctx.url("dataset", stage="ingest"))
    return ctx.store.get_bytes(key)


def write_card(ctx, cfg: Config, coco: dict, result: dict, dataset: Path | None) -> None:
    """card.html + card.md beside the snapshot's outputs (sample images read from the store)."""
    from pipeline.datasets import card

    # the card shows results as the JSON they are written as
    validation = ctx.result_of("validate").to_dict() if ctx.has_result("validate") else None

    def read_image(name: str) -> bytes | None:
        if dataset is not None:
            path = dataset / canonical_io.IMAGES / name
            return path.read_bytes() if path.is_file() else None
        key = ctx.key(f"dataset/{canonical_io.IMAGES}/{name}", stage="ingest")
        return ctx.store.get_bytes(key) if ctx.store.exists(key) else None

    page, md = card.build(coco, read_image, dataset_hash=result["dataset_hash"], validation=validation,
                          samples=cfg.snapshot.card_samples, title=f"Dataset card: run {ctx.run_id}",
                          audit=ctx.result_of("audit").to_dict() if ctx.has_result("audit") else None)
    ctx.store.put_bytes(page.encode(), ctx.key("card.html"))
    ctx.store.put_bytes(md.encode(), ctx.key("card.md"))


def run(cfg: Config, ctx) -> dict:
    raw = _annotations(ctx)
    coco = json.loads(raw)
    content_key = hashlib.sha256(raw).hexdigest()
    repo = repo_path(cfg)
    with repo_lock(repo, cfg.snapshot.lock_timeout_s):  # one DVC operation at a time in this project
        result = _snapshot(cfg, ctx, coco, content_key, _init(repo))
    from pipeline import tracking

    result["mlflow_run_id"] = tracking.run_for(cfg, ctx.run_id, tags={"dataset_hash": result["dataset_hash"],
                                                                       "dataset_remote": result["remote"]})
    log.info("dataset %s: %s files, %s bytes, %d pushed to %s", result["dataset_hash"], result["files"],
             result["size_bytes"], result["pushed"], result["remote"])
    return result


def _snapshot(cfg: Config, ctx, coco: dict, content_key: str, repo: Path) -> dict:
    clear_debris(repo)  # what a killed snapshot left, whichever way this one goes
    state = ctx.store.get_json(canonical_io.STATS_KEY) if ctx.store.exists(canonical_io.STATS_KEY) else None
    remote = configure_remote(repo, cfg)
    local, dataset = ctx.workdir / "dataset", None
    fetched = False
    try:
        if unchanged(repo, content_key, state, remote, cfg):
            log.info("dataset unchanged since run %s (%s): nothing to add or push", state.get("run_id"),
                     state["dataset_hash"])
            out = read_out(repo / f"{DATA}.dvc")
            result = {"dataset_hash": out["md5"], "files": out["nfiles"], "size_bytes": out["size"],
                      "remote": remote, "pushed": 0, "repo": str(repo), "changed": False}
        else:
            shutil.rmtree(local, ignore_errors=True)
            dataset, fetched = canonical_io.ingested_dataset(ctx, local)
            result = snapshot_dir(dataset, repo, cfg)
        ctx.publish(repo / f"{DATA}.dvc", f"{DATA}.dvc")
        stats = canonical_io.dataset_stats(coco)
        stats.update(dataset_hash=result["dataset_hash"], run_id=ctx.run_id, content_key=content_key,
                     remote=remote, repo=str(repo))
        ctx.store.put_json(stats, canonical_io.STATS_KEY)  # what the next night's validate compares with
        write_card(ctx, cfg, coco, result, dataset)
    finally:
        if fetched:
            shutil.rmtree(local, ignore_errors=True)
    result.update(card=ctx.url("card.html"), card_md=ctx.url("card.md"))
    return result
