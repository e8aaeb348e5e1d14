"""Plain-PyTorch optimizers (no Lightning import): AMUSE and its relatives."""

from .amuse import AMUSE
from .sfmuon import SFMuon

__all__ = ["AMUSE", "SFMuon"]
