"""AMUSE and SFMuon in timm's optimizer factory.

Usage::

    import timm.optim
    from amuse_lightning.integrations import timm as amuse_timm

    amuse_timm.register()          # once per process: adds "amuse" and "sfmuon" to timm's registry
    optimizer = timm.optim.create_optimizer_v2(
        model, opt="amuse", lr=1e-3, weight_decay=0.05, layer_decay=0.75, warmup_steps=500
    )

timm builds the param groups (weight decay, and with ``layer_decay`` one group per block with its
``lr_scale``) and hands them to the registered factory, :func:`create_amuse`. That factory splits
each group by the AMUSE partition of the model (:func:`amuse_lightning.partition_parameters`):
hidden matrices and conv kernels go to Muon; embeddings, position / class / register tokens, the
stem (``patch_embed``) and the classifier head go to the fallback, each part keeping the timm
group's ``lr_scale`` and ``weight_decay`` (AMUSE applies ``lr_scale`` itself: use no timm LR
scheduler with it). Groups timm marks ``use_fallback=True`` (its ``fallback_list`` patterns)
stay on the fallback. Extra keywords go to the optimizer; timm's own ``momentum`` argument
(default 0.9 in timm) is not passed on, so AMUSE's Muon momentum stays 0.95.

timm passes the factory only the groups, not the model. The factory reads the model from the
frame of timm's ``OptimizerRegistry.create_optimizer`` that called it (its ``model_or_params``
argument). When that is not possible (parameters instead of a model, a direct call, a timm
whose factory is organised differently) the groups are used as timm built them, which AMUSE
splits by shape with a warning; :func:`amuse_param_groups` does the split explicitly, e.g.
``create_amuse(amuse_param_groups(model, groups), ...)`` or
``create_optimizer_v2(model, "amuse", fallback_list=fallback_names(model))``.

Plain PyTorch and timm: nothing here imports Lightning.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterable
from typing import Any

from torch import Tensor, nn

from amuse_lightning.optim import AMUSE, SFMuon
from amuse_lightning.partition import partition_parameters

__all__ = ["amuse_param_groups", "create_amuse", "create_sfmuon", "fallback_names", "register"]

_OPTIMIZERS = {
    "amuse": "AMUSE: Muon directions + Schedule-Free averaging, rising beta (amuse-lightning)",
    "sfmuon": "Schedule-Free Muon, fixed beta (amuse-lightning)",
}


def register(registry: Any = None) -> None:
    """Add ``"amuse"`` and ``"sfmuon"`` to timm's optimizer registry (default: the one
    ``timm.optim.create_optimizer_v2`` uses). Calling it again changes nothing."""
    from timm.optim import OptimInfo

    if registry is None:
        from timm.optim._optim_factory import default_registry as registry
    factories = {"amuse": create_amuse, "sfmuon": create_sfmuon}
    known = set(registry.list_optimizers())
    for name, description in _OPTIMIZERS.items():
        if name in known and registry.get_optimizer_info(name).opt_class is factories[name]:
            continue
        registry.register(
            OptimInfo(
                name=name,
                opt_class=factories[name],
                description=description,
                has_eps=True,
                has_momentum=False,  # keep AMUSE's momentum=0.95 unless given
                has_betas=False,  # AMUSE takes beta1 / beta2, not betas=(...)
            )
        )


def create_amuse(params: Iterable[Any], **kwargs: Any) -> AMUSE:
    """:class:`~amuse_lightning.AMUSE` from timm's param groups, split by the model's partition
    when the model can be found (see the module docstring)."""
    return AMUSE(_split_for_model(params), **kwargs)


def create_sfmuon(params: Iterable[Any], **kwargs: Any) -> SFMuon:
    """:class:`~amuse_lightning.SFMuon` (``beta`` instead of ``beta1`` / ``rho``), as
    :func:`create_amuse`."""
    return SFMuon(_split_for_model(params), **kwargs)


def amuse_param_groups(model: nn.Module, groups: Iterable[Any]) -> list[dict[str, Any]]:
    """timm's param groups (or a flat parameter list) of ``model`` split into Muon and fallback
    by :func:`~amuse_lightning.partition_parameters`; every other key of a group (``lr_scale``,
    ``weight_decay``, ...) is kept on both parts, and ``names`` is added. A group with
    ``use_fallback=True`` stays on the fallback; one that already says ``use_muon`` is kept."""
    partition = partition_parameters(model)
    side = {id(a.param): a.use_muon for a in partition.assignments}
    name = {id(a.param): a.name for a in partition.assignments}
    items = list(groups)
    if items and isinstance(items[0], Tensor):
        items = [{"params": items}]
    split: list[dict[str, Any]] = []
    for group in items:
        if "use_muon" in group:
            split.append(dict(group))
            continue
        params = [group["params"]] if isinstance(group["params"], Tensor) else group["params"]
        rest = {k: v for k, v in group.items() if k not in ("params", "use_fallback", "names")}
        forced = bool(group.get("use_fallback", False))
        for use_muon in (True, False):
            chosen = [
                p for p in params if (not forced and side.get(id(p), p.ndim >= 2)) == use_muon
            ]
            if chosen:
                names = [name.get(id(p), f"<unnamed {tuple(p.shape)}>") for p in chosen]
                split.append({**rest, "params": chosen, "names": names, "use_muon": use_muon})
    return split


def fallback_names(model: nn.Module) -> list[str]:
    """The names the AMUSE partition sends to the fallback, for timm's ``fallback_list``."""
    return [a.name for a in partition_parameters(model).fallback]


def _split_for_model(params: Iterable[Any]) -> Any:
    model = _model_from_timm_factory()
    return params if model is None else amuse_param_groups(model, params)


def _model_from_timm_factory(depth: int = 4) -> nn.Module | None:
    """The model timm's ``OptimizerRegistry.create_optimizer`` is building an optimizer for,
    read from its frame (it calls the registered factory directly); ``None`` if not found."""
    from timm.optim import OptimizerRegistry

    frame = inspect.currentframe()
    try:
        for _ in range(depth):
            frame = frame.f_back if frame is not None else None
            if frame is None:
                return None
            if frame.f_code.co_name == "create_optimizer" and isinstance(
                frame.f_locals.get("self"), OptimizerRegistry
            ):
                model = frame.f_locals.get("model_or_params")
                return model if isinstance(model, nn.Module) else None
        return None
    finally:
        del frame
