"""BatchNorm running statistics at ``x``, in plain PyTorch.

The running statistics a BatchNorm layer gathered while training belong to the ``y`` iterates;
the averaged model ``x`` needs its own. :func:`reestimate_batchnorm` resets every tracking
BatchNorm layer and runs a few batches through the module in train mode with ``momentum=None``,
i.e. the cumulative average::

    running_mean = (1 / N) sum_{i=1..N} mean(batch_i),   likewise running_var.

:func:`merge_batchnorm_across_ranks` turns per-rank estimates into the estimate over every
rank's batches. (Keeping and restoring the buffers by name: :mod:`.snapshot`.)
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

__all__ = [
    "batchnorm_buffer_names",
    "batchnorm_layers",
    "default_forward",
    "merge_batchnorm_across_ranks",
    "reestimate_batchnorm",
    "require_batches",
]


def batchnorm_layers(module: nn.Module) -> list[_BatchNorm]:
    """Every BatchNorm layer of ``module`` that tracks running statistics."""
    return [m for m in module.modules() if isinstance(m, _BatchNorm) and m.track_running_stats]


def batchnorm_buffer_names(module: nn.Module) -> list[str]:
    """Names (as in ``module.state_dict()``) of every BatchNorm running-statistics buffer."""
    names = []
    for prefix, layer in module.named_modules():
        if isinstance(layer, _BatchNorm) and layer.track_running_stats:
            dot = f"{prefix}." if prefix else ""
            names += [f"{dot}running_mean", f"{dot}running_var", f"{dot}num_batches_tracked"]
    return names


def default_forward(module: nn.Module, batch: Any) -> Any:
    """One batch through ``module``: ``module(batch[0])`` for a tuple/list batch (inputs,
    targets, ...), ``module(batch)`` otherwise."""
    return module(batch[0] if isinstance(batch, (list, tuple)) else batch)


def reestimate_batchnorm(
    module: nn.Module,
    batches: Iterable[Any],
    max_batches: int | None = None,
    forward: Callable[[nn.Module, Any], Any] | None = None,
) -> int:
    """Re-estimate the BatchNorm running statistics of ``module``'s current weights from up to
    ``max_batches`` of ``batches`` (all of them if ``None``), each run as ``forward(module,
    batch)`` (default :func:`default_forward`); returns the number of batches used.

    Every tracking BatchNorm layer is reset and run with ``momentum=None`` (a cumulative average)
    in train mode under ``no_grad``; layer momenta and every module's train/eval flag are
    restored afterwards, also after an exception. Random streams are the caller's
    (:func:`~.random_state.preserved_random_state`); :func:`~.context.averaged_weights` does all
    of it around ``x``.
    """
    layers = batchnorm_layers(module)
    if max_batches is not None and max_batches <= 0:
        return 0
    forward = forward or default_forward
    momenta = [m.momentum for m in layers]
    modes = [(m, m.training) for m in module.modules()]
    used = 0
    with torch.no_grad():
        try:
            for m in layers:
                m.reset_running_stats()
                m.momentum = None
            module.train()
            for batch in batches:
                forward(module, batch)
                used += 1
                if used == max_batches:
                    break
        finally:
            for m, momentum in zip(layers, momenta, strict=True):
                m.momentum = momentum
            for m, training in modes:
                m.training = training
    return used


def require_batches(used: int, argument: str = "bn_batches") -> int:
    """The one rule for a re-estimate that got no batches (``argument`` was empty): an error,
    never a model whose statistics were reset to mean 0 / variance 1. Returns ``used``."""
    if used == 0:
        raise RuntimeError(
            f"BatchNorm re-estimation got no batches from {argument} (it is empty); pass "
            f"batches with data in {argument}, or leave {argument}=None to keep the current "
            "statistics."
        )
    return used


@torch.no_grad()
def merge_batchnorm_across_ranks(
    layers: list[_BatchNorm], used: int, group: dist.ProcessGroup | None = None
) -> int:
    """Under data parallelism every rank estimated the statistics on its own batches; replace
    them on every rank by the estimate over all ranks' batches and return the batches used in all.

    With ``n_r`` batches on rank ``r`` and its cumulative averages ``m_r`` (likewise the
    variances), every rank gets ``m = sum_r n_r m_r / sum_r n_r``: the cumulative average over
    all ``sum_r n_r`` batches, identical on every rank (one all-reduce, in float64). Every rank
    of ``group`` must call this; without an initialised process group it does nothing.
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size(group) == 1:
        return used
    buffers = [b for m in layers for b in (m.running_mean, m.running_var)]
    if not buffers:
        return used
    count = torch.ones(1, dtype=torch.float64, device=buffers[0].device)
    flat = torch.cat([count, *(b.detach().double().flatten() for b in buffers)]) * used
    dist.all_reduce(flat, group=group)
    total = round(flat[0].item())
    if total == 0:
        return 0
    flat = flat[1:] / total
    offset = 0
    for buffer in buffers:
        buffer.copy_(flat[offset : offset + buffer.numel()].view_as(buffer))
        offset += buffer.numel()
    for m in layers:
        m.num_batches_tracked.fill_(total)
    return total
