"""One pair of ``step_time.py``: an optimizer and torch.optim.Muon, alone in this process.

``run_pair(name, model, rounds, device, quick)`` builds the two on identical copies of the same
matrices (parameters and fixed gradients), takes two warm-up steps of each, then ``rounds``
interleaved rounds (A B, then B A, ...) and returns the median step times (wall clock, and the
process's CPU time, which a busy shared machine disturbs far less), their ratios, the state and the
peak memory of one step beyond what was live before it.
"""

from __future__ import annotations

import contextlib
import os
import statistics
import sys
import time
from collections.abc import Callable

import torch

Shapes = list[tuple[int, ...]]
LR = 0.02

WEIGHT_DECAY = {
    "torch_muon": 0.0,
    "amuse": 0.0,
    "amuse_foreach": 0.0,
    "amuse_per_parameter": 0.0,
    "amuse_float32": 0.0,
    "amuse_bf16": 0.0,
    "amuse_polar_express": 0.0,
    "amuse_compiled": 0.0,
    "amuse_cudagraphs": 0.0,
    "amuse_per_param_loop": 0.0,
    "timm_muon": 0.0,
    "sf_adamw": 0.0,
    "adamw": 0.0,
}
"""Every optimizer's weight decay in the pairs (all 0, so no one makes an extra decay pass)."""


def _amuse(**kwargs) -> Callable:
    def make(ps):
        from amuse_lightning import AMUSE

        group = {"params": ps, "use_muon": True}
        return AMUSE([group], lr=LR, warmup_steps=10, weight_decay=0.0, **kwargs)

    return make


def _loop(ps):
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from loop_amuse import LoopAMUSE

    return LoopAMUSE(ps, lr=LR, warmup_steps=10)


def _timm(ps):
    import timm.optim

    return timm.optim.Muon(ps, lr=LR, weight_decay=0.0)


def _sf_adamw(ps):
    import schedulefree

    opt = schedulefree.AdamWScheduleFree(ps, lr=1e-3, warmup_steps=10, weight_decay=0.0)
    opt.train()
    return opt


OPTIMIZERS: dict[str, Callable] = {
    "amuse": _amuse(),
    "amuse_foreach": _amuse(foreach=True),
    "amuse_per_parameter": _amuse(foreach=False),
    "amuse_float32": _amuse(ns_dtype="float32"),  # the default path, Newton-Schulz in float32
    "amuse_bf16": _amuse(ns_dtype="bfloat16"),  # ... and in bfloat16, whatever the machine
    "amuse_polar_express": _amuse(ns_coefficients="polar_express"),
    "amuse_compiled": _amuse(compile=True),  # torch.compile of each same-shape stack's step
    "amuse_cudagraphs": _amuse(compile="reduce-overhead"),  # the same, replayed as CUDA graphs
    "amuse_per_param_loop": _loop,
    "timm_muon": _timm,
    "sf_adamw": _sf_adamw,
    "adamw": lambda ps: torch.optim.AdamW(ps, lr=1e-3, weight_decay=0.0, foreach=True),
}


def torch_muon(ps):
    return torch.optim.Muon(ps, lr=LR, weight_decay=0.0)  # bf16, 5 quintic steps, Nesterov


def vit_shapes(width: int, depth: int) -> Shapes:
    """Muon matrices of ``depth`` ViT blocks: qkv, proj, fc1, fc2."""
    return [(3 * width, width), (width, width), (4 * width, width), (width, 4 * width)] * depth


def resnet18_shapes() -> Shapes:
    """Conv kernels of torchvision's ResNet-18 except the stem, flattened to (out, in*kh*kw)."""
    import torchvision

    convs = [m for m in torchvision.models.resnet18().modules() if isinstance(m, torch.nn.Conv2d)]
    return [(c.weight.shape[0], c.weight[0].numel()) for c in convs[1:]]


def model_shapes(model: str, quick: bool) -> Shapes:
    if model == "vit_s16":
        return vit_shapes(192, 1) if quick else vit_shapes(384, 12)
    if model == "host_overhead":  # ViT-S/16's 48 matrices at width 4: the per-op host cost
        return vit_shapes(4, 12)
    shapes = resnet18_shapes()
    return shapes[:6] if quick else shapes


def make_params(shapes: Shapes, device: str) -> list[torch.nn.Parameter]:
    gen = torch.Generator().manual_seed(0)
    params = []
    for shape in shapes:
        p = torch.nn.Parameter(torch.randn(shape, generator=gen).mul_(0.02).to(device))
        p.grad = torch.randn(shape, generator=gen).to(device)
        params.append(p)
    return params


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def state_bytes(opt: torch.optim.Optimizer) -> int:
    return sum(
        v.numel() * v.element_size()
        for s in opt.state.values()
        for v in s.values()
        if torch.is_tensor(v) and v.numel() > 1
    )


@contextlib.contextmanager
def quiet_stderr():
    """Silence the profiler's native start/stop lines (written to fd 2 by C++)."""
    sys.stderr.flush()
    saved = os.dup(2)
    with open(os.devnull, "w") as devnull:
        os.dup2(devnull.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def step_peak_bytes(opt: torch.optim.Optimizer, device: str) -> int:
    """Peak of memory allocated during one step beyond what was live before it."""
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        opt.step()
        sync(device)
        return torch.cuda.max_memory_allocated() - before
    from torch.profiler import ProfilerActivity, profile

    with quiet_stderr(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        opt.step()
    level = peak = 0
    events = sorted(
        (e for e in prof.events() if e.cpu_memory_usage != 0 and not e.cpu_children),
        key=lambda e: e.time_range.start,
    )
    for event in events:
        level += event.cpu_memory_usage
        peak = max(peak, level)
    return peak


def ns_dtype_of(opt: torch.optim.Optimizer) -> str | None:
    """The Newton-Schulz dtype an optimizer ran (AMUSE: its resolved group setting; torch's and
    timm's Muon: bfloat16); ``None`` for optimizers without one."""
    group = opt.param_groups[0]
    if "ns_dtype" in group:
        return group["ns_dtype"]
    return "bfloat16" if "Muon" in type(opt).__name__ else None


def run_pair(
    name: str, model: str, rounds: int, device: str, quick: bool, anchor: bool = True
) -> dict:
    """The pair's rows; ``anchor=False`` times ``name`` alone (no torch Muon, no ratios)."""
    shapes = model_shapes(model, quick)
    opts = {name: OPTIMIZERS[name](make_params(shapes, device))}
    if anchor:
        opts["torch_muon"] = torch_muon(make_params(shapes, device))
    order = list(opts)
    first_step_s = {}
    for n, opt in opts.items():
        sync(device)
        start = time.perf_counter()
        opt.step()  # state allocation, lazy init, workspace growth, compilation
        sync(device)
        first_step_s[n] = time.perf_counter() - start
        for _ in range(2):  # CUDA graphs are recorded on a later call than the compilation
            opt.step()
    sync(device)
    times: dict[str, list[float]] = {n: [] for n in order}
    cpu_times: dict[str, list[float]] = {n: [] for n in order}
    for r in range(rounds):
        for n in order if r % 2 == 0 else order[::-1]:
            sync(device)
            start, cpu_start = time.perf_counter(), time.process_time()
            opts[n].step()
            sync(device)
            times[n].append(time.perf_counter() - start)
            cpu_times[n].append(time.process_time() - cpu_start)

    def row(n: str) -> dict:
        opt = opts[n]
        out = {
            "median_ms": 1e3 * statistics.median(times[n]),
            "min_ms": 1e3 * min(times[n]),
            "cpu_median_ms": 1e3 * statistics.median(cpu_times[n]),
            "state_bytes": state_bytes(opt),
            "step_peak_bytes": step_peak_bytes(opt, device),
            "weight_decay": WEIGHT_DECAY[n],
            "first_step_s": first_step_s[n],
        }
        if hasattr(opt, "workspace_bytes"):
            out["workspace_bytes"] = opt.workspace_bytes()
        out["ns_dtype"] = ns_dtype_of(opt)
        return out

    result = row(name)
    if anchor:
        muon = row("torch_muon")
        result["ratio_to_torch_muon"] = result["median_ms"] / muon["median_ms"]
        # process CPU time (all threads): far less sensitive than wall time to other processes
        # on a shared CPU; on an accelerator it only measures the host side
        result["cpu_ratio_to_torch_muon"] = result["cpu_median_ms"] / muon["cpu_median_ms"]
        result["anchor"] = {**muon, "ratio_to_torch_muon": 1.0}
    result["matrices"] = len(shapes)
    result["elements"] = sum(torch.Size(s).numel() for s in shapes)
    result["torch_threads"] = torch.get_num_threads()
    if name.startswith("amuse_c"):  # why torch.compile did not use CUDA graphs, if it did not
        from torch._dynamo.utils import counters

        result["cudagraph_skips"] = int(counters["inductor"]["cudagraph_skips"])
    return result
