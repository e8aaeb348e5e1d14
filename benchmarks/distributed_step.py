"""Optimizer step time per rank with 1 and 2 processes: does splitting Newton-Schulz pay off?

Each process holds the same parameters and the same gradients (what DDP leaves after its
all-reduce) for the Muon matrices of a ViT-S/16 stack (per block: qkv 1152x384, proj 384x384,
fc1 1536x384, fc2 384x1536) plus its vectors (biases, norms; AdamW fallback), and times
``AMUSE.step()``. With 2 processes (gloo) AMUSE splits the Newton-Schulz work (cost-balanced by
shape) and all-gathers the results; with 1 process it orthogonalises everything itself.

Per rank and step it records the whole step, the time inside Newton-Schulz and the time inside
the all-gather; the goal is a Newton-Schulz share per rank of at most 0.6x the single-process one.

    python benchmarks/distributed_step.py --quick    # smoke run, under a minute
    python benchmarks/distributed_step.py            # full run: 12 blocks

Writes benchmarks/results/distributed_step.json (``--quick`` writes distributed_step_quick.json).
Every process gets ``--threads`` intra-op threads (default 1), so 2 processes use 2 cores.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine_info

import amuse_lightning.optim.directions as directions
import amuse_lightning.optim.distributed as distributed
import amuse_lightning.optim.matrices as matrix_ops
from amuse_lightning import AMUSE
from amuse_lightning.optim.hardware import fastest_ns_dtype

RESULTS = Path(__file__).resolve().parent / "results"
DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}
AUTO = "auto"
"""``--ns-dtype auto`` (default): the dtype AMUSE's default picks on this CPU (bf16 where it is
multiplied natively, float32 where it is emulated and a quick run would take minutes)."""


def ns_dtype_of(choice: str) -> torch.dtype:
    return getattr(torch, fastest_ns_dtype("cpu")) if choice == AUTO else DTYPES[choice]


def vit_s_groups(blocks: int, seed: int = 0) -> list[dict]:
    """Muon matrices and fallback vectors of ``blocks`` ViT-S blocks, with fixed gradients."""
    width = 384
    gen = torch.Generator().manual_seed(seed)
    matrices, vectors = [], []
    for _ in range(blocks):
        for shape in [(3 * width, width), (width, width), (4 * width, width), (width, 4 * width)]:
            matrices.append(torch.nn.Parameter(torch.randn(shape, generator=gen) * 0.02))
        for size in [3 * width, width, 4 * width, width, width, width, width, width]:
            vectors.append(torch.nn.Parameter(torch.zeros(size)))
    for p in matrices + vectors:
        p.grad = torch.randn(p.shape, generator=gen) * 1e-2
    return [{"params": matrices, "use_muon": True}, {"params": vectors, "use_muon": False}]


class Timer:
    """Wraps a function; accumulates its wall time (CPU ops are synchronous)."""

    def __init__(self, fn: Callable) -> None:
        self.fn, self.seconds, self.calls = fn, 0.0, 0

    def __call__(self, *args, **kwargs):
        start = time.perf_counter()
        out = self.fn(*args, **kwargs)
        self.seconds += time.perf_counter() - start
        self.calls += 1
        return out


def worker(
    rank: int, world: int, init_file: str, args: argparse.Namespace, out_dir: str, anchor: bool
) -> None:
    torch.set_num_threads(args.threads)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        record = share_anchor(rank, world, args) if anchor else time_amuse(rank, args)
        (Path(out_dir) / f"rank{rank}.json").write_text(json.dumps(record))
    finally:
        dist.destroy_process_group()


def time_amuse(rank: int, args: argparse.Namespace) -> dict:
    """``AMUSE.step()`` per step: whole step, inside Newton-Schulz, inside the all-gather."""
    # Newton-Schulz runs through newton_schulz (batched stacks, the rank split) or, one matrix at
    # a time in reused buffers, through newton_schulz_: time both
    ns = Timer(matrix_ops.newton_schulz)
    ns_inplace = Timer(directions.newton_schulz_)
    gather = Timer(distributed._all_gather)
    matrix_ops.newton_schulz, directions.newton_schulz_ = ns, ns_inplace
    distributed._all_gather = gather
    opt = AMUSE(vit_s_groups(args.blocks), lr=1e-3, ns_dtype=ns_dtype_of(args.ns_dtype))
    rows = []
    for step in range(args.warmup + args.steps):
        ns.seconds = ns_inplace.seconds = gather.seconds = 0.0
        dist.barrier()
        start = time.perf_counter()
        opt.step()
        total = time.perf_counter() - start
        if step >= args.warmup:
            ns_s = ns.seconds + ns_inplace.seconds
            rows.append({"step_s": total, "ns_s": ns_s, "gather_s": gather.seconds})
    splits = opt.rank_splits()  # none with one process: every matrix is computed here
    matrices = len(opt.param_groups[0]["params"])
    if splits:
        matrices = splits[0].local_matrices // (args.warmup + args.steps)
    return {"rank": rank, "steps": rows, "matrices_orthogonalised_per_step": matrices}


def share_anchor(rank: int, world: int, args: argparse.Namespace) -> dict:
    """Each process orthogonalises its share with no collective at all: the best a split can do.

    It measures how much parallel capacity the machine gives right now (other load included).
    """
    matrices = vit_s_groups(args.blocks)[0]["params"]
    shapes = tuple(tuple(m.shape) for m in matrices)
    plan = distributed.plan_exchange(shapes, world)
    dtype = ns_dtype_of(args.ns_dtype)
    rows = []
    for step in range(args.warmup + args.steps):
        dist.barrier()
        start = time.perf_counter()
        for indices in plan.batches[rank]:
            matrix_ops.newton_schulz(torch.stack([matrices[i].grad for i in indices]), 5, dtype)
        total = time.perf_counter() - start
        if step >= args.warmup:
            rows.append({"step_s": total, "ns_s": total, "gather_s": 0.0})
    count = sum(len(indices) for indices in plan.batches[rank])
    return {"rank": rank, "steps": rows, "matrices_orthogonalised_per_step": count}


def run_world(world: int, args: argparse.Namespace, anchor: bool = False) -> list[dict]:
    with tempfile.TemporaryDirectory() as tmp:
        init_file = os.path.join(tmp, "init")
        mp.spawn(worker, args=(world, init_file, args, tmp, anchor), nprocs=world, join=True)
        return [json.loads((Path(tmp) / f"rank{r}.json").read_text()) for r in range(world)]


def summarise(ranks: list[dict]) -> dict:
    """Median over steps per rank, then the slowest rank (the one everybody waits for)."""
    keys = ("step_s", "ns_s", "gather_s")
    per_rank = [
        {k: statistics.median(row[k] for row in r["steps"]) for k in keys}
        | {f"min_{k}": min(row[k] for row in r["steps"]) for k in keys}
        | {"matrices": r["matrices_orthogonalised_per_step"]}
        for r in ranks
    ]
    slowest = {k: max(r[k] for r in per_rank) for k in (*keys, *(f"min_{k}" for k in keys))}
    return {"per_rank": per_rank, "slowest_rank": slowest}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2 blocks, 3 steps (< 1 minute)")
    parser.add_argument("--blocks", type=int, default=12)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads per process")
    parser.add_argument("--ns-dtype", choices=[AUTO, *sorted(DTYPES)], default=AUTO)
    args = parser.parse_args()
    if args.quick:
        args.blocks, args.steps = 2, 3

    info = machine_info("cpu") | {"threads_per_process": args.threads}
    print(f"machine: {info}")
    dtype = str(ns_dtype_of(args.ns_dtype)).removeprefix("torch.")
    print(f"ViT-S stack: {args.blocks} blocks ({4 * args.blocks} Muon matrices), NS in {dtype}, "
          f"{args.steps} timed steps after {args.warmup} warm-up")  # fmt: skip
    results = {str(world): summarise(run_world(world, args)) for world in (1, 2)}
    results["2-share-only"] = summarise(run_world(2, args, anchor=True))
    one, two = results["1"]["slowest_rank"], results["2"]["slowest_rank"]
    alone = results["2-share-only"]["slowest_rank"]
    ratios = {
        "share_only_ns_2_over_1": alone["ns_s"] / one["ns_s"],
        "ns_per_rank_2_over_1": two["ns_s"] / one["ns_s"],
        "step_per_rank_2_over_1": two["step_s"] / one["step_s"],
        "ns_per_rank_2_over_1_fastest_steps": two["min_ns_s"] / one["min_ns_s"],
        "step_per_rank_2_over_1_fastest_steps": two["min_step_s"] / one["min_step_s"],
    }
    print(
        f"{'processes':>12} {'rank':>4} {'matrices':>8} {'step s':>8} {'NS s':>8} {'gather s':>8}"
    )
    for world, summary in results.items():
        for rank, row in enumerate(summary["per_rank"]):
            print(f"{world:>12} {rank:>4} {row['matrices']:>8} {row['step_s']:>8.3f} "
                  f"{row['ns_s']:>8.3f} {row['gather_s']:>8.3f}")  # fmt: skip
    print("2-share-only: each process orthogonalises its share alone, no optimizer, no gather:")
    best = ratios["share_only_ns_2_over_1"]
    print(f"  the best a 2-way split can do on this machine now: {best:.2f}x")
    print(f"Newton-Schulz per rank, 2 vs 1 process: {ratios['ns_per_rank_2_over_1']:.2f}x "
          f"(goal <= 0.60x); whole step: {ratios['step_per_rank_2_over_1']:.2f}x (medians over "
          f"steps, slowest rank); fastest steps: NS "
          f"{ratios['ns_per_rank_2_over_1_fastest_steps']:.2f}x, step "
          f"{ratios['step_per_rank_2_over_1_fastest_steps']:.2f}x")  # fmt: skip
    out = {
        "machine": info,
        "config": vars(args) | {"matrices": 4 * args.blocks, "ns_dtype_used": dtype},
        "results": results,
        "ratios": ratios,
        "goal_ns_ratio": 0.6,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / ("distributed_step_quick.json" if args.quick else "distributed_step.json")
    path.write_text(json.dumps(out, indent=2))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
