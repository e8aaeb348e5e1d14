"""CIFAR-10 / CIFAR-100 through torchvision, held in memory."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from amuse_lightning.lightning.errors import ConfigError, DataNotFoundError, did_you_mean

from .in_memory import InMemoryImageDataModule

__all__ = ["CIFAR_STATS", "CIFARDataModule"]

CIFAR_STATS = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616), 10, "cifar-10-batches-py"),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762), 100, "cifar-100-python"),
}


class CIFARDataModule(InMemoryImageDataModule):
    """CIFAR-10 or CIFAR-100 through torchvision (50k train / 10k test, 32x32 RGB).

    Args:
        root: folder holding (or receiving) ``cifar-10-batches-py`` / ``cifar-100-python``.
        dataset: ``"cifar10"`` or ``"cifar100"``.
        download: let torchvision download the archive when it is missing.
        (the rest as :class:`InMemoryImageDataModule`; augmentation is the standard
        4-pixel-padded random crop + horizontal flip)
    """

    def __init__(
        self,
        root: str = "data",
        dataset: str = "cifar10",
        download: bool = True,
        batch_size: int = 128,
        val_size: int = 5000,
        split_seed: int = 0,
        num_workers: int = 0,
        augment: bool = True,
        crop_padding: int = 4,
        eval_batch_size: int | None = None,
        shuffle_seed: int | None = None,
    ) -> None:
        _check_dataset(dataset)
        super().__init__(
            batch_size, val_size, split_seed, num_workers, augment, crop_padding, eval_batch_size,
            shuffle_seed,
        )  # fmt: skip
        self.root = root
        self.dataset = dataset
        self.download = download
        self.mean, self.std, self.num_classes, self.folder = CIFAR_STATS[dataset]

    @classmethod
    def check_init_args(cls, init_args: Mapping[str, Any]) -> None:
        """Parse-time check (the CLI calls it): the dataset name, and without ``download`` the
        extracted archive under ``root``."""
        dataset = init_args.get("dataset", "cifar10")
        _check_dataset(dataset)
        expected = Path(init_args.get("root", "data")) / CIFAR_STATS[dataset][3]
        if not init_args.get("download", True) and not expected.is_dir():
            raise DataNotFoundError(
                f"{expected} is missing and download is false; extract the python-version "
                "archive there, point root at its parent, or set download: true",
                key="root",
            )

    def prepare_data(self) -> None:
        self._datasets()

    def _datasets(self) -> tuple[Any, Any]:
        from torchvision import datasets

        cls = datasets.CIFAR10 if self.dataset == "cifar10" else datasets.CIFAR100
        expected = Path(self.root) / self.folder
        try:
            train = cls(self.root, train=True, download=self.download)
            test = cls(self.root, train=False, download=self.download)
        except Exception as err:
            hint = "" if self.download else "; set data.init_args.download=true to fetch it"
            raise DataNotFoundError(
                f"{self.dataset} not found in {expected} and not downloadable ({err}); "
                "extract the python-version archive from "
                f"https://www.cs.toronto.edu/~kriz/cifar.html so that {expected} exists, "
                f"or point data.init_args.root at its parent{hint}"
            ) from err
        return train, test

    def load_arrays(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        train, test = self._datasets()

        def to_tensors(ds: Any) -> tuple[torch.Tensor, torch.Tensor]:
            images = torch.from_numpy(np.ascontiguousarray(ds.data)).permute(0, 3, 1, 2)
            return images.contiguous(), torch.as_tensor(ds.targets)

        return (*to_tensors(train), *to_tensors(test))


def _check_dataset(dataset: str) -> None:
    if dataset not in CIFAR_STATS:
        hint = did_you_mean(dataset, CIFAR_STATS)
        raise ConfigError(f"must be one of {sorted(CIFAR_STATS)}, got {dataset!r}{hint}", "dataset")
