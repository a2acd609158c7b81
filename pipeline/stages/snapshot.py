"""Version the ingested dataset with DVC and push it to the remote; the result names its hash.

Copies runs/<run_id>/ingest/dataset/ into `<repo>/data/`, runs `dvc add data` (data.dvc) and
`dvc push -r nightshift data.dvc`, retried with backoff. The DVC project is `snapshot.repo_dir`, else the
nearest folder above the current one holding dvc.yaml and .dvc/, else <NIGHTSHIFT_HOME>/dvc (created with
`dvc init --no-scm`). The remote `nightshift` (snapshot.remote: a directory or s3://bucket/prefix, with
snapshot.remote_endpoint_url or AWS_ENDPOINT_URL for S3-compatible servers) is written to
.dvc/config.local. The same dataset always gives the same hash and pushes nothing new; a failed push
leaves the previous data.dvc as it was. data.dvc is also stored at runs/<run_id>/snapshot/data.dvc and
the hash is tagged on the run's MLflow run (dataset_hash, dataset_remote).
"""
from __future__ import annotations

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


def run(cfg: Config, ctx) -> dict:
    local = ctx.workdir / "dataset"
    shutil.rmtree(local, ignore_errors=True)
    try:
        ctx.fetch_dir("ingest", "dataset", local)
    except FileNotFoundError:
        raise InputRejected("no ingested dataset for this run: run `nightshift ingest` first",
                            path=ctx.url("dataset", stage="ingest")) from None
    repo = find_repo(cfg)
    try:
        result = snapshot_dir(local, repo, cfg)
    finally:
        shutil.rmtree(local, ignore_errors=True)
    ctx.publish(repo / f"{DATA}.dvc", f"{DATA}.dvc")
    from pipeline import tracking

    result["mlflow_run_id"] = tracking.run_for(cfg, ctx.run_id, tags={"dataset_hash": result["dataset_hash"],
                                                                       "dataset_remote": result["remote"]})
    log.info("dataset %s: %s files, %s bytes, %d pushed to %s", result["dataset_hash"], result["files"],
             result["size_bytes"], result["pushed"], result["remote"])
    return result
