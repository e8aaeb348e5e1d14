"""Optimizer factories and what they build, for the mixin, the CLI and the examples.

A *factory* maps the Muon/fallback param groups to one optimizer: a class, a
``functools.partial`` (what LightningCLI makes of ``class_path`` + ``init_args``) or an
:class:`AmuseFactory`. This module answers the questions the layers above ask about one:

- :func:`is_schedule_free`: does an optimizer (or optimizer class) follow the Schedule-Free
  convention, so that there is an averaged model ``x`` to swap in? The one definition used by the
  callback, the mixin and the CLI.
- :func:`optimizer_class_of`: which class a factory builds, when that can be told.
- :func:`with_warmup_steps`: the factory rebuilt with another ``warmup_steps``.
- :func:`factory_keywords`, :func:`changed_argument`: which arguments a factory sets, and which
  of them differ from the optimizer's own defaults (what the user changed).
- :func:`factory_from_config`: a ``{"class_path", "init_args"}`` spec (a parsed YAML optimizer)
  as a factory, so that a configuration can be checked before anything is built.
"""

from __future__ import annotations

import functools
import importlib
import inspect
from collections.abc import Callable, Mapping
from typing import Any

from torch.optim import Optimizer

from amuse_lightning.optim import AMUSE

__all__ = [
    "AmuseFactory",
    "OptimizerFactory",
    "builds_schedule_free",
    "changed_argument",
    "default_amuse_factory",
    "factory_from_config",
    "factory_keywords",
    "is_schedule_free",
    "optimizer_class_of",
    "with_warmup_steps",
]

OptimizerFactory = Callable[[Any], Optimizer]


def is_schedule_free(optimizer: Optimizer | type) -> bool:
    """Whether ``optimizer`` follows the Schedule-Free convention.

    An optimizer instance needs ``train()``/``eval()`` methods (which convert the parameters in
    place between ``y`` and ``x``) and ``train_mode`` in every param group, which says which of
    the two the parameters hold. For a class, only the methods can be checked.
    """
    methods = (getattr(optimizer, "train", None), getattr(optimizer, "eval", None))
    if not all(callable(method) for method in methods):
        return False
    if isinstance(optimizer, type):
        return True
    groups = getattr(optimizer, "param_groups", None)
    return groups is not None and all("train_mode" in group for group in groups)


class AmuseFactory:
    """Picklable ``groups -> AMUSE(groups, **kwargs)``; the keyword names are checked up front."""

    def __init__(self, **kwargs: Any) -> None:
        self.kwargs = dict(kwargs)
        try:
            inspect.signature(AMUSE).bind([], **self.kwargs)
        except TypeError as err:
            raise TypeError(f"AMUSE does not accept {sorted(kwargs)}: {err}") from None

    def __call__(self, params: Any) -> Optimizer:
        return AMUSE(params, **self.kwargs)

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.kwargs.items())
        return f"AmuseFactory({args})"


def default_amuse_factory(**kwargs: Any) -> AmuseFactory:
    """A callable building :class:`amuse_lightning.AMUSE` from param groups with ``kwargs``."""
    return AmuseFactory(**kwargs)


def optimizer_class_of(factory: Any) -> type | None:
    """The class a factory builds: itself, the class inside a (jsonargparse) ``partial``,
    :class:`~amuse_lightning.AMUSE` for an :class:`AmuseFactory`; ``None`` when it cannot be
    told (e.g. a lambda)."""
    if isinstance(factory, AmuseFactory):
        return AMUSE
    if isinstance(factory, type):
        return factory
    if isinstance(factory, functools.partial):
        for candidate in (factory.func, *factory.args):
            if isinstance(candidate, type) and issubclass(candidate, Optimizer):
                return candidate
            if isinstance(candidate, functools.partial):
                return optimizer_class_of(candidate)
    return None


def builds_schedule_free(factory: Any) -> bool:
    """Whether ``factory`` builds a schedule-free optimizer; ``None`` (AMUSE with its defaults)
    and factories whose class cannot be told count as yes."""
    if factory is None:
        return True
    cls = optimizer_class_of(factory)
    return cls is None or is_schedule_free(cls)


def with_warmup_steps(factory: OptimizerFactory, warmup_steps: int) -> OptimizerFactory | None:
    """``factory`` rebuilt to pass ``warmup_steps``; ``None`` if its optimizer takes no such
    argument (or its class cannot be told)."""
    if isinstance(factory, AmuseFactory):
        return default_amuse_factory(**{**factory.kwargs, "warmup_steps": warmup_steps})
    cls = optimizer_class_of(factory)
    if cls is None or "warmup_steps" not in inspect.signature(cls).parameters:
        return None
    return functools.partial(factory, warmup_steps=warmup_steps)


def factory_keywords(factory: Any) -> dict[str, Any]:
    """The keyword arguments ``factory`` passes to its optimizer, as far as they can be told
    (an :class:`AmuseFactory`'s, a ``partial``'s, nested partials merged; ``{}`` otherwise)."""
    if isinstance(factory, AmuseFactory):
        return dict(factory.kwargs)
    if not isinstance(factory, functools.partial):
        return {}
    inner: dict[str, Any] = {}
    for candidate in (factory.func, *factory.args):
        if isinstance(candidate, (functools.partial, AmuseFactory)):
            inner = factory_keywords(candidate)
    return {**inner, **factory.keywords}


def changed_argument(factory: Any, name: str) -> Any | None:
    """The value ``factory`` passes for argument ``name`` when it differs from the optimizer's
    default (the user changed it), else ``None``.

    A parsed YAML optimizer carries every argument, defaults included, so "given" can only be
    told as "different from the default".
    """
    cls = optimizer_class_of(factory)
    kwargs = factory_keywords(factory)
    if cls is None or name not in kwargs:
        return None
    parameter = inspect.signature(cls).parameters.get(name)
    if parameter is None or kwargs[name] == parameter.default:
        return None
    return kwargs[name]


def import_class_path(path: str) -> Any:
    """The object named by a dotted ``class_path`` (``amuse_lightning.AMUSE``)."""
    module, _, name = path.rpartition(".")
    if not module:
        raise ImportError(f"class_path {path!r} needs a module: write package.module.Class")
    return getattr(importlib.import_module(module), name)


def factory_from_config(spec: Any) -> OptimizerFactory | None:
    """A factory from a parsed optimizer spec ``{"class_path": ..., "init_args": {...}}``;
    ``None`` for anything else (``None``, a spec whose class cannot be imported)."""
    if not isinstance(spec, Mapping) or not isinstance(spec.get("class_path"), str):
        return None
    try:
        cls = import_class_path(spec["class_path"])
    except (ImportError, AttributeError):
        return None
    return functools.partial(cls, **dict(spec.get("init_args") or {}))
