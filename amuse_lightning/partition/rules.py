"""The rules: which side each trainable tensor takes, and the reason recorded for it."""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence
from dataclasses import dataclass

from torch import nn

from .finders import CONV_TYPES, EMBEDDING_TYPES, MHA_MATRICES, find_head, find_stem
from .result import ParamAssignment, Partition

#: A parameter whose name contains one of these is a learned token / position table -> fallback.
TOKEN_NAME_PARTS: tuple[str, ...] = (
    "pos_embed",
    "position_embedding",
    "pos_emb",
    "cls_token",
    "reg_token",
    "register_token",
    "dist_token",
    "mask_token",
)


@dataclass
class _Context:
    """What the rules need to know about the whole module."""

    stem: set[int]
    stem_reason: str
    head: set[int]
    head_reason: str


def _owner(module: nn.Module, name: str) -> tuple[nn.Module, str]:
    prefix, _, leaf = name.rpartition(".")
    return (module.get_submodule(prefix) if prefix else module), leaf


def _matching(patterns: Sequence[str], names: Sequence[str]) -> str | None:
    for pattern in patterns:
        if any(fnmatch.fnmatchcase(n, pattern) for n in names):
            return pattern
    return None


def _forced_side(
    names: Sequence[str], param: nn.Parameter, muon: Sequence[str], fallback: Sequence[str]
) -> tuple[bool, str] | None:
    to_muon = _matching(muon, names)
    to_fallback = _matching(fallback, names)
    if to_muon and to_fallback:
        raise ValueError(
            f"parameter '{names[0]}' matches both muon pattern '{to_muon}' and fallback pattern "
            f"'{to_fallback}'; make the patterns disjoint."
        )
    if to_muon:
        if param.ndim < 2:
            raise ValueError(
                f"muon pattern '{to_muon}' matches '{names[0]}' of shape {tuple(param.shape)}, "
                "but Muon needs a matrix or conv kernel (2+ dims); narrow the pattern."
            )
        return True, f"pattern muon='{to_muon}'"
    if to_fallback:
        return False, f"pattern fallback='{to_fallback}'"
    return None


def _default_side(
    module: nn.Module, names: Sequence[str], param: nn.Parameter, ctx: _Context
) -> tuple[bool, str]:
    owners = [_owner(module, n) for n in names]
    owner, leaf = owners[0]
    if param.ndim < 2:
        kind = "bias" if leaf == "bias" else f"{type(owner).__name__}.{leaf}"
        return False, f"<2 dims ({kind})"
    token = next((t for n in names for t in TOKEN_NAME_PARTS if t in n), None)
    if token is not None:
        return False, f"position/class token (name contains '{token}')"
    embedding = next((m for m, _ in owners if isinstance(m, EMBEDDING_TYPES)), None)
    if embedding is not None:
        return False, f"embedding ({type(embedding).__name__})"
    if id(param) in ctx.stem:
        return False, ctx.stem_reason
    if id(param) in ctx.head:
        return False, ctx.head_reason
    return _matrix_side(owner, leaf, param)


def _matrix_side(owner: nn.Module, leaf: str, param: nn.Parameter) -> tuple[bool, str]:
    kind = type(owner).__name__
    if isinstance(owner, nn.Linear) and leaf == "weight":
        return True, f"hidden matrix ({kind} {param.shape[1]}->{param.shape[0]})"
    if isinstance(owner, CONV_TYPES) and leaf == "weight":
        rows, cols = param.shape[0], param[0].numel()
        if owner.groups > 1 and owner.groups == owner.in_channels:
            return True, f"depthwise conv kernel ({kind}, flattened to {rows}x{cols})"
        return True, f"conv kernel ({kind}, flattened to {rows}x{cols})"
    if isinstance(owner, nn.MultiheadAttention) and leaf in MHA_MATRICES:
        return True, f"attention projection ({kind}.{leaf})"
    return False, (
        f"{param.ndim}-D parameter of unrecognised module {kind} ({leaf}); "
        "pass muon=[name pattern] if it is a hidden matrix"
    )


def partition_parameters(
    module: nn.Module,
    *,
    muon: Sequence[str] = (),
    fallback: Sequence[str] = (),
    stem_to_fallback: bool = True,
    head_to_fallback: bool = True,
) -> Partition:
    """Split ``module``'s trainable parameters into Muon and fallback, with a reason for each.

    ``muon`` and ``fallback`` are :func:`fnmatch.fnmatchcase` globs on the parameter name as
    ``module.named_parameters()`` spells it (``*`` also matches dots, e.g.
    ``"blocks.*.attn.qkv.weight"``, ``"*conv_dw.weight"``); a match forces that side. A pattern
    that matches no parameter, a tensor matched by both lists, or a tensor with fewer than 2
    dims forced to Muon raises ``ValueError``. ``stem_to_fallback`` / ``head_to_fallback``
    switch off the stem and classifier-head rules. Frozen tensors are skipped; a tied tensor
    appears once, under its first name. See the module docstring for the rules.
    """
    muon, fallback = _as_patterns(muon, "muon"), _as_patterns(fallback, "fallback")
    named = list(module.named_parameters(remove_duplicate=False))
    _check_patterns_match(muon, fallback, [n for n, _ in named])
    aliases: dict[int, list[str]] = {}
    for name, param in named:
        aliases.setdefault(id(param), []).append(name)

    stem, stem_reason = find_stem(module) if stem_to_fallback else (set(), "")
    head, head_reason = find_head(module) if head_to_fallback else (set(), "")
    ctx = _Context(stem, stem_reason, head, head_reason)

    assignments, skipped = [], []
    for name, param in module.named_parameters():
        names = aliases[id(param)]
        skipped += [(alias, f"tied to {name}; optimised under that name") for alias in names[1:]]
        if not param.requires_grad:
            skipped.append((name, "frozen (requires_grad=False)"))
            continue
        forced = _forced_side(names, param, muon, fallback)
        use_muon, reason = forced or _default_side(module, names, param, ctx)
        if len(names) > 1:
            reason += f"; tied with {', '.join(names[1:])}"
        assignments.append(ParamAssignment(name, param, use_muon, reason, tuple(names[1:])))
    return Partition(assignments, skipped, type(module).__name__)


def _as_patterns(patterns: Sequence[str] | str, label: str) -> tuple[str, ...]:
    if isinstance(patterns, str):
        raise TypeError(f"{label}= takes a list of name patterns, e.g. {label}=['{patterns}']")
    return tuple(patterns)


def _check_patterns_match(
    muon: Sequence[str], fallback: Sequence[str], names: Sequence[str]
) -> None:
    for label, patterns in (("muon", muon), ("fallback", fallback)):
        for pattern in patterns:
            if not any(fnmatch.fnmatchcase(n, pattern) for n in names):
                raise ValueError(
                    f"{label} pattern '{pattern}' matches no parameter name; names look like "
                    f"{list(names[:3])} (fnmatch globs, '*' also matches dots)."
                )
