"""The Lightning layer: everything in amuse-lightning that imports Lightning.

``callback`` (AmuseCallback: which weights, y or x, the rest of Lightning sees), ``state`` (its
phase), ``swap`` (the exact y <-> x swap), ``checkpoint`` (what a checkpoint carries for an exact
resume), ``batchnorm`` (BatchNorm statistics at x), ``save_hook``, ``sharded`` (FSDP2),
``checks`` (what is refused at setup), ``compat`` (the one private Lightning read),
``factories`` (optimizer factories, ``is_schedule_free``), ``mixin`` (configure_optimizers from
the partition), ``finish`` (a finished checkpoint: ``finish_checkpoint``, ``CooldownCallback``)
and ``errors`` (``ConfigError``, plain Python). Imports only go down: this layer uses
``amuse_lightning.optim``, ``partition`` and ``averaging``, never the other way round; the
``amuse-lightning`` command (``amuse_lightning.cli``) and the examples sit above it and nothing
here imports them. The names below are resolved on first access, so importing one submodule
loads only what it needs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from amuse_lightning._lazy import lazy_names

__all__ = [
    "AmuseCallback",
    "AmuseMixin",
    "CooldownCallback",
    "default_amuse_factory",
    "finish_checkpoint",
]

_LAZY: dict[str, str] = {
    "AmuseCallback": "amuse_lightning.lightning.callback",
    "AmuseMixin": "amuse_lightning.lightning.mixin",
    "CooldownCallback": "amuse_lightning.lightning.finish",
    "finish_checkpoint": "amuse_lightning.lightning.finish",
    "default_amuse_factory": "amuse_lightning.lightning.factories",
}

if TYPE_CHECKING:  # pragma: no cover - for type checkers and IDEs only
    from amuse_lightning.lightning.callback import AmuseCallback
    from amuse_lightning.lightning.factories import default_amuse_factory
    from amuse_lightning.lightning.finish import CooldownCallback, finish_checkpoint
    from amuse_lightning.lightning.mixin import AmuseMixin


__getattr__, __dir__ = lazy_names("amuse_lightning.lightning", _LAZY, globals())
