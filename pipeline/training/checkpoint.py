"""Training checkpoints in the artifact store, written atomically, with every RNG state.

A checkpoint holds the model, optimizer, scheduler and AMP scaler states, the epoch and step reached, how
many batches of the current epoch were consumed, and the python / numpy / torch (CPU and CUDA) RNG states,
so a restarted stage continues exactly where the last one stopped.
"""
from __future__ import annotations

import logging
import random
import tempfile
from pathlib import Path

import numpy as np
import torch

from pipeline.store import ArtifactStore

log = logging.getLogger(__name__)

FORMAT_VERSION = 1


def rng_state() -> dict:
    state = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(store: ArtifactStore, key: str, *, model, optimizer, scheduler, scaler, epoch: int,
                    step: int, batches_done: int, rng: list[dict] | None = None, extra: dict | None = None) -> str:
    """Write the checkpoint under `key`; a reader sees either the previous file or the complete new one.

    `epoch` is the epoch in progress and `batches_done` how many of its batches are already trained
    (`batches_done == 0` with `epoch = e` means epoch e starts from scratch). `rng` lists every rank's RNG
    state (default: this process's).
    """
    blob = {
        "format_version": FORMAT_VERSION,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "scaler": scaler.state_dict() if scaler is not None else None,
        "epoch": epoch,
        "step": step,
        "batches_done": batches_done,
        "rng": rng if rng is not None else [rng_state()],
        "extra": extra or {},
    }
    with tempfile.TemporaryDirectory(prefix="nightshift-ckpt-") as tmp:
        local = Path(tmp) / "checkpoint.pt"
        torch.save(blob, local)
        url = store.put_file(local, key)  # the store renames into place (file://) or does one PUT (s3://)
    log.debug("checkpoint at epoch %d step %d -> %s", epoch, step, url)
    return url


def load_checkpoint(store: ArtifactStore, key: str, map_location="cpu") -> dict | None:
    """The checkpoint under `key`, or None when there is none."""
    if not store.exists(key):
        return None
    with tempfile.TemporaryDirectory(prefix="nightshift-ckpt-") as tmp:
        local = store.get_file(key, Path(tmp) / "checkpoint.pt")
        # our own file (optimizer state, numpy RNG tuples): not loadable with weights_only
        blob = torch.load(local, map_location=map_location, weights_only=False)
    if blob.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{store.url(key)}: checkpoint format {blob.get('format_version')!r}, "
                         f"expected {FORMAT_VERSION}")
    return blob
