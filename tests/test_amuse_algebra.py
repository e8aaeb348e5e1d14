"""The sequences AMUSE keeps: the x/y/z algebra, the beta schedule, SFMuon's fixed beta, the
reference-compatibility decay, and the two update paths giving the same numbers."""

from __future__ import annotations

import itertools

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from amuse_lightning import AMUSE, SFMuon
from tests.helpers.tiny import groups_of, params_of, tiny_model, train_steps


@settings(max_examples=25, deadline=None)
@given(
    beta1=st.floats(0.3, 1.0),
    rho=st.floats(0.0, 1.0),
    warmup=st.integers(1, 4),
    steps=st.integers(1, 8),
    compat=st.booleans(),
)
def test_xyz_algebra_holds(beta1: float, rho: float, warmup: int, steps: int, compat: bool) -> None:
    """y = beta x + (1 - beta) z with the stored beta; eval/train round trip returns y."""
    torch.manual_seed(steps)
    w = nn.Parameter(torch.randn(5, 7, dtype=torch.float64))
    opt = AMUSE(
        [{"params": [w], "use_muon": True}], lr=0.1, beta1=beta1, rho=rho, warmup_steps=warmup,
        ns_dtype=torch.float64, reference_compat=compat,
    )  # fmt: skip
    for _ in range(steps):
        w.grad = torch.randn_like(w)
        opt.step()
    y = w.detach().clone()
    z = opt.state[w]["z"]
    beta = opt.state[w]["beta"]
    assert beta == opt.param_groups[0]["beta_t"]
    assert 0.0 < beta <= 1.0
    opt.eval()
    x = w.detach().clone()
    torch.testing.assert_close(y, beta * x + (1 - beta) * z, rtol=1e-12, atol=1e-12)
    opt.train()
    torch.testing.assert_close(w.detach(), y, rtol=1e-12, atol=1e-12)


def test_beta_rises_monotonically_to_one_after_warmup() -> None:
    w = nn.Parameter(torch.randn(4, 4))
    opt = AMUSE([{"params": [w], "use_muon": True}], beta1=0.6, rho=0.8, warmup_steps=5)
    betas = []
    for _ in range(200):
        w.grad = torch.randn_like(w)
        opt.step()
        betas.append(opt.param_groups[0]["beta_t"])
    assert betas[:5] == [0.6] * 5
    assert all(b2 >= b1 for b1, b2 in itertools.pairwise(betas))
    assert 0.95 < betas[-1] < 1.0


def test_sfmuon_keeps_beta_fixed() -> None:
    model = tiny_model()
    opt = SFMuon(groups_of(model), lr=0.05, beta=0.9, warmup_steps=2)
    train_steps(model, opt, 0, 6)
    assert all(g["beta_t"] == 0.9 for g in opt.param_groups)
    with pytest.raises(TypeError, match="rho=0"):
        SFMuon(groups_of(model), rho=0.5)


def test_reference_compat_decays_at_y_with_the_new_beta() -> None:
    """Compat mode follows the public code: the decay at y uses the step's new beta_t, the same
    one that then recovers x; the exact mode uses the beta that built y (x stays fixed)."""
    p0 = torch.randn(4, 3, dtype=torch.float64)
    g = torch.randn(4, 3, dtype=torch.float64)
    cfg = dict(lr=0.1, warmup_steps=2, rho=0.9, weight_decay_at_y=0.5, update_type="sgd",
               ns_dtype="float64")  # fmt: skip
    out = {}
    for compat in (False, True):
        p = nn.Parameter(p0.clone())
        opt = AMUSE([{"params": [p], "use_muon": False}], reference_compat=compat, **cfg)
        for _ in range(3):  # beta rises after warmup: beta_3 != beta_2
            p.grad = g.clone()
            opt.step()
        state, group = opt.state[p], opt.param_groups[0]
        beta_old, beta_new = state["beta"], None
        y, z = p.detach().clone(), state["z"].clone()
        p.grad = g.clone()
        opt.step()
        beta_new, lr_t, c_t = group["beta_t"], group["lr_t"], group["c_t"]
        assert beta_new != beta_old
        beta = beta_new if compat else beta_old
        e = lr_t * 0.5
        z_d, y_d = z - e * y, y * (1 - e * (1 - beta))
        x = y_d + (1 - 1 / beta) * (z_d - y_d)
        z_new = z_d - lr_t * g
        x_new = x + c_t * (z_new - x)
        expected = x_new + (1 - beta_new) * (z_new - x_new)
        torch.testing.assert_close(p.detach(), expected, rtol=1e-12, atol=1e-12)
        out[compat] = p.detach().clone()
    assert not torch.allclose(out[False], out[True], rtol=1e-9, atol=1e-12)


# The two paths compose the float32 updates differently (foreach kernels over the group against
# one tensor at a time; in float32 Newton-Schulz also bmm over stacks against mm), and four steps
# of training a small network amplify those few ulps: up to 6.3e-6 relative (2.9e-7 absolute) on
# an AVX2-only CPU, with Newton-Schulz in float64 or float32. An error in either path's algebra
# moves the weights by 1e-3 or more.
PATH_TOLERANCE = dict(rtol=3e-5, atol=1e-6)


@pytest.mark.parametrize("ns_dtype", ["float32", "float64"])
@pytest.mark.parametrize("direction", ["muon", "adamuon", "spectral"])
def test_foreach_and_per_parameter_paths_agree(direction: str, ns_dtype: str) -> None:
    results = []
    for foreach in (True, False):
        model = tiny_model()
        opt = AMUSE(groups_of(model), lr=0.05, direction=direction, foreach=foreach,
                    weight_decay=0.1, weight_decay_at_y=0.01, warmup_steps=2,
                    ns_dtype=ns_dtype)  # fmt: skip
        train_steps(model, opt, 0, 4)
        opt.eval()
        results.append(params_of(model))
    for a, b in zip(*results, strict=True):
        torch.testing.assert_close(a, b, **PATH_TOLERANCE)
