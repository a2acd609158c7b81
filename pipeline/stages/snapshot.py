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
snapshot/card.html and card.md (with aug_strip.png, the training augmentation drawn on a few train images).

The DVC side (commands, project, remote, lock, push, the staged swap) is `pipeline.datasets.dvc`; this module
is the stage: what to snapshot, whether it changed, the statistics and the card.
"""
from __future__ import annotations

import hashlib
import json
import logging
import shutil
from pathlib import Path

import yaml

from pipeline.config import Config
from pipeline.datasets import canonical_io, dvc
from pipeline.datasets.dvc import DATA
from pipeline.errors import InputRejected
from pipeline.spec import StageSpec

log = logging.getLogger(__name__)

SPEC = StageSpec(upstream=("ingest",))


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
        current = dvc.read_out(dvc_file)
    except (yaml.YAMLError, StopIteration, KeyError, TypeError):
        return False
    return current["md5"] == state.get("dataset_hash") and dvc.remote_has(remote, current["md5"], cfg)


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
    """card.html + card.md (+ aug_strip.png) beside the snapshot's outputs (sample images read from the store)."""
    from pipeline.datasets import card

    # the card shows results as the JSON they are written as
    validation = ctx.result_of("validate").to_dict() if ctx.has_result("validate") else None

    def read_image(name: str) -> bytes | None:
        if dataset is not None:
            path = dataset / canonical_io.IMAGES / name
            return path.read_bytes() if path.is_file() else None
        key = ctx.key(f"dataset/{canonical_io.IMAGES}/{name}", stage="ingest")
        return ctx.store.get_bytes(key) if ctx.store.exists(key) else None

    strip = card.augmentation_strip(coco, read_image, cfg.train, images=cfg.snapshot.card_strip_images,
                                    store=ctx.store)  # exactly train's augmentation
    page, md = card.build(coco, read_image, dataset_hash=result["dataset_hash"], validation=validation,
                          samples=cfg.snapshot.card_samples, title=f"Dataset card: run {ctx.run_id}",
                          audit=ctx.result_of("audit").to_dict() if ctx.has_result("audit") else None, augmentation=strip)
    for name, data in card.outputs(page, md, strip).items():  # card.html, card.md, aug_strip.png
        ctx.store.put_bytes(data, ctx.key(name))


def run(cfg: Config, ctx) -> dict:
    raw = _annotations(ctx)
    coco = json.loads(raw)
    content_key = hashlib.sha256(raw).hexdigest()
    repo = dvc.repo_path(cfg)
    with dvc.repo_lock(repo, cfg.snapshot.lock_timeout_s):  # one DVC operation at a time in this project
        result = _snapshot(cfg, ctx, coco, content_key, dvc.init_repo(repo))
    from pipeline import tracking

    result["mlflow_run_id"] = tracking.run_for(cfg, ctx.run_id, tags={"dataset_hash": result["dataset_hash"],
                                                                       "dataset_remote": result["remote"]})
    log.info("dataset %s: %s files, %s bytes, %d pushed to %s", result["dataset_hash"], result["files"],
             result["size_bytes"], result["pushed"], result["remote"])
    return result


def _snapshot(cfg: Config, ctx, coco: dict, content_key: str, repo: Path) -> dict:
    dvc.clear_debris(repo)  # what a killed snapshot left, whichever way this one goes
    state = ctx.store.get_json(canonical_io.STATS_KEY) if ctx.store.exists(canonical_io.STATS_KEY) else None
    remote = dvc.configure_remote(repo, cfg)
    local, dataset = ctx.workdir / "dataset", None
    fetched = False
    try:
        if unchanged(repo, content_key, state, remote, cfg):
            log.info("dataset unchanged since run %s (%s): nothing to add or push", state.get("run_id"),
                     state["dataset_hash"])
            out = dvc.read_out(repo / f"{DATA}.dvc")
            result = {"dataset_hash": out["md5"], "files": out["nfiles"], "size_bytes": out["size"],
                      "remote": remote, "pushed": 0, "repo": str(repo), "changed": False}
        else:
            shutil.rmtree(local, ignore_errors=True)
            dataset, fetched = canonical_io.ingested_dataset(ctx, local)
            result = dvc.snapshot_dir(dataset, repo, cfg)
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
