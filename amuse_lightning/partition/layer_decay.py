"""Layer-wise learning-rate decay (BEiT / timm) as per-parameter lr multipliers."""

from __future__ import annotations

from torch import nn


def layer_decay_scales(model: nn.Module, layer_decay: float) -> dict[str, float]:
    """Per-parameter lr multipliers for layer-wise lr decay (BEiT / timm), keyed by name.

    Layers come from the timm model's ``group_matcher(coarse=False)`` (via
    ``timm.models.group_parameters``); with ``L`` layers, layer ``i`` gets
    ``scale_i = layer_decay ** (L - 1 - i)``, so the head has scale 1 and the stem the
    smallest. ``model`` may wrap the timm model (a LightningModule attribute): the outermost
    submodule with ``group_matcher`` is used, and parameters outside it get scale 1.
    """
    if not 0.0 < layer_decay <= 1.0:
        raise ValueError(f"layer_decay must be in (0, 1], got {layer_decay}")
    prefix, matcher_model = _find_group_matcher(model)
    from timm.models import group_parameters

    layer_map = group_parameters(
        matcher_model, matcher_model.group_matcher(coarse=False), reverse=True
    )
    top = max(layer_map.values(), default=0)
    scales = {}
    for name, _ in model.named_parameters(remove_duplicate=False):
        inner = name[len(prefix) :] if name.startswith(prefix) else None
        layer = top if inner is None else layer_map.get(inner, top)
        scales[name] = layer_decay ** (top - layer)
    return scales


def _find_group_matcher(model: nn.Module) -> tuple[str, nn.Module]:
    for name, sub in model.named_modules():
        if callable(getattr(sub, "group_matcher", None)):
            return (f"{name}." if name else ""), sub
    raise ValueError(
        f"{type(model).__name__} has no group_matcher() (timm models such as ViT and ConvNeXt "
        "provide one), so layer decay cannot group its layers; leave layer_decay unset or pass "
        "lr_scales yourself."
    )
