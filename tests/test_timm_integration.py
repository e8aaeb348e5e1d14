"""``timm.optim.create_optimizer_v2(model, opt="amuse", ...)`` after one ``register()`` call."""

from __future__ import annotations

import ast
import warnings
from pathlib import Path

import pytest
import timm
import timm.optim
import torch

from amuse_lightning import AMUSE, SFMuon
from amuse_lightning.integrations import timm as amuse_timm

MODULE = Path(amuse_timm.__file__)


@pytest.fixture(scope="module", autouse=True)
def _registered():
    amuse_timm.register()


def tiny_vit() -> torch.nn.Module:
    torch.manual_seed(0)
    return timm.create_model("vit_tiny_patch16_224", img_size=32, depth=3, num_classes=5)


def sides(optimizer: AMUSE) -> dict[str, bool]:
    return {n: g["use_muon"] for g in optimizer.param_groups for n in g["names"]}


def test_amuse_and_sfmuon_are_in_timms_registry_once():
    amuse_timm.register()  # a second call changes nothing
    assert {"amuse", "sfmuon"} <= set(timm.optim.list_optimizers())
    assert timm.optim.get_optimizer_info("amuse").opt_class is amuse_timm.create_amuse
    sfmuon = timm.optim.create_optimizer_v2(tiny_vit(), opt="sfmuon", lr=1e-3, beta=0.9)
    assert type(sfmuon) is SFMuon and {g["beta1"] for g in sfmuon.param_groups} == {0.9}


def test_layer_decay_groups_follow_the_amuse_partition_and_keep_timms_lr_scale():
    model = tiny_vit()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "parameters without use_muon" warning
        optimizer = timm.optim.create_optimizer_v2(
            model, opt="amuse", lr=1e-3, weight_decay=0.05, layer_decay=0.75, warmup_steps=2
        )
    assert type(optimizer) is AMUSE
    side = sides(optimizer)
    assert set(side) == {n for n, _ in model.named_parameters()}
    for name in ("pos_embed", "cls_token", "patch_embed.proj.weight", "head.weight"):
        assert side[name] is False, name
    matrices = [n for n, p in model.named_parameters() if n.startswith("blocks.") and p.ndim == 2]
    assert len(matrices) == 12 and all(side[n] for n in matrices)
    assert not any(side[n] for n, p in model.named_parameters() if p.ndim < 2)

    timm_scale = {
        id(p): g["lr_scale"]
        for g in timm.optim.param_groups_layer_decay(model, weight_decay=0.05, layer_decay=0.75)
        for p in g["params"]
    }
    ours = {id(p): g["lr_scale"] for g in optimizer.param_groups for p in g["params"]}
    assert ours == timm_scale
    assert min(ours.values()) == pytest.approx(0.75**4) and max(ours.values()) == 1.0
    decay = {n: g["weight_decay"] for g in optimizer.param_groups for n in g["names"]}
    assert decay["blocks.0.attn.qkv.weight"] == 0.05 and decay["blocks.0.norm1.weight"] == 0.0


def test_a_few_steps_train_with_each_groups_lr_scale():
    model = tiny_vit()
    optimizer = timm.optim.create_optimizer_v2(
        model, opt="amuse", lr=1e-2, layer_decay=0.5, warmup_steps=2
    )
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    images, labels = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 3])
    losses = []
    for _ in range(3):
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(images), labels)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert all(torch.isfinite(torch.tensor(losses))) and losses[-1] < losses[0]
    assert all(not torch.equal(before[n], p) for n, p in model.named_parameters())
    for group in optimizer.param_groups:  # lr_t = lr * lr_scale once the 2-step warmup is over
        assert group["lr_t"] == pytest.approx(1e-2 * group["lr_scale"])


def test_timms_fallback_list_and_parameters_without_a_model():
    model = tiny_vit()
    forced = timm.optim.create_optimizer_v2(
        model, opt="amuse", fallback_list=["blocks.0.*"], warmup_steps=2
    )
    assert sides(forced)["blocks.0.attn.qkv.weight"] is False
    assert sides(forced)["blocks.1.attn.qkv.weight"] is True
    explicit = amuse_timm.amuse_param_groups(model, model.parameters())
    assert {n for g in explicit if not g["use_muon"] for n in g["names"]} == set(
        amuse_timm.fallback_names(model)
    )
    with pytest.warns(UserWarning, match="without `use_muon`"):  # no model: split by shape
        timm.optim.create_optimizer_v2(list(model.parameters()), opt="amuse")


def test_named_parameters_without_a_model_keep_their_names():
    """``create_optimizer_v2(model.named_parameters(), "amuse")``, as timm's own optimizers take
    it. Before: AttributeError: 'tuple' object has no attribute 'ndim'."""
    model = tiny_vit()
    with pytest.warns(UserWarning, match="without `use_muon`"):  # no model: split by shape
        optimizer = timm.optim.create_optimizer_v2(model.named_parameters(), opt="amuse")
    names = {name: p.ndim >= 2 for name, p in model.named_parameters()}
    assert sides(optimizer) == names
    named = {name: p for name, p in model.named_parameters()}
    for group in optimizer.param_groups:
        assert all(p is named[n] for n, p in zip(group["names"], group["params"], strict=True))


def test_the_integration_imports_timm_but_no_lightning():
    tree = ast.parse(MODULE.read_text())
    imported = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    assert not {m for m in imported if m.split(".")[0] in ("lightning", "pytorch_lightning")}
    assert not {m for m in imported if m.startswith("amuse_lightning.lightning")}
    assert "timm.optim" in imported
