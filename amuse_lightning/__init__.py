"""amuse-lightning: AMUSE and the Muon family for PyTorch and PyTorch Lightning.

The package has two layers. ``amuse_lightning.optim`` (the optimizers) and
``amuse_lightning.partition`` (which tensor gets which update) are plain PyTorch and import no
Lightning. ``amuse_lightning.lightning`` (callback, mixin, CLI) sits on top of them. The Lightning
names below are resolved lazily (PEP 562), so ``from amuse_lightning import AMUSE`` never loads
Lightning while ``from amuse_lightning import AmuseCallback`` still works.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from amuse_lightning.optim import AMUSE, SFMuon
from amuse_lightning.partition import Partition, layer_decay_scales, partition_parameters

__version__ = "0.1.0"

# public name -> module that defines it (imported on first access)
_LAZY: dict[str, str] = {
    "AmuseCallback": "amuse_lightning.lightning.callback",
    "AmuseMixin": "amuse_lightning.lightning.mixin",
    "default_amuse_factory": "amuse_lightning.lightning.factories",
}

__all__ = [
    "AMUSE",
    "AmuseCallback",
    "AmuseMixin",
    "Partition",
    "SFMuon",
    "default_amuse_factory",
    "layer_decay_scales",
    "partition_parameters",
]

if TYPE_CHECKING:  # pragma: no cover - for type checkers and IDEs only
    from amuse_lightning.lightning.callback import AmuseCallback
    from amuse_lightning.lightning.factories import default_amuse_factory
    from amuse_lightning.lightning.mixin import AmuseMixin


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'amuse_lightning' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # cache: later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
