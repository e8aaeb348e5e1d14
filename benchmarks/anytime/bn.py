"""BatchNorm statistics at ``x`` in a plain training loop, built from the library's helpers
(:mod:`amuse_lightning.lightning.batchnorm`): the buffers are snapshotted and restored by name,
and the batches are drawn inside ``preserved_random_state`` so the run's random streams (data
order, augmentation) stay exactly as they were. The re-estimate is the library's: every layer
reset, ``momentum=None`` (cumulative average), train mode, no gradients."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from amuse_lightning.lightning.batchnorm import (
    batchnorm_buffer_names,
    load_buffers,
    preserved_random_state,
    snapshot_buffers,
)


@contextlib.contextmanager
def recalibrated(
    model: nn.Module, batches: Callable[[], Iterator[torch.Tensor]], count: int
) -> Iterator[None]:
    """Inside: BatchNorm running statistics re-estimated from ``count`` input batches at the
    current weights. On exit: the previous statistics and momenta come back."""
    names = batchnorm_buffer_names(model)
    if not names or count == 0:
        yield
        return
    saved = snapshot_buffers(model, names)
    layers = [m for m in model.modules() if isinstance(m, _BatchNorm) and m.track_running_stats]
    momenta = [m.momentum for m in layers]
    try:
        with preserved_random_state(), torch.no_grad():
            for m in layers:
                m.reset_running_stats()
                m.momentum = None
            model.train()
            for _, inputs in zip(range(count), batches(), strict=False):
                model(inputs)
        model.eval()
        yield
    finally:
        for m, momentum in zip(layers, momenta, strict=True):
            m.momentum = momentum
        load_buffers(model, saved)
