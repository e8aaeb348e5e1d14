"""The base of the in-memory datamodules: uint8 tensors, a seeded validation split, resumable
training order and augmentation."""

from __future__ import annotations

import torch
from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader, Dataset

from .batches import BatchAugment, IndexedDataset, TensorImageDataset, split_train_val
from .sampler import EpochShuffleSampler

__all__ = ["InMemoryImageDataModule"]


class InMemoryImageDataModule(LightningDataModule):
    """Base for datasets that fit in memory as ``uint8`` tensors.

    Subclasses implement :meth:`load_arrays` returning ``(train_images, train_labels,
    test_images, test_labels)`` with images ``uint8 (N, C, H, W)``. A seeded ``val_size`` split
    of the training set is the validation set; the official test set is the test set (and what
    ``predict`` runs on). ``val_size=0`` validates on the test set.

    Args:
        batch_size: per-device batch size for every split.
        val_size: images held out of the training set for validation.
        split_seed: seed of the train/validation split (independent of ``seed_everything``).
        num_workers: dataloader workers; 0 is fastest for in-memory data on few cores.
        augment: random crop + flip for training batches.
        crop_padding: zero padding of the random crop (pixels per side).
        eval_batch_size: batch size of val/test/predict (default: ``batch_size``).
        shuffle_seed: seed of the training order and augmentation (default: the run's
            ``seed_everything`` seed). Epoch ``e`` takes the order of
            ``EpochShuffleSampler(seed, e)`` and each batch's crop/flip is seeded by its sample
            indices, so a run resumed at an epoch boundary trains on the same batches as the
            uninterrupted run.
    """

    mean: tuple[float, ...] = (0.5,)
    std: tuple[float, ...] = (0.5,)
    num_classes: int = 10

    def __init__(
        self,
        batch_size: int = 128,
        val_size: int = 5000,
        split_seed: int = 0,
        num_workers: int = 0,
        augment: bool = True,
        crop_padding: int = 4,
        eval_batch_size: int | None = None,
        shuffle_seed: int | None = None,
    ) -> None:
        super().__init__()
        self.shuffle_seed = shuffle_seed
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.val_size = val_size
        self.split_seed = split_seed
        self.num_workers = num_workers
        self.augment = augment
        self.crop_padding = crop_padding
        self.train_set: Dataset | None = None
        self.val_set: Dataset | None = None
        self.test_set: Dataset | None = None

    def load_arrays(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Return ``(train_images, train_labels, test_images, test_labels)``."""
        raise NotImplementedError

    def setup(self, stage: str | None = None) -> None:
        if self.test_set is not None:
            return
        train_x, train_y, test_x, test_y = self.load_arrays()
        self.test_set = TensorImageDataset(test_x, test_y)
        if self.val_size == 0:
            self.train_set = TensorImageDataset(train_x, train_y)
            self.val_set = self.test_set
            return
        train_idx, val_idx = split_train_val(len(train_x), self.val_size, self.split_seed)
        self.train_set = TensorImageDataset(train_x[train_idx], train_y[train_idx])
        self.val_set = TensorImageDataset(train_x[val_idx], train_y[val_idx])

    def _loader(self, dataset: Dataset | None, train: bool) -> DataLoader:
        if dataset is None:
            raise RuntimeError(f"{type(self).__name__}.setup() must run before asking for loaders")
        if not train:
            collate = BatchAugment(self.mean, self.std)
            return DataLoader(
                dataset,
                batch_size=self.eval_batch_size,
                num_workers=self.num_workers,
                persistent_workers=self.num_workers > 0,
                collate_fn=collate,
            )
        sampler = EpochShuffleSampler(len(dataset), seed=self.shuffle_seed)  # type: ignore[arg-type]
        collate = BatchAugment(
            self.mean,
            self.std,
            train=self.augment,
            crop_padding=self.crop_padding,
            hflip=0.5,
            seed=sampler.seed,
        )
        return DataLoader(
            IndexedDataset(dataset),
            batch_size=self.batch_size,
            sampler=sampler,
            drop_last=True,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            collate_fn=collate,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, train=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, train=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_set, train=False)

    def predict_dataloader(self) -> DataLoader:
        return self._loader(self.test_set, train=False)
