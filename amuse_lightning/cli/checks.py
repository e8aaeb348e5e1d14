"""Checks on a parsed ``amuse-lightning`` config, before any model, data or trainer is built.

:func:`check_parsed_config` raises :class:`~amuse_lightning.lightning.errors.ConfigError` naming
the YAML key of the first setting that cannot work:

- every optimizer spec in ``model.init_args`` (``class_path`` + ``init_args`` of a
  ``torch.optim.Optimizer`` subclass) is built once on two dummy tensors, so the optimizer's own
  argument checks (ranges such as ``beta1`` in (0, 1], choices such as ``direction``) run at
  parse time and say which key to change;
- a model or datamodule class may define a classmethod ``check_init_args(init_args)`` (a dict of
  the parsed values) raising ``ConfigError(message, key=<argument>)``; the example modules check
  data folders, timm model names and warmup settings this way. A classmethod
  ``check_downloads(init_args)`` runs after every ``check_init_args`` of the config: for checks
  that may wait on the network (the example ``TimmClassifier``: are pretrained weights cached
  or their host reachable).
"""

from __future__ import annotations

import ast
import contextlib
import re
import warnings
from collections.abc import Mapping
from typing import Any

import torch
from jsonargparse import Namespace
from torch.optim import Optimizer

from amuse_lightning.lightning.errors import ConfigError, did_you_mean
from amuse_lightning.lightning.factories import import_class_path

__all__ = ["check_optimizer_arguments", "check_parsed_config"]


def check_parsed_config(config: Namespace) -> None:
    """Check the ``model`` and ``data`` sections of one subcommand's parsed config: every
    ``check_init_args`` first, then every ``check_downloads`` (checks that may wait on the
    network, so that a setting wrong on its face is reported first)."""
    sections = []
    for section in ("model", "data"):
        spec = config.get(section)
        if not isinstance(spec, Namespace) or not isinstance(spec.get("class_path"), str):
            continue
        init_args = _plain(spec.get("init_args"))
        if section == "model":
            _check_optimizer_specs(init_args, f"{section}.init_args")
        sections.append((section, _class(spec.class_path), init_args))
    for hook in ("check_init_args", "check_downloads"):
        for section, cls, init_args in sections:
            check = getattr(cls, hook, None)
            if callable(check):
                try:
                    check(init_args)
                except ConfigError as err:
                    raise err.under(f"{section}.init_args") from err


def check_optimizer_arguments(cls: type, init_args: Mapping[str, Any], key: str) -> None:
    """Build ``cls`` (an optimizer class) with ``init_args`` on two dummy tensors (a Muon matrix
    and a fallback vector) and turn its ``ValueError`` into a ``ConfigError`` naming
    ``key.<argument>``. Errors other than ``ValueError`` are left to the real construction."""
    groups = [
        {"params": [torch.zeros(2, 2, requires_grad=True)], "use_muon": True},
        {"params": [torch.zeros(2, requires_grad=True)], "use_muon": False},
    ]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            cls(groups, **init_args)
    except ValueError as err:
        raise _named(err, cls, init_args, key) from err
    except Exception:  # e.g. a class needing more than groups: the real build reports it
        return


def _check_optimizer_specs(init_args: Mapping[str, Any], key: str) -> None:
    for name, value in init_args.items():
        if not isinstance(value, Mapping) or not isinstance(value.get("class_path"), str):
            continue
        cls = _class(value["class_path"])
        if isinstance(cls, type) and issubclass(cls, Optimizer):
            args = dict(value.get("init_args") or {})
            check_optimizer_arguments(cls, args, f"{key}.{name}.init_args")


def _named(err: ValueError, cls: type, init_args: Mapping[str, Any], key: str) -> ConfigError:
    """``"beta1 must be in (0, 1], got 2.0 (param group 0)"`` -> key ``<key>.beta1``."""
    text = re.sub(r" \(param group \d+\)", "", str(err)).strip()
    first, _, rest = text.partition(" ")
    if first not in init_args:
        return ConfigError(f"{text} ({cls.__name__})", key=key)
    choice = re.search(r"one of (\(.*?\)), got '([^']*)'", rest)
    if choice:
        with contextlib.suppress(ValueError, SyntaxError):
            rest += did_you_mean(choice.group(2), ast.literal_eval(choice.group(1)))
    return ConfigError(rest, key=f"{key}.{first}")


def _class(class_path: str) -> Any:
    try:
        return import_class_path(class_path)
    except (ImportError, AttributeError):  # jsonargparse has already reported it
        return None


def _plain(value: Any) -> dict[str, Any]:
    if isinstance(value, Namespace):
        return value.as_dict()
    return dict(value or {})
