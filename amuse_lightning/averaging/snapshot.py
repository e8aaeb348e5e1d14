"""Named tensors of a module: which name a parameter has, and copies to restore bit for bit."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor, nn

__all__ = ["fingerprint", "load_buffers", "parameter_names", "snapshot_buffers"]


def parameter_names(module: nn.Module) -> dict[int, str]:
    """``id(parameter) -> name`` as ``module.named_parameters()`` spells it (a tied parameter
    under its first name)."""
    return {id(p): name for name, p in module.named_parameters()}


def snapshot_buffers(module: nn.Module, names: Iterable[str]) -> dict[str, Tensor]:
    """Copies of the named buffers, made outside ``inference_mode`` so that they can be loaded
    later from any context."""
    buffers = dict(module.named_buffers())
    with torch.inference_mode(False):
        return {name: buffers[name].detach().clone() for name in names}


@torch.no_grad()
def load_buffers(module: nn.Module, values: dict[str, Tensor]) -> None:
    """Copy ``values`` (by buffer name) into the module's buffers in place, bit for bit."""
    buffers = dict(module.named_buffers())
    for name, value in values.items():
        buffers[name].copy_(value)


@torch.no_grad()
def fingerprint(tensors: Iterable[Tensor]) -> Tensor:
    """A cheap summary of ``tensors`` (per tensor: the sum and the sum of squares, in float64,
    on the CPU) that tells whether they were replaced or changed since it was taken."""
    rows = [torch.stack([t.double().sum(), t.double().square().sum()]) for t in tensors]
    return torch.stack(rows).cpu() if rows else torch.zeros(0, 2, dtype=torch.float64)
