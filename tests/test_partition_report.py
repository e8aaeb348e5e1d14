"""The partition is deterministic, patterns force sides (and bad ones say why), frozen tensors
are skipped, and the report shows every decision."""

from __future__ import annotations

import pytest
import timm

from amuse_lightning.partition import partition_parameters
from tests.helpers.partition_models import TiedLM, reasons, sides, tiny_vit


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


def test_compact_report_has_one_row_per_kind_and_none_is_empty() -> None:
    part = partition_parameters(timm.create_model("vit_small_patch16_224", pretrained=False))
    full, compact = part.report(), part.report("compact")
    assert compact.splitlines()[0] == full.splitlines()[0]  # the same totals line
    assert len(full.splitlines()) > 150 and len(compact.splitlines()) <= 8
    rows = {line.split()[0] + " " + line.split()[1]: line for line in compact.splitlines()[2:]}
    muon = rows["muon 48"]
    assert muon.count("hidden matrix") == 1 and "blocks.0.attn.qkv.weight" in muon
    assert "stem: patch embedding" in compact and "position/class token" in compact
    assert "classifier head" in compact and "head.weight" in compact
    assert part.report("none") == ""
    with pytest.raises(ValueError, match="compact"):
        part.report("short")
