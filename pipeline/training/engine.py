"""The training loop and batch inference for detectors, in the spirit of torchvision's references/detection.

`fit()` trains with AdamW, linear warm-up then cosine decay, gradient clipping, AMP on CUDA, a
DistributedSampler (one process or many under torchrun) and checkpoints every epoch (and every
`checkpoint_every_steps`) from which a restarted run continues exactly. `predict()` turns a model's
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
    return [{"boxes": t["boxes"].to(device, non_blocking=True), "labels": t["labels"].to(device, non_blocking=True)}
            for t in targets]


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
    device = info.device
    model.to(device)
    from pipeline.training.augment import Augment

    dataset = Augment(train_set, cfg)
    if len(dataset) < 2 * info.world_size:
        raise NightshiftError(f"the train split has {len(train_set)} images: too few for "
                              f"{info.world_size} process(es) (each needs a batch of at least 2)")
    steps_per_epoch = len(make_loader(dataset, cfg, info))
    total_steps = cfg.epochs * steps_per_epoch

    optimizer = build_optimizer(model, cfg)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(cfg.warmup_steps, total_steps))
    use_amp = cfg.amp and device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda") if use_amp else None
    ema = WeightEma(model, cfg.ema_decay) if cfg.ema_decay > 0 else None
    eval_every = cfg.eval_every_epochs or (1 if cfg.early_stop_patience else 0)
    # only rank 0 holds the val split: its answer decides for all, so every rank takes the same branches
    if eval_every and not broadcast_flag(val_set is not None and len(val_set) > 0 and bool(val_gt), info):
        if info.is_main:
            log.warning("no val images: val mAP is not computed and early stopping is off")
        eval_every = 0
    # the early-stopping state, checkpointed with the weights
    watch = {"best_ap": None, "best_epoch": 0, "early_stopped": False}

    # -- resume --------------------------------------------------------------------------------------
    start_epoch, step, skip = 0, 0, 0
    resumed_from = None
    ckpt = load_checkpoint(store, checkpoint_key) if info.is_main else None
    usable = ckpt is not None and ckpt["extra"].get("fingerprint") == run_fingerprint
    if info.is_main and ckpt is not None and not usable:
        log.warning("checkpoint %s belongs to another config or dataset: starting from scratch",
                    store.url(checkpoint_key))
    if broadcast_flag(usable, info):
        if not info.is_main:
            ckpt = load_checkpoint(store, checkpoint_key)
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        if scaler is not None and ckpt["scaler"] is not None:
            scaler.load_state_dict(ckpt["scaler"])
        rngs = ckpt["rng"]
        if info.rank < len(rngs):
            set_rng_state(rngs[info.rank])
        start_epoch, step, skip = ckpt["epoch"], ckpt["step"], ckpt["batches_done"]
        if ema is not None:
            ema.load_state_dict(ckpt["extra"]["ema"])
        watch.update(ckpt["extra"].get("watch", {}))
        resumed_from = {"epoch": start_epoch, "step": step, "batches_done": skip}
        if info.is_main:
            log.info("resuming from %s: epoch %d, step %d (%d batches of that epoch done)",
                     store.url(checkpoint_key), start_epoch + 1, step, skip)
    ckpt = None

    train_model = model
    if info.distributed:
        train_model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)

    def checkpoint(epoch: int, batches_done: int) -> None:
        # every rank's RNG state, so each continues its own stream after a restart
        rngs = [None] * info.world_size
        if info.distributed:
            dist.all_gather_object(rngs, rng_state())
        else:
            rngs = [rng_state()]
        if info.is_main:
            save_checkpoint(store, checkpoint_key, model=model, optimizer=optimizer, scheduler=scheduler,
                            scaler=scaler, epoch=epoch, step=step, batches_done=batches_done,
                            rng=rngs, extra={"fingerprint": run_fingerprint, "watch": dict(watch),
                                             "ema": ema.state_dict() if ema is not None else None})

    def evaluate_val(epoch: int) -> dict:
        """Rank 0 scores the weights that would ship (the EMA's when on); returns {} elsewhere."""
        if not info.is_main:
            return {}
        scored = model
        if ema is not None:
            scored = copy.deepcopy(model)
            scored.load_state_dict(ema.state)
        t0 = time.time()
        val = val_map(scored, val_set, val_gt, cfg.batch_size, device)
        ap = val["AP"] if val["AP"] is not None else -1.0
        if watch["best_ap"] is None or ap > watch["best_ap"]:
            watch["best_ap"], watch["best_epoch"] = ap, epoch
        log.info("epoch %d: val AP %s, AP50 %s (best %.4f at epoch %d) in %.1fs", epoch,
                 "n/a" if val["AP"] is None else f"{val['AP']:.4f}",
                 "n/a" if val["AP50"] is None else f"{val['AP50']:.4f}", watch["best_ap"], watch["best_epoch"],
                 time.time() - t0)
        return val

    history: list[EpochStats] = []
    started = time.time()
    images_seen = 0
    stopped = False
    model.train()
    for epoch in range(start_epoch, cfg.epochs):
        if watch["early_stopped"]:  # resumed after the early stop was decided and checkpointed
            break
        if cfg.max_steps and step >= cfg.max_steps:
            stopped = True
            break
        dataset.set_epoch(epoch)
        loader = make_loader(dataset, cfg, info, skip_batches=skip, epoch=epoch)
        epoch_start = time.time()
        loss_sum, batches, epoch_images = 0.0, 0, 0
        comp_sum: dict[str, float] = {}
        bar = progress_bar(loader, desc=f"epoch {epoch + 1}/{cfg.epochs}", unit="batch", leave=False,
                           dynamic_ncols=True, disable=not (progress and info.is_main), initial=skip,
                           total=steps_per_epoch)
        for b, (images, targets) in enumerate(bar, start=skip):
            images = [im.to(device, non_blocking=True) for im in images]
            targets = _targets_to(targets, device)
            with torch.autocast(device_type=device.type, enabled=use_amp):
                losses = train_model(images, targets)
                loss = sum(losses.values())
            loss_value = float(loss.detach())
            if not math.isfinite(loss_value):
                parts = ", ".join(f"{k}={float(v.detach()):.4g}" for k, v in losses.items())
                raise NonFiniteLoss(f"training diverged: loss is {loss_value} at step {step + 1} "
                                    f"(epoch {epoch + 1}, batch {b + 1}; {parts}) on rank {info.rank}; "
                                    f"try a lower train.lr (now {cfg.lr}) or train.grad_clip")
            optimizer.zero_grad(set_to_none=True)
            if scaler is not None:
                scaler.scale(loss).backward()
                if cfg.grad_clip > 0:
                    scaler.unscale_(optimizer)
                    torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
                scaler.step(optimizer)
                scaler.update()
            else:
                loss.backward()
                if cfg.grad_clip > 0:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
                optimizer.step()
            scheduler.step()
            if ema is not None:
                ema.update(model)
            step += 1
            batches += 1
            loss_sum += loss_value
            for k, v in losses.items():
                comp_sum[k] = comp_sum.get(k, 0.0) + float(v.detach())
            epoch_images += len(images)
            if info.is_main and progress:
                elapsed = max(time.time() - epoch_start, 1e-9)
                bar.set_postfix(loss=f"{loss_value:.3f}", img_s=f"{epoch_images * info.world_size / elapsed:.1f}",
                                mem=memory_postfix(device))
            done_in_epoch = b + 1
            if cfg.max_steps and step >= cfg.max_steps and done_in_epoch < steps_per_epoch:
                checkpoint(epoch, done_in_epoch)  # a later run with a larger max_steps continues from here
                stopped = True
                break
            if cfg.checkpoint_every_steps and step % cfg.checkpoint_every_steps == 0 \
                    and done_in_epoch < steps_per_epoch:
                checkpoint(epoch, done_in_epoch)
        bar.close()
        skip = 0
        seconds = time.time() - epoch_start
        # reduce over all ranks for logging purposes: what the whole job saw, not one process
        total_images = all_reduce_sum(epoch_images, info)
        stats = EpochStats(
            epoch=epoch + 1,
            step=step,
            loss=all_reduce_mean(loss_sum / max(batches, 1), info),
            lr=optimizer.param_groups[0]["lr"],
            images_per_s=total_images / max(seconds, 1e-9),
            seconds=seconds,
            components={k: all_reduce_mean(v / max(batches, 1), info) for k, v in comp_sum.items()},
        )
        images_seen += total_images
        if stopped:
            if info.is_main:
                log.info("stopping after step %d (train.max_steps) in epoch %d, loss %.4f", step, epoch + 1,
                         stats.loss)
            history.append(stats)
            if on_epoch_end:
                on_epoch_end(stats)
            break
        if eval_every and (epoch + 1) % eval_every == 0:
            stats.val = evaluate_val(epoch + 1)
            patience_out = (cfg.early_stop_patience > 0 and info.is_main
                            and epoch + 1 - watch["best_epoch"] >= cfg.early_stop_patience)
            # every rank enters this broadcast whatever its shard held, so none waits for a collective in vain
            watch["early_stopped"] = broadcast_flag(patience_out, info) and epoch + 1 < cfg.epochs
        checkpoint(epoch + 1, 0)
        history.append(stats)
        if info.is_main:
            parts = " ".join(f"{k}={v:.3f}" for k, v in stats.components.items())
            log.info("epoch %d/%d: loss %.4f (%s) lr %.2e, %.1f images/s, %.1fs, step %d", epoch + 1, cfg.epochs,
                     stats.loss, parts, stats.lr, stats.images_per_s, seconds, step)
        if on_epoch_end:
            on_epoch_end(stats)
        if watch["early_stopped"]:
            if info.is_main:
                log.info("early stop after epoch %d: val AP has not improved for %d epoch(s) (best %.4f at "
                         "epoch %d)", epoch + 1, epoch + 1 - watch["best_epoch"], watch["best_ap"],
                         watch["best_epoch"])
            break
    if ema is not None:
        model.load_state_dict(ema.state)  # what ships is the average; BatchNorm is recalibrated for it below
    if cfg.bn_calibration_images > 0:
        t0 = time.time()
        used = recalibrate_batchnorm(model, train_set, cfg, info, cfg.bn_calibration_images)
        if info.is_main and used:
            log.info("recomputed BatchNorm statistics on %d train images in %.1fs", used, time.time() - t0)
    train_seconds = time.time() - started
    final = history[-1] if history else None
    return FitResult(
        epochs_run=(final.epoch if final else start_epoch),
        steps=step,
        final_loss=final.loss if final else float("nan"),
        images_per_s=images_seen / train_seconds if train_seconds > 0 and images_seen else 0.0,
        train_seconds=train_seconds,
        resumed_from=resumed_from,
        history=history,
        stopped_early=stopped,
        early_stopped=watch["early_stopped"],
        best_val_ap=watch["best_ap"],
        best_val_epoch=watch["best_epoch"],
    )


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
    pixels, score. The model sees exactly the dataset's S x S input and returns boxes in those pixels."""
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
                for (x1, y1, x2, y2), score, label in zip(boxes.tolist(), out["scores"].cpu().tolist(),
                                                          out["labels"].cpu().tolist()):
                    if label not in dataset.label_to_cat:  # background
                        continue
                    results.append({
                        "image_id": target["image_id"],
                        "category_id": dataset.label_to_cat[label],
                        "bbox": [round(x1, 3), round(y1, 3), round(x2 - x1, 3), round(y2 - y1, 3)],
                        "score": round(float(score), 5),
                    })
    finally:
        model.train(was_training)
    return results
