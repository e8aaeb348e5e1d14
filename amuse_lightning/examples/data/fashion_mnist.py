"""Fashion-MNIST from local idx files (Debian's package, a folder) or torchvision's download."""

from __future__ import annotations

import gzip
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from amuse_lightning.lightning.errors import DataNotFoundError

from .in_memory import InMemoryImageDataModule

__all__ = ["DEBIAN_FASHION_MNIST", "FASHION_MNIST_FILES", "FashionMNISTDataModule", "read_idx"]

DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
"""Where Debian's ``dataset-fashion-mnist`` package puts the idx files."""

FASHION_MNIST_FILES = {
    "train_images": "train-images-idx3-ubyte.gz",
    "train_labels": "train-labels-idx1-ubyte.gz",
    "test_images": "t10k-images-idx3-ubyte.gz",
    "test_labels": "t10k-labels-idx1-ubyte.gz",
}


def read_idx(path: str | os.PathLike[str]) -> np.ndarray:
    """Read an idx file (``.gz`` or raw) as used by MNIST/Fashion-MNIST into a ``uint8`` array.

    Format: 2 zero bytes, a type byte (``0x08`` = uint8), a byte with the number of dims, one
    big-endian ``uint32`` per dim, then the data in C order.
    """
    path = Path(path)
    raw = path.read_bytes()
    if path.suffix == ".gz":
        raw = gzip.decompress(raw)
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise ValueError(f"{path} is not an idx file of uint8 (bad magic {raw[:4]!r})")
    ndim = raw[3]
    shape = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(shape)):
        raise ValueError(f"{path}: header says shape {shape} but holds {data.size} bytes")
    return data.reshape(shape)


class FashionMNISTDataModule(InMemoryImageDataModule):
    """Fashion-MNIST (60k train / 10k test, 28x28 grey, 10 classes).

    With ``root`` set, the four idx files are read from ``root`` or ``root/FashionMNIST/raw``
    (``.gz`` or unpacked); if neither has them, torchvision downloads them into ``root``
    (``download=True``), else it is an error. A ``root`` that does not exist is an error: it is
    never replaced by another folder. With ``root=None`` the files come from Debian's
    ``/usr/share/datasets/fashion-mnist`` (package ``dataset-fashion-mnist``), else torchvision
    downloads them into ``data/``.

    Args:
        root: folder with the four idx files, or where to download them (must exist).
        download: allow torchvision to download when no local copy is found.
        crop_padding: zero padding of the random crop (2 for 28x28 images).
        (the rest as :class:`InMemoryImageDataModule`)
    """

    mean = (0.2860,)
    std = (0.3530,)
    num_classes = 10

    def __init__(
        self,
        root: str | None = None,
        download: bool = True,
        batch_size: int = 128,
        val_size: int = 5000,
        split_seed: int = 0,
        num_workers: int = 0,
        augment: bool = True,
        crop_padding: int = 2,
        eval_batch_size: int | None = None,
        shuffle_seed: int | None = None,
    ) -> None:
        super().__init__(
            batch_size, val_size, split_seed, num_workers, augment, crop_padding, eval_batch_size,
            shuffle_seed,
        )  # fmt: skip
        self.root = root
        self.download = download

    @classmethod
    def check_init_args(cls, init_args: Mapping[str, Any]) -> None:
        """Parse-time check (the CLI calls it): a ``root`` that is given must exist."""
        _check_root(init_args.get("root"))

    def candidate_dirs(self) -> list[Path]:
        """Folders searched for the idx files, in order: ``root`` (and its torchvision layout)
        when it is set, else Debian's package folder."""
        if self.root is None:
            return [DEBIAN_FASHION_MNIST]
        _check_root(self.root)
        return [Path(self.root), Path(self.root) / "FashionMNIST" / "raw"]

    def find_local(self) -> Path | None:
        """The first candidate folder holding all four idx files (``.gz`` or unpacked)."""
        for folder in self.candidate_dirs():
            if all(_idx_file(folder, name) is not None for name in FASHION_MNIST_FILES.values()):
                return folder
        return None

    def load_arrays(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        folder = self.find_local()
        if folder is not None:
            arrays = {
                key: torch.from_numpy(read_idx(_idx_file(folder, name)).copy())
                for key, name in FASHION_MNIST_FILES.items()
            }
            return (
                arrays["train_images"].unsqueeze(1),
                arrays["train_labels"],
                arrays["test_images"].unsqueeze(1),
                arrays["test_labels"],
            )
        return self._download()

    def _download(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        searched = ", ".join(str(d) for d in self.candidate_dirs())
        if not self.download:
            raise DataNotFoundError(
                f"Fashion-MNIST idx files not found in {searched}; install Debian's "
                "dataset-fashion-mnist, put the four *-ubyte.gz files in data.init_args.root, or "
                "set data.init_args.download=true"
            )
        from torchvision.datasets import FashionMNIST

        root = self.root or "data"
        try:
            train = FashionMNIST(root, train=True, download=True)
            test = FashionMNIST(root, train=False, download=True)
        except Exception as err:  # offline: say where the files are expected
            raise DataNotFoundError(
                f"Fashion-MNIST not found in {searched} and the download into "
                f"{Path(root) / 'FashionMNIST' / 'raw'} failed ({err}); copy the four "
                "*-ubyte.gz files into one of those folders"
            ) from err
        return train.data.unsqueeze(1), train.targets, test.data.unsqueeze(1), test.targets


def _idx_file(folder: Path, name: str) -> Path | None:
    for candidate in (folder / name, folder / name.removesuffix(".gz")):
        if candidate.is_file():
            return candidate
    return None


def _check_root(root: str | None) -> None:
    if root is not None and not Path(root).is_dir():
        raise DataNotFoundError(
            f"{root} does not exist; pass the folder holding the four Fashion-MNIST "
            "*-ubyte.gz files (an existing empty folder to download into), or root: null for "
            f"Debian's {DEBIAN_FASHION_MNIST} or a download into ./data",
            key="root",
        )
