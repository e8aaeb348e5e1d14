"""Single steps of ``torch.optim.Muon`` (the speed anchor) on a full matrix set, timed alone.

Where bf16 is emulated the pair protocol of ``step_time.py`` cannot afford the anchor on the full
sets (every pair takes it ten times); this times a few of its steps so that the README can say
what one costs there.

    python benchmarks/anchor_step.py --model vit_s16 --steps 2

Writes benchmarks/results/anchor_step_<model>.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine_info
from step_pair import make_params, model_shapes, torch_muon

RESULTS = Path(__file__).resolve().parent / "results"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="vit_s16", choices=("vit_s16", "resnet18"))
    parser.add_argument("--steps", type=int, default=2)
    args = parser.parse_args()
    opt = torch_muon(make_params(model_shapes(args.model, False), "cpu"))
    seconds = []
    for step in range(args.steps):
        start = time.perf_counter()
        opt.step()
        seconds.append(time.perf_counter() - start)
        print(f"torch.optim.Muon step {step + 1}, {args.model}: {seconds[-1]:.1f} s", flush=True)
    out = {"meta": machine_info("cpu"), "model": args.model, "step_seconds": seconds,
           "ns_dtype": "bfloat16"}  # fmt: skip
    path = RESULTS / f"anchor_step_{args.model}.json"
    path.write_text(json.dumps(out, indent=2))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
