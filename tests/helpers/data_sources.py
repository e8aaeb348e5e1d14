"""Data sources whose state the averaging layer must leave alone, or refuse (shared by the plain
loop and the Lightning configuration tests)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch.utils.data import IterableDataset, Sampler


class OwnGeneratorSampler(Sampler[int]):
    """A sampler with its own torch.Generator under a name of its own, and an epoch counter."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.shuffler = torch.Generator().manual_seed(3)
        self.passes = 0

    def __iter__(self):
        self.passes += 1
        return iter(torch.randperm(self.n, generator=self.shuffler).tolist())

    def __len__(self) -> int:
        return self.n


class SelfIterating(IterableDataset):
    """A dataset that is its own iterator: every pass shares one stream, so a second pass (a
    BatchNorm re-estimate, a cooldown) would drain the training stream."""

    def __init__(self, data: Sequence[Any]) -> None:
        self.data = data
        self.position = 0

    def __iter__(self):
        return self

    def __next__(self):
        if self.position >= len(self.data):
            self.position = 0
            raise StopIteration
        self.position += 1
        return self.data[self.position - 1]
