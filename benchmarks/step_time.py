"""Optimizer step time and memory against torch.optim.Muon, one pair per fresh process.

Each optimizer is measured against ``torch.optim.Muon`` in a subprocess of its own that holds only
the two of them: the same matrices, the same learning rate, weight decay 0 on both (torch's Muon
defaults to 0.1, an extra pass the others would not make), Newton-Schulz in bf16 with 5 quintic
steps where the optimizer has one, steps interleaved (A B, B A, ...) and the median taken. A fresh
process per pair keeps one optimizer's allocations and threads from slowing the other's.

Matrix sets: the Muon matrices of a ViT-S/16 (12 blocks of qkv, proj, fc1, fc2) and the conv
kernels of torchvision's ResNet-18 except the stem, flattened to ``(out, in*kh*kw)`` so that every
optimizer takes them. The table states every optimizer's weight decay and the 1-minute load
average when its pair ran (the machine may be shared: compare ratios, not milliseconds).

    python benchmarks/step_time.py --quick                # smoke run, under a minute
    python benchmarks/step_time.py                        # all pairs (CPU: minutes per pair)
    python benchmarks/step_time.py --optimizers amuse amuse_foreach --device cuda
    python benchmarks/step_time.py --no-anchor --optimizers amuse   # each alone, against the limit

Next to the ratio to torch Muon, each row has its ratio to this machine's limit for the step
(:mod:`machine_limit`: the Newton-Schulz FLOPs at the best bf16 or float32 product rate measured
in a fresh process of the same run, plus the unavoidable elementwise passes at the measured
memory bandwidth), so a pair that is level with torch Muon but far above what the machine can do
shows it.

Writes benchmarks/results/step_time.json (``--quick``: step_time_quick.json; ``--no-anchor``:
step_time_alone.json) and a PNG of the ratios beside it.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine_info
from machine_limit import measure
from step_pair import OPTIMIZERS, WEIGHT_DECAY, model_shapes, run_pair

RESULTS = Path(__file__).resolve().parent / "results"
MODELS = ("vit_s16", "resnet18")
HOST_OVERHEAD = "host_overhead"
"""The ViT-S/16 matrix pattern at width 4 (not run by default): every op is tiny, so a step costs
what the host spends per op, the cost that sets a launch-bound GPU step (compare CPU times)."""


def pair_in_subprocess(
    name: str, model: str, rounds: int, device: str, quick: bool, timeout: float,
    anchor: bool = True,
) -> dict:  # fmt: skip
    """Run one pair (``name="limits"``: the machine-limit measurement; ``anchor=False``: the
    optimizer alone) in a fresh interpreter; its last stdout line is the JSON result."""
    cmd = [sys.executable, __file__, "--pair", name, "--model", model, "--rounds", str(rounds),
           "--device", device] + (["--quick"] if quick else []) + (
           [] if anchor else ["--no-anchor"])  # fmt: skip
    root = str(Path(__file__).resolve().parents[1])
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")])),
    }
    try:
        done = subprocess.run(
            cmd, capture_output=True, text=True, timeout=timeout, check=True, env=env
        )
    except subprocess.CalledProcessError as err:
        return {"error": err.stderr.strip().splitlines()[-1] if err.stderr else str(err)}
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    return json.loads(done.stdout.strip().splitlines()[-1])


def load_average() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


def run(args: argparse.Namespace) -> dict:
    rounds = args.rounds or (3 if args.quick else 7)
    out: dict = {
        "meta": machine_info(args.device),
        "quick": args.quick,
        "method": (
            "pairwise: each optimizer against torch.optim.Muon alone in a fresh process, "
            f"same matrices, lr 0.02, weight decay as listed, {rounds} interleaved rounds, median"
            if args.anchor
            else f"each optimizer alone in a fresh process (no torch.optim.Muon anchor), same "
            f"matrices, lr 0.02, weight decay as listed, {rounds} rounds, median"
        ),
        "models": {},
    }
    for model in args.models:
        rows: dict = {}
        limit = pair_in_subprocess("limits", model, rounds, args.device, args.quick, args.timeout)
        if "error" not in limit:
            out.setdefault("limits", {})[model] = limit
            print(f"[{model}] {limit_line(limit)}", flush=True)
        for name in args.optimizers:
            load_before = load_average()
            result = pair_in_subprocess(
                name, model, rounds, args.device, args.quick, args.timeout, args.anchor
            )
            result["load_average_1m"] = [load_before, load_average()]
            rows[name] = result
            if "error" in result:
                print(f"[{model}] {name:22s} failed: {result['error']}", flush=True)
                continue
            if args.anchor and "torch_muon" not in rows:
                rows["torch_muon"] = result["anchor"]
            if "error" not in limit:
                add_limit_ratios(result, name, limit)
                if args.anchor:
                    add_limit_ratios(rows["torch_muon"], "torch_muon", limit)
            print(
                f"[{model}] {name:22s} {result['median_ms']:9.1f} ms  "
                + anchor_text(result)
                + f"wd {result['weight_decay']}  "
                f"state {result['state_bytes'] / 2**20:6.1f} MiB  "
                f"peak {result['step_peak_bytes'] / 2**20:6.1f} MiB  "
                + ratio_text(result)
                + f"load {result['load_average_1m']}",
                flush=True,
            )
        out["models"][model] = {k: v for k, v in rows.items() if "error" not in v}
        failed = {k: v["error"] for k, v in rows.items() if "error" in v}
        if failed:
            out.setdefault("failed", {})[model] = failed
    return out


def add_limit_ratios(row: dict, name: str, limit: dict) -> None:
    """``ratio_to_limit`` (against the machine's limit) and ``ratio_to_limit_of_dtype`` (the
    limit at the rate of the dtype the step ran Newton-Schulz in) of an AMUSE or torch Muon row."""
    family = "torch_muon" if name == "torch_muon" else "amuse" if name.startswith("amuse") else None
    if family is None:
        return
    row["ratio_to_limit"] = row["median_ms"] / limit["limit_ms"][family]
    dtype = row.get("ns_dtype")
    if dtype in limit["limit_by_dtype_ms"][family]:
        row["ratio_to_limit_of_dtype"] = (
            row["median_ms"] / limit["limit_by_dtype_ms"][family][dtype]
        )


def limit_line(limit: dict) -> str:
    rates = ", ".join(f"{k} {v:.0f}" for k, v in limit["matmul_gflops"].items())
    ms = limit["limit_ms"]
    return (
        f"limit: {limit['ns_gflop']:.1f} GFLOP of Newton-Schulz at best {rates} GFLOP/s, "
        f"{limit['bandwidth_gbs']:.1f} GB/s: AMUSE {ms['amuse']:.1f} ms, torch Muon "
        f"{ms['torch_muon']:.1f} ms"
    )


def anchor_text(row: dict) -> str:
    if "anchor" not in row:
        return ""
    return (
        f"torch Muon {row['anchor']['median_ms']:9.1f} ms  x{row['ratio_to_torch_muon']:.3f} "
        f"(CPU time x{row['cpu_ratio_to_torch_muon']:.3f})  "
    )


def ratio_text(row: dict) -> str:
    if "ratio_to_limit" not in row:
        return ""
    return f"x{row['ratio_to_limit']:.2f} of the limit ({row.get('ns_dtype')})  "


def plot_ratios(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.5))
    models = list(result["models"])
    names = [n for n in OPTIMIZERS if any(n in result["models"][m] for m in models)]
    width = 0.8 / max(1, len(models))
    for k, model in enumerate(models):
        rows = result["models"][model]
        ratios = [rows[n].get("ratio_to_torch_muon", 0.0) if n in rows else 0.0 for n in names]
        ax.bar([i + k * width for i in range(len(names))], ratios, width, label=model)
    ax.axhline(1.0, color="k", lw=0.8)
    ax.set_xticks([i + width * (len(models) - 1) / 2 for i in range(len(names))], names,
                  rotation=20, fontsize=8)  # fmt: skip
    ax.set_ylabel("step time / torch.optim.Muon")
    ax.set_title(f"Pairwise step time ({result['meta']['device']}, median)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke run, under a minute")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda if present)")
    parser.add_argument("--optimizers", nargs="+", default=None, choices=OPTIMIZERS,
                        help="default: all (--quick: amuse and amuse_foreach)")  # fmt: skip
    parser.add_argument(
        "--models", nargs="+", default=list(MODELS), choices=(*MODELS, HOST_OVERHEAD)
    )
    parser.add_argument("--rounds", type=int, default=None, help="interleaved rounds per pair")
    parser.add_argument("--no-anchor", dest="anchor", action="store_false",
                        help="time each optimizer alone (no torch.optim.Muon): where the "
                        "anchor's bf16 Newton-Schulz is emulated, a full-size anchor step takes "
                        "minutes; the ratio to the machine's limit remains")  # fmt: skip
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds per pair")
    parser.add_argument("--output", type=Path, default=None,
                        help="default results/step_time.json (--no-anchor: "
                        "step_time_alone.json)")  # fmt: skip
    parser.add_argument("--pair", default=None, help=argparse.SUPPRESS)  # worker mode
    parser.add_argument("--model", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.device is None:
        import torch

        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.optimizers is None:
        args.optimizers = ["amuse", "amuse_foreach"] if args.quick else list(OPTIMIZERS)
    if args.pair == "limits":
        print(json.dumps(measure(model_shapes(args.model, args.quick), args.device)))
        return
    if args.pair is not None:
        print(json.dumps(
            run_pair(args.pair, args.model, args.rounds, args.device, args.quick, args.anchor)
        ))  # fmt: skip
        return
    if args.output is None:
        stem = "step_time" if args.anchor else "step_time_alone"  # the pair tables need anchors
        args.output = RESULTS / (f"{stem}_quick.json" if args.quick else f"{stem}.json")
    start = time.time()
    result = run(args)
    result["meta"]["wall_seconds"] = time.time() - start
    result["weight_decay"] = {n: WEIGHT_DECAY[n] for n in args.optimizers}
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2))
    if args.anchor and result["models"] and any(result["models"].values()):
        try:
            plot_ratios(result, args.output.with_name(args.output.stem + "_pairwise.png"))
        except ImportError as err:  # a bare GPU image may lack matplotlib: the JSON is the result
            print(f"no plot ({err})")
    print(f"wrote {args.output} in {result['meta']['wall_seconds']:.0f} s")


if __name__ == "__main__":
    main()
