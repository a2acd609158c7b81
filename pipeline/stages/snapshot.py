"""Version the ingested dataset with DVC and push it to the remote; the result names its hash.

Copies runs/<run_id>/ingest/dataset/ into `<repo>/data/`, runs `dvc add data` (data.dvc) and
`dvc push -r nightshift data.dvc`, retried with backoff. The DVC project is `snapshot.repo_dir`, else the
nearest folder above the current one holding dvc.yaml and .dvc/, else <NIGHTSHIFT_HOME>/dvc (created with
`dvc init --no-scm`). The remote `nightshift` (snapshot.remote: a directory or s3://bucket/prefix, with
snapshot.remote_endpoint_url or AWS_ENDPOINT_URL for S3-compatible servers) is written to
.dvc/config.local. The same dataset always gives the same hash and pushes nothing new; a failed push
leaves the previous data.dvc as it was. data.dvc is also stored at runs/<run_id>/snapshot/data.dvc and
the hash is tagged on the run's MLflow run (dataset_hash, dataset_remote).

An unchanged dataset (the same annotations.json, which lists the sha1 of every image, as the last snapshot
recorded in state/dataset_stats.json, with data.dvc and the remote's listing still in place) is neither
copied nor re-added nor pushed. After every successful snapshot the dataset's statistics go to
state/dataset_stats.json (the next validate compares with them) and the dataset card to
snapshot/card.html and card.md.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml

from pipeline.config import Config, nightshift_home
from pipeline.datasets import canonical_io
from pipeline.errors import InputRejected, NightshiftError

log = logging.getLogger(__name__)

UPSTREAM = ("ingest",)
SKIP_IF_DONE = True
REMOTE = "nightshift"
DATA = "data"


class DvcError(NightshiftError):
    """A dvc command failed (exit 1: infrastructure, not the dataset's fault)."""


def dvc(repo: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    """Run `python -m dvc ARGS` in `repo` with this interpreter (the dvc of this environment)."""
    env = dict(os.environ, DVC_NO_ANALYTICS="1")
    proc = subprocess.run([sys.executable, "-m", "dvc", *args], cwd=repo, capture_output=True, text=True, env=env)
    log.debug("dvc %s -> %d\n%s%s", " ".join(args), proc.returncode, proc.stdout, proc.stderr)
    if check and proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
        raise DvcError(f"`dvc {' '.join(args)}` in {repo} failed (exit {proc.returncode}): " + " | ".join(tail))
    return proc


def find_repo(cfg: Config, start: Path | None = None) -> Path:
    """The DVC project to use, initialised when it is the configured or the home one and has no .dvc/ yet."""
    if cfg.snapshot.repo_dir:
        repo = Path(cfg.snapshot.repo_dir).expanduser().resolve()
    else:
        here = (start or Path.cwd()).resolve()
        repo = next((d for d in (here, *here.parents) if (d / "dvc.yaml").is_file() and (d / ".dvc").is_dir()),
                    nightshift_home() / "dvc")
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


def _local_remote(repo: Path) -> dict:
    """The `nightshift` remote's settings in .dvc/config.local ({} when absent or unreadable)."""
    import configparser

    parser = configparser.ConfigParser(interpolation=None)
    try:
        parser.read(repo / ".dvc" / "config.local")
        return dict(parser[f'remote "{REMOTE}"'])
    except (configparser.Error, KeyError):
        return {}


def push(repo: Path, cfg: Config) -> int:
    """`dvc push` with retries and exponential backoff; returns how many files were uploaded."""
    attempts = max(1, cfg.snapshot.push_retries)
    for attempt in range(1, attempts + 1):
        proc = dvc(repo, "push", "-r", REMOTE, f"{DATA}.dvc", check=False)
        if proc.returncode == 0:
            m = re.search(r"(\d+) files? pushed", proc.stdout + proc.stderr)
            return int(m.group(1)) if m else 0
        tail = " | ".join((proc.stderr or proc.stdout).strip().splitlines()[-3:])
        if attempt == attempts:
            raise DvcError(f"dvc push to remote {cfg.snapshot.remote} failed after {attempts} attempts: {tail}")
        delay = cfg.snapshot.push_backoff_s * 2 ** (attempt - 1)
        log.warning("dvc push failed (attempt %d/%d): %s; retrying in %.1fs", attempt, attempts, tail, delay)
        time.sleep(delay)
    return 0


def read_out(dvc_file: Path) -> dict:
    """The `data` out of data.dvc: md5 ("...dir"), nfiles, size."""
    spec = yaml.safe_load(dvc_file.read_text())
    out = next(o for o in spec["outs"] if o.get("path") == DATA)
    return {"md5": out["md5"], "nfiles": out.get("nfiles"), "size": out.get("size")}


def snapshot_dir(dataset: Path, repo: Path, cfg: Config) -> dict:
    """Make `dataset` the content of <repo>/data, add and push it; data.dvc changes only if the push succeeds."""
    dvc_file = repo / f"{DATA}.dvc"
    previous = dvc_file.read_bytes() if dvc_file.exists() else None
    data = repo / DATA
    staging = repo / f".{DATA}.incoming"
    shutil.rmtree(staging, ignore_errors=True)
    shutil.copytree(dataset, staging)
    try:
        shutil.rmtree(data, ignore_errors=True)
        os.replace(staging, data)
        dvc(repo, "add", DATA, "-q")
        remote = configure_remote(repo, cfg)
        pushed = push(repo, cfg)
    except BaseException:
        # put the previous data.dvc (and, from the cache, the data it names) back as they were
        if previous is None:
            dvc_file.unlink(missing_ok=True)
        else:
            dvc_file.write_bytes(previous)
            dvc(repo, "checkout", "--force", f"{DATA}.dvc", check=False)
        shutil.rmtree(staging, ignore_errors=True)
        raise
    out = read_out(dvc_file)
    return {"dataset_hash": out["md5"], "files": out["nfiles"], "size_bytes": out["size"], "remote": remote,
            "pushed": pushed, "repo": str(repo), "changed": previous != dvc_file.read_bytes()}


def _remote_has(remote: str, md5: str, cfg: Config) -> bool:
    """Whether the remote holds the .dir listing of `md5` (DVC pushes it once the files are there)."""
    rel = f"files/md5/{md5[:2]}/{md5[2:]}"
    if remote.startswith("s3://"):
        from pipeline.store import s3_client

        bucket, _, prefix = remote[len("s3://"):].partition("/")
        endpoint = cfg.snapshot.remote_endpoint_url
        try:
            s3_client(endpoint).head_object(Bucket=bucket, Key=f"{prefix.rstrip('/')}/{rel}".lstrip("/"))
            return True
        except Exception:  # noqa: BLE001 - any doubt means: do the full snapshot
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

    validation = ctx.result_of("validate") if ctx.has_result("validate") else None

    def read_image(name: str) -> bytes | None:
        if dataset is not None:
            path = dataset / canonical_io.IMAGES / name
            return path.read_bytes() if path.is_file() else None
        key = ctx.key(f"dataset/{canonical_io.IMAGES}/{name}", stage="ingest")
        return ctx.store.get_bytes(key) if ctx.store.exists(key) else None

    page, md = card.build(coco, read_image, dataset_hash=result["dataset_hash"], validation=validation,
                          samples=cfg.snapshot.card_samples, title=f"Dataset card: run {ctx.run_id}",
                          audit=ctx.result_of("audit") if ctx.has_result("audit") else None)
    ctx.store.put_bytes(page.encode(), ctx.key("card.html"))
    ctx.store.put_bytes(md.encode(), ctx.key("card.md"))


def run(cfg: Config, ctx) -> dict:
    raw = _annotations(ctx)
    coco = json.loads(raw)
    content_key = hashlib.sha256(raw).hexdigest()
    repo = find_repo(cfg)
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
    from pipeline import tracking

    result["mlflow_run_id"] = tracking.run_for(cfg, ctx.run_id, tags={"dataset_hash": result["dataset_hash"],
                                                                       "dataset_remote": result["remote"]})
    log.info("dataset %s: %s files, %s bytes, %d pushed to %s", result["dataset_hash"], result["files"],
             result["size_bytes"], result["pushed"], result["remote"])
    return result
