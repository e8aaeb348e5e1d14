"""Plain-PyTorch optimizers (no Lightning import): AMUSE and its relatives."""

from .amuse import AMUSE, SFMuon

__all__ = ["AMUSE", "SFMuon"]
