"""Which tensor goes to Muon and why: real torchvision / timm models, tied LMs, patterns, groups."""

from __future__ import annotations

import pytest
import timm
import torch
import torchvision
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from amuse_lightning import AMUSE
from amuse_lightning.partition import (
    Partition,
    layer_decay_scales,
    partition_parameters,
    uses_muon,
)


def sides(partition: Partition) -> dict[str, bool]:
    return {a.name: a.use_muon for a in partition.assignments}


def reasons(partition: Partition) -> dict[str, str]:
    return {a.name: a.reason for a in partition.assignments}


def tiny_vit(**kwargs) -> nn.Module:
    args = dict(pretrained=False, img_size=32, patch_size=8, depth=2, num_classes=10)
    return timm.create_model("vit_tiny_patch16_224", **{**args, **kwargs})


# ---------------------------------------------------------------------------------------------
# Models
# ---------------------------------------------------------------------------------------------


class CifarBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv_a = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.norm_a = nn.BatchNorm2d(cout)
        self.conv_b = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.norm_b = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.norm_a(self.conv_a(x)))
        return torch.relu(self.norm_b(self.conv_b(out)) + self.shortcut(x))


class SmallCifarResNet(nn.Module):
    """Names unlike torchvision on purpose: the stem and head must be found by structure."""

    def __init__(self, width: int = 8, classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width))
        self.stages = nn.Sequential(CifarBlock(width, width, 1), CifarBlock(width, 2 * width, 2))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.linear = nn.Linear(2 * width, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stages(torch.relu(self.stem(x)))
        return self.linear(self.pool(x).flatten(1))


class TiedLM(nn.Module):
    """A small transformer LM whose output layer reuses the token embedding."""

    def __init__(self, vocab: int = 50, dim: int = 16, head_first: bool = False) -> None:
        super().__init__()
        if head_first:  # the Linear registers the shared weight first
            self.lm_head = nn.Linear(dim, vocab, bias=False)
        self.tok_emb = nn.Embedding(vocab, dim)
        self.pos_embed = nn.Parameter(torch.zeros(1, 8, dim))
        self.blocks = nn.ModuleList(
            nn.TransformerEncoderLayer(dim, 2, 32, batch_first=True) for _ in range(2)
        )
        self.ln_f = nn.LayerNorm(dim)
        if not head_first:
            self.lm_head = nn.Linear(dim, vocab, bias=False)
        self.lm_head.weight = self.tok_emb.weight

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        h = self.tok_emb(idx) + self.pos_embed[:, : idx.shape[1]]
        for block in self.blocks:
            h = block(h)
        return self.lm_head(self.ln_f(h))


# ---------------------------------------------------------------------------------------------
# Default rules on real models
# ---------------------------------------------------------------------------------------------


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


# ---------------------------------------------------------------------------------------------
# Determinism, patterns, frozen tensors, the report
# ---------------------------------------------------------------------------------------------


def test_partition_is_deterministic_and_in_named_parameters_order() -> None:
    model = timm.create_model("convnext_atto", pretrained=False, num_classes=10)
    first, second = partition_parameters(model), partition_parameters(model)
    assert first.assignments == second.assignments
    assert [a.name for a in first.assignments] == [n for n, _ in model.named_parameters()]
    again = partition_parameters(timm.create_model("convnext_atto", num_classes=10))
    assert [(a.name, a.use_muon, a.reason) for a in again.assignments] == [
        (a.name, a.use_muon, a.reason) for a in first.assignments
    ]


def test_patterns_force_sides_and_say_so() -> None:
    part = partition_parameters(tiny_vit(), muon=["head.weight"], fallback=["blocks.0.*"])
    side, why = sides(part), reasons(part)
    assert side["head.weight"] is True and "muon='head.weight'" in why["head.weight"]
    assert side["blocks.0.attn.qkv.weight"] is False
    assert "fallback='blocks.0.*'" in why["blocks.0.attn.qkv.weight"]
    assert side["blocks.1.attn.qkv.weight"] is True


@pytest.mark.parametrize(
    ("kwargs", "error", "needle"),
    [
        (dict(muon=["blocks.*.atn.qkv.weight"]), ValueError, "blocks.*.atn.qkv.weight"),
        (dict(fallback=["heads.*"]), ValueError, "heads.*"),
        (dict(muon=["blocks.0.norm1.*"]), ValueError, "blocks.0.norm1.weight"),
        (dict(muon=["head.*"]), ValueError, "head.bias"),
        (dict(muon=["head.weight"], fallback=["head*"]), ValueError, "both"),
        (dict(muon="head.weight"), TypeError, "list"),
    ],
)
def test_bad_patterns_raise_naming_the_culprit(kwargs: dict, error: type, needle: str) -> None:
    with pytest.raises(error) as info:
        partition_parameters(tiny_vit(), **kwargs)
    assert needle in str(info.value)


def test_frozen_parameters_are_skipped_with_a_reason() -> None:
    model = tiny_vit()
    model.patch_embed.requires_grad_(False)
    part = partition_parameters(model)
    names = {a.name for a in part.assignments}
    assert "patch_embed.proj.weight" not in names and "patch_embed.proj.bias" not in names
    assert ("patch_embed.proj.weight", "frozen (requires_grad=False)") in part.skipped
    flat = [p for g in part.param_groups() for p in g["params"]]
    assert all(p.requires_grad for p in flat)
    # A pattern that only matches a frozen tensor is not a typo.
    partition_parameters(model, fallback=["patch_embed.*"])


def test_report_lists_every_tensor_and_totals() -> None:
    model = TiedLM()
    model.ln_f.requires_grad_(False)
    part = partition_parameters(model)
    text = part.report()
    for a in part.assignments:
        assert a.name in text
    for name, _ in part.skipped:
        assert name in text
    muon_numel = sum(a.param.numel() for a in part.muon)
    fallback_numel = sum(a.param.numel() for a in part.fallback)
    assert f"Muon {len(part.muon)} tensors ({muon_numel:,} elements)" in text
    assert f"fallback {len(part.fallback)} tensors ({fallback_numel:,} elements)" in text
    assert f"skipped {len(part.skipped)}" in text
    row = next(line for line in text.splitlines() if line.strip().startswith("tok_emb.weight"))
    assert "50x16" in row and "fallback" in row and "embedding" in row


# ---------------------------------------------------------------------------------------------
# Param groups
# ---------------------------------------------------------------------------------------------


def assert_exact_cover(model: nn.Module, groups: list[dict]) -> None:
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    flat = [p for g in groups for p in g["params"]]
    assert len(flat) == len({id(p) for p in flat}) == len(trainable)
    assert {id(p) for p in flat} == trainable
    for g in groups:
        assert g["params"] and len(g["names"]) == len(g["params"])


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


# ---------------------------------------------------------------------------------------------
# Layer decay
# ---------------------------------------------------------------------------------------------


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
