"""Which tensor goes to Muon and why: the default rules on torchvision / timm models and tied
LMs, and switching rules off."""

from __future__ import annotations

import pytest
import timm
import torch
import torchvision
from torch import nn

from amuse_lightning.partition import partition_parameters
from tests.helpers.partition_models import SmallCifarResNet, TiedLM, reasons, sides, tiny_vit


def test_torchvision_resnet18_stem_head_convs_and_norms() -> None:
    model = torchvision.models.resnet18(num_classes=10)
    part = partition_parameters(model)
    side, why = sides(part), reasons(part)
    assert side["conv1.weight"] is False and "stem" in why["conv1.weight"]
    assert side["fc.weight"] is False and "head" in why["fc.weight"]
    assert side["fc.bias"] is False
    convs = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d) and n != "conv1"]
    assert len(convs) == 19  # 16 block convs + 3 downsample 1x1 convs
    assert all(side[f"{n}.weight"] for n in convs)
    norms = [n for n, m in model.named_modules() if isinstance(m, nn.BatchNorm2d)]
    assert all(not side[f"{n}.weight"] and not side[f"{n}.bias"] for n in norms)
    assert {a.name for a in part.muon} == {f"{n}.weight" for n in convs}


def test_cifar_resnet_defined_here_found_by_structure() -> None:
    part = partition_parameters(SmallCifarResNet())
    side, why = sides(part), reasons(part)
    assert side["stem.0.weight"] is False and "first conv" in why["stem.0.weight"]
    assert side["linear.weight"] is False and "last nn.Linear" in why["linear.weight"]
    assert {a.name for a in part.muon} == {
        "stages.0.conv_a.weight",
        "stages.0.conv_b.weight",
        "stages.1.conv_a.weight",
        "stages.1.conv_b.weight",
        "stages.1.shortcut.0.weight",
    }


def test_timm_vit_small_tokens_patch_embed_head_fallback_blocks_muon() -> None:
    model = timm.create_model("vit_small_patch16_224", pretrained=False)
    part = partition_parameters(model)
    side, why = sides(part), reasons(part)
    for name in ("patch_embed.proj.weight", "pos_embed", "cls_token", "head.weight"):
        assert side[name] is False, name
    assert "patch embedding" in why["patch_embed.proj.weight"]
    assert "pos_embed" in why["pos_embed"] and "cls_token" in why["cls_token"]
    assert "head" in why["head.weight"]
    expected = {
        f"blocks.{i}.{leaf}.weight"
        for i in range(12)
        for leaf in ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2")
    }
    assert {a.name for a in part.muon} == expected
    assert all(p.ndim < 2 for n, p in model.named_parameters() if "norm" in n)


def test_timm_convnext_atto_stem_head_and_depthwise_kernels() -> None:
    model = timm.create_model("convnext_atto", pretrained=False, num_classes=10)
    part = partition_parameters(model)
    side, why = sides(part), reasons(part)
    assert side["stem.0.weight"] is False and "stem" in why["stem.0.weight"]
    assert side["head.fc.weight"] is False and "head" in why["head.fc.weight"]
    dw = [n for n in side if n.endswith("conv_dw.weight")]
    assert len(dw) == 12
    # Documented default: depthwise (C, 1, 7, 7) kernels go to Muon as (C, 49) matrices.
    assert all(side[n] and "depthwise" in why[n] and "x49" in why[n] for n in dw)
    assert all(side[n] for n in side if n.endswith(("mlp.fc1.weight", "downsample.1.weight")))
    assert not any(side[n] for n in side if n.endswith(".gamma"))
    # The documented opt-out sends them to the fallback.
    moved = partition_parameters(model, fallback=["*conv_dw.weight"])
    assert not any(sides(moved)[n] for n in dw)
    assert len(moved.muon) == len(part.muon) - 12


@pytest.mark.parametrize("head_first", [False, True])
def test_tied_lm_embedding_appears_once_on_fallback(head_first: bool) -> None:
    model = TiedLM(head_first=head_first)
    part = partition_parameters(model)
    shared = model.tok_emb.weight
    hits = [a for a in part.assignments if a.param is shared]
    assert len(hits) == 1
    assert hits[0].use_muon is False and "embedding" in hits[0].reason
    alias = "tok_emb.weight" if head_first else "lm_head.weight"
    assert hits[0].aliases == (alias,)
    assert any(name == alias and "tied" in why for name, why in part.skipped)
    side = sides(part)
    assert side["pos_embed"] is False
    for i in range(2):
        for name in ("self_attn.in_proj_weight", "self_attn.out_proj.weight", "linear2.weight"):
            assert side[f"blocks.{i}.{name}"] is True, name
    groups = part.param_groups()
    flat = [p for g in groups for p in g["params"]]
    assert sum(p is shared for p in flat) == 1


def test_tied_output_layer_with_an_unusual_name_is_the_head() -> None:
    class LM(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.decoder = nn.Linear(16, 40, bias=False)  # registered before the body
            self.words = nn.Embedding(40, 16)
            self.decoder.weight = self.words.weight
            self.body = nn.Linear(16, 16)

    part = partition_parameters(LM())
    assert sides(part) == {"decoder.weight": False, "body.weight": True, "body.bias": False}
    assert "embedding" in reasons(part)["decoder.weight"]


def test_headless_timm_backbone_uses_the_linear_after_it() -> None:
    class Wrapper(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.backbone = tiny_vit(num_classes=0)
            self.classifier_out = nn.Linear(192, 3)

    part = partition_parameters(Wrapper())
    side = sides(part)
    assert side["classifier_out.weight"] is False
    assert side["backbone.blocks.1.mlp.fc2.weight"] is True
    assert side["backbone.patch_embed.proj.weight"] is False


def test_switching_off_stem_and_head_rules() -> None:
    model = torchvision.models.resnet18(num_classes=10)
    side = sides(partition_parameters(model, stem_to_fallback=False, head_to_fallback=False))
    assert side["conv1.weight"] is True and side["fc.weight"] is True


def test_unrecognised_matrix_stays_on_fallback_with_a_hint() -> None:
    class Custom(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.table = nn.Parameter(torch.zeros(16, 4))
            self.fc = nn.Linear(4, 4)

    part = partition_parameters(Custom(), head_to_fallback=False)
    assert sides(part) == {"table": False, "fc.weight": True, "fc.bias": False}
    assert "muon=" in reasons(part)["table"]
    forced = partition_parameters(Custom(), muon=["table"], head_to_fallback=False)
    assert sides(forced)["table"] is True
