"""AMUSE as users call it: modes, closures, state_dict, memory, gradients, groups, bad input."""

from __future__ import annotations

import copy
import io
import itertools
import warnings

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from amuse_lightning import AMUSE, SFMuon


def tiny_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 16, 8), nn.ReLU(),
        nn.Linear(8, 3),
    )  # fmt: skip


def groups_of(model: nn.Module) -> list[dict]:
    params = list(model.parameters())
    return [
        {"params": [p for p in params if p.ndim >= 2], "use_muon": True},
        {"params": [p for p in params if p.ndim < 2], "use_muon": False},
    ]


def batch(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(16, 1, 4, 4, generator=gen), torch.randint(0, 3, (16,), generator=gen)


def train_steps(model: nn.Module, opt: torch.optim.Optimizer, start: int, stop: int) -> None:
    for i in range(start, stop):
        x, y = batch(i)
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()


def params_of(model: nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in model.parameters()]


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


def test_flat_params_split_with_a_warning() -> None:
    model = tiny_model()
    with pytest.warns(UserWarning, match="partition_parameters"):
        opt = AMUSE(model.parameters())
    flags = [(g["use_muon"], {p.ndim for p in g["params"]}) for g in opt.param_groups]
    assert (True, {2, 4}) in flags and (False, {1}) in flags


def test_timm_use_fallback_and_lr_scale_are_honoured() -> None:
    model = tiny_model()
    params = list(model.parameters())
    matrices = [p for p in params if p.ndim >= 2]
    vectors = [p for p in params if p.ndim < 2]
    opt = AMUSE(
        [
            {"params": matrices, "use_fallback": False, "lr_scale": 0.5},
            {"params": vectors, "use_fallback": True},
        ],
        lr=0.1,
        warmup_steps=1,
        rho=0.0,
    )
    assert [g["use_muon"] for g in opt.param_groups] == [True, False]
    train_steps(model, opt, 0, 1)
    assert opt.param_groups[0]["lr_t"] == pytest.approx(0.05)
    assert opt.param_groups[1]["lr_t"] == pytest.approx(0.1)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(lr=-1.0), "lr must be >= 0"),
        (dict(beta1=0.0), r"beta1 must be in \(0, 1\]"),
        (dict(beta1=1.5), r"beta1 must be in \(0, 1\]"),
        (dict(rho=-0.1), "rho must be >= 0"),
        (dict(warmup_steps=0), "warmup_steps must be an integer >= 1"),
        (dict(warmup_steps=2.5), "warmup_steps must be an integer >= 1"),
        (dict(update_type="lion"), "update_type must be one of"),
        (dict(aux_update_type="rms"), "aux_update_type must be one of"),
        (dict(direction="shampoo"), "direction must be one of"),
        (dict(direction="spectral", spectral_power=0.75), "spectral_power must be one of"),
        (dict(spectral_input="sign"), "spectral_input must be one of"),
        (dict(momentum=1.0), r"momentum must be in \[0, 1\)"),
        (dict(nonfinite="ignore"), "nonfinite must be one of"),
        (dict(lr=float("nan")), "lr must be a finite number"),
        (dict(averaging=False, weight_decay_at_y=0.1), "weight_decay_at_y .* needs averaging"),
    ],
)
def test_bad_arguments_name_the_argument(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        AMUSE(groups_of(tiny_model()), **kwargs)


def test_bad_group_leaves_optimizer_unchanged() -> None:
    model = tiny_model()
    opt = AMUSE(groups_of(model)[:1])
    bias = [p for p in model.parameters() if p.ndim == 1]
    with pytest.raises(ValueError, match="Muon needs a matrix"):
        opt.add_param_group({"params": bias, "use_muon": True})
    assert len(opt.param_groups) == 1
    # a flat group splits into a Muon part and a fallback part: when the fallback part is bad,
    # the Muon part must not have been added either
    opt = AMUSE(groups_of(model)[1:])  # the 1-D tensors
    weight = next(p for p in model.parameters() if p.ndim == 2)
    with pytest.warns(UserWarning), pytest.raises(ValueError, match="already in another group"):
        opt.add_param_group({"params": [weight, bias[0]]})
    assert len(opt.param_groups) == 1


def test_sparse_gradients_are_refused_and_complex_parameters_at_construction() -> None:
    emb = nn.Embedding(10, 4, sparse=True)
    opt = AMUSE([{"params": emb.parameters(), "use_muon": False}])
    emb(torch.tensor([1, 2])).sum().backward()
    with pytest.raises(RuntimeError, match="sparse"):
        opt.step()
    z = nn.Parameter(torch.randn(3, 3, dtype=torch.complex64))
    for use_muon in (True, False):
        with pytest.raises(ValueError, match=r"params\[0\] of param group 0 is complex.*as_real"):
            AMUSE([{"params": [z], "use_muon": use_muon}])
    opt = AMUSE([{"params": [nn.Parameter(torch.randn(3))], "use_muon": False}])
    with pytest.raises(ValueError, match="complex"):
        opt.add_param_group({"params": [z], "use_muon": False})
    assert len(opt.param_groups) == 1


@pytest.mark.parametrize("policy", ["raise", "skip"])
def test_nonfinite_gradients_leave_state_untouched(policy: str) -> None:
    model = tiny_model()
    groups = groups_of(model)
    groups[0]["names"] = [f"w{i}" for i in range(len(groups[0]["params"]))]
    opt = AMUSE(groups, lr=0.05, nonfinite=policy)
    train_steps(model, opt, 0, 2)
    before_params = params_of(model)
    before_state = copy.deepcopy(opt.state_dict())
    x, y = batch(5)
    opt.zero_grad()
    nn.functional.cross_entropy(model(x), y).backward()
    groups[0]["params"][1].grad[0, 0] = float("nan")
    if policy == "raise":
        with pytest.raises(FloatingPointError, match="'w1'"):
            opt.step()
    else:
        with pytest.warns(UserWarning, match="skipping AMUSE step"):
            opt.step()
    assert all(torch.equal(a, b) for a, b in zip(before_params, params_of(model), strict=True))
    after_state = opt.state_dict()
    assert after_state["param_groups"] == before_state["param_groups"]
    for key, values in before_state["state"].items():
        for name, value in values.items():
            if torch.is_tensor(value):
                assert torch.equal(value, after_state["state"][key][name])


def test_sfmuon_keeps_beta_fixed() -> None:
    model = tiny_model()
    opt = SFMuon(groups_of(model), lr=0.05, beta=0.9, warmup_steps=2)
    train_steps(model, opt, 0, 6)
    assert all(g["beta_t"] == 0.9 for g in opt.param_groups)
    with pytest.raises(TypeError, match="rho=0"):
        SFMuon(groups_of(model), rho=0.5)


def test_warmup_one_with_rising_beta_warns() -> None:
    with pytest.warns(UserWarning, match="warmup_steps=1"):
        AMUSE(groups_of(tiny_model()), warmup_steps=1, rho=0.5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        AMUSE(groups_of(tiny_model()), warmup_steps=1, rho=0.0)


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


def test_ns_dtype_is_stored_by_name_and_accepts_names() -> None:
    model = tiny_model()
    opt = AMUSE(groups_of(model), ns_dtype="float32")
    assert {g["ns_dtype"] for g in opt.param_groups} == {"float32"}
    opt.add_param_group({"params": [nn.Parameter(torch.randn(3, 3))], "use_muon": True,
                         "ns_dtype": torch.float64})  # fmt: skip
    assert opt.param_groups[-1]["ns_dtype"] == "float64"
    with pytest.raises(ValueError, match="ns_dtype must be one of"):
        AMUSE(groups_of(model), ns_dtype=torch.int8)


@pytest.mark.parametrize("direction", ["muon", "adamuon", "spectral"])
def test_foreach_and_per_parameter_paths_agree(direction: str) -> None:
    results = []
    for foreach in (True, False):
        model = tiny_model()
        opt = AMUSE(groups_of(model), lr=0.05, direction=direction, foreach=foreach,
                    weight_decay=0.1, weight_decay_at_y=0.01, warmup_steps=2)  # fmt: skip
        train_steps(model, opt, 0, 4)
        opt.eval()
        results.append(params_of(model))
    for a, b in zip(*results, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


def test_huge_finite_gradients_are_not_mistaken_for_nonfinite() -> None:
    w = nn.Parameter(torch.zeros(4, 4))
    opt = AMUSE([{"params": [w], "use_muon": True}], nonfinite="raise")
    w.grad = torch.full((4, 4), 1e30)  # its 2-norm overflows float32
    opt.step()
    assert torch.isfinite(w).all() and opt.param_groups[0]["step"] == 1


def test_numpy_scalars_are_accepted_like_python_numbers() -> None:
    np = pytest.importorskip("numpy")
    results = []
    for number in (float, np.float32, np.float64):
        model = tiny_model()
        to_int = int if number is float else np.int64
        opt = AMUSE(groups_of(model), lr=number(0.05), warmup_steps=to_int(3),
                    beta1=number(0.8), weight_decay=number(0.0))  # fmt: skip
        opt.add_param_group({"params": [nn.Parameter(torch.randn(2))], "use_muon": False,
                             "lr": np.float32(0.1), "warmup_steps": np.int64(2)})  # fmt: skip
        train_steps(model, opt, 0, 3)
        results.append(params_of(model))
        assert all(type(g["warmup_steps"]) is int for g in opt.param_groups)
        assert all(type(g["lr"]) is float for g in opt.param_groups)
    for a, b in zip(results[0], results[2], strict=True):  # np.float64(0.05) == 0.05
        assert torch.equal(a, b)
    for a, b in zip(results[0], results[1], strict=True):  # float32(0.05) is 0.05 to 1e-9
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_a_group_without_params_is_named() -> None:
    model = tiny_model()
    with pytest.raises(ValueError, match=r"param group 1 has no 'params' entry.*\['lr'\]"):
        AMUSE([{"params": list(model.parameters())[:1], "use_muon": True}, {"lr": 0.1}])
    opt = AMUSE(groups_of(model))
    with pytest.raises(ValueError, match="no 'params' entry"):
        opt.add_param_group({"use_muon": False})


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
