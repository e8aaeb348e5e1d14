"""amuse-lightning: AMUSE and the Muon family for PyTorch and PyTorch Lightning."""

__version__ = "0.1.0"

from .optim import AMUSE, SFMuon
