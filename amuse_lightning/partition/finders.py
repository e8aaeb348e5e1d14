"""Finding the stem and the classifier head of a model, and the module types the rules name."""

from __future__ import annotations

from collections.abc import Mapping

from torch import nn

EMBEDDING_TYPES = (nn.Embedding, nn.EmbeddingBag)
CONV_TYPES = (nn.modules.conv._ConvNd,)
MATRIX_TYPES = (nn.Linear, *CONV_TYPES)
MHA_MATRICES = ("in_proj_weight", "q_proj_weight", "k_proj_weight", "v_proj_weight")
_HEAD_NAMES = ("fc", "classifier", "head", "lm_head")


def _params_of(module: nn.Module) -> list[nn.Parameter]:
    return [p for p in module.parameters() if p.ndim >= 2]


def find_stem(module: nn.Module) -> tuple[set[int], str]:
    """Matrix params of the patch embedding, or else of the first conv in module order."""
    for name, sub in module.named_modules():
        if name == "patch_embed" or name.endswith(".patch_embed"):
            proj = getattr(sub, "proj", None)
            target = proj if isinstance(proj, nn.Module) else sub
            params = _params_of(target)
            if params:
                where = f"{name}.proj" if target is proj else name
                return {id(p) for p in params}, f"stem: patch embedding ({where})"
    for name, sub in module.named_modules():
        if isinstance(sub, CONV_TYPES):
            return {id(p) for p in _params_of(sub)}, f"stem: first conv ({name})"
    return set(), ""


def _last_matrix_module(module: nn.Module) -> nn.Module | None:
    if isinstance(module, MATRIX_TYPES):
        return module
    found = None
    for sub in module.modules():
        if isinstance(sub, MATRIX_TYPES):
            found = sub
    return found


def _timm_heads(model: nn.Module) -> list[nn.Module]:
    """timm: ``get_classifier()`` (may be a tuple), else ``pretrained_cfg["classifier"]``."""
    get_classifier = getattr(model, "get_classifier", None)
    if callable(get_classifier):
        try:
            heads = get_classifier()
        except Exception:  # a model whose get_classifier needs state it lacks
            heads = None
        if heads is not None:
            heads = heads if isinstance(heads, (tuple, list)) else (heads,)
            return [h for h in heads if isinstance(h, nn.Module)]
    prefixes = (getattr(model, "pretrained_cfg", None) or {}).get("classifier") or ()
    prefixes = (prefixes,) if isinstance(prefixes, str) else tuple(prefixes)
    heads = []
    for prefix in prefixes:
        try:
            heads.append(model.get_submodule(prefix))
        except AttributeError:
            continue
    return heads


def _is_timm_like(sub: nn.Module) -> bool:
    cfg = getattr(sub, "pretrained_cfg", None)
    has_cfg = isinstance(cfg, Mapping) and "classifier" in cfg
    return callable(getattr(sub, "get_classifier", None)) or has_cfg


def find_head(module: nn.Module) -> tuple[set[int], str]:
    """Matrix params of the classifier head and a label saying how it was found.

    In order: a timm model's ``get_classifier()`` / ``pretrained_cfg["classifier"]``; a child
    named ``fc``, ``classifier``, ``head`` or ``lm_head`` of the module or of one of its direct
    children (torchvision, nanoGPT / Hugging Face style); a Linear sharing its weight with an
    embedding (tied LM head); else the last ``nn.Linear`` in module order.
    """
    for finder in (_timm_head, _named_head, _tied_head):
        found = finder(module)
        if found is not None:
            return found
    return _last_linear_head(module, exclude=set())


def _timm_head(module: nn.Module) -> tuple[set[int], str] | None:
    for _, sub in module.named_modules():
        if not _is_timm_like(sub):
            continue
        heads = [m for m in (_last_matrix_module(h) for h in _timm_heads(sub)) if m is not None]
        if heads:
            names = {id(m): n for n, m in module.named_modules()}
            label = ", ".join(names.get(id(h), "?") for h in heads)
            return {id(p) for h in heads for p in _params_of(h)}, f"classifier head (timm {label})"
        # A headless timm backbone (num_classes=0): the head, if any, is a Linear after it.
        return _last_linear_head(module, exclude={id(m) for m in sub.modules()})
    return None


def _named_head(module: nn.Module) -> tuple[set[int], str] | None:
    for name, sub in module.named_modules():
        if name.count(".") > 0:
            continue
        for child_name in _HEAD_NAMES:
            child = getattr(sub, child_name, None)
            head = _last_matrix_module(child) if isinstance(child, nn.Module) else None
            if head is not None:
                where = f"{name}.{child_name}" if name else child_name
                return {id(p) for p in _params_of(head)}, f"classifier head ({where})"
    return None


def _tied_head(module: nn.Module) -> tuple[set[int], str] | None:
    embedded = {id(m.weight) for m in module.modules() if isinstance(m, EMBEDDING_TYPES)}
    for name, sub in module.named_modules():
        if isinstance(sub, nn.Linear) and id(sub.weight) in embedded:
            return {id(sub.weight)}, f"output head tied to an embedding ({name})"
    return None


def _last_linear_head(module: nn.Module, exclude: set[int]) -> tuple[set[int], str]:
    found = None
    for name, sub in module.named_modules():
        if isinstance(sub, nn.Linear) and id(sub) not in exclude:
            found = (name, sub)
    if found is None:
        return set(), ""
    return {id(p) for p in _params_of(found[1])}, f"classifier head (last nn.Linear {found[0]})"
