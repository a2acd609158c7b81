"""DDP scaling benchmark: step time of 2 ranks against 1 rank at equal per-rank batch, and images/s.

    python -m pipeline.training.bench                  # SSDlite at 128 px, batch 8 per rank, gloo on CPU
    python -m pipeline.training.bench --steps 30 --model fasterrcnn_mobilenet_v3_large_320_fpn

Each configuration runs as its own torchrun job (`--standalone`), with real images from the generated dataset
loaded the way the train stage loads them, so the figures include DDP's gradient all-reduce and the data
path. The goal for the overhead of 2 ranks over 1 is 15 % or less. On a CPU machine each rank gets
`--threads` intra-op threads; with 2 cores and 1 thread per rank the two configurations use the same cores
per rank, which is the fair comparison.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

GOAL_OVERHEAD = 0.15


def _worker(args: argparse.Namespace) -> int:
    """One rank: timed optimizer steps; rank 0 writes the figures to args.out."""
    import torch
    import torch.distributed as dist

    from pipeline.config import TrainConfig
    from pipeline.datasets.canonical import CanonicalDataset, collate
    from pipeline.training.distributed import init_distributed
    from pipeline.training.engine import build_optimizer
    from pipeline.training.models import build_model

    torch.set_num_threads(args.threads)
    info = init_distributed()
    torch.manual_seed(0)
    dataset = CanonicalDataset(args.dataset, None, args.image_size)
    model = build_model(args.model, dataset.num_classes + 1, args.image_size).to(info.device)
    model.train()
    # --no-ddp: the same processes on the same cores without gradient all-reduce, to tell the machine's own
    # contention between processes apart from what DDP costs
    ddp = torch.nn.parallel.DistributedDataParallel(model) if info.distributed and not args.no_ddp else model
    optimizer = build_optimizer(model, TrainConfig(lr=1e-3))
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=args.batch, collate_fn=collate, num_workers=0,
        sampler=torch.utils.data.DistributedSampler(dataset, info.world_size, info.rank, shuffle=True, seed=0)
        if info.distributed else None, shuffle=not info.distributed, drop_last=True)
    times = []
    batches = iter(loader)
    for step in range(args.warmup + args.steps):
        try:
            images, targets = next(batches)
        except StopIteration:
            batches = iter(loader)
            images, targets = next(batches)
        start = time.perf_counter()
        losses = ddp([i.to(info.device) for i in images],
                     [{k: v.to(info.device) if torch.is_tensor(v) else v for k, v in t.items()} for t in targets])
        loss = sum(losses.values())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if step >= args.warmup:
            times.append(time.perf_counter() - start)
    if info.distributed:
        # the slowest rank sets the pace of a synchronous step
        t = torch.tensor(times)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        times = t.tolist()
        dist.destroy_process_group()
    if info.rank == 0:
        times.sort()
        median = times[len(times) // 2]
        Path(args.out).write_text(json.dumps({
            "world_size": info.world_size, "step_ms_median": median * 1e3,
            "step_ms_mean": sum(times) / len(times) * 1e3,
            "images_per_s": args.batch * info.world_size / median, "steps": len(times),
        }))
    return 0


def _run(nproc: int, args: argparse.Namespace, dataset: Path, out: Path, ddp: bool = True) -> dict:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           "-m", "pipeline.training.bench", "--worker", "--dataset", str(dataset), "--out", str(out),
           "--model", args.model, "--image-size", str(args.image_size), "--batch", str(args.batch),
           "--steps", str(args.steps), "--warmup", str(args.warmup), "--threads", str(args.threads)]
    if not ddp:
        cmd.append("--no-ddp")
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
    subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL)
    return json.loads(out.read_text())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.training.bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="ssdlite320_mobilenet_v3_large")
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--batch", type=int, default=8, help="per-rank batch (default 8)")
    parser.add_argument("--steps", type=int, default=20, help="timed steps (default 20)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads per rank (default 1)")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--no-ddp", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--dataset", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        return _worker(args)

    from pipeline.datasets.synthetic import generate

    with tempfile.TemporaryDirectory() as tmp:
        dataset = Path(tmp) / "dataset"
        generate(dataset, num_images=max(64, args.batch * 2 * (args.steps + args.warmup) // 4),
                 image_size=args.image_size, seed=0)
        one = _run(1, args, dataset, Path(tmp) / "one.json")
        two = _run(2, args, dataset, Path(tmp) / "two.json")
        apart = _run(2, args, dataset, Path(tmp) / "apart.json", ddp=False)
    overhead = two["step_ms_median"] / one["step_ms_median"] - 1
    ddp_cost = two["step_ms_median"] / apart["step_ms_median"] - 1
    print(f"model {args.model} at {args.image_size} px, batch {args.batch} per rank, {args.threads} thread(s) per rank,"
          f" gloo, median of {args.steps} steps")
    print(f"{'ranks':>5} {'step ms (median)':>17} {'step ms (mean)':>15} {'images/s':>9}")
    for label, r in (("1", one), ("2", two), ("2*", apart)):
        print(f"{label:>5} {r['step_ms_median']:>17.1f} {r['step_ms_mean']:>15.1f} {r['images_per_s']:>9.1f}")
    print("2* = two processes on the same cores without DDP's all-reduce (the machine's own contention)")
    verdict = "met" if overhead <= GOAL_OVERHEAD else "missed"
    print(f"2-rank step-time overhead over 1 rank: {overhead * 100:+.1f} % (goal <= {GOAL_OVERHEAD * 100:.0f} %: "
          f"{verdict}); scaling {two['images_per_s'] / one['images_per_s']:.2f}x images/s")
    print(f"of which DDP itself (2 ranks vs 2 independent processes): {ddp_cost * 100:+.1f} %; the rest is the "
          f"processes slowing each other down on this machine")
    return 0


if __name__ == "__main__":
    sys.exit(main())
