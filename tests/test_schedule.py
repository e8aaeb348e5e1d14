"""The schedule functions against the paper's closed forms."""

from __future__ import annotations

import pytest

from amuse_lightning.optim.schedule import ScheduleState, advance_schedule


def run(steps: int, **kwargs) -> list:
    state, out = ScheduleState(), []
    for _ in range(steps):
        step = advance_schedule(state, **kwargs)
        state = step.state
        out.append(step)
    return out


def test_uniform_weights_give_the_papers_beta() -> None:
    T0, beta1, rho = 5, 0.6, 0.8
    steps = run(40, lr=0.1, warmup_steps=T0, beta1=beta1, rho=rho, r=0.0, weight_lr_power=0.0)
    for t, step in enumerate(steps, start=1):
        assert step.c_t == pytest.approx(1 / t)
        expected = beta1 if t <= T0 else 1 - ((T0 - 1) / (t - 1)) ** rho * (1 - beta1)
        assert step.beta_t == pytest.approx(expected, rel=1e-12)
        assert step.lr_t == pytest.approx(0.1 * min(1, t / T0))


def test_lr_weighted_averaging_follows_the_warmup() -> None:
    steps = run(10, lr=1.0, warmup_steps=4, beta1=0.8, rho=0.3, r=0.0, weight_lr_power=2.0)
    weights = [(t / 4) ** 2 if t < 4 else 1.0 for t in range(1, 11)]
    for t, step in enumerate(steps, start=1):
        assert step.c_t == pytest.approx(weights[t - 1] / sum(weights[:t]))
    assert steps[3].state.c_warmup == pytest.approx(steps[3].c_t)


def test_rho_zero_keeps_beta_fixed_and_zero_lr_is_safe() -> None:
    fixed = run(20, lr=0.1, warmup_steps=3, beta1=0.9, rho=0.0, r=0.0, weight_lr_power=2.0)
    assert {s.beta_t for s in fixed} == {0.9}
    zero = run(5, lr=0.0, warmup_steps=2, beta1=0.9, rho=0.5, r=0.0, weight_lr_power=2.0)
    assert all(s.c_t == 1.0 and s.beta_t == 0.9 for s in zero)
