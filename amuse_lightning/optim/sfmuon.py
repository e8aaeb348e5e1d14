"""SFMuon: Schedule-Free Muon with a fixed interpolation, the fixed-beta relative of AMUSE."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from torch import Tensor

from .amuse import AMUSE

__all__ = ["SFMuon"]


class SFMuon(AMUSE):
    """Schedule-Free Muon with a fixed interpolation: AMUSE with ``rho = 0`` (``beta = beta1``)."""

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float = 1e-2,
        *,
        beta: float = 0.9,
        **kwargs: Any,
    ) -> None:
        if "rho" in kwargs or "beta1" in kwargs:
            raise TypeError("SFMuon fixes rho=0 and takes `beta`; use AMUSE for a rising beta_t.")
        value = beta.item() if hasattr(beta, "item") and not isinstance(beta, Tensor) else beta
        if isinstance(value, bool) or not (isinstance(value, (int, float)) and 0.0 < value <= 1):
            # checked here so that the message names SFMuon's key, not AMUSE's beta1
            raise ValueError(f"beta must be a number in (0, 1], got {beta!r}")
        super().__init__(params, lr, beta1=beta, rho=0.0, **kwargs)
