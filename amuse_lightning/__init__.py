"""amuse-lightning: AMUSE and the Muon family for PyTorch and PyTorch Lightning.

The package has layers. ``amuse_lightning.optim`` (the optimizers), ``amuse_lightning.partition``
(which tensor gets which update) and ``amuse_lightning.averaging`` are plain PyTorch and import no
Lightning. ``amuse_lightning.lightning`` (callback, mixin, finisher) sits on top of them, and
``amuse_lightning.cli`` (the ``amuse-lightning`` command) on top of that. Every public name below
is resolved lazily (PEP 562): ``import amuse_lightning`` loads nothing heavy (so
``amuse-lightning --version`` needs no torch), ``from amuse_lightning import AMUSE`` loads torch
but no Lightning, and ``from amuse_lightning import AmuseCallback`` loads Lightning.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from amuse_lightning._lazy import lazy_names

__version__ = "0.1.0"

# public name -> module that defines it (imported on first access)
_LAZY: dict[str, str] = {
    "AMUSE": "amuse_lightning.optim",
    "SFMuon": "amuse_lightning.optim",
    "Partition": "amuse_lightning.partition",
    "layer_decay_scales": "amuse_lightning.partition",
    "partition_parameters": "amuse_lightning.partition",
    "AmuseCallback": "amuse_lightning.lightning.callback",
    "AmuseMixin": "amuse_lightning.lightning.mixin",
    "default_amuse_factory": "amuse_lightning.lightning.factories",
}

# subpackages reachable as attributes after ``import amuse_lightning`` (``amuse_lightning.optim``)
_SUBPACKAGES = frozenset(
    {"averaging", "cli", "examples", "integrations", "lightning", "optim", "partition"}
)

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
    from amuse_lightning.optim import AMUSE, SFMuon
    from amuse_lightning.partition import Partition, layer_decay_scales, partition_parameters


__getattr__, __dir__ = lazy_names("amuse_lightning", _LAZY, globals(), _SUBPACKAGES)
