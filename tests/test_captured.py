"""``AMUSE(compile=...)``: the batched Muon step captured by torch.compile, against the eager path
and the float64 oracle. Each test compiles two tiny stacks once (on a cold cache the two tests
take ~30 s on the 2-core CI machine, ~20 s of it torch.compile's first start; torch's on-disk
cache shortens reruns).

Tolerances, measured on CPU (torch 2.14, Inductor's C++ backend):

* float64 Newton-Schulz, 6 steps: compiled against the oracle 3.0e-16 relative (y; z 2.3e-16,
  x 3.9e-16), eager against the oracle 3.0e-16, compiled against eager 1.1e-16;
  ``FLOAT64_RTOL = 1e-12`` (the eager path's oracle tolerance in test_amuse_reference.py is
  1e-10).
* bfloat16 Newton-Schulz (float32 weights of size ~2.4, 4 steps): every bf16 implementation
  lands somewhere else in the quintic's band, so compiled and eager differ by up to 7.9e-4
  (1.4e-3 without averaging and Nesterov). What they share is the distance to the same run with
  float64 Newton-Schulz: eager 6.6e-4, compiled 8.1e-4 (without averaging and Nesterov: 1.15e-3
  and 7.8e-4). The test holds the compiled run to 1.5x the eager run's own distance, measured in
  the same test.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from amuse_lightning import AMUSE
from tests.reference_amuse import ReferenceAMUSE

FLOAT64_RTOL = 1e-12
BF16_SPREAD_FACTOR = 1.5

# a tall stack and a stack of conv kernels (wide as matrices), two each
SHAPES = [(10, 6), (4, 2, 3, 3), (10, 6), (4, 2, 3, 3)]
CFG = dict(lr=0.05, beta1=0.7, rho=0.8, warmup_steps=3, weight_decay=0.1, momentum=0.9)


def oracle_run(steps: int, compile: bool | str, device: str = "cpu", **overrides):
    """The optimizer (batched, compiled or eager) and the oracle on the same float64 problem."""
    gen = torch.Generator().manual_seed(0)
    init = [torch.randn(s, generator=gen, dtype=torch.float64) for s in SHAPES]
    params = [nn.Parameter(p.clone().to(device)) for p in init]
    cfg = {**CFG, **overrides}
    opt = AMUSE([{"params": params, "use_muon": True}], ns_dtype="float64", foreach=True,
                compile=compile, **cfg)  # fmt: skip
    ref = ReferenceAMUSE([{"params": init, "use_muon": True}], **cfg)
    for _ in range(steps):
        grads = [torch.randn(s, generator=gen, dtype=torch.float64) for s in SHAPES]
        for p, g in zip(params, grads, strict=True):
            p.grad = g.to(device)
        opt.step()
        ref.step(grads)
    return opt, params, ref


def worst(actual: list[torch.Tensor], expected: list[torch.Tensor]) -> float:
    return max(
        ((a.detach().cpu() - b.cpu()).abs().max() / b.abs().max()).item()
        for a, b in zip(actual, expected, strict=True)
    )


def test_compiled_float64_step_is_the_oracle_and_the_eager_path() -> None:
    opt, params, ref = oracle_run(6, compile=True)
    eager_opt, eager, _ = oracle_run(6, compile=False)
    with torch._dynamo.config.patch(error_on_recompile=True):  # every stack compiled once
        for step in (opt, eager_opt):
            for p in step.param_groups[0]["params"]:
                p.grad = torch.ones_like(p)
            step.step()
        ref.step([torch.ones_like(y) for y in ref.y])
    assert worst(params, ref.y) < FLOAT64_RTOL
    assert worst([opt.state[p]["z"] for p in params], ref.z) < FLOAT64_RTOL
    assert worst(params, [p.detach() for p in eager]) < FLOAT64_RTOL
    momenta = [opt.state[p]["momentum_buffer"] for p in params]
    assert worst(momenta, [eager_opt.state[p]["momentum_buffer"] for p in eager]) < FLOAT64_RTOL
    opt.eval()
    assert worst(params, ref.x) < FLOAT64_RTOL


def float32_run(
    ns_dtype: str, compile: bool | str, device: str = "cpu", **muon
) -> list[torch.Tensor]:
    """Four steps on float32 copies of the oracle problem's matrices, random gradients."""
    gen = torch.Generator().manual_seed(0)
    params = [nn.Parameter(torch.randn(s, generator=gen).to(device)) for s in SHAPES]
    opt = AMUSE([{"params": params, "use_muon": True, **muon}], ns_dtype=ns_dtype, foreach=True,
                compile=compile, **CFG)  # fmt: skip
    for _ in range(4):
        for p in params:
            p.grad = torch.randn(p.shape, generator=gen).to(device)
        opt.step()
    return [p.detach().cpu() for p in params]


def bf16_spreads(compile: bool | str, device: str = "cpu", **muon) -> tuple[float, float]:
    """How far eager and compiled bf16 Newton-Schulz runs land from the float64 one."""
    exact = float32_run("float64", False, device, **muon)
    eager = float32_run("bfloat16", False, device, **muon)
    compiled = float32_run("bfloat16", compile, device, **muon)
    eager_spread = max((a - b).abs().max().item() for a, b in zip(eager, exact, strict=True))
    compiled_spread = max((a - b).abs().max().item() for a, b in zip(compiled, exact, strict=True))
    return eager_spread, compiled_spread


def test_compiled_bf16_step_is_as_close_to_exact_newton_schulz_as_eager() -> None:
    """Without averaging and Nesterov (the other branches of the captured step)."""
    eager_spread, compiled_spread = bf16_spreads(True, averaging=False, nesterov=False)
    assert 0 < compiled_spread <= BF16_SPREAD_FACTOR * eager_spread


def test_compile_is_checked_up_front() -> None:
    w = nn.Parameter(torch.randn(4, 4))
    with pytest.raises(ValueError, match="compile must be True, False or one of"):
        AMUSE([{"params": [w], "use_muon": True}], compile="fast")
    with pytest.raises(ValueError, match="foreach=False selects the per-parameter path"):
        AMUSE([{"params": [w], "use_muon": True}], compile=True, foreach=False)
    opt = AMUSE([{"params": [w], "use_muon": True}], compile="reduce-overhead")
    assert opt.compile == "reduce-overhead" and "compile" not in opt.state_dict()["param_groups"][0]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("mode", ["default", "reduce-overhead"])
def test_cuda_compiled_step_is_the_oracle_and_stays_in_the_bf16_spread(mode: str) -> None:
    """On the GPU (Triton kernels; with ``reduce-overhead`` replayed as CUDA graphs) the same
    bounds as on CPU, over steps that replay the compiled graphs."""
    _, params, ref = oracle_run(6, compile=mode, device="cuda")
    assert worst(params, ref.y) < FLOAT64_RTOL
    eager_spread, compiled_spread = bf16_spreads(mode, "cuda")
    print(f"{mode}: bf16 spread eager {eager_spread:.3g}, compiled {compiled_spread:.3g}")
    assert 0 < compiled_spread <= BF16_SPREAD_FACTOR * eager_spread
