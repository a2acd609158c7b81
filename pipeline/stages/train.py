"""train: fit the detector, classifier or segmenter on the canonical dataset (DDP under torchrun when nproc > 1).

A classifier trains on a classification dataset (`"task": "classification"`; pipeline/training/classify.py).

Reads runs/<id>/ingest/dataset/ and the snapshot's dataset hash. Writes train/model.pt (the format in
docs/architecture.md) and train/checkpoints/last.pt, from which a restarted stage with the same run id
continues by itself. Rank 0 logs the resolved config, per-epoch loss / lr / images per second (and val_AP /
val_AP50, a classifier's val_accuracy, with `train.eval_every_epochs` or early stopping), lineage tags and model.pt (artifact path `model`)
to the pipeline run's MLflow run. With `train.ema_decay` model.pt holds the EMA of the weights. The first
weights come from `train.init` (pipeline/training/initialise.py): random, a weights file, or the registry's
champion, whose version is recorded in the lineage tags and in the result's `init`.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import sys
import tempfile
from pathlib import Path

import yaml

from pipeline.checksums import sha256_file
from pipeline.config import Config, is_secret
from pipeline.context import RunContext
from pipeline.errors import ConfigError, InputRejected, NightshiftError
from pipeline.results import TrainResult
from pipeline.spec import StageSpec
from pipeline.store import LocalStore

SPEC = StageSpec(upstream=("ingest", "snapshot"), exclusive=True)  # exclusive: shared scratch space and outputs

MODEL_KEY = "model.pt"
CHECKPOINT_KEY = "checkpoints/last.pt"
RANK0_RESULT_KEY = "rank0_result.json"
# train settings that do not change the model trained: a checkpoint made under other values still resumes
_NOT_IN_FINGERPRINT = ("max_steps", "checkpoint_every_steps", "num_workers", "threads_per_rank",
                       "bn_calibration_images")

log = logging.getLogger(__name__)


def run(cfg: Config, ctx: RunContext) -> dict:
    from pipeline.training.distributed import under_torchrun

    nproc = _processes(cfg)
    if nproc > 1 and not under_torchrun():
        return _launch(cfg, ctx, nproc)
    return train(cfg, ctx)


def _processes(cfg: Config) -> int:
    import torch

    n = cfg.train.nproc_per_node
    if torch.cuda.is_available() and n > torch.cuda.device_count():
        log.warning("train.nproc_per_node=%d but only %d GPU(s): using %d processes", n,
                    torch.cuda.device_count(), torch.cuda.device_count())
        n = torch.cuda.device_count()
    return n


def _launch(cfg: Config, ctx: RunContext, nproc: int) -> dict:
    """Re-run this very command under torchrun and hand back what rank 0 reported."""
    from pipeline.training.distributed import relaunch_under_torchrun

    for stale in (RANK0_RESULT_KEY, "result.json"):
        ctx.store.delete_prefix(ctx.key(stale))
    code = relaunch_under_torchrun(nproc, _child_argv(cfg, ctx))
    if ctx.store.exists(ctx.key(RANK0_RESULT_KEY)) and code == 0:
        return ctx.store.get_json(ctx.key(RANK0_RESULT_KEY))
    # rank 0's CLI recorded why it failed in result.json; keep its message and exit code
    detail = ctx.result_of(ctx.stage) if ctx.has_result(ctx.stage) else TrainResult()
    err = NightshiftError(f"distributed training with {nproc} processes failed (torchrun exit {code})"
                          + (f": {detail.error}" if detail.error else ""))
    err.exit_code = int(detail.exit_code or 1)
    raise err


def _child_argv(cfg: Config, ctx: RunContext) -> list[str]:
    """What the torchrun children run: this process's own command line when it was started as
    `nightshift train ...`; when `cli.main([...])` was called in-process (tests, a Python task), the same
    stage and run id with the resolved config written out, since sys.argv is then someone else's."""
    argv = sys.argv[1:]
    if argv[:1] == [ctx.stage] and "--run-id" in argv:
        return argv
    path = ctx.scratch("torchrun") / "config.yaml"
    data = cfg.to_dict()
    for values in data.values():  # the ranks never post to chat: keep secret fields out of the scratch copy
        values.update({k: "" for k in values if is_secret(k)})
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return [ctx.stage, "--run-id", ctx.run_id, "--config", str(path)]


def _dataset_root(ctx: RunContext, local_rank: int, barrier) -> Path:
    """The canonical dataset on local disk: read in place from a file:// store, else fetched once per node."""
    key = ctx.key("dataset", stage="ingest")
    if isinstance(ctx.store, LocalStore):
        root = ctx.store.local_path(key)
        if not (root / "annotations.json").is_file():
            raise InputRejected("no canonical dataset here: run the ingest stage first", path=str(root),
                                field="annotations.json")
        return root
    dest = ctx.workdir / "inputs" / "ingest" / "dataset"
    if local_rank == 0:
        try:
            ctx.fetch_dir("ingest", "dataset", dest)
        except FileNotFoundError as exc:
            raise InputRejected(f"no canonical dataset: {exc}", path=ctx.url("dataset", "ingest")) from None
    barrier()
    return dest


def _fingerprint(cfg: Config, annotations_sha: str, world_size: int) -> str:
    train = {k: v for k, v in cfg.train.model_dump(mode="json").items() if k not in _NOT_IN_FINGERPRINT}
    blob = json.dumps({"train": train, "data": annotations_sha, "world_size": world_size}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


@contextlib.contextmanager
def _with_system_metrics(run_ctx):
    """Enter `run_ctx` (an MLflow run) with MLflow's system metrics (CPU, memory, GPU under `system/`) sampled
    into it until it ends; plainly when psutil, which MLflow samples with, is not installed."""
    import mlflow

    try:
        import psutil  # noqa: F401
    except ImportError:
        log.info("psutil is not installed: no system metrics in MLflow")
        with run_ctx as run:
            yield run
        return
    with contextlib.ExitStack() as stack:
        # the switch is read when the run starts: on only for this run, not for later ones in this process
        mlflow.enable_system_metrics_logging()
        try:
            run = stack.enter_context(run_ctx)
        finally:
            mlflow.disable_system_metrics_logging()
        yield run


def _log_signed_model(model, image_size: int) -> None:
    """Log the deployable form (images [B,3,S,S] in, padded boxes / scores / labels out) as an MLflow model
    with its signature, beside the plain model/model.pt that the promote stage registers."""
    import mlflow
    import torch
    import torchvision
    from mlflow.models import infer_signature

    from pipeline.export.detector import UnsupportedModel
    from pipeline.export.wrappers import export_module

    try:
        wrapper = export_module(model, image_size)
    except UnsupportedModel as exc:
        log.info("no MLflow model with a signature: %s", exc)
        return
    images = torch.zeros(1, 3, image_size, image_size)
    with torch.no_grad():
        outputs = wrapper(images)
    # a detector's boxes / scores / labels; a Mask R-CNN's wrapper names its fourth output (masks)
    names = getattr(wrapper, "output_names", ("boxes", "scores", "labels"))
    signature = infer_signature(images.numpy(), {n: t.numpy() for n, t in zip(names, outputs)})
    # pinned requirements: MLflow's own inference would load the model in a subprocess, seconds for nothing
    # pickled (loading needs the pipeline package): MLflow's default "pt2" would trace with torch.export
    mlflow.pytorch.log_model(wrapper, name="detector", signature=signature, serialization_format="pickle",
                             pip_requirements=[f"torch=={torch.__version__.split('+')[0]}",
                                               f"torchvision=={torchvision.__version__.split('+')[0]}"])


def _log_params(run_id: str, params: dict) -> None:
    """Log the resolved config; keys already on the run (an earlier attempt) are kept, changes are warned."""
    import mlflow

    existing = mlflow.MlflowClient().get_run(run_id).data.params
    values = {k: json.dumps(v) if isinstance(v, (list, dict)) else str(v) for k, v in params.items()}
    changed = sorted(k for k, v in values.items() if k in existing and existing[k] != v)
    if changed:
        log.warning("MLflow params already logged with other values (kept): %s", ", ".join(changed))
    new = {k: v for k, v in values.items() if k not in existing}
    items = list(new.items())
    for i in range(0, len(items), 100):
        mlflow.log_params(dict(items[i:i + 100]))


def _check_config(tc) -> None:
    from pipeline.training.models import MODELS

    if tc.model not in MODELS:
        known = ", ".join(sorted(MODELS))
        raise ConfigError(f"'train.model': {tc.model!r} is not a registered model; known: {known}")
    if MODELS[tc.model].task == "classification" and tc.anchor_scale not in (1.0, "auto"):
        raise ConfigError(f"'train.anchor_scale': {tc.anchor_scale:g}, but {tc.model} is a classifier and has no "
                          "anchors; leave it at 1")
    if tc.anchor_scale not in (1.0, "auto") and tc.model.startswith("fcos"):
        raise ConfigError(f"'train.anchor_scale': {tc.anchor_scale:g}, but {tc.model} has no anchor sizes (FCOS "
                          "assigns objects to pyramid levels by size); leave it at 1, raise train.image_size for "
                          "small objects")
    if tc.init == "scratch" and tc.weights:
        raise ConfigError("'train.weights' is set but 'train.init' is 'scratch': set train.init=weights to "
                          "start from it, or clear train.weights")


def _anchor_scale(tc, train_set, announce: bool, init_path: Path | None = None) -> float:
    """`train.anchor_scale`, with "auto" fitted to the train boxes at the input size (the same on every rank); a
    warm start from a Nightshift model keeps that model's anchors, which its box head was trained for."""
    from pipeline.training.initialise import source_anchor_scale
    from pipeline.training.models import MODELS, fit_anchor_scale

    if MODELS[tc.model].task == "classification":  # no anchors; classify.not_applicable says so for "auto"
        return 1.0
    if tc.anchor_scale != "auto":
        return float(tc.anchor_scale)
    kept = source_anchor_scale(init_path)
    if kept is not None:
        if announce:
            log.info("train.anchor_scale auto: %.2f, kept from the initial weights (their box head was trained for "
                     "those anchors)", kept)
        return kept
    sides = []
    for i, info in enumerate(train_set.image_infos):
        sx, sy = tc.image_size / info["width"], tc.image_size / info["height"]
        sides += [(a["bbox"][2] * sx * a["bbox"][3] * sy) ** 0.5 for a in train_set.annotations(i)
                  if not a.get("iscrowd") and a["bbox"][2] > 0 and a["bbox"][3] > 0]
    scale, why = fit_anchor_scale(tc.model, tc.image_size, sides)
    if announce:
        log.info("train.anchor_scale auto: %.2f (%s)", scale, why)
    return scale


def _load_splits(root: Path, tc, is_main: bool):
    """The train split (rejected when empty or without categories) and, on rank 0 when val mAP is wanted, the
    val split and its COCO ground truth: (train_set, val_set, val_gt), val ones None elsewhere."""
    from pipeline.datasets.canonical import CanonicalDataset, ClassificationDataset, load_coco, split_coco
    from pipeline.tasks import dataset_task
    from pipeline.training.models import MODELS

    annotations = root / "annotations.json"
    coco = load_coco(root)
    task, model_task = dataset_task(coco), MODELS[tc.model].task
    if task == "classification" or model_task == "classification":
        if task != model_task:
            raise InputRejected(f"the dataset was ingested for {task} but train.model {tc.model!r} is a "
                                f"{model_task} model: ingest with data.task={model_task}, or choose a {task} "
                                "model", path=str(annotations), field=f'"task" ({task}) vs train.model')
        train_set = ClassificationDataset(root, "train", tc.image_size, coco=coco)
        if len(train_set) == 0:
            raise InputRejected("no image has split 'train'", path=str(annotations), field="images[].split")
        if len(train_set.categories) < 2:
            raise InputRejected(f"a classifier needs at least 2 categories, found {len(train_set.categories)}",
                                path=str(annotations), field="categories")
        unlabelled = [train_set.image_infos[i]["file_name"] for i, label in enumerate(train_set.labels())
                      if label < 0]
        if unlabelled:
            raise InputRejected(f"{len(unlabelled)} train image(s) without a class annotation, e.g. "
                                f"{unlabelled[0]}", path=str(annotations), field="annotations[].category_id")
        val_set = None
        if is_main and (tc.eval_every_epochs or tc.early_stop_patience):
            val_set = ClassificationDataset(root, "val", tc.image_size, coco=coco)
        return train_set, val_set, None
    if model_task == "segmentation" and task != "segmentation":  # Mask R-CNN's mask head needs masks
        raise InputRejected(f"the dataset was ingested for {task} (no instance masks) but train.model {tc.model!r} "
                            "is a segmentation model: ingest with data.task=segmentation from an export with "
                            "polygons or masks, or choose a detection model", path=str(annotations),
                            field=f'"task" ({task}) vs train.model')
    train_set = CanonicalDataset(root, "train", tc.image_size)
    if len(train_set) == 0:
        raise InputRejected("no image has split 'train'", path=str(annotations), field="images[].split")
    if not train_set.categories:
        raise InputRejected("no categories", path=str(annotations), field="categories")
    val_set, val_gt = None, None
    if is_main and (tc.eval_every_epochs or tc.early_stop_patience):
        # only rank 0 scores the val split; the other ranks learn its verdict from a broadcast
        val_set = CanonicalDataset(root, "val", tc.image_size)
        val_gt = split_coco(load_coco(root), "val")
    return train_set, val_set, val_gt


def _task_options(tc, model, announce: bool) -> None:
    """Apply the options only one task uses, and say which set options the model's task has no use for."""
    from pipeline.training.classify import not_applicable
    from pipeline.training.models import Classifier

    if isinstance(model, Classifier):
        model.label_smoothing = float(tc.label_smoothing)
        lines = not_applicable(tc)
    else:
        lines = [f"train.label_smoothing={tc.label_smoothing:g} applies to classifiers only: ignored"] \
            if tc.label_smoothing else []
    if announce:
        for line in lines:
            log.info("%s", line)


def _lineage_tags(cfg: Config, dataset_hash: str, annotations_sha: str, init) -> dict:
    """The MLflow run's tags: code, data, seed and config that made the model, and where its first weights came from."""
    from pipeline import tracking

    tc = cfg.train
    tags = {
        "git_sha": tracking.git_sha(),
        "code_version": tracking.code_version(),
        "dataset_hash": dataset_hash or "unknown",
        "annotations_sha256": annotations_sha,
        "seed": tc.seed,
        "config_fingerprint": cfg.fingerprint(),
        "container_image": os.environ.get("NIGHTSHIFT_IMAGE", "local"),
        "model_name": tc.model,
        "init": tc.init,
    }
    if init.mode != "scratch":
        tags.update({"init_source": init.source, "init_sha256": init.sha256,
                     "init_loaded": init.loaded, "init_reinitialised": init.reinitialised})
    if init.champion_version is not None:
        tags.update({"init_champion_version": init.champion_version,
                     "init_champion_run_id": init.champion_run_id})
    return tags


def _epoch_logger(mlrun, cfg: Config):
    """fit's on_epoch_end: per-epoch metrics into the MLflow run (after logging the resolved config), or None."""
    if mlrun is None:
        return None
    import mlflow

    _log_params(mlrun.info.run_id, cfg.flat())

    def on_epoch_end(stats):
        # val_AP / val_AP50 keep their names; the rest are train_*
        mlflow.log_metrics({k if k.startswith("val_") else f"train_{k}": v
                            for k, v in stats.as_metrics().items()}, step=stats.epoch)

    return on_epoch_end


def _publish_model(ctx: RunContext, model, tc, train_set, dataset_hash: str, mlrun, result,
                   anchor_scale: float) -> str:
    """Write model.pt to the store (and, with MLflow, log it, the training speed and the signed model): its URL."""
    from pipeline.training.models import save_trained

    with tempfile.TemporaryDirectory(prefix="nightshift-train-") as tmp:
        local = Path(tmp) / MODEL_KEY
        save_trained(local, model, tc.model, tc.image_size, train_set.categories, dataset_hash=dataset_hash,
                     anchor_scale=anchor_scale)
        model_url = ctx.publish(local, MODEL_KEY)
        if mlrun is not None:
            import mlflow

            mlflow.log_metrics({"train_seconds": result.train_seconds,
                                "train_images_per_s": result.images_per_s})
            mlflow.log_artifact(str(local), artifact_path="model")
            _log_signed_model(model, tc.image_size)
    return model_url


def _rank0_result(ctx: RunContext, tc, mlrun, model_url: str, result, info, dataset_hash: str, init,
                  anchor_scale: float) -> dict:
    """result.json's content (rank 0): where the model is, how training went, where its weights started."""
    from pipeline.training.models import MODELS

    classifier = MODELS[tc.model].task == "classification"
    out = {
        "mlflow_run_id": mlrun.info.run_id if mlrun is not None else None,
        "model": model_url,
        "checkpoint": ctx.url(CHECKPOINT_KEY),
        "epochs": result.epochs_run,
        "steps": result.steps,
        "final_loss": round(result.final_loss, 5),
        "losses": [round(s.loss, 5) for s in result.history],
        "images_per_s": round(result.images_per_s, 2),
        "train_seconds": round(result.train_seconds, 2),
        "world_size": info.world_size,
        "device": str(info.device),
        "resumed_from": result.resumed_from,
        "stopped_early": result.stopped_early,
        "early_stopped": result.early_stopped,
        "val_AP": [] if classifier else [s.val.get("AP") for s in result.history if s.val],
        "best_val_AP": None if classifier else result.best_val_ap,
        "best_val_epoch": result.best_val_epoch,
        "ema": tc.ema_decay > 0,
        "dataset_hash": dataset_hash,
        "init": init.summary(),
        "anchor_scale": anchor_scale,
        "task": MODELS[tc.model].task,
    }
    if classifier:  # a classifier's val metric is its accuracy
        out.update(val_accuracy=[s.val.get("accuracy") for s in result.history if s.val],
                   best_val_accuracy=result.best_val_ap)
    return out


def train(cfg: Config, ctx: RunContext) -> dict:
    """One training process: the whole job when alone, or one rank under torchrun."""
    import torch

    from pipeline import tracking
    from pipeline.training import distributed
    from pipeline.training.engine import fit, seed_everything
    from pipeline.training import initialise, recipes
    from pipeline.training.models import MODELS, build_model

    tc = cfg.train
    _check_config(tc)
    info = distributed.init_distributed()
    try:
        if info.device.type == "cpu":
            torch.set_num_threads(tc.threads_per_rank)
        seed_everything(tc.seed, tc.deterministic)

        root = _dataset_root(ctx, info.local_rank, lambda: distributed.barrier(info))
        annotations_sha = sha256_file(root / "annotations.json")
        train_set, val_set, val_gt = _load_splits(root, tc, info.is_main)
        snapshot = ctx.result_of("snapshot") if ctx.has_result("snapshot") else None
        dataset_hash = (snapshot.dataset_hash if snapshot else None) or ""
        if info.is_main and not dataset_hash:
            log.warning("no snapshot result for run %s: the model's dataset_hash tag is 'unknown'", ctx.run_id)

        init_path, init_info = initialise.prepare(cfg, ctx, info.local_rank == 0, lambda: distributed.barrier(info))
        anchor_scale = _anchor_scale(tc, train_set, info.is_main, init_path)
        classifier = MODELS[tc.model].task == "classification"
        # a classifier's outputs are the K classes; a detector's add the background (label 0)
        model = build_model(tc.model, train_set.num_classes + (0 if classifier else 1), tc.image_size,
                            anchor_scale=anchor_scale)
        _task_options(tc, model, info.is_main)
        init = initialise.initialise(model, cfg, init_path, init_info, [c["name"] for c in train_set.categories],
                                     announce=info.is_main)
        fingerprint = _fingerprint(cfg, annotations_sha, info.world_size)
        mlflow_ctx = contextlib.nullcontext(None)
        if info.is_main:
            log.info("%s", recipes.describe(tc))
            log.info("training %s (%d classes) on %d images at %dpx: %d epochs, batch %d x %d process(es) on %s",
                     tc.model, train_set.num_classes, len(train_set), tc.image_size, tc.epochs, tc.batch_size,
                     info.world_size, info.device)
            tags = _lineage_tags(cfg, dataset_hash, annotations_sha, init)
            mlflow_ctx = _with_system_metrics(tracking.active_run(cfg, ctx.run_id, tags=tags))

        with mlflow_ctx as mlrun:
            result = fit(model, train_set, tc, info, ctx.store, ctx.key(CHECKPOINT_KEY), fingerprint,
                         on_epoch_end=_epoch_logger(mlrun, cfg), progress=True, val_set=val_set, val_gt=val_gt)

            out = None
            if info.is_main:
                model_url = _publish_model(ctx, model, tc, train_set, dataset_hash, mlrun, result, anchor_scale)
                out = _rank0_result(ctx, tc, mlrun, model_url, result, info, dataset_hash, init, anchor_scale)
                ctx.publish_json(out, RANK0_RESULT_KEY)
                log.info("trained %d epochs (%d steps) in %.1fs, final loss %.4f, %.1f images/s -> %s",
                         result.epochs_run, result.steps, result.train_seconds, result.final_loss,
                         result.images_per_s, model_url)
        distributed.barrier(info)  # no rank leaves before rank 0 has written the model
        return out or {"rank": info.rank}
    finally:
        distributed.cleanup(info)
