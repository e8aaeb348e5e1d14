"""In-memory image datasets and the batch collate that augments and normalises.

A training batch's augmentation can draw from a generator seeded by the batch's sample indices
(``BatchAugment(seed=...)`` over an :class:`IndexedDataset`): it is then a function of which
samples the batch holds, the same in a resumed run, in any dataloader worker and in a second
pass over the epoch.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch.utils.data import Dataset

from amuse_lightning.lightning.errors import ConfigError

from .sampler import mixed_seed

__all__ = ["BatchAugment", "IndexedDataset", "TensorImageDataset", "split_train_val"]


class TensorImageDataset(Dataset):
    """``(uint8 image (C, H, W), int label)`` pairs from two in-memory tensors."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        if images.dtype != torch.uint8 or images.ndim != 4:
            raise ValueError(
                f"images must be uint8 (N, C, H, W), got {images.dtype} {images.shape}"
            )
        if len(images) != len(labels):
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
        self.images = images
        self.labels = labels.long()

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.images[index], self.labels[index]


class IndexedDataset(Dataset):
    """``dataset[i]`` followed by ``i``: lets a collate function know which samples it holds."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> tuple:
        return (*self.dataset[index], index)


class BatchAugment:
    """Collate function: stack ``uint8`` images, augment the batch, normalise.

    ``out = (crop_flip(img / 255) - mean) / std``; ``crop_flip`` pads each image with
    ``crop_padding`` zeros on every side, takes a random ``H x W`` window and mirrors it with
    probability ``hflip``. With ``train=False`` only the normalisation is applied.

    With ``seed=None`` the random numbers come from torch's global generator. With a ``seed``
    the samples must be ``(image, label, index)`` (an :class:`IndexedDataset`) and the crop and
    flip draw from a generator seeded by ``(seed, *indices)``: the batch's augmentation is then a
    function of the samples it holds.
    """

    def __init__(
        self,
        mean: Sequence[float],
        std: Sequence[float],
        train: bool = False,
        crop_padding: int = 0,
        hflip: float = 0.0,
        seed: int | None = None,
    ) -> None:
        self.mean = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
        self.train = train
        self.crop_padding = crop_padding
        self.hflip = hflip
        self.seed = seed

    def __call__(self, samples: list[tuple[torch.Tensor, ...]]) -> list[torch.Tensor]:
        images = torch.stack([s[0] for s in samples]).float().div_(255)
        labels = torch.stack([s[1] for s in samples])
        if self.train:
            generator = None
            if self.seed is not None:
                if len(samples[0]) != 3:
                    raise ValueError(
                        "BatchAugment(seed=...) needs (image, label, index) samples; wrap the "
                        "dataset in IndexedDataset or pass seed=None"
                    )
                indices = [int(s[2]) for s in samples]
                generator = torch.Generator().manual_seed(mixed_seed(self.seed, *indices))
            images = self.augment(images, generator)
        return [(images - self.mean) / self.std, labels]

    def augment(
        self, images: torch.Tensor, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Random crop (zero padding) and horizontal flip of a float batch ``(B, C, H, W)``."""
        b, _, h, w = images.shape
        p = self.crop_padding
        if p > 0:
            padded = torch.nn.functional.pad(images, (p, p, p, p))
            dy = torch.randint(0, 2 * p + 1, (b, 1), generator=generator)
            dx = torch.randint(0, 2 * p + 1, (b, 1), generator=generator)
            rows = (dy + torch.arange(h)).view(b, 1, h, 1)
            cols = (dx + torch.arange(w)).view(b, 1, 1, w)
            batch_idx = torch.arange(b).view(b, 1, 1, 1)
            chan_idx = torch.arange(images.shape[1]).view(1, -1, 1, 1)
            images = padded[batch_idx, chan_idx, rows, cols]
        if self.hflip > 0:
            flip = torch.rand(b, generator=generator) < self.hflip
            images = torch.where(flip.view(b, 1, 1, 1), images.flip(3), images)
        return images


def split_train_val(
    num_samples: int, val_size: int, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """A seeded random split of ``range(num_samples)`` into train and validation indices."""
    if not 0 <= val_size < num_samples:
        raise ConfigError(
            f"val_size must be in [0, {num_samples}) for a training set of {num_samples}, "
            f"got {val_size}"
        )
    perm = torch.randperm(num_samples, generator=torch.Generator().manual_seed(seed))
    return perm[val_size:].sort().values, perm[:val_size].sort().values
