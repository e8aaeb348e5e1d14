"""A shuffling sampler whose order is a function of (seed, epoch): resumable by construction.

``DataLoader(shuffle=True)`` draws each epoch's permutation from torch's global random generator.
A run resumed from a checkpoint starts that generator from ``seed_everything`` again, not from
where the interrupted run left it, so from the resumed epoch on it trains on other batches than
the uninterrupted run. :class:`EpochShuffleSampler` keeps no random state between epochs: epoch
``e`` is ``randperm(n)`` under a generator seeded from ``(seed, e)``, and Lightning tells the
sampler the epoch (``set_epoch``, also through its distributed wrapper) before every epoch,
including the first one after a resume.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import Sampler

__all__ = ["EpochShuffleSampler", "mixed_seed", "run_seed"]


def run_seed(seed: int | None = None) -> int:
    """``seed``, else the seed ``seed_everything`` recorded (``PL_GLOBAL_SEED``), else 0."""
    if seed is not None:
        return int(seed)
    return int(os.environ.get("PL_GLOBAL_SEED", 0))


def mixed_seed(*numbers: int) -> int:
    """A 63-bit generator seed that depends on every number given (``numpy.SeedSequence``)."""
    entropy = [int(n) & 0xFFFF_FFFF_FFFF_FFFF for n in numbers]
    return int(np.random.SeedSequence(entropy).generate_state(1, np.uint64)[0] >> np.uint64(1))


class EpochShuffleSampler(Sampler[int]):
    """A random order of ``range(num_samples)`` that depends only on ``(seed, epoch)``.

    Args:
        num_samples: dataset length.
        seed: the shuffling seed; ``None`` takes the seed of ``seed_everything`` at construction
            (see :func:`run_seed`), so the CLI's ``seed_everything`` sets it.

    ``set_epoch(e)`` selects the permutation of epoch ``e``; iterating draws nothing from the
    global random generators, so a second pass over the same epoch (BatchNorm recalibration,
    a resumed run) sees the same order. ``state_dict()`` / ``load_state_dict()`` hold
    ``seed`` and ``epoch`` for loops that do not call ``set_epoch``.
    """

    def __init__(self, num_samples: int, seed: int | None = None) -> None:
        if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 0:
            raise ValueError(f"num_samples must be an int >= 0, got {num_samples!r}")
        self.num_samples = num_samples
        self.seed = run_seed(seed)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def permutation(self, epoch: int | None = None) -> torch.Tensor:
        """The order of ``epoch`` (default: the current one)."""
        epoch = self.epoch if epoch is None else epoch
        gen = torch.Generator().manual_seed(mixed_seed(self.seed, epoch))
        return torch.randperm(self.num_samples, generator=gen)

    def __iter__(self) -> Iterator[int]:
        return iter(self.permutation().tolist())

    def __len__(self) -> int:
        return self.num_samples

    def state_dict(self) -> dict[str, Any]:
        return {"seed": self.seed, "epoch": self.epoch}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.seed, self.epoch = int(state["seed"]), int(state["epoch"])
