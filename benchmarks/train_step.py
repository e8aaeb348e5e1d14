"""End-to-end training step: AMUSE against torch.optim.Muon + AdamW on the same model and data.

Models (``--quick`` shrinks both for a CPU smoke run):

* ``gpt``: the byte-level GPT of ``amuse_lightning/examples/char_gpt.py``, width 384, depth 6,
  6 heads, context 256, batch 64 of random bytes (10.7M parameters, tied embeddings).
* ``resnet``: ``resnet18_cifar`` (``examples/models.py``), width 64, batch 256 of 32x32 images.

On CUDA the forward and backward run under bf16 autocast (float32 weights), on CPU in float32.
One step is ``zero_grad``, forward, loss, backward and the optimizer step. Every method trains its
own copy of the model, built from the same seed, on the same batches; the methods take turns
(A B C, then C B A, ...) in one process, after warm-up steps (compilation happens there and is
reported as ``first_step_s``), and the median over rounds is reported: the whole step (wall
clock, synchronised) and the optimizer's share of it (CUDA events on the GPU, the host clock on
CPU).

Methods (partition from ``partition_parameters``, lr 1e-2, weight decay 0.05 on matrices):

* ``amuse``: AMUSE with the library's defaults (the batched path on CUDA, eager).
* ``amuse_compiled``: the same with ``compile="reduce-overhead"`` on CUDA (CUDA graphs),
  ``compile=True`` on CPU.
* ``muon_adamw``: torch.optim.Muon for the Muon side (conv kernels through ``(out, -1)`` views)
  and AdamW for the rest, with the cosine schedule of the anytime studies
  (``benchmarks/anytime/methods.py``, ``muon_cosine``).

    python benchmarks/train_step.py --device cuda --output results/train_step_cuda.json
    python benchmarks/train_step.py --quick              # CPU smoke run, well under a minute
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from anytime.methods import OptimizerHandle, build_optimizer
from common import machine_info

from amuse_lightning import partition_parameters

MODELS = ("gpt", "resnet")
METHODS = ("amuse", "amuse_compiled", "muon_adamw")
LR, WEIGHT_DECAY = 1e-2, 0.05


def build_model(name: str, quick: bool) -> tuple[nn.Module, Callable[[int], tuple]]:
    """The model and ``batch(step) -> (inputs, targets)`` on the CPU (moved by the caller)."""
    if name == "gpt":
        from amuse_lightning.examples.char_gpt import build_char_gpt

        width, depth, heads, context, batch = (64, 2, 2, 64, 8) if quick else (384, 6, 6, 256, 64)
        model = build_char_gpt(width=width, depth=depth, heads=heads, context=context)

        def gpt_batch(step: int) -> tuple:
            gen = torch.Generator().manual_seed(step)
            ids = torch.randint(0, 256, (batch, context + 1), generator=gen)
            return ids[:, :-1], ids[:, 1:]

        return model, gpt_batch
    from amuse_lightning.examples.models import resnet18_cifar

    width, batch = (8, 16) if quick else (64, 256)
    model = resnet18_cifar(width=width)

    def image_batch(step: int) -> tuple:
        gen = torch.Generator().manual_seed(step)
        return torch.randn(batch, 3, 32, 32, generator=gen), torch.randint(0, 10, (batch,))

    return model, image_batch


def loss_of(name: str, model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor):
    logits = model(inputs)
    return nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))


def make_handle(method: str, model: nn.Module, device: str, steps: int) -> OptimizerHandle:
    groups = partition_parameters(model).param_groups(weight_decay=WEIGHT_DECAY)
    settings = {}
    if method == "amuse_compiled":
        settings["compile"] = "reduce-overhead" if device == "cuda" else True
    name = "muon_cosine" if method == "muon_adamw" else "amuse"
    return build_optimizer(
        name, model, groups, lr=LR, weight_decay=WEIGHT_DECAY, warmup_steps=max(1, steps // 20),
        total_steps=steps, settings=settings,
    )  # fmt: skip


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


class Trained:
    """One method's model, optimizer and timings."""

    def __init__(self, model_name: str, method: str, quick: bool, device: str, steps: int):
        torch.manual_seed(0)
        self.model_name, self.device = model_name, device
        model, self.batch = build_model(model_name, quick)
        self.model = model.to(device)
        self.handle = make_handle(method, self.model, device, steps)
        self.step_s: list[float] = []
        self.optimizer_s: list[float] = []
        self.first_step_s = 0.0
        self.losses: list[float] = []

    def train_step(self, step: int, timed: bool) -> None:
        inputs, targets = (t.to(self.device) for t in self.batch(step))
        cuda = self.device == "cuda"
        autocast = torch.autocast("cuda", torch.bfloat16) if cuda else contextlib.nullcontext()
        events = [torch.cuda.Event(enable_timing=True) for _ in range(2)] if cuda else []
        sync(self.device)
        start = time.perf_counter()
        self.handle.zero_grad()
        with autocast:
            loss = loss_of(self.model_name, self.model, inputs, targets)
        loss.backward()
        if cuda:
            events[0].record()
        host = time.perf_counter()
        self.handle.step()
        if cuda:
            events[1].record()
        host_optimizer = time.perf_counter() - host
        sync(self.device)
        wall = time.perf_counter() - start
        if not timed:
            self.first_step_s = max(self.first_step_s, wall)
            return
        self.step_s.append(wall)
        self.optimizer_s.append(events[0].elapsed_time(events[1]) / 1e3 if cuda else host_optimizer)
        self.losses.append(loss.detach().float().item())

    def summary(self) -> dict:
        return {
            "step_ms": 1e3 * statistics.median(self.step_s),
            "step_min_ms": 1e3 * min(self.step_s),
            "optimizer_ms": 1e3 * statistics.median(self.optimizer_s),
            "first_step_s": self.first_step_s,
            "parameters": sum(p.numel() for p in self.model.parameters()),
            "last_loss": self.losses[-1],
            "peak_memory_mib": (
                torch.cuda.max_memory_allocated() / 2**20 if self.device == "cuda" else None
            ),
        }


def run_model(model_name: str, args: argparse.Namespace) -> dict:
    total = args.warmup + args.rounds
    runs = {m: Trained(model_name, m, args.quick, args.device, total) for m in args.methods}
    for step in range(args.warmup):
        for run in runs.values():
            run.train_step(step, timed=False)
    order = list(runs)
    for r in range(args.rounds):
        for name in order if r % 2 == 0 else order[::-1]:
            runs[name].train_step(args.warmup + r, timed=True)
    rows = {name: run.summary() for name, run in runs.items()}
    anchor = rows.get("muon_adamw")
    for row in rows.values():
        if anchor:
            row["ratio_to_muon_adamw"] = row["step_ms"] / anchor["step_ms"]
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda if present)")
    parser.add_argument("--quick", action="store_true", help="small models, a CPU smoke run")
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps (compilation)")
    parser.add_argument("--rounds", type=int, default=None, help="timed steps per method")
    parser.add_argument("--output", type=Path, default=None)
    args = parser.parse_args()
    args.device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    args.warmup = args.warmup if args.warmup is not None else 3 if args.quick else 5
    args.rounds = args.rounds if args.rounds is not None else 5 if args.quick else 20
    started = time.time()
    out: dict = {"meta": machine_info(args.device), "quick": args.quick, "models": {}}
    out["method"] = (
        f"each method trains its own copy of the model on the same batches, methods alternating, "
        f"{args.warmup} warm-up steps, median of {args.rounds} timed steps; bf16 autocast on CUDA"
    )
    for model_name in args.models:
        try:
            out["models"][model_name] = run_model(model_name, args)
        except Exception as err:  # a failing model is recorded, the other still runs
            out.setdefault("failed", {})[model_name] = f"{type(err).__name__}: {err}"
        for name, row in out["models"].get(model_name, {}).items():
            print(f"[{model_name}] {name:15s} step {row['step_ms']:8.2f} ms  optimizer "
                  f"{row['optimizer_ms']:7.2f} ms  first step {row['first_step_s']:6.1f} s  "
                  f"x{row.get('ratio_to_muon_adamw', float('nan')):.3f}", flush=True)  # fmt: skip
    out["meta"]["wall_seconds"] = time.time() - started
    output = args.output or Path(__file__).resolve().parent / "results" / (
        f"train_step_{args.device}{'_quick' if args.quick else ''}.json"
    )
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(out, indent=2))
    print(f"wrote {output}")
    if out.get("failed"):
        sys.exit(1)


if __name__ == "__main__":
    main()
