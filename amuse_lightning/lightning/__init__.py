"""The Lightning layer: everything in amuse-lightning that imports Lightning.

``callback`` (AmuseCallback: which weights, y or x, the rest of Lightning sees), ``swap`` (the
exact y <-> x swap), ``checkpoint`` (what a checkpoint carries for an exact resume),
``batchnorm`` (BatchNorm statistics at x), ``save_hook``, ``sharded`` (FSDP2), ``mixin``
(configure_optimizers from the partition) and ``cli`` (the ``amuse-lightning`` command). Imports
only go down: this layer uses ``amuse_lightning.optim`` and ``amuse_lightning.partition``, never
the other way round.
"""

from amuse_lightning.lightning.callback import AmuseCallback
from amuse_lightning.lightning.mixin import AmuseMixin, default_amuse_factory

__all__ = ["AmuseCallback", "AmuseMixin", "default_amuse_factory"]
