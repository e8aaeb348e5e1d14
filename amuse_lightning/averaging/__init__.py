"""The averaged model in plain PyTorch: no Lightning import, usable from any training loop.

- :func:`averaged_weights` / :class:`AveragedWeights` (``context``): ``x`` in the parameters,
  optionally with BatchNorm statistics re-estimated at ``x``; ``y`` and the training BatchNorm
  buffers back bit for bit afterwards.
- :class:`WeightSwap` (``swap``): the exact ``y <-> x`` swap underneath.
- ``batchnorm``: :func:`reestimate_batchnorm`, :func:`merge_batchnorm_across_ranks`;
  ``snapshot``: :func:`snapshot_buffers` / :func:`load_buffers`, :func:`parameter_names`;
  ``random_state``: :func:`preserved_random_state` (global streams and the generators a data
  source keeps).
- :func:`finish` / :func:`begin_cooldown` / :class:`Cooldown` / :class:`FinishReport`
  (``finisher``): a short cooldown from any point of an AMUSE run, on a copy, for a finished
  model.
- ``batches``: where a side pass (BatchNorm statistics, a cooldown) takes its batches without
  touching the run's data stream (:func:`fresh_loader`; one-shot iterators refused).

The Lightning layer (:mod:`amuse_lightning.lightning`) and the benchmarks are built on these.
"""

from .batches import fresh_loader
from .batchnorm import (
    batchnorm_buffer_names,
    default_forward,
    merge_batchnorm_across_ranks,
    reestimate_batchnorm,
)
from .context import AveragedWeights, averaged_weights
from .finisher import Cooldown, FinishReport, begin_cooldown, copy_run, finish
from .random_state import find_generators, preserved_random_state
from .snapshot import load_buffers, parameter_names, snapshot_buffers
from .swap import WeightSwap

__all__ = [
    "AveragedWeights",
    "Cooldown",
    "FinishReport",
    "WeightSwap",
    "averaged_weights",
    "batchnorm_buffer_names",
    "begin_cooldown",
    "copy_run",
    "default_forward",
    "find_generators",
    "finish",
    "fresh_loader",
    "load_buffers",
    "merge_batchnorm_across_ranks",
    "parameter_names",
    "preserved_random_state",
    "reestimate_batchnorm",
    "snapshot_buffers",
]
