"""Generated data for tests and smoke runs: in-memory tensors and a tiny ImageNet-layout folder."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from .in_memory import InMemoryImageDataModule

__all__ = ["SyntheticImageDataModule", "make_synthetic_image_folder"]


class SyntheticImageDataModule(InMemoryImageDataModule):
    """Random but learnable images for tests and smoke runs (no files, no downloads).

    Each class has a fixed random template; an image is its class template plus uniform noise,
    ``img = clip(template * 255 * (1 - noise) + U(0, 255) * noise)``.

    Args:
        num_classes, in_channels, image_size: shape of the problem.
        num_train, num_test: number of generated images (validation comes out of train).
        noise: mixing weight of the noise, in [0, 1).
        seed: generator seed (templates and samples).
        shuffle_seed: as :class:`InMemoryImageDataModule`.
    """

    mean = (0.5,)
    std = (0.25,)

    def __init__(
        self,
        num_classes: int = 10,
        in_channels: int = 3,
        image_size: int = 32,
        num_train: int = 512,
        num_test: int = 128,
        noise: float = 0.5,
        seed: int = 0,
        batch_size: int = 32,
        val_size: int = 64,
        num_workers: int = 0,
        augment: bool = False,
        crop_padding: int = 4,
        shuffle_seed: int | None = None,
    ) -> None:
        super().__init__(
            batch_size, val_size, seed, num_workers, augment, crop_padding,
            shuffle_seed=shuffle_seed,
        )  # fmt: skip
        self.num_classes = num_classes
        self.in_channels = in_channels
        self.image_size = image_size
        self.num_train = num_train
        self.num_test = num_test
        self.noise = noise
        self.seed = seed
        self.mean = (0.5,) * in_channels
        self.std = (0.25,) * in_channels

    def load_arrays(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        gen = torch.Generator().manual_seed(self.seed)
        shape = (self.in_channels, self.image_size, self.image_size)
        templates = torch.rand(self.num_classes, *shape, generator=gen)

        def sample(n: int) -> tuple[torch.Tensor, torch.Tensor]:
            labels = torch.randint(0, self.num_classes, (n,), generator=gen)
            noise = torch.rand(n, *shape, generator=gen)
            images = templates[labels] * (1 - self.noise) + noise * self.noise
            return (images * 255).round().clamp_(0, 255).to(torch.uint8), labels

        return (*sample(self.num_train), *sample(self.num_test))


def make_synthetic_image_folder(
    root: str | os.PathLike[str],
    num_classes: int = 3,
    images_per_class: int = 8,
    image_size: int = 32,
    splits: Sequence[str] = ("train", "val"),
    seed: int = 0,
) -> Path:
    """Write a tiny ImageNet-layout folder ``root/<split>/class_<k>/<i>.png`` and return ``root``.

    Class ``k`` images are a fixed random colour template plus noise, so a model can learn them.
    """
    from PIL import Image

    root = Path(root)
    rng = np.random.default_rng(seed)
    templates = rng.integers(0, 256, size=(num_classes, image_size, image_size, 3))
    for split in splits:
        for k in range(num_classes):
            folder = root / split / f"class_{k}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(images_per_class):
                noise = rng.integers(0, 256, size=templates[k].shape)
                img = (0.6 * templates[k] + 0.4 * noise).astype(np.uint8)
                Image.fromarray(img).save(folder / f"{i}.png")
    return root
