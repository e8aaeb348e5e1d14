"""AMUSE as users call it: modes, closures, state_dict round trips, the state it keeps, gradients
left alone, groups added later."""

from __future__ import annotations

import copy
import io

import pytest
import torch
from torch import nn

from amuse_lightning import AMUSE
from tests.helpers.tiny import batch, groups_of, params_of, tiny_model, train_steps


def test_eval_train_are_idempotent_and_step_refuses_eval_mode() -> None:
    model = tiny_model()
    opt = AMUSE(groups_of(model), lr=0.05, warmup_steps=2)
    train_steps(model, opt, 0, 5)
    y = params_of(model)
    opt.eval()
    x = params_of(model)
    opt.eval()
    assert all(torch.equal(a, b) for a, b in zip(x, params_of(model), strict=True))
    assert any(not torch.allclose(a, b) for a, b in zip(x, y, strict=True))
    assert all(not g["train_mode"] for g in opt.param_groups)
    with pytest.raises(RuntimeError, match=r"optimizer.train\(\)"):
        opt.step()
    opt.train()
    opt.train()
    for a, b in zip(params_of(model), y, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)


def test_never_stepped_parameters_convert_to_themselves() -> None:
    model = tiny_model()
    opt = AMUSE(groups_of(model))
    before = params_of(model)
    opt.eval()
    assert all(torch.equal(a, b) for a, b in zip(before, params_of(model), strict=True))


def test_closure_runs_under_grad_and_loss_is_returned() -> None:
    model = tiny_model()
    opt = AMUSE(groups_of(model), lr=0.05)
    x, y = batch(0)

    def closure() -> torch.Tensor:
        opt.zero_grad()
        assert torch.is_grad_enabled()
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        return loss

    with torch.no_grad():
        loss = opt.step(closure)
    assert isinstance(loss, torch.Tensor) and loss.ndim == 0
    assert opt.param_groups[0]["step"] == 1


def test_state_dict_round_trip_continues_bit_for_bit() -> None:
    model = tiny_model()
    opt = AMUSE(groups_of(model), lr=0.05, warmup_steps=3)
    train_steps(model, opt, 0, 6)
    saved_model = copy.deepcopy(model.state_dict())
    buffer = io.BytesIO()
    torch.save(opt.state_dict(), buffer)
    train_steps(model, opt, 6, 12)
    uninterrupted = params_of(model)

    resumed = tiny_model(seed=123)
    resumed.load_state_dict(saved_model)
    resumed_opt = AMUSE(groups_of(resumed), lr=0.05, warmup_steps=3)
    buffer.seek(0)
    resumed_opt.load_state_dict(torch.load(buffer, weights_only=True))
    train_steps(resumed, resumed_opt, 6, 12)
    assert all(torch.equal(a, b) for a, b in zip(uninterrupted, params_of(resumed), strict=True))


def test_mode_is_saved_so_a_resumed_run_cannot_convert_twice() -> None:
    model = tiny_model()
    opt = AMUSE(groups_of(model), lr=0.05)
    train_steps(model, opt, 0, 3)
    opt.eval()
    state = opt.state_dict()
    fresh = AMUSE(groups_of(model), lr=0.05)
    fresh.load_state_dict(state)
    x = params_of(model)
    fresh.eval()  # already in eval mode: no second conversion
    assert all(torch.equal(a, b) for a, b in zip(x, params_of(model), strict=True))


def test_state_holds_at_most_two_buffers_per_parameter() -> None:
    model = tiny_model()
    opt = AMUSE(groups_of(model), lr=0.05)
    train_steps(model, opt, 0, 2)
    for p in model.parameters():
        tensors = [v for v in opt.state[p].values() if torch.is_tensor(v) and v.numel() > 1]
        assert len(tensors) <= 2
        assert all(t.shape == p.shape for t in tensors)


def test_gradients_are_not_modified() -> None:
    for direction in ("muon", "adamuon", "spectral"):
        model = tiny_model()
        opt = AMUSE(groups_of(model), lr=0.05, direction=direction, weight_decay=0.1)
        x, y = batch(0)
        nn.functional.cross_entropy(model(x), y).backward()
        grads = [p.grad.clone() for p in model.parameters()]
        opt.step()
        assert all(torch.equal(g, p.grad) for g, p in zip(grads, model.parameters(), strict=True))


def test_a_group_added_in_eval_mode_takes_the_current_mode() -> None:
    model = tiny_model()
    opt = AMUSE(groups_of(model), lr=0.05, warmup_steps=2)
    train_steps(model, opt, 0, 3)
    opt.eval()
    extra = nn.Parameter(torch.randn(3))
    opt.add_param_group({"params": [extra], "use_muon": False})
    assert [g["train_mode"] for g in opt.param_groups] == [False, False, False]
    before = extra.detach().clone()
    opt.train()  # a never-stepped group has x = y: the round trip leaves it as it was
    assert all(g["train_mode"] for g in opt.param_groups)
    assert torch.equal(extra.detach(), before)
    opt.zero_grad()
    extra.grad = torch.ones(3)
    opt.step()  # and it trains
    assert not torch.equal(extra.detach(), before)
    opt.add_param_group({"params": [nn.Parameter(torch.randn(2))], "use_muon": False})
    assert opt.param_groups[-1]["train_mode"] is True


def test_workspace_bytes_reports_the_buffers_kept_between_steps() -> None:
    """Per parameter: what the largest matrix's Newton-Schulz needs; batched: what the largest
    same-shape stack needs. Neither is in the state_dict."""
    sizes = {}
    for foreach in (False, True):
        model = nn.Sequential(nn.Linear(8, 16), nn.Linear(16, 16), nn.Linear(16, 16))
        opt = AMUSE(groups_of(model), lr=0.05, foreach=foreach, ns_dtype="bfloat16")
        assert opt.workspace_bytes() == 0
        train_steps_on(model, opt)
        sizes[foreach] = opt.workspace_bytes()
        assert all(
            set(s) <= {"z", "beta", "momentum_buffer", "exp_avg_sq"} for s in opt.state.values()
        )
    # the 16x16 stack of two in float32 (the inputs, cast back results), two bf16 iterates and
    # two bf16 Gram matrices of each: 2 * 256 * (4 + 2 * 2 + 2 * 2) bytes; one matrix: half that
    assert sizes[True] == 2 * 256 * 12 and sizes[False] == 256 * 12


def train_steps_on(model: nn.Module, opt: AMUSE, steps: int = 2) -> None:
    gen = torch.Generator().manual_seed(0)
    for _ in range(steps):
        opt.zero_grad()
        model(torch.randn(4, 8, generator=gen)).square().mean().backward()
        opt.step()


def test_rank_splits_are_empty_on_one_process() -> None:
    model = tiny_model()
    opt = AMUSE(groups_of(model), lr=0.05)
    train_steps(model, opt, 0, 1)
    assert opt.rank_splits() == ()
