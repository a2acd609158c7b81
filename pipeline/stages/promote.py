"""promote: publish the exported model as the next Triton version, register it, then move the alias.

Requires the gate to have passed and export's result.json to say it passed for this run, with the sha256
of every file it would ship (model.onnx, labels.txt, io.json) equal to what export recorded. Under the repository lock: publish `export/` as version N (staged,
checksummed, marker last), register `runs:/<mlflow run>/model` as a new version of the registered model
(tagged with N and the run id), pin Triton's config to N, and when `promote.triton_url` is set load it,
wait until ready and smoke-test it against ONNX Runtime. Only then does the alias (`promote.alias`) move.
Any failure unpublishes N, deletes the registry version this call created and re-pins the previous
version: the alias never moves. Re-running for the same run id reuses its version instead of adding one.
Every task ships the same way (the outputs, and the output that carries labels.txt, come from the ONNX file's
io spec); a model of another task than the one served under `promote.model_name` is refused (exit 2).

Pin-then-alias is one recoverable transaction: before the pin, a journal (<model>/.promotion.json in the
repository) records the version, its registry version and what was served and aliased before. A promotion
killed anywhere between its pin and the journal's removal is finished or undone by the next promotion (or
retry), under the lock, before it does anything else: if the alias moved, the new version stays served;
if not, the previous version is pinned again. Never "new version served, alias on the old one".
"""
from __future__ import annotations

import logging
import shutil
import tempfile
import time
from pathlib import Path

from pipeline import tracking
from pipeline.config import Config
from pipeline.context import RunContext
from pipeline.errors import ConfigError, GateFailed, InputRejected
from pipeline.gates import Failure
from pipeline.spec import StageSpec

SPEC = StageSpec(upstream=("export", "gate"))

log = logging.getLogger(__name__)


# -- what may be shipped ----------------------------------------------------------------------------------
def verified_export(ctx: RunContext, files: dict) -> None:
    """Refuse unless export passed for this run and `files` are the very bytes it checked (sha256).

    A model.onnx without a passing result.json (export killed, or refused with exit 4) or with other bytes
    than export recorded (a later, killed export overwrote it) is never shipped.
    """
    from pipeline.checksums import sha256_file

    where = ctx.url("result.json", "export")
    if not ctx.has_result("export"):
        raise InputRejected("no export result for this run (export killed or never run): nothing verified to "
                            "promote; run `nightshift export` first", path=where)
    export = ctx.result_of("export")
    if export.status != "ok":
        raise GateFailed(f"export did not pass for this run (status {export.status!r}, exit "
                         f"{export.exit_code}): nothing to promote",
                         [Failure("export", "ok", export.status).to_dict()])
    if export.run_id not in (None, ctx.run_id):
        raise InputRejected(f"export result belongs to run {export.run_id!r}, not {ctx.run_id!r}",
                            path=where, field="run_id")
    recorded = export.sha256 or {}
    for rel, path in files.items():
        if rel not in recorded:
            raise InputRejected(f"no checksum recorded for {rel}: re-run `nightshift export`", path=where,
                                field=f"sha256.{rel}")
        got = sha256_file(path)
        if got != recorded[rel]:
            raise InputRejected(f"sha256 {got[:12]}… differs from the {recorded[rel][:12]}… export verified "
                                f"(left by a later, unfinished export?): re-run `nightshift export`",
                                path=ctx.url(rel, "export"), field="sha256")


# -- the stage --------------------------------------------------------------------------------------------
def run(cfg: Config, ctx: RunContext) -> dict:
    gate = ctx.result_of("gate")
    if not gate.passed:
        raise GateFailed("the gate did not pass for this run: nothing to promote",
                         [Failure("gate", "passed", gate.passed).to_dict()])
    train = ctx.result_of("train")
    mlflow_run_id = train.mlflow_run_id
    if not mlflow_run_id:
        raise InputRejected("no MLflow run id", path=ctx.url("result.json", "train"), field="mlflow_run_id")

    # fetched into a folder of this process's own: two retries of one run must not overwrite each other's copies
    inputs = Path(tempfile.mkdtemp(prefix="promote-", dir=ctx.scratch("inputs")))
    try:
        return _promote(cfg, ctx, inputs, mlflow_run_id)
    finally:
        shutil.rmtree(inputs, ignore_errors=True)


def _promote(cfg: Config, ctx: RunContext, inputs: Path, mlflow_run_id: str) -> dict:
    from pipeline.export.onnx_export import io_spec
    from pipeline.triton import config as tconfig
    from pipeline.triton.repository import ModelRepository

    p = cfg.promote
    name = p.model_name
    files = {n: ctx.fetch("export", n, inputs / n) for n in ("model.onnx", "labels.txt", "io.json")}
    verified_export(ctx, files)
    io = io_spec(files["model.onnx"])  # from the file itself, not from what the export stage said
    config_path = inputs / "config.pbtxt"
    config_path.write_text(tconfig.render(io, name, p.max_batch_size, p.instance_kind, p.instance_count,
                                          p.max_queue_delay_us, labels_output=tconfig.labels_output(io)))
    files["config.pbtxt"] = config_path

    repo = ModelRepository(p.triton_repo, p.triton_endpoint_url)
    client = tracking.registry_client(cfg)
    with repo.lock(name, p.lock_timeout_s, p.lock_ttl_s) as lease:
        recovered = recover(cfg, repo, client, name)  # a promotion that died between its pin and its alias
        previous = repo.served_version(name)
        _same_task(repo, name, previous, io)
        previous_alias = tracking.current_alias(client, name, p.alias)
        version = repo.find_by_run(name, ctx.run_id)
        created_version = version is None
        if created_version:
            version = repo.publish(name, files, {"run_id": ctx.run_id, "mlflow_run_id": mlflow_run_id})
        else:
            log.info("run %s already published %s: reusing it", ctx.run_id, repo.url(name, version))
        created_mv = False
        try:
            mv, created_mv = tracking.register(client, name, mlflow_run_id, ctx.run_id, version, repo.location)
            lease.check()
            # from the pin to the alias move, the journal lets the next promotion finish or undo this one
            repo.write_journal(name, {
                "run_id": ctx.run_id, "version": version, "registry_version": int(mv.version),
                "previous_version": previous, "alias": p.alias,
                "previous_alias_version": int(previous_alias.version) if previous_alias else None,
                "started_at": time.time()})
            lease.check()
            repo.activate(name, version)
            smoke = _smoke(cfg, name, version, files["model.onnx"], io)
            lease.check()
            client.set_registered_model_alias(name, p.alias, mv.version)
            repo.clear_journal(name)  # committed: new version served, alias moved
        except BaseException:
            if lease.lost:  # the repository may be someone else's now: its journal lets the next holder undo
                log.error("promotion of %s stopped: lock lost; the next promotion undoes it from its journal",
                          repo.url(name, version))
                raise
            log.error("promotion of %s failed: putting back version %s", repo.url(name, version), previous)
            if _undo(cfg, repo, client, name, version, previous, created_version, mv if created_mv else None):
                repo.clear_journal(name)  # else the next promotion finishes the undo from the journal
            raise
        pruned = repo.prune(name, p.keep_versions, protect={version})

    log.info("promoted %s as %s version %s, alias %s -> %s", ctx.run_id, name, version, p.alias, mv.version)
    return {"model": name, "version": version, "registry_version": int(mv.version), "alias": p.alias,
            "repository": repo.url(name, version), "previous_version": previous, "pruned": pruned,
            "reused": not created_version, "smoke_test": smoke, "recovered": recovered}


def recover(cfg: Config, repo, client, name: str) -> dict | None:
    """Finish or undo a promotion that died between its pin and its alias move (call with the lock held).

    Its journal says what it was doing. If the alias already names its registry version, only the journal's
    removal was missing: the new version stays served (roll forward). Otherwise the alias never moved, so the
    version it pinned was never approved: the version served before it is pinned again (roll back), and the
    retry starts from that state. Either way Triton and the alias agree again before anything else happens.
    """
    entry = repo.journal(name)
    if entry is None:
        return None
    alias = entry.get("alias") or cfg.promote.alias
    moved = tracking.current_alias(client, name, alias)
    if moved is not None and int(moved.version) == entry["registry_version"]:
        outcome, serve = "completed", entry["version"]
    else:
        outcome = "rolled back"
        serve = entry["previous_version"] if entry["previous_version"] in repo.versions(name) else None
    log.warning("%s: the promotion of run %s (version %s) was interrupted between its pin and its alias move: "
                "%s, serving version %s", repo.url(name), entry.get("run_id"), entry["version"], outcome, serve)
    if repo.served_version(name) != serve:
        repo.activate(name, serve)
    if cfg.promote.triton_url and serve is not None:
        from pipeline.triton.client import load_and_wait

        load_and_wait(cfg.promote.triton_url, name, serve, cfg.promote.ready_timeout_s)
    repo.clear_journal(name)
    return {"run_id": entry.get("run_id"), "version": entry["version"], "outcome": outcome, "serving": serve}


def _same_task(repo, name: str, served: int | None, io: dict) -> None:
    """Refuse to replace the served model by one of another task under the same name: its clients ask for
    outputs the new model does not have (a detector's boxes and labels, a classifier's scores [B, K])."""
    key = f"{name}/{served}/io.json"
    if served is None or not repo.store.exists(key):
        return
    had, new = repo.store.get_json(key).get("task") or "detection", io.get("task") or "detection"
    if had != new:
        raise ConfigError(f"'promote.model_name' {name!r}: {repo.url(name, served)} serves a {had} model; a {new} "
                          "model needs a name of its own (its clients read other outputs)")


def _smoke(cfg: Config, name: str, version: int, onnx_path, io: dict) -> dict | None:
    """Load `version` into Triton and compare its answer with ONNX Runtime's (io: the model's io spec)."""
    if not cfg.promote.triton_url:
        return None
    from pipeline.export.onnx_export import ort_session
    from pipeline.triton.client import load_and_wait, smoke_test

    load_and_wait(cfg.promote.triton_url, name, version, cfg.promote.ready_timeout_s)
    stats = smoke_test(cfg.promote.triton_url, name, version, ort_session(onnx_path), io,
                       cfg.export.output_match_min, prob_atol=cfg.export.output_max_prob_diff)
    log.info("Triton smoke test of %s version %d: %d/%d %s match ONNX Runtime", name, version,
             stats["matched"], stats["compared"], "images" if io.get("task") == "classification" else "detections")
    return stats


def _undo(cfg, repo, client, name, version, previous, created_version, created_mv) -> bool:
    """Best effort, every step attempted: the previous version served and visible, this one gone. Returns
    whether every step succeeded."""
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
    ok = True
    for what, step in steps:
        try:
            step()
        except Exception:  # noqa: BLE001 - keep undoing; the original error is re-raised by the caller
            log.exception("undo step %r failed", what)
            ok = False
    return ok
