"""RunContext: what a stage knows about the run it belongs to, and nothing about where it runs."""
from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.config import Config, nightshift_home
from pipeline.store import ArtifactStore, open_store

_SAFE = re.compile(r"[^A-Za-z0-9._-]+")


def safe_run_id(run_id: str) -> str:
    """Airflow run ids carry ':' and '+' (manual__2026-11-25T00:00:00+00:00); keys and paths may not."""
    cleaned = _SAFE.sub("_", run_id.strip()).strip("._")
    if not cleaned:
        raise ValueError(f"run id {run_id!r} has no usable characters")
    return cleaned[:200]


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

    # -- inputs from upstream stages ---------------------------------------------------------------
    def result_of(self, stage: str) -> dict:
        """The result.json an upstream stage wrote for this run (FileNotFoundError if it did not)."""
        return self.store.get_json(self.key("result.json", stage))

    def has_result(self, stage: str) -> bool:
        return self.store.exists(self.key("result.json", stage))

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
