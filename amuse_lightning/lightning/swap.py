"""Moved to :mod:`amuse_lightning.averaging.swap` (plain PyTorch); kept so old imports work."""

from amuse_lightning.averaging.swap import WeightSwap

__all__ = ["WeightSwap"]
