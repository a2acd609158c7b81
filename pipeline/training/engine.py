"""The training loop and batch inference for detectors, in the spirit of torchvision's references/detection.

`fit()` trains with AdamW, linear warm-up then cosine decay, gradient clipping, AMP on CUDA, a
DistributedSampler (one process or many under torchrun) and checkpoints every epoch (and every
`checkpoint_every_steps`) from which a restarted run continues exactly. A classifier (a ClassificationDataset)
trains through the same loop: its augmentation and prediction pass are pipeline/training/classify.py's, and its
val metric (early stopping included) is the val accuracy instead of val mAP. `predict()` turns a model's
detections into COCO results in original image pixels: the evaluate and export stages score with it.
"""
from __future__ import annotations

import copy
import logging
import math
import os
import random
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, DistributedSampler, Sampler, Subset

from pipeline.config import TrainConfig
from pipeline.datasets.canonical import CanonicalDataset, collate
from pipeline.errors import NightshiftError
from pipeline.store import ArtifactStore
from pipeline.training.checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from pipeline.training.distributed import DistInfo, all_reduce_mean, all_reduce_sum, broadcast_flag
from pipeline.training.progress import progress as progress_bar

log = logging.getLogger(__name__)


class NonFiniteLoss(NightshiftError):
    """The loss became NaN or infinite: training diverged."""


# -- reproducibility -------------------------------------------------------------------------------
def seed_everything(seed: int, deterministic: bool) -> None:
    """Seed python, numpy and torch; with `deterministic`, ask torch for deterministic kernels too."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        # cuBLAS needs this before its first use to be deterministic; harmless on CPU
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False


def _seed_worker(worker_id: int) -> None:
    # torch seeds each worker from the loader's generator; numpy and random follow it
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


# -- data ------------------------------------------------------------------------------------------
class SkipSampler(Sampler):
    """The sampler's indices minus the first `skip`: resumes an epoch after the batches already trained."""

    def __init__(self, sampler: Sampler, skip: int = 0):
        self.sampler = sampler
        self.skip = skip

    def __iter__(self):
        for i, index in enumerate(self.sampler):
            if i >= self.skip:
                yield index

    def __len__(self) -> int:
        return max(len(self.sampler) - self.skip, 0)


# -- optimisation ------------------------------------------------------------------------------------
def warmup_cosine(warmup_steps: int, total_steps: int, min_ratio: float = 0.01) -> Callable[[int], float]:
    """LR multiplier: linear from 1/warmup to 1 over `warmup_steps`, then cosine down to `min_ratio`."""
    warmup_steps = max(0, min(warmup_steps, total_steps - 1))

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        progress = min(max(progress, 0.0), 1.0)
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return factor


def build_optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    # no weight decay on norms and biases, as in torchvision's references
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim <= 1 else decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.lr)


# -- the loop ----------------------------------------------------------------------------------------
@dataclass
class EpochStats:
    epoch: int  # 1-based
    step: int  # optimizer steps so far
    loss: float  # mean training loss over the epoch's batches, all ranks
    lr: float  # learning rate at the end of the epoch
    images_per_s: float  # all ranks together
    seconds: float
    components: dict = field(default_factory=dict)  # the model's own loss terms, averaged
    val: dict = field(default_factory=dict)  # {"AP", "AP50"} on the val split when evaluated this epoch (rank 0)

    def as_metrics(self) -> dict:
        out = {"loss": self.loss, "lr": self.lr, "images_per_s": self.images_per_s, "epoch_seconds": self.seconds}
        out.update({f"loss_{k}": v for k, v in self.components.items()})
        out.update({f"val_{k}": v for k, v in self.val.items() if v is not None})
        return out


@dataclass
class FitResult:
    epochs_run: int  # epochs completed in this job (all of them, resumed ones included)
    steps: int
    final_loss: float
    images_per_s: float
    train_seconds: float  # wall time of this process's training loop
    resumed_from: dict | None  # {"epoch", "step"} of the checkpoint resumed from
    history: list[EpochStats]
    stopped_early: bool  # by train.max_steps
    early_stopped: bool = False  # by train.early_stop_patience
    best_val_ap: float | None = None  # best val mAP seen (rank 0; None when never evaluated)
    best_val_epoch: int = 0


class WeightEma:
    """Exponential moving average of a model's state (weights and buffers), updated after every optimizer step.

    The decay ramps up as min(decay, (1 + n) / (10 + n)) over the first updates, as in timm's ModelEma, so a
    short run's average is not dominated by the initial weights. Integer buffers are copied, not averaged.
    """

    def __init__(self, model: torch.nn.Module, decay: float):
        self.decay = decay
        self.updates = 0
        self.state = {k: v.detach().clone() for k, v in model.state_dict().items()}

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        self.updates += 1
        d = min(self.decay, (1 + self.updates) / (10 + self.updates))
        for k, v in model.state_dict().items():
            if v.dtype.is_floating_point:
                self.state[k].mul_(d).add_(v.detach(), alpha=1 - d)
            else:
                self.state[k].copy_(v)

    def state_dict(self) -> dict:
        return {"updates": self.updates, "state": self.state}

    def load_state_dict(self, blob: dict) -> None:
        self.updates = blob["updates"]
        for k, v in blob["state"].items():
            self.state[k].copy_(v)


def val_map(model: torch.nn.Module, val_set: CanonicalDataset, gt: dict, batch_size: int, device) -> dict:
    """COCO AP and AP50 of `model` on `val_set` (ground truth `gt`, the split's COCO dict)."""
    from pipeline.metrics.coco import score

    metrics = score(gt, predict(model, val_set, batch_size=batch_size, device=device, progress=False))
    return {"AP": metrics["AP"], "AP50": metrics["AP50"]}


def val_accuracy(model: torch.nn.Module, val_set, batch_size: int, device) -> dict:
    """Top-1 accuracy of a classifier on `val_set` (a ClassificationDataset): {"accuracy"}."""
    from pipeline.training.classify import predict_logits

    logits, labels = predict_logits(model, val_set, batch_size=batch_size, device=device, progress=False)
    return {"accuracy": float((logits.argmax(1) == labels).float().mean()) if len(labels) else None}


def is_classification(dataset) -> bool:
    """Whether `dataset` is a classification split (its targets are a class index, not boxes)."""
    from pipeline.datasets.canonical import ClassificationDataset

    return isinstance(dataset, ClassificationDataset)


def memory_postfix(device: torch.device) -> str:
    """What the progress bar shows as memory: CUDA's peak allocated on GPU, the process's RSS on CPU."""
    if device.type == "cuda":
        return f"{torch.cuda.max_memory_allocated(device) / 2**30:.2f}G"
    try:
        import psutil
    except ImportError:
        return "n/a"
    return f"{psutil.Process().memory_info().rss / 2**30:.2f}G"


def make_loader(dataset, cfg: TrainConfig, info: DistInfo, skip_batches: int = 0, epoch: int = 0):
    sampler = DistributedSampler(dataset, num_replicas=info.world_size, rank=info.rank, shuffle=True,
                                 seed=cfg.seed, drop_last=False)
    sampler.set_epoch(epoch)
    # a batch of one breaks BatchNorm on the 1x1 feature maps of SSD's last layers: drop a short tail
    drop_last = len(sampler) >= cfg.batch_size and len(sampler) % cfg.batch_size == 1
    generator = torch.Generator()
    generator.manual_seed(cfg.seed * 1000 + info.rank)
    return DataLoader(
        dataset,
        batch_size=cfg.batch_size,
        sampler=SkipSampler(sampler, skip_batches * cfg.batch_size),
        num_workers=cfg.num_workers,
        collate_fn=collate,
        pin_memory=info.device.type == "cuda",
        drop_last=drop_last,
        worker_init_fn=_seed_worker,
        generator=generator,
        persistent_workers=False,
    )


def _targets_to(targets: list[dict], device) -> list[dict]:
    if targets and "label" in targets[0]:  # a classifier's targets: the class index (the Classifier makes the tensor)
        return [{"label": int(t["label"])} for t in targets]
    # instance masks go along for Mask R-CNN (a segmentation dataset's targets carry them)
    return [{k: t[k].to(device, non_blocking=True) for k in ("boxes", "labels", "masks") if k in t}
            for t in targets]


class MixedPrecision:
    """autocast + GradScaler on CUDA with train.amp; both are no-ops when disabled (GradScaler(enabled=False)
    passes the loss through and calls optimizer.step() itself), so the optimisation step is written once."""

    def __init__(self, enabled: bool, device: torch.device):
        self.enabled = enabled
        self.device_type = device.type
        self.scaler = torch.amp.GradScaler("cuda", enabled=enabled)

    def autocast(self):
        return torch.autocast(device_type=self.device_type, enabled=self.enabled)

    def checkpointed(self) -> torch.amp.GradScaler | None:
        """The scaler a checkpoint holds: None without AMP, as checkpoints have always recorded."""
        return self.scaler if self.enabled else None


@dataclass
class StopPolicy:
    """When training ends before its last epoch, and the val-mAP watch that early stopping keeps.

    Three ways: `max_steps` (train.max_steps) optimizer steps done, mid-epoch included; val mAP not improved
    for `patience` (train.early_stop_patience) epochs; or a resumed run whose checkpoint recorded an early stop.
    `state()` (best_ap, best_epoch, early_stopped) is checkpointed with the weights.
    """
    max_steps: int = 0
    patience: int = 0
    best_ap: float | None = None  # best val AP seen (rank 0), -1.0 standing for "no AP"
    best_epoch: int = 0
    early_stopped: bool = False

    def steps_done(self, step: int) -> bool:
        return bool(self.max_steps) and step >= self.max_steps

    def record(self, epoch: int, ap: float | None) -> None:
        ap = ap if ap is not None else -1.0
        if self.best_ap is None or ap > self.best_ap:
            self.best_ap, self.best_epoch = ap, epoch

    def out_of_patience(self, epoch: int) -> bool:
        return self.patience > 0 and epoch - self.best_epoch >= self.patience

    def state(self) -> dict:
        return {"best_ap": self.best_ap, "best_epoch": self.best_epoch, "early_stopped": self.early_stopped}

    def load_state(self, state: dict) -> None:
        for key, value in state.items():
            setattr(self, key, value)


def _optimise(loss: torch.Tensor, optimizer, amp: MixedPrecision, params, grad_clip: float) -> None:
    """One optimizer step from `loss`: backward (scaled under AMP), gradient clipping, step."""
    optimizer.zero_grad(set_to_none=True)
    amp.scaler.scale(loss).backward()
    if grad_clip > 0:
        amp.scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(params, grad_clip)
    amp.scaler.step(optimizer)
    amp.scaler.update()


class _Training:
    """What one fit() holds between its parts: the model and its optimisation state, the step reached and the
    stopping policy; `resume`, `train_epoch`, `evaluate` and `checkpoint` are those parts."""

    def __init__(self, model, cfg: TrainConfig, info: DistInfo, store: ArtifactStore, checkpoint_key: str,
                 fingerprint: str, total_steps: int):
        self.model, self.train_model, self.cfg, self.info = model, model, cfg, info
        self.store, self.checkpoint_key, self.fingerprint = store, checkpoint_key, fingerprint
        self.optimizer = build_optimizer(model, cfg)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer,
                                                           warmup_cosine(cfg.warmup_steps, total_steps))
        self.amp = MixedPrecision(cfg.amp and info.device.type == "cuda", info.device)
        self.ema = WeightEma(model, cfg.ema_decay) if cfg.ema_decay > 0 else None
        self.stop = StopPolicy(max_steps=cfg.max_steps, patience=cfg.early_stop_patience)
        self.step = 0

    # -- resume ------------------------------------------------------------------------------------------
    def resume(self) -> tuple[int, int, dict | None]:
        """Load the checkpoint of the same fingerprint, if any: returns (epoch, batches done in it, resumed_from)."""
        info, store, key = self.info, self.store, self.checkpoint_key
        ckpt = load_checkpoint(store, key) if info.is_main else None
        usable = ckpt is not None and ckpt["extra"].get("fingerprint") == self.fingerprint
        if info.is_main and ckpt is not None and not usable:
            log.warning("checkpoint %s belongs to another config or dataset: starting from scratch", store.url(key))
        if not broadcast_flag(usable, info):
            return 0, 0, None
        if not info.is_main:
            ckpt = load_checkpoint(store, key)
        self.model.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        if self.amp.enabled and ckpt["scaler"] is not None:
            self.amp.scaler.load_state_dict(ckpt["scaler"])
        rngs = ckpt["rng"]
        if info.rank < len(rngs):
            set_rng_state(rngs[info.rank])
        epoch, self.step, skip = ckpt["epoch"], ckpt["step"], ckpt["batches_done"]
        if self.ema is not None:
            self.ema.load_state_dict(ckpt["extra"]["ema"])
        self.stop.load_state(ckpt["extra"].get("watch", {}))
        if info.is_main:
            log.info("resuming from %s: epoch %d, step %d (%d batches of that epoch done)",
                     store.url(key), epoch + 1, self.step, skip)
        return epoch, skip, {"epoch": epoch, "step": self.step, "batches_done": skip}

    def wrap_ddp(self) -> None:
        if self.info.distributed:
            device = self.info.device
            self.train_model = torch.nn.parallel.DistributedDataParallel(
                self.model, device_ids=[device.index] if device.type == "cuda" else None)

    def checkpoint(self, epoch: int, batches_done: int) -> None:
        # every rank's RNG state, so each continues its own stream after a restart
        info = self.info
        rngs = [None] * info.world_size
        if info.distributed:
            dist.all_gather_object(rngs, rng_state())
        else:
            rngs = [rng_state()]
        if info.is_main:
            save_checkpoint(self.store, self.checkpoint_key, model=self.model, optimizer=self.optimizer,
                            scheduler=self.scheduler, scaler=self.amp.checkpointed(), epoch=epoch, step=self.step,
                            batches_done=batches_done, rng=rngs,
                            extra={"fingerprint": self.fingerprint, "watch": self.stop.state(),
                                   "ema": self.ema.state_dict() if self.ema is not None else None})

    # -- one epoch ---------------------------------------------------------------------------------------
    def train_step(self, images, targets, epoch: int, batch: int) -> tuple[float, dict[str, torch.Tensor]]:
        """Forward, the finite-loss check, one optimizer step, the LR schedule and the EMA: returns the loss and
        the model's loss terms."""
        with self.amp.autocast():
            losses = self.train_model(images, targets)
            loss = sum(losses.values())
        loss_value = float(loss.detach())
        if not math.isfinite(loss_value):
            parts = ", ".join(f"{k}={float(v.detach()):.4g}" for k, v in losses.items())
            raise NonFiniteLoss(f"training diverged: loss is {loss_value} at step {self.step + 1} "
                                f"(epoch {epoch + 1}, batch {batch + 1}; {parts}) on rank {self.info.rank}; "
                                f"try a lower train.lr (now {self.cfg.lr}) or train.grad_clip")
        _optimise(loss, self.optimizer, self.amp, self.model.parameters(), self.cfg.grad_clip)
        self.scheduler.step()
        if self.ema is not None:
            self.ema.update(self.model)
        self.step += 1
        return loss_value, losses

    def train_epoch(self, dataset, epoch: int, skip: int, steps_per_epoch: int, progress: bool
                    ) -> tuple[EpochStats, bool, int]:
        """Train epoch `epoch` (0-based) from batch `skip`: returns (its stats, whether train.max_steps stopped it
        mid-epoch, the images all ranks saw)."""
        cfg, info, device = self.cfg, self.info, self.info.device
        dataset.set_epoch(epoch)
        loader = make_loader(dataset, cfg, info, skip_batches=skip, epoch=epoch)
        epoch_start = time.time()
        loss_sum, batches, epoch_images, stopped = 0.0, 0, 0, False
        comp_sum: dict[str, float] = {}
        bar = progress_bar(loader, desc=f"epoch {epoch + 1}/{cfg.epochs}", unit="batch", leave=False,
                           dynamic_ncols=True, disable=not (progress and info.is_main), initial=skip,
                           total=steps_per_epoch)
        for b, (images, targets) in enumerate(bar, start=skip):
            images = [im.to(device, non_blocking=True) for im in images]
            loss_value, losses = self.train_step(images, _targets_to(targets, device), epoch, b)
            batches += 1
            loss_sum += loss_value
            for k, v in losses.items():
                comp_sum[k] = comp_sum.get(k, 0.0) + float(v.detach())
            epoch_images += len(images)
            if info.is_main and progress:
                elapsed = max(time.time() - epoch_start, 1e-9)
                bar.set_postfix(loss=f"{loss_value:.3f}", img_s=f"{epoch_images * info.world_size / elapsed:.1f}",
                                mem=memory_postfix(device))
            if b + 1 < steps_per_epoch and self.stop.steps_done(self.step):
                self.checkpoint(epoch, b + 1)  # a later run with a larger max_steps continues from here
                stopped = True
                break
            if b + 1 < steps_per_epoch and cfg.checkpoint_every_steps and self.step % cfg.checkpoint_every_steps == 0:
                self.checkpoint(epoch, b + 1)
        bar.close()
        seconds = time.time() - epoch_start
        # reduce over all ranks for logging purposes: what the whole job saw, not one process
        total_images = all_reduce_sum(epoch_images, info)
        stats = EpochStats(
            epoch=epoch + 1, step=self.step, loss=all_reduce_mean(loss_sum / max(batches, 1), info),
            lr=self.optimizer.param_groups[0]["lr"], images_per_s=total_images / max(seconds, 1e-9), seconds=seconds,
            components={k: all_reduce_mean(v / max(batches, 1), info) for k, v in comp_sum.items()},
        )
        return stats, stopped, total_images

    # -- evaluation ----------------------------------------------------------------------------------------
    def evaluate(self, epoch: int, val_set: CanonicalDataset, val_gt: dict) -> dict:
        """Rank 0 scores the weights that would ship (the EMA's when on) and decides on early stopping, every
        rank learning the decision; returns the val metrics ({} on other ranks)."""
        val = {}
        if self.info.is_main:
            scored = self.model
            if self.ema is not None:
                scored = copy.deepcopy(self.model)
                scored.load_state_dict(self.ema.state)
            t0 = time.time()
            if is_classification(val_set):  # a classifier's val metric is its accuracy (val_accuracy in MLflow)
                val = val_accuracy(scored, val_set, self.cfg.batch_size, self.info.device)
                self.stop.record(epoch, val["accuracy"])
                log.info("epoch %d: val accuracy %s (best %.4f at epoch %d) in %.1fs", epoch,
                         "n/a" if val["accuracy"] is None else f"{val['accuracy']:.4f}", self.stop.best_ap,
                         self.stop.best_epoch, time.time() - t0)
            else:
                val = val_map(scored, val_set, val_gt, self.cfg.batch_size, self.info.device)
                self.stop.record(epoch, val["AP"])
                log.info("epoch %d: val AP %s, AP50 %s (best %.4f at epoch %d) in %.1fs", epoch,
                         "n/a" if val["AP"] is None else f"{val['AP']:.4f}",
                         "n/a" if val["AP50"] is None else f"{val['AP50']:.4f}", self.stop.best_ap,
                         self.stop.best_epoch, time.time() - t0)
        patience_out = self.info.is_main and self.stop.out_of_patience(epoch)
        # every rank enters this broadcast whatever its shard held, so none waits for a collective in vain
        self.stop.early_stopped = broadcast_flag(patience_out, self.info) and epoch < self.cfg.epochs
        return val

    def finish(self, train_set: CanonicalDataset) -> None:
        """The weights that ship: the EMA's when on, with BatchNorm statistics recomputed for them."""
        cfg, info = self.cfg, self.info
        if self.ema is not None:
            self.model.load_state_dict(self.ema.state)
        if cfg.bn_calibration_images > 0:
            t0 = time.time()
            used = recalibrate_batchnorm(self.model, train_set, cfg, info, cfg.bn_calibration_images)
            if info.is_main and used:
                log.info("recomputed BatchNorm statistics on %d train images in %.1fs", used, time.time() - t0)


def _eval_every(cfg: TrainConfig, info: DistInfo, val_set: CanonicalDataset | None, val_gt: dict | None) -> int:
    """Every how many epochs val mAP is computed (0 = never)."""
    eval_every = cfg.eval_every_epochs or (1 if cfg.early_stop_patience else 0)
    # only rank 0 holds the val split: its answer decides for all, so every rank takes the same branches
    has_val = val_set is not None and len(val_set) > 0 and (bool(val_gt) or is_classification(val_set))
    if eval_every and not broadcast_flag(has_val, info):
        if info.is_main:
            log.warning("no val images: the val metric is not computed and early stopping is off")
        eval_every = 0
    return eval_every


def _log_epoch(stats: EpochStats, cfg: TrainConfig, info: DistInfo) -> None:
    if not info.is_main:
        return
    parts = " ".join(f"{k}={v:.3f}" for k, v in stats.components.items())
    log.info("epoch %d/%d: loss %.4f (%s) lr %.2e, %.1f images/s, %.1fs, step %d", stats.epoch, cfg.epochs,
             stats.loss, parts, stats.lr, stats.images_per_s, stats.seconds, stats.step)


def fit(
    model: torch.nn.Module,
    train_set: CanonicalDataset,
    cfg: TrainConfig,
    info: DistInfo,
    store: ArtifactStore,
    checkpoint_key: str,
    run_fingerprint: str,
    on_epoch_end: Callable[[EpochStats], None] | None = None,
    progress: bool = True,
    val_set: CanonicalDataset | None = None,
    val_gt: dict | None = None,
) -> FitResult:
    """Train `model` in place on `train_set`; resumes from `checkpoint_key` when it holds a checkpoint
    of the same `run_fingerprint` (same training config and data).

    With `cfg.ema_decay`, the model ends holding the EMA weights. With `cfg.eval_every_epochs` (or early
    stopping), rank 0 scores the model (the EMA weights when on) on `val_set` / `val_gt` every N epochs;
    with `cfg.early_stop_patience`, training stops once val mAP has not improved for that many epochs, rank
    0's decision broadcast to every rank (the others only wait in that broadcast). The model keeps the last
    weights trained, not the best ones.
    """
    model.to(info.device)
    from pipeline.training.augment import Augment
    from pipeline.training.classify import ClassificationAugment

    dataset = ClassificationAugment(train_set, cfg) if is_classification(train_set) else Augment(train_set, cfg)
    if len(dataset) < 2 * info.world_size:
        raise NightshiftError(f"the train split has {len(train_set)} images: too few for "
                              f"{info.world_size} process(es) (each needs a batch of at least 2)")
    steps_per_epoch = len(make_loader(dataset, cfg, info))
    run = _Training(model, cfg, info, store, checkpoint_key, run_fingerprint, cfg.epochs * steps_per_epoch)
    eval_every = _eval_every(cfg, info, val_set, val_gt)
    start_epoch, skip, resumed_from = run.resume()
    run.wrap_ddp()

    history: list[EpochStats] = []
    started = time.time()
    images_seen = 0
    stopped = False
    model.train()
    for epoch in range(start_epoch, cfg.epochs):
        if run.stop.early_stopped:  # resumed after the early stop was decided and checkpointed
            break
        if run.stop.steps_done(run.step):
            stopped = True
            break
        stats, stopped, images = run.train_epoch(dataset, epoch, skip, steps_per_epoch, progress)
        skip = 0
        images_seen += images
        if stopped:
            if info.is_main:
                log.info("stopping after step %d (train.max_steps) in epoch %d, loss %.4f", run.step, epoch + 1,
                         stats.loss)
        else:
            if eval_every and (epoch + 1) % eval_every == 0:
                stats.val = run.evaluate(epoch + 1, val_set, val_gt)
            run.checkpoint(epoch + 1, 0)
            _log_epoch(stats, cfg, info)
        history.append(stats)
        if on_epoch_end:
            on_epoch_end(stats)
        if stopped:
            break
        if run.stop.early_stopped:
            if info.is_main:
                log.info("early stop after epoch %d: val %s has not improved for %d epoch(s) (best %.4f at "
                         "epoch %d)", epoch + 1, "accuracy" if is_classification(train_set) else "AP", epoch + 1 - run.stop.best_epoch, run.stop.best_ap,
                         run.stop.best_epoch)
            break
    run.finish(train_set)
    train_seconds = time.time() - started
    final = history[-1] if history else None
    return FitResult(epochs_run=(final.epoch if final else start_epoch), steps=run.step,
                     final_loss=final.loss if final else float("nan"),
                     images_per_s=images_seen / train_seconds if train_seconds > 0 and images_seen else 0.0,
                     train_seconds=train_seconds, resumed_from=resumed_from, history=history, stopped_early=stopped,
                     early_stopped=run.stop.early_stopped, best_val_ap=run.stop.best_ap,
                     best_val_epoch=run.stop.best_epoch)


@torch.no_grad()
def recalibrate_batchnorm(model: torch.nn.Module, dataset: CanonicalDataset, cfg: TrainConfig, info: DistInfo,
                          num_images: int) -> int:
    """Recompute every BatchNorm's running statistics for the final weights ("precise BN").

    torchvision's detection backbones use BatchNorm momentum 0.01, made for hundreds of epochs: after a
    short training the running statistics still hold mostly their initial values and the model predicts
    garbage in eval mode although its training loss is low. A forward pass in train mode (no gradients)
    over `num_images` evenly spaced train images, split across ranks, fixes that in seconds.
    Returns the number of images used by all ranks together.
    """
    norms = [m for m in model.modules()
             if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    num_images = min(num_images, len(dataset))
    if not norms or num_images < 2:
        return 0
    picked = np.linspace(0, len(dataset) - 1, num_images).round().astype(int).tolist()
    mine = picked[info.rank::info.world_size]
    batch = max(cfg.batch_size, 2)
    if len(mine) % batch == 1:  # a batch of one breaks BatchNorm on 1x1 feature maps
        mine = mine[:-1]
    total = int(all_reduce_sum(len(mine), info))
    if total == 0:
        return 0
    loader = DataLoader(Subset(dataset, mine), batch_size=batch, shuffle=False, num_workers=cfg.num_workers,
                        collate_fn=collate, pin_memory=info.device.type == "cuda")
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the calibration batches
    was_training = model.training
    model.train()
    try:
        for images, targets in loader:
            model([im.to(info.device) for im in images], _targets_to(targets, info.device))
    finally:
        for m, momentum in zip(norms, momenta):
            m.momentum = momentum
        model.train(was_training)
    if info.distributed:
        # every rank saw its own share of the images: a weighted average gives all ranks the same statistics
        for m in norms:
            for buf in (m.running_mean, m.running_var):
                buf.mul_(len(mine))
                dist.all_reduce(buf)
                buf.div_(total)
    return total


# -- inference -----------------------------------------------------------------------------------------
@torch.inference_mode()
def predict(model: torch.nn.Module, dataset: CanonicalDataset, batch_size: int = 8, device="cpu",
            progress: bool = True) -> list[dict]:
    """COCO results for every image of `dataset`: image_id, category_id, bbox [x, y, w, h] in original image
    pixels, score. The model sees exactly the dataset's S x S input and returns boxes in those pixels.
    A model that returns `masks` (Mask R-CNN) adds `segmentation`: COCO RLE at the original size, the mask
    thresholded at 0.5."""
    from pipeline.training.masks import rles

    device = torch.device(device)
    was_training = model.training
    model.eval().to(device)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=0, collate_fn=collate,
                        pin_memory=device.type == "cuda")
    results: list[dict] = []
    size = dataset.image_size
    try:
        for images, targets in progress_bar(loader, desc="predict", unit="batch", disable=not progress, leave=False):
            outputs = model([im.to(device) for im in images])
            for out, target in zip(outputs, targets):
                orig_h, orig_w = target["orig_size"]
                boxes = out["boxes"].float().cpu()
                boxes[:, [0, 2]] *= orig_w / size
                boxes[:, [1, 3]] *= orig_h / size
                # a Mask R-CNN's masks, as COCO RLE on the original image (pipeline.training.masks)
                segms = rles(out["masks"], orig_h, orig_w) if "masks" in out else None
                for i, ((x1, y1, x2, y2), score, label) in enumerate(zip(boxes.tolist(), out["scores"].cpu().tolist(),
                                                                         out["labels"].cpu().tolist())):
                    if label not in dataset.label_to_cat:  # background
                        continue
                    results.append({
                        "image_id": target["image_id"],
                        "category_id": dataset.label_to_cat[label],
                        "bbox": [round(x1, 3), round(y1, 3), round(x2 - x1, 3), round(y2 - y1, 3)],
                        "score": round(float(score), 5),
                    })
                    if segms is not None:
                        results[-1]["segmentation"] = segms[i]
    finally:
        model.train(was_training)
    return results
