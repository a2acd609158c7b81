"""DDP from the environment, as in torchvision's references: the same code runs as one process on a laptop
and as N processes under `torchrun`, which sets RANK / WORLD_SIZE / LOCAL_RANK.

`relaunch_under_torchrun(n)` re-runs the current command line under `torch.distributed.run` when the stage
asks for more than one process and was started as a plain process.
"""
from __future__ import annotations

import gc
import logging
import os
import subprocess
import sys
from dataclasses import dataclass

import torch
import torch.distributed as dist

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    backend: str  # "" when not distributed

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def under_torchrun() -> bool:
    return "LOCAL_RANK" in os.environ


def torchrun_command(nproc: int, argv: list[str] | None = None) -> list[str]:
    """The command that runs `python -m pipeline <argv>` as `nproc` processes on this node."""
    argv = list(sys.argv[1:] if argv is None else argv)
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
            "-m", "pipeline", *argv]


def relaunch_under_torchrun(nproc: int, argv: list[str] | None = None) -> int:
    """Run the same command line as `nproc` torchrun processes and wait; returns torchrun's exit code."""
    cmd = torchrun_command(nproc, argv)
    env = dict(os.environ)
    # the children must find this checkout's `pipeline` package whatever their working directory
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH", "")) if p)
    env.setdefault("OMP_NUM_THREADS", "1")
    log.info("re-launching under torchrun with %d processes: %s", nproc, " ".join(cmd))
    return subprocess.run(cmd, env=env, check=False).returncode


def init_distributed() -> DistInfo:
    """Read RANK / WORLD_SIZE / LOCAL_RANK and join the process group (nccl on GPU, gloo on CPU)."""
    rank = int(os.environ.get("RANK", 0))
    world_size = int(os.environ.get("WORLD_SIZE", 1))
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if torch.cuda.is_available():
        device = torch.device("cuda", local_rank % torch.cuda.device_count())
        torch.cuda.set_device(device)
        backend = "nccl"
    else:
        device = torch.device("cpu")
        backend = "gloo"
    if world_size > 1:
        if not dist.is_initialized():
            dist.init_process_group(backend=backend)
    else:
        backend = ""
    return DistInfo(rank, world_size, local_rank, device, backend)


def barrier(info: DistInfo) -> None:
    if info.distributed and dist.is_initialized():
        dist.barrier()


def all_reduce_sum(value: float, info: DistInfo) -> float:
    """Sum a Python number over ranks."""
    if not info.distributed:
        return float(value)
    t = torch.tensor([float(value)], dtype=torch.float64,
                     device=info.device if info.backend == "nccl" else torch.device("cpu"))
    dist.all_reduce(t)
    return float(t.item())


def all_reduce_mean(value: float, info: DistInfo) -> float:
    """Average a Python number over ranks (for logging what the whole job saw, not one rank)."""
    return all_reduce_sum(value, info) / info.world_size


def broadcast_flag(flag: bool, info: DistInfo) -> bool:
    """Rank 0's decision, everywhere (e.g. whether a checkpoint exists to resume from)."""
    if not info.distributed:
        return flag
    t = torch.tensor([1 if flag else 0], dtype=torch.int64,
                     device=info.device if info.backend == "nccl" else torch.device("cpu"))
    dist.broadcast(t, src=0)
    return bool(t.item())


def cleanup(info: DistInfo) -> None:
    """Leave the process group. Call it after the DDP wrapper is gone.

    A DDP wrapper's Reducer holds the process group; if the Reducer is the last holder, the group is torn down
    in the Reducer's destructor, which keeps the GIL while it joins gloo's worker thread, and that thread may
    need the GIL to free a tensor: the process hangs at exit (seen with torch 2.13 when the wrapper outlived
    this call). Collecting garbage first frees wrappers kept alive by reference cycles while the group still
    has its own holder, so the group is destroyed here, by the call that releases the GIL.
    """
    if info.distributed and dist.is_initialized():
        gc.collect()
        dist.destroy_process_group()
