"""promote: publish the exported model as the next Triton version, register it, then move the alias.

Requires the gate to have passed. Under the repository lock: publish `export/` as version N (staged,
checksummed, marker last), register `runs:/<mlflow run>/model` as a new version of the registered model
(tagged with N and the run id), pin Triton's config to N, and when `promote.triton_url` is set load it,
wait until ready and smoke-test it against ONNX Runtime. Only then does the alias (`promote.alias`) move.
Any failure unpublishes N, deletes the registry version this call created and re-pins the previous
version: the alias never moves. Re-running for the same run id reuses its version instead of adding one.
"""
from __future__ import annotations

import logging

from pipeline.config import Config
from pipeline.context import RunContext
from pipeline.errors import GateFailed, InputRejected

UPSTREAM = ("export", "gate")

RUN_TAG = "nightshift.run_id"
TRITON_VERSION_TAG = "nightshift.triton_version"
TRITON_REPO_TAG = "nightshift.triton_repo"

log = logging.getLogger(__name__)


# -- the MLflow model registry ------------------------------------------------------------------------------
def registry_client(cfg: Config):
    import mlflow

    from pipeline import tracking

    tracking.setup(cfg)
    return mlflow.MlflowClient()


def registered_versions(client, name: str) -> list:
    """Every version of registered model `name` (newest first); [] if it does not exist."""
    versions = client.search_model_versions(f"name = '{name}'")
    return sorted(versions, key=lambda v: int(v.version), reverse=True)


def register(client, name: str, mlflow_run_id: str, run_id: str, triton_version: int, repo_url: str):
    """The registry version for this pipeline run: reused if it exists, else created. Returns (mv, created)."""
    from mlflow.exceptions import MlflowException

    for mv in registered_versions(client, name):
        if mv.tags.get(RUN_TAG) == run_id:
            return mv, False
    try:
        client.create_registered_model(name)
    except MlflowException as exc:
        if "RESOURCE_ALREADY_EXISTS" not in str(exc.error_code):
            raise
    mv = client.create_model_version(
        name, f"runs:/{mlflow_run_id}/model", run_id=mlflow_run_id,
        tags={RUN_TAG: run_id, TRITON_VERSION_TAG: str(triton_version), TRITON_REPO_TAG: repo_url},
        description=f"Nightshift run {run_id}; Triton version {triton_version} in {repo_url}",
    )
    return mv, True


def current_alias(client, name: str, alias: str):
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(name, alias)
    except MlflowException:
        return None


# -- the stage --------------------------------------------------------------------------------------------
def run(cfg: Config, ctx: RunContext) -> dict:
    from pipeline.triton import config as tconfig
    from pipeline.triton.repository import ModelRepository

    gate = ctx.result_of("gate")
    if not gate.get("passed"):
        raise GateFailed("the gate did not pass for this run: nothing to promote",
                         [{"check": "gate", "expected": "passed", "actual": gate.get("passed")}])
    train = ctx.result_of("train")
    mlflow_run_id = train.get("mlflow_run_id")
    if not mlflow_run_id:
        raise InputRejected("no MLflow run id", path=ctx.url("result.json", "train"), field="mlflow_run_id")

    p = cfg.promote
    name = p.model_name
    files = {n: ctx.fetch("export", n) for n in ("model.onnx", "labels.txt", "io.json")}
    from pipeline.export.onnx_export import io_spec

    io = io_spec(files["model.onnx"])  # from the file itself, not from what the export stage said
    config_path = ctx.scratch("triton") / "config.pbtxt"
    config_path.write_text(tconfig.render(io, name, p.max_batch_size, p.instance_kind, p.instance_count,
                                          p.max_queue_delay_us))
    files["config.pbtxt"] = config_path

    repo = ModelRepository(p.triton_repo, p.triton_endpoint_url)
    client = registry_client(cfg)
    with repo.lock(name, p.lock_timeout_s, p.lock_ttl_s):
        previous = repo.served_version(name)
        version = repo.find_by_run(name, ctx.run_id)
        created_version = version is None
        if created_version:
            version = repo.publish(name, files, {"run_id": ctx.run_id, "mlflow_run_id": mlflow_run_id})
        else:
            log.info("run %s already published %s: reusing it", ctx.run_id, repo.url(name, version))
        created_mv = False
        try:
            mv, created_mv = register(client, name, mlflow_run_id, ctx.run_id, version, repo.location)
            repo.activate(name, version)
            smoke = _smoke(cfg, name, version, files["model.onnx"], int(io["inputs"][0]["shape"][-1]))
            client.set_registered_model_alias(name, p.alias, mv.version)
        except BaseException:
            log.error("promotion of %s failed: putting back version %s", repo.url(name, version), previous)
            _undo(cfg, repo, client, name, version, previous, created_version, mv if created_mv else None)
            raise
        pruned = repo.prune(name, p.keep_versions, protect={version})

    log.info("promoted %s as %s version %s, alias %s -> %s", ctx.run_id, name, version, p.alias, mv.version)
    return {"model": name, "version": version, "registry_version": int(mv.version), "alias": p.alias,
            "repository": repo.url(name, version), "previous_version": previous, "pruned": pruned,
            "reused": not created_version, "smoke_test": smoke}


def _smoke(cfg: Config, name: str, version: int, onnx_path, image_size: int) -> dict | None:
    if not cfg.promote.triton_url:
        return None
    from pipeline.export.onnx_export import ort_session
    from pipeline.triton.client import load_and_wait, smoke_test

    load_and_wait(cfg.promote.triton_url, name, version, cfg.promote.ready_timeout_s)
    stats = smoke_test(cfg.promote.triton_url, name, version, ort_session(onnx_path), image_size,
                       cfg.export.output_match_min)
    log.info("Triton smoke test of %s version %d: %d/%d detections match ONNX Runtime", name, version,
             stats["matched"], stats["compared"])
    return stats


def _undo(cfg, repo, client, name, version, previous, created_version, created_mv) -> None:
    """Best effort, every step attempted: the previous version served and visible, this one gone."""
    steps = []
    if created_version:
        steps.append(("unpublish", lambda: repo.unpublish(name, version, fallback=previous)))
    else:
        steps.append(("re-pin", lambda: repo.activate(name, previous)))
    if created_mv is not None:
        steps.append(("delete registry version", lambda: client.delete_model_version(name, created_mv.version)))
    if cfg.promote.triton_url and previous is not None:
        from pipeline.triton.client import load_and_wait

        steps.append(("reload Triton", lambda: load_and_wait(cfg.promote.triton_url, name, previous,
                                                             cfg.promote.ready_timeout_s)))
    for what, step in steps:
        try:
            step()
        except Exception:  # noqa: BLE001 - keep undoing; the original error is re-raised by the caller
            log.exception("undo step %r failed", what)
