"""The fast AMUSE against the slow float64 oracle in both recovery modes."""

from __future__ import annotations

import pytest
import torch

from amuse_lightning import AMUSE
from tests.reference_amuse import ReferenceAMUSE

SHAPES = [(6, 5), (3, 6), (4, 2, 3, 3), (6,), (5, 4)]  # tall, wide, conv, bias, "embedding"
IS_MUON = [True, True, True, False, False]

BASE = dict(
    lr=0.05, beta1=0.7, rho=0.8, warmup_steps=5, r=0.0, weight_lr_power=2.0, momentum=0.9,
    nesterov=True, weight_decay=0.0, weight_decay_at_y=0.0, beta2=0.99, eps=1e-8, ns_steps=5,
    aux_update_type="adamw", update_type="adamw", reference_compat=False,
)  # fmt: skip

VARIANTS = {
    "defaults": {},
    "sgd-scaling-and-fallback": dict(aux_update_type="sgd", update_type="sgd"),
    "weight-decay": dict(weight_decay=0.3),
    "weight-decay-at-y": dict(weight_decay_at_y=0.2),
    "r-and-uniform-lr-weights": dict(r=1.0, weight_lr_power=0.0),
    "sfmuon-rho0": dict(rho=0.0),
    "no-nesterov": dict(nesterov=False),
    "warmup-one-step": dict(warmup_steps=2, rho=0.5),
}


def make_problem(seed: int) -> tuple[list[torch.Tensor], list[torch.Tensor], list[torch.Tensor]]:
    gen = torch.Generator().manual_seed(seed)
    params = [torch.randn(s, generator=gen, dtype=torch.float64) for s in SHAPES]
    scales = [torch.randn(s, generator=gen, dtype=torch.float64) for s in SHAPES]
    targets = [torch.randn(s, generator=gen, dtype=torch.float64) * 0.5 for s in SHAPES]
    return params, scales, targets


def gradients(points, scales, targets, skip: set[int] = frozenset()):
    """Gradients of sum ||tanh(p * s) - t||^2 taken at ``points``."""
    grads = []
    for i, (p, s, t) in enumerate(zip(points, scales, targets, strict=True)):
        if i in skip:
            grads.append(None)
            continue
        q = p.detach().clone().requires_grad_(True)
        ((torch.tanh(q * s) - t) ** 2).sum().backward()
        grads.append(q.grad)
    return grads


def run_both(cfg: dict, steps: int = 24, skip_schedule=lambda step: set()):
    init, scales, targets = make_problem(0)
    params = [torch.nn.Parameter(p.clone()) for p in init]
    groups = [{"params": [p], "use_muon": m} for p, m in zip(params, IS_MUON, strict=True)]
    opt = AMUSE(groups, ns_dtype=torch.float64, **cfg)
    ref = ReferenceAMUSE(init, IS_MUON, **cfg)
    for step in range(steps):
        skip = skip_schedule(step)
        for p, g in zip(params, gradients(params, scales, targets, skip), strict=True):
            p.grad = g
        opt.step()
        ref.step(gradients(ref.y, scales, targets, skip))
    return opt, params, ref


def assert_close(actual: torch.Tensor, expected: torch.Tensor, rtol: float = 1e-10) -> None:
    scale = expected.abs().max().clamp_min(1e-12)
    err = (actual.double() - expected).abs().max() / scale
    assert err < rtol, f"relative error {err:.3e} > {rtol}"


@pytest.mark.parametrize("compat", [False, True], ids=["exact", "reference-compat"])
@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_fast_matches_float64_reference(variant: str, compat: bool) -> None:
    cfg = {**BASE, **VARIANTS[variant], "reference_compat": compat}
    opt, params, ref = run_both(cfg)
    for i, p in enumerate(params):
        assert_close(p.detach(), ref.y[i])
        assert_close(opt.state[p]["z"], ref.z[i])
    group = opt.param_groups[0]
    assert group["beta_t"] == pytest.approx(ref.beta_t, rel=1e-14)
    assert group["c_t"] == pytest.approx(ref.c_t, rel=1e-14)
    assert group["lr_t"] == pytest.approx(ref.lr_t, rel=1e-14)
    opt.eval()
    if not compat:  # the reference keeps x explicitly only in exact mode
        for i, p in enumerate(params):
            assert_close(p.detach(), ref.x[i], rtol=1e-9)


def test_compat_mode_differs_from_exact_after_warmup() -> None:
    _, exact_params, _ = run_both({**BASE})
    _, compat_params, _ = run_both({**BASE, "reference_compat": True})
    diff = max((a - b).abs().max().item() for a, b in zip(exact_params, compat_params, strict=True))
    assert diff > 1e-6, "reference_compat should pull x toward z after warmup"


def test_parameters_that_skip_steps_keep_exact_x() -> None:
    """A parameter without a gradient keeps its y, z and the beta that built y."""

    def skip(step: int) -> set[int]:
        return {0, 3} if step % 3 == 1 else set()

    opt, params, ref = run_both({**BASE}, skip_schedule=skip)
    opt.eval()
    for i, p in enumerate(params):
        assert_close(p.detach(), ref.x[i], rtol=1e-9)
