"""A state_dict written by AMUSE 0.1.0 loads into the current code and the run continues.

The fixture ``tests/fixtures/amuse_0_1_0.pt`` was written by ``make_amuse_0_1_0.py`` with the
0.1.0 code: a Muon matrix, a Muon conv kernel, an AdaMuon matrix and two fallback biases, saved
after the warmup ended, plus the gradients of the next three steps and the parameters 0.1.0
produced after each of them.
"""

from __future__ import annotations

from pathlib import Path

import torch

from tests.fixtures.make_amuse_0_1_0 import build

FIXTURE = Path(__file__).parent / "fixtures" / "amuse_0_1_0.pt"


def load_fixture() -> dict:
    return torch.load(FIXTURE, weights_only=True)


def resumed(fixture: dict):
    params = {n: torch.nn.Parameter(p.clone()) for n, p in fixture["params"].items()}
    opt = build(params)
    opt.load_state_dict(fixture["optimizer"])
    return params, opt


def test_fixture_state_layout_is_the_documented_one() -> None:
    state = load_fixture()["optimizer"]["state"]
    assert set(state[0]) == {"z", "beta", "momentum_buffer"}  # Muon matrix
    assert set(state[2]) == {"z", "beta", "momentum_buffer", "exp_avg_sq"}  # AdaMuon
    assert set(state[3]) == {"z", "beta", "exp_avg_sq"}  # AdamW fallback


def test_checkpoint_from_0_1_0_continues_bit_for_bit() -> None:
    fixture = load_fixture()
    params, opt = resumed(fixture)
    for grads, expected in zip(fixture["grads"], fixture["expected"], strict=True):
        for n, p in params.items():
            p.grad = grads[n].clone()
        opt.step()
        for n, p in params.items():
            assert torch.equal(p.detach(), expected[n]), n
    opt.eval()
    for n, p in params.items():
        assert torch.equal(p.detach(), fixture["expected_x"][n]), n
