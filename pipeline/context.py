"""RunContext: what a stage knows about the run it belongs to, and nothing about where it runs."""
from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from pipeline import results
from pipeline.config import Config, nightshift_home
from pipeline.errors import ConfigError, StageBusy
from pipeline.results import StageResult
from pipeline.store import ArtifactStore, open_store

_SAFE = re.compile(r"[^A-Za-z0-9._-]+")
_KEPT = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9-])?")  # what a run id may be as it is
MAX_RUN_ID = 200


class RunIdError(ConfigError, ValueError):
    """--run-id is empty or has no usable character (a usage error, exit 2)."""


def safe_run_id(run_id: str) -> str:
    """The run id as store keys and paths may carry it; one-to-one, so two runs never share outputs.

    An id made only of letters, digits, '.', '_' and '-' (not starting or ending with '.' or '_', at most
    200 characters) is kept as it is, so the function is idempotent: a safe id names the same run again.
    Any other id (Airflow's `manual__2026-11-25T00:00:00+00:00`, `nüit`) keeps a readable cleaned part and
    gets `-` + 12 hex digits of the SHA-256 of the original, so `nüit` and `nöit` stay apart.
    """
    if not isinstance(run_id, str) or not run_id.strip():
        raise RunIdError(f"--run-id {run_id!r}: empty; give a name made of letters, digits, '.', '_' or '-'")
    if _KEPT.fullmatch(run_id) and len(run_id) <= MAX_RUN_ID:
        return run_id
    cleaned = _SAFE.sub("_", run_id.strip()).strip("._")
    if not cleaned:
        raise RunIdError(f"--run-id {run_id!r}: no usable character; use letters, digits, '.', '_' or '-'")
    digest = hashlib.sha256(run_id.encode("utf-8", "surrogatepass")).hexdigest()[:12]
    return f"{cleaned[:MAX_RUN_ID - 13]}-{digest}"


def is_rank0() -> bool:
    return os.environ.get("RANK", "0") == "0"


@dataclass
class RunContext:
    run_id: str
    stage: str
    cfg: Config
    store: ArtifactStore = field(repr=False)
    workdir: Path = field(default=Path("."))
    log: logging.Logger = field(default=logging.getLogger("pipeline"), repr=False)

    @classmethod
    def create(cls, run_id: str, stage: str, cfg: Config) -> "RunContext":
        run_id = safe_run_id(run_id)
        workdir = nightshift_home() / "work" / run_id / stage
        workdir.mkdir(parents=True, exist_ok=True)
        store = open_store(cfg.store.uri, cfg.store.s3_endpoint_url)
        return cls(run_id, stage, cfg, store, workdir, logging.getLogger(f"pipeline.stages.{stage}"))

    @contextmanager
    def exclusive(self):
        """Hold this run's lock for this stage (a local lock file beside its scratch space, released when the
        process ends, even by kill -9); StageBusy at once if another process holds it."""
        from pipeline.locking import LockBusy, file_lock

        try:
            lock = file_lock(self.workdir / ".lock")
            lock.__enter__()
        except LockBusy as busy:
            raise StageBusy(f"another {self.stage} of run {self.run_id} is in progress ({busy.holder}); nothing "
                            "was changed: retry when it has finished (a finished one makes the retry skip)") from None
        try:
            yield
        finally:
            lock.__exit__(None, None, None)

    # -- keys ---------------------------------------------------------------------------------
    def key(self, rel: str = "", stage: str | None = None) -> str:
        base = f"runs/{self.run_id}/{stage or self.stage}"
        return f"{base}/{rel}" if rel else base

    def url(self, rel: str = "", stage: str | None = None) -> str:
        return self.store.url(self.key(rel, stage))

    # -- outputs -----------------------------------------------------------------------------
    def publish(self, local: str | Path, rel: str) -> str:
        return self.store.put_file(local, self.key(rel))

    def publish_json(self, obj, rel: str) -> str:
        return self.store.put_json(obj, self.key(rel))

    def publish_dir(self, local: str | Path, rel: str) -> int:
        return self.store.put_dir(local, self.key(rel))

    def write_result(self, result: StageResult | dict) -> str:
        """This stage's result.json (the one writer of result.json: pipeline.results); returns its URL."""
        if not isinstance(result, StageResult):
            result = results.from_run(self.stage, result, self.url("result.json"))
        return results.write(self.store, self.run_id, result, self.stage)

    # -- inputs from upstream stages ---------------------------------------------------------------
    def result_of(self, stage: str) -> StageResult:
        """The typed result a stage wrote for this run, e.g. `ctx.result_of("train").mlflow_run_id`
        (FileNotFoundError if it wrote none; ResultError naming the file and field if it is malformed)."""
        return results.read(self.store, self.run_id, stage)

    def has_result(self, stage: str) -> bool:
        return self.store.exists(results.key(self.run_id, stage))

    def fetch(self, stage: str, rel: str, dest: str | Path | None = None) -> Path:
        dest = Path(dest) if dest else self.workdir / "inputs" / stage / rel
        return self.store.get_file(self.key(rel, stage), dest)

    def fetch_json(self, stage: str, rel: str):
        return self.store.get_json(self.key(rel, stage))

    def fetch_dir(self, stage: str, rel: str, dest: str | Path | None = None) -> Path:
        dest = Path(dest) if dest else self.workdir / "inputs" / stage / rel
        return self.store.get_dir(self.key(rel, stage), dest)

    def scratch(self, name: str) -> Path:
        path = self.workdir / name
        path.mkdir(parents=True, exist_ok=True)
        return path


def signature(*parts) -> str:
    """Stable hash of JSON-able parts: used to decide whether a stage's outputs match its inputs."""
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:20]
