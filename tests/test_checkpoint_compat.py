"""A state_dict written by AMUSE 0.1.0 loads into the current code and the run continues.

The fixture ``tests/fixtures/amuse_0_1_0.pt`` was written by ``make_amuse_0_1_0.py`` with the
0.1.0 code: a Muon matrix, a Muon conv kernel, an AdaMuon matrix and two fallback biases, saved
after the warmup ended, plus the gradients of the next three steps and the parameters 0.1.0
produced after each of them.
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch

from tests.fixtures.make_amuse_0_1_0 import build

FIXTURE = Path(__file__).parent / "fixtures" / "amuse_0_1_0.pt"


def load_fixture() -> dict:
    return torch.load(FIXTURE, weights_only=True)


def resumed(fixture: dict):
    params = {n: torch.nn.Parameter(p.clone()) for n, p in fixture["params"].items()}
    opt = build(params)
    opt.load_state_dict(copy.deepcopy(fixture["optimizer"]))  # loading shares the tensors
    return params, opt


def test_fixture_state_layout_is_the_documented_one() -> None:
    state = load_fixture()["optimizer"]["state"]
    assert set(state[0]) == {"z", "beta", "momentum_buffer"}  # Muon matrix
    assert set(state[2]) == {"z", "beta", "momentum_buffer", "exp_avg_sq"}  # AdaMuon
    assert set(state[3]) == {"z", "beta", "exp_avg_sq"}  # AdamW fallback


def run_on(params: dict, opt, grads_per_step: list[dict]) -> list[dict]:
    out = []
    for grads in grads_per_step:
        for n, p in params.items():
            p.grad = grads[n].clone()
        opt.step()
        out.append({n: p.detach().clone() for n, p in params.items()})
    return out


def test_checkpoint_from_0_1_0_continues_as_0_1_0_did() -> None:
    """The same run to float32 rounding: the fused kernels of this version combine y, z and U in
    another order than 0.1.0's three lerps, so the last bits differ (about 1e-7 relative)."""
    fixture = load_fixture()
    params, opt = resumed(fixture)
    got = run_on(params, opt, fixture["grads"])
    for step, expected in zip(got, fixture["expected"], strict=True):
        for n, value in step.items():
            torch.testing.assert_close(value, expected[n], rtol=2e-6, atol=2e-6, msg=n)
    opt.eval()
    for n, p in params.items():
        torch.testing.assert_close(p.detach(), fixture["expected_x"][n], rtol=2e-6, atol=2e-6)


def test_run_continued_from_0_1_0_resumes_bit_for_bit() -> None:
    """A run continued from the 0.1.0 state, interrupted after its first step and resumed from
    that state_dict, equals the uninterrupted continuation bit for bit. (Against 0.1.0's own
    next steps the agreement is to float32 rounding: see the test above.)"""
    fixture = load_fixture()
    params, opt = resumed(fixture)
    uninterrupted = run_on(params, opt, fixture["grads"])
    params, opt = resumed(fixture)
    run_on(params, opt, fixture["grads"][:1])
    saved_params = {n: p.detach().clone() for n, p in params.items()}
    saved_state = copy.deepcopy(opt.state_dict())
    params = {n: torch.nn.Parameter(p) for n, p in saved_params.items()}
    opt = build(params)
    opt.load_state_dict(saved_state)
    resumed_run = run_on(params, opt, fixture["grads"][1:])
    for got, expected in zip(resumed_run, uninterrupted[1:], strict=True):
        for n, value in got.items():
            assert torch.equal(value, expected[n]), n
