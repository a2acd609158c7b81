"""DVC as the pipeline uses it: `dvc` commands in a subprocess with a time limit, the project and its remote,
one operation at a time per project, a push with retries, and the staged add-push-swap that makes data.dvc
name only pushed data.

`run(repo, *args)` runs `python -m dvc ARGS` with this interpreter; with a timeout its whole process group is
killed (DvcTimeout), and it dies with its parent. The project is `snapshot.repo_dir`, else the nearest folder
above the current one holding dvc.yaml and .dvc/, else <NIGHTSHIFT_HOME>/dvc (created with
`dvc init --no-scm`). The remote `nightshift` (a directory or s3://bucket/prefix, with an endpoint for
S3-compatible servers) is written to .dvc/config.local. `dir_hash` computes DVC's directory md5 without DVC.
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

from pipeline.checksums import file_digest
from pipeline.config import Config, nightshift_home
from pipeline.errors import InfrastructureError, NightshiftError

log = logging.getLogger(__name__)

REMOTE = "nightshift"
DATA = "data"
INCOMING = ".data.incoming"  # the new data, added and pushed under its own .dvc file before data.dvc names it
LOCK_FILE = ".nightshift-snapshot.lock"


class DvcError(NightshiftError):
    """A dvc command failed (exit 1: infrastructure, not the dataset's fault)."""


class DvcTimeout(DvcError):
    """A dvc command ran past its time limit and was killed."""


def _die_with_parent():
    """The dvc child's preexec_fn: be killed when the stage process dies (a kill -9 of the stage leaves no push
    running); None where prctl is missing (not Linux: the child may outlive a killed parent). The libc call is
    resolved here, in the parent: between fork and exec the child must not import anything, since another
    thread of the stage may hold the import lock at the fork and the child would wait for it forever."""
    try:
        import ctypes

        prctl = ctypes.CDLL("libc.so.6", use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    return lambda: prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def run(repo: Path, *args: str, check: bool = True, timeout_s: float | None = None) -> subprocess.CompletedProcess:
    """Run `python -m dvc ARGS` in `repo` with this interpreter (the dvc of this environment).

    With `timeout_s`, the command (its whole process group) is killed after that many seconds: DvcTimeout.
    """
    env = dict(os.environ, DVC_NO_ANALYTICS="1")
    command = [sys.executable, "-m", "dvc", *args]
    child = subprocess.Popen(command, cwd=repo, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                             start_new_session=True, preexec_fn=_die_with_parent())
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
    return init_repo(repo_path(cfg, start))


def init_repo(repo: Path) -> Path:
    if not (repo / ".dvc").is_dir():
        repo.mkdir(parents=True, exist_ok=True)
        run(repo, "init", "--no-scm", "-q")
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
    run(repo, "remote", "add", "--local", "-f", REMOTE, url)
    if "endpointurl" in wanted:
        run(repo, "remote", "modify", "--local", REMOTE, "endpointurl", endpoint)
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
            proc = run(repo, "push", "-r", REMOTE, target, check=False, timeout_s=timeout_s)
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
        run(repo, "add", INCOMING, "-q")  # hashes and caches the new data; writes .data.incoming.dvc only
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


def remote_has(remote: str, md5: str, cfg: Config) -> bool:
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


def dir_hash(root: Path) -> str:
    """DVC's md5 of a directory ("<md5>.dir", what `dvc add` writes to data.dvc): the md5 of the sorted JSON
    listing of every file's md5 and relative path."""
    entries = [{"md5": file_digest(path, "md5"), "relpath": path.relative_to(root).as_posix()}
               for path in sorted(p for p in Path(root).rglob("*") if p.is_file())]
    entries.sort(key=lambda e: e["relpath"])
    return hashlib.md5(json.dumps(entries, sort_keys=True).encode()).hexdigest() + ".dir"
