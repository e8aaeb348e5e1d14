"""The machine's limit for one Muon-family optimizer step, measured on the machine itself.

A step cannot be faster than its Newton-Schulz matrix products at the best matrix-product rate
this machine reaches, plus the elementwise work it cannot avoid at the machine's memory
bandwidth:

* Newton-Schulz, per matrix of shape ``(m, n)`` with ``s = min(m, n)``, ``l = max(m, n)``, per
  iteration: ``A = X X^T`` (``2 s^2 l`` FLOPs), ``A A`` (``2 s^3``) and ``B X`` (``2 s^2 l``),
  so ``ns_steps (4 s^2 l + 2 s^3)`` FLOPs.
* Elementwise passes over float32 parameters: AMUSE reads the gradient and reads and writes the
  momentum, ``y`` (the parameter) and ``z``: 7 passes; torch's Muon has no ``z``: 5.
* Rates, measured in a fresh process of the same run (``--limits``): the best FLOP/s of
  bfloat16 and of float32 products over the step's own product shapes and a 2048-square one,
  and the bandwidth of a 256 MiB copy (bytes read plus written per second), best of several.
  float32 runs first and runs every product. bfloat16 then runs its products smallest first
  and, once its best rate is below a quarter of float32's, skips a product that would take over
  ``max_seconds`` at that rate: a dtype the CPU only emulates (bf16 at 1-3 GFLOP/s on an
  AVX2-only CPU, where one 2048-square product takes 20 s) then costs seconds, not minutes. A rate
  that far below the other cannot set the limit; the records say how many products each ran.

``limit = FLOPs / best rate (of the two dtypes) + bytes / bandwidth``; ``limit_by_dtype`` uses
one dtype's rate. A step's ``ratio_to_limit`` is its median time over ``limit``.
"""

from __future__ import annotations

import time

import torch

Shapes = list[tuple[int, ...]]
PASSES = {"amuse": 7, "torch_muon": 5}
"""Unavoidable float32 passes over the parameters per step (module docstring)."""


def matrix_dims(shape: tuple[int, ...]) -> tuple[int, int]:
    """``(s, l)`` of a parameter viewed as a matrix ``(shape[0], prod(shape[1:]))``."""
    rows, cols = shape[0], 1
    for d in shape[1:]:
        cols *= d
    return min(rows, cols), max(rows, cols)


def ns_flops(shapes: Shapes, steps: int = 5) -> float:
    total = 0.0
    for shape in shapes:
        s, l = matrix_dims(shape)
        total += steps * (4.0 * s * s * l + 2.0 * s**3)
    return total


def elementwise_bytes(shapes: Shapes, passes: int, element_size: int = 4) -> float:
    return float(passes * element_size * sum(torch.Size(s).numel() for s in shapes))


def _best_seconds(fn, reps: int, sync, max_seconds: float = float("inf")) -> float:
    """Best of ``reps`` timed calls after a warm-up call; fewer once ``max_seconds`` is spent."""
    fn()
    sync()
    best, spent = float("inf"), 0.0
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        sync()
        elapsed = time.perf_counter() - start
        best, spent = min(best, elapsed), spent + elapsed
        if spent > max_seconds:
            break
    return best


def matmul_rates(
    shapes: Shapes, device: str, reps: int = 5, max_seconds: float = 1.0
) -> tuple[dict[str, float], dict[str, int]]:
    """Best FLOP/s by dtype name over the step's product shapes and a 2048-square product, and
    how many products each dtype ran (module docstring: slow products are skipped)."""
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    products = {(2048, 2048, 2048)}
    for shape in shapes:
        s, l = matrix_dims(shape)
        products |= {(s, l, s), (s, s, s), (s, s, l)}  # X X^T, A A, B X
    rates, ran = {}, {}
    for dtype in (torch.float32, torch.bfloat16):
        best, count = 0.0, 0
        for m, k, n in sorted(products, key=lambda mkn: mkn[0] * mkn[1] * mkn[2]):
            flops = 2.0 * m * k * n
            far_slower = 0 < best < 0.25 * max(rates.values(), default=0.0)
            if far_slower and flops / best > max_seconds:
                continue
            a = torch.randn(m, k, device=device, dtype=dtype)
            b = torch.randn(k, n, device=device, dtype=dtype)
            seconds = _best_seconds(lambda a=a, b=b: torch.mm(a, b), reps, sync, max_seconds)
            best, count = max(best, flops / seconds), count + 1
        name = str(dtype).removeprefix("torch.")
        rates[name], ran[name] = best, count
    return rates, ran


def memory_bandwidth(device: str, reps: int = 5, mib: int = 256) -> float:
    """Bytes read plus written per second by a ``mib`` MiB float32 copy (best of ``reps``)."""
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    n = mib * 2**20 // 4
    src = torch.randn(n, device=device)
    dst = torch.empty_like(src)
    seconds = _best_seconds(lambda: dst.copy_(src), reps, sync)
    return 2.0 * 4 * n / seconds


def measure(shapes: Shapes, device: str, ns_steps: int = 5) -> dict:
    """What ``step_time.py --limits`` records for one matrix set."""
    rates, ran = matmul_rates(shapes, device)
    bandwidth = memory_bandwidth(device)
    flops = ns_flops(shapes, ns_steps)
    out = {
        "ns_gflop": flops / 1e9,
        "matmul_gflops": {k: v / 1e9 for k, v in rates.items()},
        "matmul_products_run": ran,
        "bandwidth_gbs": bandwidth / 1e9,
        "torch_threads": torch.get_num_threads(),
        "limit_ms": {},
        "limit_by_dtype_ms": {},
    }
    for name, passes in PASSES.items():
        memory_s = elementwise_bytes(shapes, passes) / bandwidth
        out["limit_ms"][name] = 1e3 * (flops / max(rates.values()) + memory_s)
        out["limit_by_dtype_ms"][name] = {
            dtype: 1e3 * (flops / rate + memory_s) for dtype, rate in rates.items()
        }
    return out
