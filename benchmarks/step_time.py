"""Optimizer step time, state memory, step peak memory and swap cost of AMUSE against the anchors.

Anchors, measured interleaved in the same run on the same matrices: torch.optim.Muon, timm's Muon,
schedulefree's AdamWScheduleFree, torch.optim.AdamW (foreach) and a per-parameter-loop AMUSE (the
public reference code's structure). Matrix sets: the Muon matrices of a ViT-S/16 and of a
torchvision ResNet-18 (conv kernels flattened to 2-D so every optimizer takes them), plus a
width sweep of ViT blocks (widths 192 to 1024).

    python benchmarks/step_time.py --quick     # smoke run, under a minute
    python benchmarks/step_time.py             # full run (about 15 minutes on 2 CPU cores)

Writes benchmarks/results/step_time.json and step_time_width.png.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine_info
from loop_amuse import LoopAMUSE

from amuse_lightning import AMUSE

RESULTS = Path(__file__).resolve().parent / "results"
Shapes = list[tuple[int, ...]]


def vit_shapes(width: int, depth: int) -> Shapes:
    """Muon matrices of ``depth`` ViT blocks: qkv, proj, fc1, fc2."""
    return [(3 * width, width), (width, width), (4 * width, width), (width, 4 * width)] * depth


def resnet18_shapes() -> Shapes:
    """Conv kernels of torchvision's ResNet-18 except the stem, flattened to (out, in*kh*kw)."""
    import torchvision

    convs = [
        m.weight for m in torchvision.models.resnet18().modules() if isinstance(m, torch.nn.Conv2d)
    ]
    return [(w.shape[0], w[0].numel()) for w in convs[1:]]


def make_params(shapes: Shapes, device: torch.device) -> list[torch.nn.Parameter]:
    gen = torch.Generator().manual_seed(0)
    params = []
    for shape in shapes:
        p = torch.nn.Parameter(torch.randn(shape, generator=gen).mul_(0.02).to(device))
        p.grad = torch.randn(shape, generator=gen).to(device)
        params.append(p)
    return params


def anchors() -> dict[str, Callable[[list[torch.nn.Parameter]], torch.optim.Optimizer]]:
    import schedulefree
    import timm.optim

    def sf_adamw(ps):
        opt = schedulefree.AdamWScheduleFree(ps, lr=1e-3, warmup_steps=10)
        opt.train()
        return opt

    return {
        "amuse": lambda ps: AMUSE([{"params": ps, "use_muon": True}], lr=0.02, warmup_steps=10),
        "torch_muon": lambda ps: torch.optim.Muon(ps, lr=0.02),
        "timm_muon": lambda ps: timm.optim.Muon(ps, lr=0.02),
        "amuse_per_param_loop": lambda ps: LoopAMUSE(ps, lr=0.02, warmup_steps=10),
        "sf_adamw": sf_adamw,
        "adamw": lambda ps: torch.optim.AdamW(ps, lr=1e-3, foreach=True),
    }


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


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


def step_peak_bytes(opt: torch.optim.Optimizer, device: torch.device) -> int:
    """Peak of memory allocated during one step beyond what was live before it."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        opt.step()
        sync(device)
        return torch.cuda.max_memory_allocated(device) - before
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


def time_interleaved(
    shapes: Shapes, names: list[str], rounds: int, device: torch.device
) -> dict[str, dict]:
    """Median step time per optimizer; one step of each in turn, ``rounds`` times."""
    makers = anchors()
    opts = {name: makers[name](make_params(shapes, device)) for name in names}
    for opt in opts.values():  # warm-up: state allocation, lazy init
        for _ in range(2):
            opt.step()
    sync(device)
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        order = names[r % len(names) :] + names[: r % len(names)]
        for name in order:
            sync(device)
            start = time.perf_counter()
            opts[name].step()
            sync(device)
            times[name].append(time.perf_counter() - start)
    return {
        name: {
            "median_ms": 1e3 * statistics.median(times[name]),
            "min_ms": 1e3 * min(times[name]),
            "state_bytes": state_bytes(opts[name]),
            "step_peak_bytes": step_peak_bytes(opts[name], device),
        }
        for name in names
    }


def swap_cost(shapes: Shapes, rounds: int, device: torch.device) -> dict[str, float]:
    """The callback's exact swap (copy y, y -> x, copy y back) against one parameter copy."""
    params = make_params(shapes, device)
    opt = AMUSE([{"params": params, "use_muon": True}], lr=0.02, warmup_steps=10)
    opt.step()
    backup = [torch.empty_like(p) for p in params]

    def one_copy():
        torch._foreach_copy_(backup, [p.detach() for p in params])

    def exact_swap():
        torch._foreach_copy_(backup, [p.detach() for p in params])
        opt.eval()
        torch._foreach_copy_([p.detach() for p in params], backup)
        for group in opt.param_groups:
            group["train_mode"] = True

    def inplace_swap():
        opt.eval()
        opt.train()

    result = {}
    for name, fn in (("one_param_copy", one_copy), ("exact_swap", exact_swap),
                     ("inplace_swap", inplace_swap)):  # fmt: skip
        fn()
        samples = []
        for _ in range(rounds):
            sync(device)
            start = time.perf_counter()
            fn()
            sync(device)
            samples.append(time.perf_counter() - start)
        result[f"{name}_ms"] = 1e3 * statistics.median(samples)
    result["exact_swap_over_copy"] = result["exact_swap_ms"] / result["one_param_copy_ms"]
    result["inplace_swap_over_copy"] = result["inplace_swap_ms"] / result["one_param_copy_ms"]
    return result


def plot_widths(sweep: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for name in sweep[0]["results"]:
        widths = [row["width"] for row in sweep]
        ax.plot(widths, [row["results"][name]["median_ms"] for row in sweep], "o-", label=name)
    ax.set_xlabel(f"ViT width (depth {sweep[0]['depth']} blocks)")
    ax.set_ylabel("optimizer step time (ms, median)")
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title(f"Step time vs width ({sweep[0]['device']})")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def run(quick: bool, device: torch.device) -> dict:
    rounds = 3 if quick else 15
    depth = 1 if quick else 12
    all_names = list(anchors())
    models = {"vit_s16": vit_shapes(384, depth), "resnet18": resnet18_shapes()}
    if quick:
        models["resnet18"] = models["resnet18"][:6]
    out: dict = {"meta": machine_info(device), "quick": quick, "models": {}}
    for model, shapes in models.items():
        print(f"[{model}] {len(shapes)} matrices, {sum(torch.Size(s).numel() for s in shapes):,} "
              "elements", flush=True)  # fmt: skip
        res = time_interleaved(shapes, all_names, rounds, device)
        base = res["torch_muon"]["median_ms"]
        for name, row in res.items():
            row["ratio_to_torch_muon"] = row["median_ms"] / base
            print(f"  {name:22s} {row['median_ms']:9.2f} ms  x{row['ratio_to_torch_muon']:.3f}  "
                  f"state {row['state_bytes'] / 2**20:7.1f} MiB  "
                  f"peak {row['step_peak_bytes'] / 2**20:7.1f} MiB", flush=True)  # fmt: skip
        out["models"][model] = res
    widths = [192] if quick else [192, 384, 512, 768, 1024]
    sweep_depth = 1 if quick else 2
    out["width_sweep"] = []
    for width in widths:
        res = time_interleaved(
            vit_shapes(width, sweep_depth), ["amuse", "torch_muon", "adamw"], rounds, device
        )
        out["width_sweep"].append(
            {"width": width, "depth": sweep_depth, "device": device.type, "results": res}
        )
        print(f"[width {width}] " + "  ".join(
            f"{n} {r['median_ms']:.1f} ms" for n, r in res.items()), flush=True)  # fmt: skip
    out["swap"] = swap_cost(vit_shapes(384, depth), rounds, device)
    print("[swap] " + "  ".join(f"{k} {v:.3f}" for k, v in out["swap"].items()), flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke run, under a minute")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--output", type=Path, default=None, help="default results/step_time.json")
    args = parser.parse_args()
    if args.output is None:
        args.output = RESULTS / ("step_time_quick.json" if args.quick else "step_time.json")
    start = time.time()
    result = run(args.quick, torch.device(args.device))
    result["meta"]["wall_seconds"] = time.time() - start
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2))
    plot_widths(result["width_sweep"], args.output.with_name(args.output.stem + "_width.png"))
    print(f"wrote {args.output} in {result['meta']['wall_seconds']:.0f} s")


if __name__ == "__main__":
    main()
