"""DDP scaling benchmark: step time of 2 ranks against 1 rank at equal per-rank batch, and images/s.

    python -m pipeline.training.bench                  # SSDlite at 128 and 320 px, batch 8 per rank, gloo on CPU
    python -m pipeline.training.bench --image-size 128 --rounds 1 --steps 30

Each configuration runs as its own torchrun job (`--standalone`), with real images from the generated dataset
loaded the way the train stage loads them, so the figures include DDP's gradient all-reduce and the data
path. The goal for the overhead of 2 ranks over 1 is 15 % or less. On a CPU machine each rank gets
`--threads` intra-op threads; with 2 cores and 1 thread per rank the two configurations use the same cores
per rank, which is the fair comparison. A third configuration, two processes without DDP, tells the
machine's own contention between processes apart from what DDP costs.

Step times on a shared 2-core VM drift by 10 % from one run to the next, more than the effect measured, so
the three configurations run in turn for `--rounds` rounds and each figure is the median over rounds of
the per-run median step time. 128 px is the demo's image size, where a step is short and the fixed cost of
all-reducing SSDlite's 3.4 M gradients weighs most; 320 px is the size the model is built for.
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
    from pipeline.training import distributed
    from pipeline.training.distributed import init_distributed
    from pipeline.training.engine import build_optimizer
    from pipeline.training.models import build_model

    torch.set_num_threads(args.threads)
    (image_size,) = args.image_size  # one size per torchrun job
    info = init_distributed()
    torch.manual_seed(0)
    dataset = CanonicalDataset(args.dataset, None, image_size)
    model = build_model(args.model, dataset.num_classes + 1, image_size).to(info.device)
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
        del ddp, t
        distributed.cleanup(info)
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
    # a rank that hangs (say, in process-group teardown) fails the benchmark instead of stalling it
    subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL, timeout=args.timeout)
    return json.loads(out.read_text())


def _median(values: list[float]) -> float:
    values = sorted(values)
    mid = len(values) // 2
    return values[mid] if len(values) % 2 else (values[mid - 1] + values[mid]) / 2


def _measure(args: argparse.Namespace, image_size: int, tmp: Path) -> dict:
    """Median step time per configuration over `args.rounds` rounds, the configurations in turn."""
    from pipeline.datasets.synthetic import generate

    run_args = argparse.Namespace(**{**vars(args), "image_size": image_size})
    dataset = tmp / f"dataset{image_size}"
    generate(dataset, num_images=max(64, args.batch * 2 * (args.steps + args.warmup) // 4), image_size=image_size,
             seed=0)
    runs: dict[str, list[dict]] = {"1": [], "2": [], "2*": []}
    for _ in range(args.rounds):
        runs["1"].append(_run(1, run_args, dataset, tmp / "one.json"))
        runs["2"].append(_run(2, run_args, dataset, tmp / "two.json"))
        runs["2*"].append(_run(2, run_args, dataset, tmp / "apart.json", ddp=False))
    out = {}
    for label, results in runs.items():
        step = _median([r["step_ms_median"] for r in results])
        out[label] = {"step_ms": step, "step_ms_runs": [round(r["step_ms_median"], 1) for r in results],
                      "images_per_s": args.batch * results[0]["world_size"] / step * 1e3}
    out["overhead"] = out["2"]["step_ms"] / out["1"]["step_ms"] - 1
    out["ddp_cost"] = out["2"]["step_ms"] / out["2*"]["step_ms"] - 1
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.training.bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="ssdlite320_mobilenet_v3_large")
    parser.add_argument("--image-size", type=int, nargs="+", default=[128, 320],
                        help="image sizes to measure (default 128 320)")
    parser.add_argument("--batch", type=int, default=8, help="per-rank batch (default 8)")
    parser.add_argument("--steps", type=int, default=15, help="timed steps per run (default 15)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=3, help="runs of each configuration (default 3)")
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads per rank (default 1)")
    parser.add_argument("--timeout", type=float, default=600, help="seconds one torchrun job may take")
    parser.add_argument("--json", help="also write the figures to this JSON file")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--no-ddp", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--dataset", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        return _worker(args)
    if min(args.batch, args.steps, args.rounds, args.threads, *args.image_size) < 1:
        parser.error("--batch, --steps, --rounds, --threads and --image-size must be at least 1")

    figures = {}
    with tempfile.TemporaryDirectory() as tmp:
        for size in args.image_size:
            started = time.perf_counter()
            r = figures[size] = _measure(args, size, Path(tmp))
            print(f"model {args.model} at {size} px, batch {args.batch} per rank, {args.threads} thread(s) per "
                  f"rank, gloo; median of {args.rounds} run(s) x {args.steps} steps ({time.perf_counter() - started:.0f}s)")
            print(f"{'ranks':>5} {'step ms':>8} {'images/s':>9}  step ms of each run")
            for label in ("1", "2", "2*"):
                row = r[label]
                print(f"{label:>5} {row['step_ms']:>8.1f} {row['images_per_s']:>9.1f}  "
                      + " ".join(f"{v:.1f}" for v in row["step_ms_runs"]))
            verdict = "met" if r["overhead"] <= GOAL_OVERHEAD else "missed"
            print(f"2-rank step-time overhead over 1 rank: {r['overhead'] * 100:+.1f} % (goal <= "
                  f"{GOAL_OVERHEAD * 100:.0f} %: {verdict}); scaling {r['2']['images_per_s'] / r['1']['images_per_s']:.2f}x"
                  f" images/s")
            print(f"of which DDP itself (2 vs 2*, two processes without all-reduce): {r['ddp_cost'] * 100:+.1f} %\n",
                  flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({str(k): v for k, v in figures.items()}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
