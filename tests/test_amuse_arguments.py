"""AMUSE's arguments and param groups: what is accepted (flat lists, timm keys, numpy scalars,
dtype names), what is refused and how the error reads, and the non-finite gradient policies."""

from __future__ import annotations

import copy
import warnings

import numpy as np
import pytest
import torch
from torch import nn

from amuse_lightning import AMUSE, SFMuon
from tests.helpers.tiny import batch, groups_of, params_of, tiny_model, train_steps


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
        (dict(c_warmup_steps=-1), r"c_warmup_steps must be an integer >= 0 \(0: off\)"),
        (dict(c_warmup_steps=2.5), "c_warmup_steps must be an integer >= 0"),
        (dict(c_scale=0.5), r"c_scale must be >= 1 \(1: the plain average\)"),
        (dict(beta_anneal_steps=-3), "beta_anneal_steps must be an integer >= 0"),
        (dict(rho=0.0, beta_anneal_steps=10, beta_final=0.0), r"beta_final must be a number in \("),
        (
            dict(beta_anneal_steps=10, rho=0.3),
            r"leave rho unset \(or 0\) with it, or beta_anneal_steps=0 to keep rho=0.3",
        ),
        (dict(beta_anneal_steps="planned"), r"integer >= 0 \(0: off\) or 'auto'"),
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


def test_huge_finite_gradients_are_not_mistaken_for_nonfinite() -> None:
    w = nn.Parameter(torch.zeros(4, 4))
    opt = AMUSE([{"params": [w], "use_muon": True}], nonfinite="raise")
    w.grad = torch.full((4, 4), 1e30)  # its 2-norm overflows float32
    opt.step()
    assert torch.isfinite(w).all() and opt.param_groups[0]["step"] == 1


def test_ns_dtype_is_stored_by_name_and_accepts_names() -> None:
    model = tiny_model()
    opt = AMUSE(groups_of(model), ns_dtype="float32")
    assert {g["ns_dtype"] for g in opt.param_groups} == {"float32"}
    opt.add_param_group({"params": [nn.Parameter(torch.randn(3, 3))], "use_muon": True,
                         "ns_dtype": torch.float64})  # fmt: skip
    assert opt.param_groups[-1]["ns_dtype"] == "float64"
    with pytest.raises(ValueError, match="ns_dtype must be 'auto' or one of"):
        AMUSE(groups_of(model), ns_dtype=torch.int8)


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


def test_warmup_one_with_rising_beta_warns() -> None:
    with pytest.warns(UserWarning, match="warmup_steps=1"):
        AMUSE(groups_of(tiny_model()), warmup_steps=1, rho=0.5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        AMUSE(groups_of(tiny_model()), warmup_steps=1, rho=0.0)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_16_bit_parameters_are_refused_in_averaging_groups(dtype: torch.dtype) -> None:
    """z and x would be 16-bit: the averaging increments c_t (z - x) round away (issue: bf16-true
    doubled the validation loss of x). Refused at construction, naming the fix."""
    model = tiny_model().to(dtype)
    with pytest.raises(ValueError, match=r"is torch\.(bfloat16|float16).*autocast"):
        AMUSE(groups_of(model))
    bare = AMUSE(groups_of(model), averaging=False, update_type="sgd")  # no z, no average
    assert bare.state_dict()["param_groups"][0]["averaging"] is False


@pytest.mark.parametrize(
    ("options", "key"),
    [({}, "update_type='adamw'"), ({"direction": "adamuon", "update_type": "sgd"}, "'adamuon'")],
)
def test_float16_is_refused_where_the_update_divides_by_a_second_moment(options, key) -> None:
    """Without averaging too: eps=1e-10 rounds to 0 in float16 and small g^2 underflow, so the
    Adam fallback's first step made the parameters infinite and the error then blamed the
    gradient (round-3 issue, 16-true)."""
    model = tiny_model().to(torch.float16)
    with pytest.raises(ValueError, match=rf"torch\.float16 .*{key}.*divides by sqrt\(v\) \+ eps"):
        AMUSE(groups_of(model), averaging=False, **options)
    model = tiny_model()
    opt = AMUSE(groups_of(model), averaging=False, **options)
    model.to(torch.float16)  # cast after construction: refused before anything moves
    before = [p.detach().clone() for p in model.parameters()]
    for p in model.parameters():
        p.grad = torch.full_like(p, 1e-4)
    with pytest.raises(ValueError, match=r"divides by sqrt\(v\) \+ eps"):
        opt.step()
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))


@pytest.mark.parametrize(
    ("dtype", "options"),
    [(torch.float16, {"update_type": "sgd"}), (torch.bfloat16, {})],
)
def test_16_bit_without_averaging_trains_and_stays_finite(dtype, options) -> None:
    """What the dtype checks allow really trains: small gradients stay finite."""
    model = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3)).to(dtype)
    opt = AMUSE(groups_of(model), averaging=False, lr=1e-2, warmup_steps=2, **options)
    gen = torch.Generator().manual_seed(0)
    for _ in range(5):
        inputs = torch.randn(16, 6, generator=gen).to(dtype)
        loss = model(inputs).float().pow(2).mean() * 1e-3  # gradients around 1e-4
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert all(p.dtype == dtype and torch.isfinite(p).all() for p in model.parameters())


def test_a_module_cast_to_16_bit_after_construction_is_refused_at_the_first_step() -> None:
    model = tiny_model()
    opt = AMUSE(groups_of(model), warmup_steps=2)
    model.to(torch.bfloat16)  # the optimizer holds the same tensors, now bf16
    before = [p.detach().clone() for p in model.parameters()]
    inputs, targets = batch(0)
    nn.functional.cross_entropy(model(inputs.bfloat16()), targets).backward()
    with pytest.raises(ValueError, match=r"params\[0\] of param group 0 is torch\.bfloat16"):
        opt.step()
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))


def test_named_parameters_are_accepted_and_their_names_kept() -> None:
    """``AMUSE(model.named_parameters())``, as torch's optimizers take it: the same steps as
    ``AMUSE(model.parameters())``, with the names in each group's ``names``, where errors read
    them. Before: AttributeError: 'tuple' object has no attribute 'ndim'."""
    named_model, plain_model = tiny_model(), tiny_model()
    with pytest.warns(UserWarning, match="partition_parameters"):
        named = AMUSE(named_model.named_parameters(), lr=0.05, warmup_steps=2)
    with pytest.warns(UserWarning, match="partition_parameters"):
        plain = AMUSE(plain_model.parameters(), lr=0.05, warmup_steps=2)
    assert [(g["use_muon"], g["names"]) for g in named.param_groups] == [
        (True, ["0.weight", "3.weight", "5.weight"]),
        (False, ["0.bias", "3.bias", "5.bias"]),
    ]
    train_steps(named_model, named, 0, 3)
    train_steps(plain_model, plain, 0, 3)
    for a, b in zip(named_model.parameters(), plain_model.parameters(), strict=True):
        assert torch.equal(a, b)
    head = nn.Parameter(torch.zeros(3, 3, dtype=torch.complex64))
    with pytest.raises(ValueError, match=r"^head.weight of param group 0 is complex"):
        AMUSE([{"params": [("head.weight", head)], "use_muon": True}])
    with pytest.raises(TypeError, match=r"^params mixes \(name, tensor\) pairs and bare tensors"):
        AMUSE([("head.weight", head), nn.Parameter(torch.zeros(3))])


def test_sfmuon_names_the_key_it_was_given() -> None:
    """``beta: 1.5`` for SFMuon: the error names ``beta`` (what the user wrote), not AMUSE's
    ``beta1``, which SFMuon refuses."""
    with pytest.raises(ValueError, match=r"^beta must be a number in \(0, 1\], got 1.5$"):
        SFMuon(groups_of(tiny_model()), beta=1.5)
    with pytest.raises(ValueError, match=r"^beta must be a number in \(0, 1\], got 'high'$"):
        SFMuon(groups_of(tiny_model()), beta="high")  # type: ignore[arg-type]
    assert SFMuon(groups_of(tiny_model()), beta=np.float32(0.5)).param_groups[0]["beta1"] == 0.5
