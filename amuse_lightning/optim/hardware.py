"""What this machine's CPU runs natively: the facts behind two device-dependent defaults.

* ``ns_dtype="auto"`` (:func:`fastest_ns_dtype`): Newton-Schulz runs in bfloat16 where bf16
  matrix products are native (CUDA tensor cores; x86 CPUs with AVX512-BF16 or AMX, whose bf16
  products oneDNN runs in hardware) and in float32 elsewhere. On a CPU without them torch
  emulates bf16 products: on an AVX2-only x86 CPU a 384x1536 @ 1536x384 product took 505 ms in
  bf16 against 26 ms in float32 (and 160 ms against 2.4 ms here with oneDNN held to AVX2).
* Channels-last convolutions in the example ResNet (:func:`onednn_runs_avx512`): they are faster
  on CPU too, but torch 2.14.1's oneDNN AVX2 kernels corrupt memory in the backward pass of a
  channels-last convolution narrower than 8 channels (a segmentation fault, an abort or a hang).

oneDNN picks its kernels from the CPU's instruction sets, capped by ``ONEDNN_MAX_CPU_ISA`` (or
``DNNL_MAX_CPU_ISA``) when set; both are read here, so ``ONEDNN_MAX_CPU_ISA=AVX2`` on an
AVX-512 machine behaves as an AVX2-only CPU does. Where the instruction sets cannot be read
(not Linux, not x86), the bf16 question is answered by timing both products once.
"""

from __future__ import annotations

import functools
import os
import platform
import time

import torch

__all__ = ["cpu_flags", "fastest_ns_dtype", "native_bf16_matmul", "onednn_runs_avx512"]

AVX512_CORE_FLAGS = frozenset({"avx512f", "avx512bw", "avx512vl", "avx512dq"})
BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})


@functools.lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str] | None:
    """The CPU's instruction-set flags from ``/proc/cpuinfo`` (``None`` where not readable)."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as info:
            for line in info:
                if line.startswith(("flags", "Features")):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return None


def _onednn_cap() -> str | None:
    """The ISA oneDNN is held to (``ONEDNN_MAX_CPU_ISA`` / ``DNNL_MAX_CPU_ISA``), upper case."""
    cap = os.environ.get("ONEDNN_MAX_CPU_ISA") or os.environ.get("DNNL_MAX_CPU_ISA")
    return cap.strip().upper() if cap else None


def _cap_allows(prefixes: tuple[str, ...]) -> bool:
    cap = _onednn_cap()
    return cap is None or cap in ("ALL", "DEFAULT") or cap.startswith(prefixes)


def _x86() -> bool:
    return platform.machine().lower() in ("x86_64", "amd64", "i686", "i386")


def onednn_runs_avx512() -> bool:
    """Whether oneDNN runs AVX-512 (or newer) kernels on this CPU: x86 with AVX-512 F/BW/VL/DQ
    and no ``ONEDNN_MAX_CPU_ISA`` below ``AVX512_CORE``. ``False`` where unknown."""
    flags = cpu_flags()
    if not (_x86() and torch.backends.mkldnn.is_available()):
        return False
    if flags is None:  # not Linux: ATen's own dispatch level is the best available hint
        capable = torch.backends.cpu.get_cpu_capability().startswith("AVX512")
    else:
        capable = flags >= AVX512_CORE_FLAGS
    return capable and _cap_allows(("AVX512", "AVX10"))


@functools.lru_cache(maxsize=1)
def native_bf16_matmul() -> bool:
    """Whether this CPU multiplies bf16 matrices natively (faster than float32).

    x86 on Linux: AVX512-BF16 or AMX-BF16 in the CPU flags, oneDNN enabled and not held below
    ``AVX512_CORE_BF16``. Elsewhere: bf16 and float32 products of 256 x 512 matrices are timed
    (interleaved, best of 3) and bf16 must be the faster one; but not under a process group of
    several ranks, where a timing could differ between ranks (replicas would then run different
    dtypes): there float32, the same on every rank. Decided once per process.
    """
    if not torch.backends.mkldnn.is_available() or not torch.backends.mkldnn.enabled:
        return False
    flags = cpu_flags()
    if _x86() and flags is not None:
        bf16_cap = ("AVX512_CORE_BF16", "AVX512_CORE_FP16", "AVX512_CORE_AMX", "AVX10")
        return bool(BF16_FLAGS & flags) and _cap_allows(bf16_cap)
    if _several_ranks():
        return False
    return _bf16_faster_by_timing()


def _several_ranks() -> bool:
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _bf16_faster_by_timing() -> bool:
    a32, b32 = torch.randn(256, 512), torch.randn(512, 256)
    a16, b16 = a32.bfloat16(), b32.bfloat16()
    best = {torch.float32: float("inf"), torch.bfloat16: float("inf")}
    for _ in range(3):
        for a, b in ((a32, b32), (a16, b16)):
            start = time.perf_counter()
            torch.mm(a, b)
            best[a.dtype] = min(best[a.dtype], time.perf_counter() - start)
    return best[torch.bfloat16] < best[torch.float32]


def fastest_ns_dtype(device: torch.device | str) -> str | None:
    """The Newton-Schulz dtype ``ns_dtype="auto"`` stands for on ``device``: ``"bfloat16"`` on
    accelerators (CUDA, and any other non-CPU device) and on CPUs with native bf16 products,
    ``"float32"`` on other CPUs, ``None`` for the ``meta`` device (decided at the first step,
    once the parameters are real)."""
    kind = torch.device(device).type
    if kind == "meta":
        return None
    if kind == "cpu":
        return "bfloat16" if native_bf16_matmul() else "float32"
    return "bfloat16"
