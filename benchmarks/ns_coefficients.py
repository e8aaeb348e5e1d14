"""Newton-Schulz accuracy: Muon's quintic against Polar Express, error vs number of steps.

For each test matrix ``G`` (Gaussian, and ``U diag(s) V^T`` with singular values log-uniform in
``[1/kappa, 1]``), the SVD gives the polar factor ``P = U V^T``; after ``k`` steps of each
coefficient set the table lists ``max_i |s_i(X_k) - 1|`` (the worst singular value) and
``||X_k - P||_F / ||P||_F``. Runs in a few seconds on a CPU.

    python benchmarks/ns_coefficients.py          # writes results/ns_coefficients.json

``--quick`` runs one small matrix and writes ns_coefficients_quick.json.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine_info

from amuse_lightning.optim.polar import NS_COEFFICIENT_SETS, newton_schulz

RESULTS = Path(__file__).resolve().parent / "results"
STEPS = (3, 5, 6, 8, 10)


def test_matrix(rows: int, cols: int, kappa: float | None, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    if kappa is None:
        return torch.randn(rows, cols, generator=gen, dtype=torch.float64)
    k = min(rows, cols)
    U, _ = torch.linalg.qr(torch.randn(rows, k, generator=gen, dtype=torch.float64))
    V, _ = torch.linalg.qr(torch.randn(cols, k, generator=gen, dtype=torch.float64))
    s = torch.exp(-torch.rand(k, generator=gen, dtype=torch.float64) * math.log(kappa))
    return (U * s) @ V.T


def errors(G: torch.Tensor, steps: int, dtype: torch.dtype, name: str) -> dict:
    U, _, Vh = torch.linalg.svd(G, full_matrices=False)
    polar = U @ Vh
    X = newton_schulz(G, steps, dtype, coefficients=name).double()
    s = torch.linalg.svdvals(X)
    return {
        "max_abs_sv_minus_1": (s - 1).abs().max().item(),
        "rel_polar_error": ((X - polar).norm() / polar.norm()).item(),
    }


def run(quick: bool) -> dict:
    shape = (32, 64) if quick else (128, 512)
    cases = {"gaussian": None, "kappa_1e2": 1e2, "kappa_1e3": 1e3, "kappa_1e4": 1e4}
    if quick:
        cases = {"gaussian": None, "kappa_1e3": 1e3}
    out: dict = {"meta": machine_info("cpu"), "shape": list(shape), "results": []}
    for case, kappa in cases.items():
        G = test_matrix(*shape, kappa)
        for dtype in (torch.bfloat16, torch.float32):
            for steps in STEPS:
                row = {"matrix": case, "ns_dtype": str(dtype).removeprefix("torch."),
                       "steps": steps}  # fmt: skip
                for name in NS_COEFFICIENT_SETS:
                    row[name] = errors(G, steps, dtype, name)
                out["results"].append(row)
                print(
                    f"{case:10s} {row['ns_dtype']:8s} steps {steps:2d}  "
                    + "  ".join(
                        f"{n}: max|s-1| {row[n]['max_abs_sv_minus_1']:.3f} "
                        f"rel {row[n]['rel_polar_error']:.3f}"
                        for n in NS_COEFFICIENT_SETS
                    ),
                    flush=True,
                )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--output", type=Path, default=None)
    args = parser.parse_args()
    name = "ns_coefficients_quick.json" if args.quick else "ns_coefficients.json"
    output = args.output or RESULTS / name
    result = run(args.quick)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(result, indent=2))
    print(f"wrote {output}")


if __name__ == "__main__":
    main()
