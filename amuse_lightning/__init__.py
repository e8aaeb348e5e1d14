"""amuse-lightning: AMUSE and the Muon family for PyTorch and PyTorch Lightning."""

__version__ = "0.1.0"

from .callback import AmuseCallback
from .mixin import AmuseMixin, default_amuse_factory
from .optim import AMUSE, SFMuon
from .partition import Partition, layer_decay_scales, partition_parameters
