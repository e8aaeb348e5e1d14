"""BatchNorm statistics at ``x`` in a plain training loop, with the library's code
(:mod:`amuse_lightning.lightning.batchnorm`): the same re-estimate the callback runs (every
layer reset, ``momentum=None``, train mode, no gradients), buffers snapshotted and restored by
name, and the batches drawn inside ``preserved_random_state`` so the run's random streams (data
order, augmentation) stay exactly as they were."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import torch
from torch import nn

from amuse_lightning.lightning.batchnorm import (
    batchnorm_buffer_names,
    load_buffers,
    preserved_random_state,
    reestimate_running_stats,
    snapshot_buffers,
)


@contextlib.contextmanager
def recalibrated(
    model: nn.Module, batches: Callable[[], Iterator[torch.Tensor]], count: int
) -> Iterator[None]:
    """Inside: BatchNorm running statistics re-estimated from ``count`` input batches at the
    current weights (the library's :func:`reestimate_running_stats`), model in eval mode. On
    exit: the previous statistics come back."""
    names = batchnorm_buffer_names(model)
    if not names or count == 0:
        yield
        return
    saved = snapshot_buffers(model, names)
    try:
        with preserved_random_state():
            reestimate_running_stats(model, batches(), count, model)
        model.eval()
        yield
    finally:
        load_buffers(model, saved)
