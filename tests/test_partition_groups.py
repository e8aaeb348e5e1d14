"""Param groups from a partition: an exact cover, lr / weight decay only when given, timm
layer decay as lr_scale, and the side rule the optimizer shares."""

from __future__ import annotations

import pytest
import timm
import torch
import torchvision
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from amuse_lightning import AMUSE
from amuse_lightning.partition import layer_decay_scales, partition_parameters, uses_muon
from tests.helpers.partition_models import (
    SmallCifarResNet,
    TiedLM,
    assert_exact_cover,
    tiny_vit,
)


@pytest.mark.parametrize(
    "build",
    [
        lambda: torchvision.models.resnet18(num_classes=10),
        SmallCifarResNet,
        TiedLM,
        lambda: timm.create_model("convnext_atto", num_classes=10),
    ],
    ids=["resnet18", "cifar", "tied_lm", "convnext"],
)
def test_param_groups_cover_every_trainable_param_once(build) -> None:
    model = build()
    part = partition_parameters(model)
    groups = part.param_groups()
    assert_exact_cover(model, groups)
    assert len(groups) <= 4
    by_id = {id(a.param): a for a in part.assignments}
    for g in groups:
        no_decay = g["group_name"].endswith("no_decay")
        base = {"params", "names", "use_muon", "group_name"}
        assert set(g) == (base | {"weight_decay"} if no_decay else base)
        assert all(by_id[id(p)].use_muon == g["use_muon"] for p in g["params"])
        if g["use_muon"]:
            assert all(p.ndim >= 2 for p in g["params"])
        if any(p.ndim < 2 for p in g["params"]):
            assert g["weight_decay"] == 0.0


def test_param_groups_lr_and_weight_decay_only_when_given() -> None:
    part = partition_parameters(TiedLM())
    groups = part.param_groups(lr=0.02, weight_decay=0.1, fallback_lr=3e-3)
    assert {g["group_name"] for g in groups} == {
        "muon_decay",
        "fallback_decay",
        "fallback_no_decay",
    }
    by_name = {g["group_name"]: g for g in groups}
    assert by_name["muon_decay"]["lr"] == 0.02 and by_name["muon_decay"]["weight_decay"] == 0.1
    assert by_name["fallback_decay"]["lr"] == 3e-3
    assert by_name["fallback_decay"]["weight_decay"] == 0.1
    assert by_name["fallback_no_decay"]["weight_decay"] == 0.0
    other = part.param_groups(weight_decay=0.1, fallback_weight_decay=0.01)
    assert all("lr" not in g for g in other)
    assert {g["group_name"]: g["weight_decay"] for g in other}["fallback_decay"] == 0.01
    everything_decays = part.param_groups(weight_decay=0.1, decay_1d=True)
    assert [g["group_name"] for g in everything_decays] == ["muon_decay", "fallback_decay"]
    assert all(g["weight_decay"] == 0.1 for g in everything_decays)


def test_module_with_nothing_to_train_is_an_error() -> None:
    model = SmallCifarResNet().requires_grad_(False)
    part = partition_parameters(model)
    assert part.assignments == [] and len(part.skipped) == len(list(model.parameters()))
    with pytest.raises(ValueError, match="no trainable parameters"):
        part.param_groups()


@settings(max_examples=20, deadline=None)
@given(
    widths=st.lists(st.integers(1, 6), min_size=1, max_size=4),
    bias=st.booleans(),
    freeze=st.sets(st.integers(0, 3)),
    decay_1d=st.booleans(),
)
def test_random_mlps_groups_are_an_exact_cover(widths, bias, freeze, decay_1d) -> None:
    layers: list[nn.Module] = []
    for i, (cin, cout) in enumerate(zip([3, *widths], widths, strict=False)):
        layers += [nn.Linear(cin, cout, bias=bias), nn.LayerNorm(cout)]
        if i in freeze:
            layers[-2].requires_grad_(False)
    model = nn.Sequential(*layers)
    part = partition_parameters(model)
    if not part.assignments:
        return
    groups = part.param_groups(weight_decay=0.1, decay_1d=decay_1d)
    assert_exact_cover(model, groups)
    linears = [m for m in model if isinstance(m, nn.Linear) and m.weight.requires_grad]
    last = [m for m in model if isinstance(m, nn.Linear)][-1]
    muon = {id(a.param) for a in part.muon}
    assert muon == {id(m.weight) for m in linears if m is not last}


def test_layer_decay_scales_on_tiny_vit() -> None:
    model = tiny_vit()
    scales = layer_decay_scales(model, 0.5)
    assert set(scales) == {n for n, _ in model.named_parameters()}
    assert scales["head.weight"] == 1.0 and scales["norm.weight"] == 0.5
    assert scales["blocks.1.attn.qkv.weight"] == 0.5
    assert scales["blocks.0.mlp.fc1.weight"] == 0.25
    assert scales["patch_embed.proj.weight"] == scales["cls_token"] == scales["pos_embed"] == 0.125

    part = partition_parameters(model)
    groups = part.param_groups(weight_decay=0.05, lr_scales=scales)
    assert_exact_cover(model, groups)
    keys = [(g["use_muon"], g["weight_decay"], g["lr_scale"]) for g in groups]
    assert len(keys) == len(set(keys))
    for g in groups:
        assert {scales[n] for n in g["names"]} == {g["lr_scale"]}
    muon_scales = sorted(g["lr_scale"] for g in groups if g["use_muon"])
    assert muon_scales == [0.25, 0.5]


def test_layer_decay_scales_through_a_wrapper_and_errors() -> None:
    class Wrapper(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = tiny_vit()
            self.extra = nn.Linear(10, 2)

    wrapped = Wrapper()
    scales = layer_decay_scales(wrapped, 0.5)
    assert scales["model.blocks.0.attn.qkv.weight"] == 0.25
    assert scales["extra.weight"] == 1.0
    with pytest.raises(ValueError, match="group_matcher"):
        layer_decay_scales(SmallCifarResNet(), 0.5)
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        layer_decay_scales(tiny_vit(), 1.5)
    with pytest.raises(ValueError, match="does not have"):
        partition_parameters(tiny_vit()).param_groups(lr_scales={"blocks.9.attn.qkv.weight": 0.1})


@pytest.mark.filterwarnings("ignore:AMUSE got parameters without")
def test_uses_muon_agrees_with_how_amuse_splits_every_kind_of_group() -> None:
    """The shared rule against the optimizer: every tensor lands on the side uses_muon names."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(4, 2), nn.LayerNorm(2))
    params = list(net.parameters())  # conv kernel, conv bias, matrix, bias, norm weight, norm bias
    cases = [
        [{"params": params}],  # unmarked: split by ndim
        [
            {"params": params[:2], "use_fallback": True},
            {"params": params[2:3], "use_fallback": False},
            {"params": params[3:], "use_fallback": True},
        ],
        [{"params": params[:2], "use_muon": False, "use_fallback": False}, {"params": params[2:3]}],
        partition_parameters(net).param_groups(),
    ]
    for groups in cases:
        wanted = {id(p): uses_muon(g, p) for g in groups for p in g["params"]}
        opt = AMUSE(groups)
        got = {id(p): g["use_muon"] for g in opt.param_groups for p in g["params"]}
        assert got == wanted
    assert uses_muon({"params": []}, params[2]) and not uses_muon({"params": []}, params[1])
    assert not uses_muon({"use_muon": False, "use_fallback": False}, params[2])
    partition = partition_parameters(net)  # first conv = stem, last Linear = head: fallback
    assert not any(uses_muon(g, p) for g in partition.param_groups() for p in g["params"])
