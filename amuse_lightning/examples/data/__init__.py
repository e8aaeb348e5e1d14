"""Datamodules for the examples: Fashion-MNIST, CIFAR-10/100, ImageNet-style folders, synthetic.

Small datasets (Fashion-MNIST, CIFAR, synthetic) live in memory as ``uint8`` tensors; the
dataloader's collate function turns a batch into normalised ``float32`` images and, for training,
applies the standard augmentation (random crop with zero padding + horizontal flip) to the whole
batch at once. Every batch a dataloader yields is therefore final: whoever iterates a loader (the
training loop, BatchNorm recalibration) sees the same kind of tensors.

ImageNet-style folders use torchvision's ``ImageFolder`` with timm's transforms
(``resolve_data_config`` + ``create_transform``) and, for training, timm's ``Mixup``/CutMix with
label smoothing; the targets of a mixed training batch are soft (``(batch, num_classes)`` floats).

Training loaders shuffle with :class:`EpochShuffleSampler` (the order of epoch ``e`` is a function
of ``(seed, e)``) and seed each in-memory batch's augmentation by its sample indices, so a run
resumed from a checkpoint at an epoch boundary trains on the same batches as the uninterrupted
run; ``DataLoader(shuffle=True)`` would not (see :mod:`.sampler`).

One file per idea: ``sampler`` (resumable order), ``batches`` (datasets, augmentation),
``in_memory`` (the base datamodule), ``fashion_mnist``, ``cifar``, ``synthetic``,
``image_folder``.
"""

from .batches import BatchAugment, IndexedDataset, TensorImageDataset, split_train_val
from .cifar import CIFAR_STATS, CIFARDataModule
from .fashion_mnist import (
    DEBIAN_FASHION_MNIST,
    FASHION_MNIST_FILES,
    FashionMNISTDataModule,
    read_idx,
)
from .image_folder import ImageFolderDataModule, MixupCollate
from .in_memory import InMemoryImageDataModule
from .sampler import EpochShuffleSampler
from .synthetic import SyntheticImageDataModule, make_synthetic_image_folder

__all__ = [
    "CIFAR_STATS",
    "DEBIAN_FASHION_MNIST",
    "FASHION_MNIST_FILES",
    "BatchAugment",
    "CIFARDataModule",
    "EpochShuffleSampler",
    "FashionMNISTDataModule",
    "ImageFolderDataModule",
    "InMemoryImageDataModule",
    "IndexedDataset",
    "MixupCollate",
    "SyntheticImageDataModule",
    "TensorImageDataset",
    "make_synthetic_image_folder",
    "read_idx",
    "split_train_val",
]
