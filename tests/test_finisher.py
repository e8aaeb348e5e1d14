"""The finisher (amuse_lightning.averaging.finisher) against a hand-written cooldown loop."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from amuse_lightning import AMUSE, partition_parameters
from amuse_lightning.averaging import Cooldown, begin_cooldown, finish, reestimate_batchnorm
from tests.reference_amuse import reference_newton_schulz

WARMUP, LR, WD = 4, 0.02, 0.01


def model_f64(batchnorm: bool = False) -> nn.Module:
    torch.manual_seed(0)
    layers: list[nn.Module] = [nn.Linear(5, 8)]
    if batchnorm:
        layers.append(nn.BatchNorm1d(8))
    layers += [nn.Tanh(), nn.Linear(8, 8), nn.Tanh(), nn.Linear(8, 3)]
    return nn.Sequential(*layers).double()


def batch(i: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(100 + i)
    return (torch.randn(16, 5, generator=gen, dtype=torch.float64),
            torch.randn(16, 3, generator=gen, dtype=torch.float64))  # fmt: skip


def loss_fn(model: nn.Module, b: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    return nn.functional.mse_loss(model(b[0]), b[1])


def run(steps: int, batchnorm: bool = False, start: int = 0) -> tuple[nn.Module, AMUSE]:
    model = model_f64(batchnorm)
    groups = partition_parameters(model).param_groups(weight_decay=WD)
    optimizer = AMUSE(groups, lr=LR, warmup_steps=WARMUP, ns_dtype=torch.float64)
    train(model, optimizer, range(start, start + steps))
    return model, optimizer


def train(model: nn.Module, optimizer: AMUSE, indices) -> None:
    model.train()
    for i in indices:
        optimizer.zero_grad()
        loss_fn(model, batch(i)).backward()
        optimizer.step()


def cooldown_batches(n: int = 50) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [batch(1000 + i) for i in range(n)]


def hand_written_cooldown(
    model: nn.Module,
    optimizer: AMUSE,
    steps: int,
    start: str,
    shape: str,
    factor: float,
    fresh: bool = False,
) -> dict[str, torch.Tensor]:
    """The cooldown written out: start at x (from y, z and beta), y or z, then ``steps`` plain
    steps of the run's directions with ``lr_i = factor * lr_t * g(i / steps)`` (Muon's momentum
    from zero when ``fresh``)."""  # fmt: skip
    names = {id(p): n for n, p in model.named_parameters()}
    p_now, momentum, second, groups = {}, {}, {}, {}
    for group in optimizer.param_groups:
        for p in group["params"]:
            state, name = optimizer.state[p], names[id(p)]
            y = p.detach().clone()
            x = y + (1.0 - 1.0 / state["beta"]) * (state["z"] - y)
            p_now[name] = {"x": x, "y": y, "z": state["z"].clone()}[start]
            carried = state.get("momentum_buffer", torch.zeros_like(y)).clone()
            momentum[name] = torch.zeros_like(y) if fresh else carried
            second[name] = state.get("exp_avg_sq", torch.zeros_like(y)).clone()
            groups[name] = group
    twin = model_f64(any(isinstance(m, nn.BatchNorm1d) for m in model.modules()))
    twin.load_state_dict(model.state_dict())
    params = dict(twin.named_parameters())
    t = optimizer.param_groups[0]["step"]
    lr_t = LR * min(1.0, t / WARMUP)
    data = cooldown_batches()
    for i in range(steps):
        u = i / steps
        lr_i = factor * lr_t * ((1 - u) if shape == "linear" else (1 - math.sqrt(u)))
        with torch.no_grad():
            for name, value in p_now.items():
                params[name].copy_(value)
        twin.zero_grad()
        loss_fn(twin, data[i]).backward()
        for name, value in p_now.items():
            g, group = params[name].grad, groups[name]
            if group["use_muon"]:
                m = momentum[name] = momentum[name] + 0.05 * (g - momentum[name])
                nesterov = g + 0.95 * (m - g)
                o = reference_newton_schulz(nesterov.reshape(g.shape[0], -1), 5).reshape(g.shape)
                update = 0.2 * math.sqrt(max(g.shape[0], g[0].numel())) * o
            else:
                v = second[name] = 0.999 * second[name] + 0.001 * g * g
                update = g / ((v / (1 - 0.999 ** (t + i + 1))).sqrt() + 1e-10)
            p_now[name] = value * (1 - lr_i * group["weight_decay"]) - lr_i * update
    return p_now


@pytest.mark.parametrize(
    ("start", "shape", "momentum"),
    [("x", "linear", "carried"), ("y", "1-sqrt", "carried"), ("z", "linear", "carried"),
     ("z", "linear", "fresh"), ("x", "1-sqrt", "fresh")],
)  # fmt: skip
def test_schedule_and_start_point_match_a_hand_written_loop(start, shape, momentum):
    model, optimizer = run(10)
    expected = hand_written_cooldown(
        model, optimizer, 5, start, shape, factor=0.7, fresh=momentum == "fresh"
    )
    finished = finish(optimizer, model, cooldown_batches(), loss_fn, steps=5, start=start,
                      shape=shape, lr_factor=0.7, momentum=momentum)  # fmt: skip
    for name, value in finished.named_parameters():
        torch.testing.assert_close(value.detach(), expected[name], rtol=0, atol=1e-10)


@pytest.mark.parametrize(
    ("options", "steps", "factor"),
    [
        (dict(fraction=0.15, lr_factor=1.0), 3, 1.0),  # round(0.15 * 20)
        ({}, 4, 0.3),  # the defaults: x, linear, fraction 0.2, lr_factor "auto": 0.3 at t=20
    ],
)
def test_fraction_sets_the_length_from_the_steps_so_far(options, steps, factor):
    model, optimizer = run(20)
    expected = hand_written_cooldown(model, optimizer, steps, "x", "linear", factor=factor)
    finished = finish(optimizer, model, cooldown_batches(), loss_fn, **options)
    for name, value in finished.named_parameters():
        torch.testing.assert_close(value.detach(), expected[name], rtol=0, atol=1e-10)


def test_finishing_twice_gives_the_same_weights():
    model, optimizer = run(10, batchnorm=True)
    first = finish(optimizer, model, cooldown_batches(), loss_fn, fraction=0.3,
                   bn_batches=cooldown_batches(4))  # fmt: skip
    second = finish(optimizer, model, cooldown_batches(), loss_fn, fraction=0.3,
                    bn_batches=cooldown_batches(4))  # fmt: skip
    for (name, a), b in zip(first.state_dict().items(), second.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


def test_the_source_run_continues_bit_for_bit_after_a_finish():
    model, optimizer = run(12, batchnorm=True)
    finish(optimizer, model, cooldown_batches(), loss_fn, fraction=0.25, start="y",
           bn_batches=cooldown_batches(3))  # fmt: skip
    train(model, optimizer, range(12, 20))
    reference, ref_optimizer = run(20, batchnorm=True)
    for (name, a), b in zip(
        model.state_dict().items(), reference.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b), name
    ours, theirs = optimizer.state_dict(), ref_optimizer.state_dict()
    assert ours["param_groups"] == theirs["param_groups"]
    for index, state in ours["state"].items():
        for key, value in state.items():
            other = theirs["state"][index][key]
            assert torch.equal(value, other) if torch.is_tensor(value) else value == other


def test_batchnorm_statistics_are_re_estimated_at_the_finished_weights():
    model, optimizer = run(10, batchnorm=True)
    data = cooldown_batches(4)
    finished = finish(optimizer, model, cooldown_batches(), loss_fn, steps=3, bn_batches=data)
    fresh = finish(optimizer, model, cooldown_batches(), loss_fn, steps=3)
    reestimate_batchnorm(fresh, data)
    for (name, a), b in zip(
        finished.state_dict().items(), fresh.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b), name
    assert finished[1].num_batches_tracked.item() == 4


def test_begin_cooldown_gives_a_standard_scheduler_that_reaches_zero():
    _, optimizer = run(8)
    schedule = begin_cooldown(optimizer, Cooldown(4, start="x", lr_factor=1.0))
    assert isinstance(schedule, torch.optim.lr_scheduler.LambdaLR)
    rates = []
    for _ in range(4):
        rates.append(optimizer.param_groups[0]["lr"])
        schedule.step()
    assert rates == pytest.approx([LR, 0.75 * LR, 0.5 * LR, 0.25 * LR])
    assert optimizer.param_groups[0]["lr"] == 0.0
    assert all(not g["averaging"] for g in optimizer.param_groups)
    assert all("z" not in s for s in optimizer.state.values())


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(steps=0), "steps must be an int >= 1"),
        (dict(steps=2, start="w"), "start must be one of"),
        (dict(steps=2, momentum="reset"), "momentum must be one of"),
        (dict(steps=2, shape="cosine"), "shape must be one of"),
        (dict(steps=2, lr_factor=0.0), "lr_factor must be a number > 0 or .auto."),
    ],
)
def test_a_bad_cooldown_says_what_to_change(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Cooldown(**kwargs)


def test_too_few_batches_and_other_optimizers_are_refused_clearly():
    model, optimizer = run(10)
    with pytest.raises(ValueError, match="needs 5 batches but `batches` ran out after 2"):
        finish(optimizer, model, cooldown_batches(2), loss_fn, steps=5)
    with pytest.raises(ValueError, match=r"fraction must be in \(0, 1\]"):
        finish(optimizer, model, cooldown_batches(), loss_fn, fraction=1.5)
    adamw = torch.optim.AdamW(model.parameters())
    with pytest.raises(TypeError, match="needs an AMUSE optimizer"):
        finish(adamw, model, cooldown_batches(), loss_fn, steps=2)  # type: ignore[arg-type]


def test_auto_lr_factor_follows_the_steps_so_far():
    """``lr_factor="auto"``: 0.3 up to 800 steps, then 0.3 * 800 / t (round 3's rule)."""
    rule = Cooldown(4, lr_factor="auto")
    assert [rule.factor_at(t) for t in (10, 800, 1600, 6400)] == [0.3, 0.3, 0.15, 0.0375]
    model, optimizer = run(10)
    expected = hand_written_cooldown(model, optimizer, 5, "x", "linear", factor=0.3)
    finished = finish(optimizer, model, cooldown_batches(), loss_fn, steps=5, lr_factor="auto")
    for name, value in finished.named_parameters():
        torch.testing.assert_close(value.detach(), expected[name], rtol=0, atol=1e-10)
    assert finished.amuse_finisher.cooldown.lr_factor == "auto"
    with pytest.raises(ValueError, match="a number > 0 or 'auto', got 'often'"):
        Cooldown(4, lr_factor="often")
