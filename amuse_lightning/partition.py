"""Which parameter goes to Muon and which to the fallback update, and why.

Muon orthogonalises the update of a weight *matrix*; it only makes sense for hidden linear maps
(``nn.Linear`` weights, attention projections, MLP layers) and conv kernels (which the optimizer
flattens from ``(C_out, C_in, *k)`` to ``(C_out, C_in * prod(k))``). Every other tensor takes the
element-wise fallback update (Adam without first moment, or SGD). The rules decide by module type
and parameter name, never by ``ndim >= 2`` alone, and record a reason per tensor:

1. name patterns given by the user (``muon=`` / ``fallback=``) win;
2. tensors with fewer than 2 dims (biases, norm scales, layer-scale gammas, scalars) -> fallback;
3. position / class / register / distillation tokens (by name) -> fallback;
4. ``nn.Embedding`` / ``nn.EmbeddingBag`` weights (also when tied to an output layer) -> fallback;
5. the stem (``patch_embed.proj`` or else the first conv in module order) -> fallback;
6. the classifier head -> fallback;
7. ``nn.Linear`` / conv / ``nn.MultiheadAttention`` weight matrices -> Muon;
8. any other tensor with 2+ dims (relative position tables, custom parameters) -> fallback, with a
   reason telling how to force it onto Muon.

Depthwise conv kernels ``(C, 1, k, k)`` (ConvNeXt ``conv_dw``) stay on Muon by rule 7: the
optimizer flattens them to ``(C, k*k)`` and orthogonalises that. timm's own Muon sends them to
AdamW instead; to do the same here pass ``fallback=["*conv_dw.weight"]``.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from torch import nn

__all__ = [
    "TOKEN_NAME_PARTS",
    "ParamAssignment",
    "Partition",
    "layer_decay_scales",
    "partition_parameters",
]

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

_EMBEDDING_TYPES = (nn.Embedding, nn.EmbeddingBag)
_CONV_TYPES = (nn.modules.conv._ConvNd,)
_MATRIX_TYPES = (nn.Linear, *_CONV_TYPES)
_MHA_MATRICES = ("in_proj_weight", "q_proj_weight", "k_proj_weight", "v_proj_weight")
_HEAD_NAMES = ("fc", "classifier", "head", "lm_head")


@dataclass(frozen=True)
class ParamAssignment:
    """One trainable tensor and the side it is optimised on.

    ``aliases`` lists the other names of a tied tensor (the same ``nn.Parameter`` reached twice).
    Equality compares the description (names, side, reason), not the tensor values.
    """

    name: str
    param: nn.Parameter = field(repr=False, compare=False)
    use_muon: bool
    reason: str
    aliases: tuple[str, ...] = ()

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.param.shape)

    @property
    def side(self) -> str:
        return "muon" if self.use_muon else "fallback"


@dataclass
class Partition:
    """The result of :func:`partition_parameters`.

    ``assignments`` follow ``module.named_parameters()`` order; ``skipped`` holds ``(name, reason)``
    for frozen tensors and for the extra names of tied tensors.
    """

    assignments: list[ParamAssignment]
    skipped: list[tuple[str, str]] = field(default_factory=list)
    module_type: str = ""

    @property
    def muon(self) -> list[ParamAssignment]:
        return [a for a in self.assignments if a.use_muon]

    @property
    def fallback(self) -> list[ParamAssignment]:
        return [a for a in self.assignments if not a.use_muon]

    def by_name(self) -> dict[str, dict]:
        """Plain-data view keyed by parameter name: ``{"use_muon", "reason", "shape"}``.

        It holds no tensors, so it survives wrapping (DDP, FSDP) and pickling.
        """
        return {
            a.name: {"use_muon": a.use_muon, "reason": a.reason, "shape": a.shape}
            for a in self.assignments
        }

    def param_groups(
        self,
        *,
        lr: float | None = None,
        weight_decay: float | None = None,
        fallback_lr: float | None = None,
        fallback_weight_decay: float | None = None,
        decay_1d: bool = False,
        lr_scales: Mapping[str, float] | None = None,
    ) -> list[dict]:
        """Param-group dicts for :class:`amuse_lightning.AMUSE` (or any torch optimizer).

        At most one group per (side, decays, lr_scale); empty groups are omitted. Each group has
        ``params``, ``names``, ``use_muon`` and ``group_name``; ``lr`` and ``weight_decay`` appear
        only when given (``fallback_lr`` / ``fallback_weight_decay`` default to ``lr`` /
        ``weight_decay``), so the optimizer's defaults apply otherwise. Tensors with fewer than
        2 dims get ``weight_decay = 0`` unless ``decay_1d=True``. ``lr_scales`` maps parameter
        name -> multiplier (timm layer decay, see :func:`layer_decay_scales`); names it lacks get
        1.0, and the groups then carry ``lr_scale``.
        """
        if not self.assignments:
            raise ValueError(
                f"{self.module_type or 'the module'} has no trainable parameters "
                f"({len(self.skipped)} skipped: frozen or tied); unfreeze some parameters "
                "(requires_grad=True) before building an optimizer."
            )
        if lr_scales is not None:
            self._check_scale_names(lr_scales)
        buckets: dict[tuple[bool, bool, float | None], list[ParamAssignment]] = {}
        for a in self.assignments:
            decays = decay_1d or a.param.ndim >= 2
            scale = None if lr_scales is None else _lookup_scale(lr_scales, a)
            buckets.setdefault((a.use_muon, decays, scale), []).append(a)

        def order(key: tuple[bool, bool, float | None]) -> tuple:
            use_muon, decays, scale = key
            return (not use_muon, not decays, 0.0 if scale is None else scale)

        groups = []
        for key in sorted(buckets, key=order):
            use_muon, decays, scale = key
            side_lr = lr if use_muon or fallback_lr is None else fallback_lr
            side_wd = weight_decay
            if not use_muon and fallback_weight_decay is not None:
                side_wd = fallback_weight_decay
            group = _make_group(buckets[key], use_muon, decays, scale, side_lr, side_wd)
            groups.append(group)
        return groups

    def _check_scale_names(self, lr_scales: Mapping[str, float]) -> None:
        known = {a.name for a in self.assignments}
        known.update(alias for a in self.assignments for alias in a.aliases)
        known.update(name for name, _ in self.skipped)
        unknown = sorted(set(lr_scales) - known)
        if unknown:
            raise ValueError(
                f"lr_scales names parameters the module does not have: {unknown[:5]}; "
                "build it from the same module (e.g. layer_decay_scales(module, decay))."
            )

    def report(self) -> str:
        """A readable table: totals per side, then one row per tensor (name, shape, side, why)."""
        lines = [self._summary_line()]
        rows = [(a.name, _fmt_shape(a.shape), a.side, a.reason) for a in self.assignments]
        lines += _table(("name", "shape", "side", "reason"), rows)
        if self.skipped:
            lines.append("skipped:")
            lines += _table(("name", "reason"), self.skipped)
        return "\n".join(lines)

    def _summary_line(self) -> str:
        def count(items: list[ParamAssignment]) -> str:
            numel = sum(a.param.numel() for a in items)
            return f"{len(items)} tensors ({numel:,} elements)"

        head = f"AMUSE partition of {self.module_type}" if self.module_type else "AMUSE partition"
        return (
            f"{head}: Muon {count(self.muon)}, fallback {count(self.fallback)}, "
            f"skipped {len(self.skipped)}"
        )


def _lookup_scale(lr_scales: Mapping[str, float], a: ParamAssignment) -> float:
    for name in (a.name, *a.aliases):
        if name in lr_scales:
            return float(lr_scales[name])
    return 1.0


def _make_group(
    items: list[ParamAssignment],
    use_muon: bool,
    decays: bool,
    scale: float | None,
    lr: float | None,
    weight_decay: float | None,
) -> dict:
    name = f"{'muon' if use_muon else 'fallback'}_{'decay' if decays else 'no_decay'}"
    group: dict = {
        "params": [a.param for a in items],
        "names": [a.name for a in items],
        "use_muon": use_muon,
        "group_name": name if scale is None else f"{name}_scale{scale:g}",
    }
    if lr is not None:
        group["lr"] = lr
    if not decays:
        group["weight_decay"] = 0.0
    elif weight_decay is not None:
        group["weight_decay"] = weight_decay
    if scale is not None:
        group["lr_scale"] = scale
    return group


def _fmt_shape(shape: tuple[int, ...]) -> str:
    return "x".join(str(s) for s in shape) if shape else "scalar"


def _table(header: tuple[str, ...], rows: Iterable[tuple[str, ...]]) -> list[str]:
    rows = [header, *rows]
    widths = [max(len(r[i]) for r in rows) for i in range(len(header) - 1)]

    def fmt(row: tuple[str, ...]) -> str:
        cells = [c.ljust(w) for c, w in zip(row[:-1], widths, strict=True)]
        return "  " + "  ".join([*cells, row[-1]]).rstrip()

    return [fmt(r) for r in rows]


# --------------------------------------------------------------------------------------------
# Finding the stem and the head
# --------------------------------------------------------------------------------------------


def _params_of(module: nn.Module) -> list[nn.Parameter]:
    return [p for p in module.parameters() if p.ndim >= 2]


def _find_stem(module: nn.Module) -> tuple[set[int], str]:
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
        if isinstance(sub, _CONV_TYPES):
            return {id(p) for p in _params_of(sub)}, f"stem: first conv ({name})"
    return set(), ""


def _last_matrix_module(module: nn.Module) -> nn.Module | None:
    if isinstance(module, _MATRIX_TYPES):
        return module
    found = None
    for sub in module.modules():
        if isinstance(sub, _MATRIX_TYPES):
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


def _find_head(module: nn.Module) -> tuple[set[int], str]:
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
    embedded = {id(m.weight) for m in module.modules() if isinstance(m, _EMBEDDING_TYPES)}
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


# --------------------------------------------------------------------------------------------
# The rules
# --------------------------------------------------------------------------------------------


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
    embedding = next((m for m, _ in owners if isinstance(m, _EMBEDDING_TYPES)), None)
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
    if isinstance(owner, _CONV_TYPES) and leaf == "weight":
        rows, cols = param.shape[0], param[0].numel()
        if owner.groups > 1 and owner.groups == owner.in_channels:
            return True, f"depthwise conv kernel ({kind}, flattened to {rows}x{cols})"
        return True, f"conv kernel ({kind}, flattened to {rows}x{cols})"
    if isinstance(owner, nn.MultiheadAttention) and leaf in _MHA_MATRICES:
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

    stem, stem_reason = _find_stem(module) if stem_to_fallback else (set(), "")
    head, head_reason = _find_head(module) if head_to_fallback else (set(), "")
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


# --------------------------------------------------------------------------------------------
# timm layer decay
# --------------------------------------------------------------------------------------------


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
