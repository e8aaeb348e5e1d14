"""Datamodules for the examples: Fashion-MNIST, CIFAR-10/100, ImageNet-style folders, synthetic.

Small datasets (Fashion-MNIST, CIFAR, synthetic) live in memory as ``uint8`` tensors; the
dataloader's collate function turns a batch into normalised ``float32`` images and, for training,
applies the standard augmentation (random crop with zero padding + horizontal flip) to the whole
batch at once. Every batch a dataloader yields is therefore final: whoever iterates a loader (the
training loop, BatchNorm recalibration) sees the same kind of tensors.

ImageNet-style folders use torchvision's ``ImageFolder`` with timm's transforms
(``resolve_data_config`` + ``create_transform``) and, for training, timm's ``Mixup``/CutMix with
label smoothing; the targets of a mixed training batch are soft (``(batch, num_classes)`` floats).
"""

from __future__ import annotations

import gzip
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader, Dataset, default_collate

__all__ = [
    "DEBIAN_FASHION_MNIST",
    "BatchAugment",
    "CIFARDataModule",
    "FashionMNISTDataModule",
    "ImageFolderDataModule",
    "InMemoryImageDataModule",
    "SyntheticImageDataModule",
    "make_synthetic_image_folder",
    "read_idx",
]

DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
"""Where Debian's ``dataset-fashion-mnist`` package puts the idx files."""

FASHION_MNIST_FILES = {
    "train_images": "train-images-idx3-ubyte.gz",
    "train_labels": "train-labels-idx1-ubyte.gz",
    "test_images": "t10k-images-idx3-ubyte.gz",
    "test_labels": "t10k-labels-idx1-ubyte.gz",
}


# ----------------------------------------------------------------------------- batches


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


class BatchAugment:
    """Collate function: stack ``uint8`` images, augment the batch, normalise.

    ``out = (crop_flip(img / 255) - mean) / std``; ``crop_flip`` pads each image with
    ``crop_padding`` zeros on every side, takes a random ``H x W`` window and mirrors it with
    probability ``hflip``. With ``train=False`` only the normalisation is applied. Random numbers
    come from torch's global generator (seeded per worker by Lightning).
    """

    def __init__(
        self,
        mean: Sequence[float],
        std: Sequence[float],
        train: bool = False,
        crop_padding: int = 0,
        hflip: float = 0.0,
    ) -> None:
        self.mean = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
        self.train = train
        self.crop_padding = crop_padding
        self.hflip = hflip

    def __call__(self, samples: list[tuple[torch.Tensor, torch.Tensor]]) -> list[torch.Tensor]:
        images = torch.stack([s[0] for s in samples]).float().div_(255)
        labels = torch.stack([s[1] for s in samples])
        if self.train:
            images = self.augment(images)
        return [(images - self.mean) / self.std, labels]

    def augment(self, images: torch.Tensor) -> torch.Tensor:
        """Random crop (zero padding) and horizontal flip of a float batch ``(B, C, H, W)``."""
        b, _, h, w = images.shape
        p = self.crop_padding
        if p > 0:
            padded = torch.nn.functional.pad(images, (p, p, p, p))
            dy = torch.randint(0, 2 * p + 1, (b, 1))
            dx = torch.randint(0, 2 * p + 1, (b, 1))
            rows = (dy + torch.arange(h)).view(b, 1, h, 1)
            cols = (dx + torch.arange(w)).view(b, 1, 1, w)
            batch_idx = torch.arange(b).view(b, 1, 1, 1)
            chan_idx = torch.arange(images.shape[1]).view(1, -1, 1, 1)
            images = padded[batch_idx, chan_idx, rows, cols]
        if self.hflip > 0:
            flip = torch.rand(b) < self.hflip
            images = torch.where(flip.view(b, 1, 1, 1), images.flip(3), images)
        return images


def split_train_val(
    num_samples: int, val_size: int, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """A seeded random split of ``range(num_samples)`` into train and validation indices."""
    if not 0 <= val_size < num_samples:
        raise ValueError(
            f"val_size must be in [0, {num_samples}) for a training set of {num_samples}, "
            f"got {val_size}"
        )
    perm = torch.randperm(num_samples, generator=torch.Generator().manual_seed(seed))
    return perm[val_size:].sort().values, perm[:val_size].sort().values


# ----------------------------------------------------------------------------- in memory


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
    ) -> None:
        super().__init__()
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
        collate = BatchAugment(
            self.mean,
            self.std,
            train=train and self.augment,
            crop_padding=self.crop_padding,
            hflip=0.5,
        )
        return DataLoader(
            dataset,
            batch_size=self.batch_size if train else self.eval_batch_size,
            shuffle=train,
            drop_last=train,
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

    Files are looked for, in order, in ``root``, ``root/FashionMNIST/raw`` and Debian's
    ``/usr/share/datasets/fashion-mnist`` (package ``dataset-fashion-mnist``); the idx ``.gz``
    files are parsed directly. If none has them, torchvision downloads the data into ``root``
    (``data/`` when ``root`` is ``None``).

    Args:
        root: folder with the four idx files, or where to download them.
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
    ) -> None:
        super().__init__(
            batch_size, val_size, split_seed, num_workers, augment, crop_padding, eval_batch_size
        )
        self.root = root
        self.download = download

    def candidate_dirs(self) -> list[Path]:
        """Folders searched for the idx files, in order."""
        dirs = []
        if self.root is not None:
            dirs += [Path(self.root), Path(self.root) / "FashionMNIST" / "raw"]
        return [*dirs, DEBIAN_FASHION_MNIST]

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
            raise FileNotFoundError(
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
            raise FileNotFoundError(
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
    ) -> None:
        if dataset not in CIFAR_STATS:
            raise ValueError(f"dataset must be one of {sorted(CIFAR_STATS)}, got {dataset!r}")
        super().__init__(
            batch_size, val_size, split_seed, num_workers, augment, crop_padding, eval_batch_size
        )
        self.root = root
        self.dataset = dataset
        self.download = download
        self.mean, self.std, self.num_classes, self.folder = CIFAR_STATS[dataset]

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
            raise FileNotFoundError(
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


class SyntheticImageDataModule(InMemoryImageDataModule):
    """Random but learnable images for tests and smoke runs (no files, no downloads).

    Each class has a fixed random template; an image is its class template plus uniform noise,
    ``img = clip(template * 255 * (1 - noise) + U(0, 255) * noise)``.

    Args:
        num_classes, in_channels, image_size: shape of the problem.
        num_train, num_test: number of generated images (validation comes out of train).
        noise: mixing weight of the noise, in [0, 1).
        seed: generator seed (templates and samples).
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
    ) -> None:
        super().__init__(batch_size, val_size, seed, num_workers, augment, crop_padding)
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


# ----------------------------------------------------------------------------- image folders


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


class MixupCollate:
    """Collate, then apply timm's ``Mixup``/CutMix: targets become soft ``(B, num_classes)``."""

    def __init__(self, mixup: Any) -> None:
        self.mixup = mixup

    def __call__(self, samples: list[Any]) -> list[torch.Tensor]:
        images, labels = default_collate(samples)
        return list(self.mixup(images, labels))


class ImageFolderDataModule(LightningDataModule):
    """ImageNet layout (``root/train/<class>/*.jpg``, ``root/val/<class>/*.jpg``) with timm
    transforms and Mixup/CutMix.

    The input size, interpolation, mean/std and crop come from ``timm.data.resolve_data_config``
    for ``model_name`` (its pretrained config), overridden by ``img_size``. Training uses
    ``timm.data.create_transform(is_training=True, ...)`` (random resized crop, flip,
    ``auto_augment``, random erasing ``re_prob``) and, when ``mixup_alpha`` or ``cutmix_alpha``
    is positive, ``timm.data.Mixup`` with ``label_smoothing`` (training batches then carry soft
    targets; the classifiers switch to ``SoftTargetCrossEntropy``). The val folder is the
    validation, test and predict set unless ``test_dir`` names another folder.

    Args:
        root: dataset folder.
        model_name: timm model whose pretrained data config to use (``None``: timm defaults).
        img_size: square input size overriding the model's.
        batch_size, num_workers: dataloader settings (``num_workers=None``: ``min(8, cpus)``).
        mixup_alpha, cutmix_alpha, mixup_prob, label_smoothing: timm ``Mixup`` settings.
        auto_augment: timm auto-augment policy string, e.g. ``"rand-m9-mstd0.5-inc1"``.
        re_prob: random-erasing probability.
        train_dir, val_dir, test_dir: sub-folder names.
    """

    def __init__(
        self,
        root: str,
        model_name: str | None = None,
        img_size: int | None = None,
        batch_size: int = 128,
        eval_batch_size: int | None = None,
        num_workers: int | None = None,
        mixup_alpha: float = 0.8,
        cutmix_alpha: float = 1.0,
        mixup_prob: float = 1.0,
        label_smoothing: float = 0.1,
        auto_augment: str | None = "rand-m9-mstd0.5-inc1",
        re_prob: float = 0.25,
        train_dir: str = "train",
        val_dir: str = "val",
        test_dir: str | None = None,
    ) -> None:
        super().__init__()
        self.root = Path(root)
        self.model_name = model_name
        self.img_size = img_size
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.num_workers = min(8, os.cpu_count() or 1) if num_workers is None else num_workers
        self.mixup_alpha = mixup_alpha
        self.cutmix_alpha = cutmix_alpha
        self.mixup_prob = mixup_prob
        self.label_smoothing = label_smoothing
        self.auto_augment = auto_augment
        self.re_prob = re_prob
        self.train_dir, self.val_dir = train_dir, val_dir
        self.test_dir = test_dir or val_dir
        self.datasets: dict[str, Any] = {}
        self.num_classes: int | None = None

    def data_config(self) -> dict[str, Any]:
        """timm's resolved data config (input size, interpolation, mean, std, crop)."""
        from timm.data import resolve_data_config
        from timm.models import get_pretrained_cfg

        pretrained_cfg = None
        if self.model_name is not None:
            cfg = get_pretrained_cfg(self.model_name)
            pretrained_cfg = cfg.to_dict() if cfg is not None else None
        args = {} if self.img_size is None else {"input_size": (3, self.img_size, self.img_size)}
        return resolve_data_config(args=args, pretrained_cfg=pretrained_cfg)

    def transforms(self, train: bool) -> Any:
        from timm.data import create_transform

        cfg = self.data_config()
        if not train:
            return create_transform(**cfg, is_training=False)
        cfg = {k: v for k, v in cfg.items() if k not in ("crop_pct", "crop_mode")}
        return create_transform(
            **cfg, is_training=True, auto_augment=self.auto_augment, re_prob=self.re_prob
        )

    def _folder(self, name: str) -> Path:
        path = self.root / name
        if not path.is_dir():
            raise FileNotFoundError(
                f"{path} is missing: ImageFolderDataModule expects {self.root}/{self.train_dir}/"
                f"<class>/*.jpg and {self.root}/{self.val_dir}/<class>/*.jpg; set "
                "data.init_args.root (or train_dir/val_dir/test_dir)"
            )
        return path

    def setup(self, stage: str | None = None) -> None:
        from torchvision.datasets import ImageFolder

        if "val" not in self.datasets:
            self.datasets["val"] = ImageFolder(
                self._folder(self.val_dir), transform=self.transforms(False)
            )
            self.datasets["test"] = ImageFolder(
                self._folder(self.test_dir), transform=self.transforms(False)
            )
            self.num_classes = len(self.datasets["val"].classes)
        if stage in (None, "fit") and "train" not in self.datasets:
            train = ImageFolder(self._folder(self.train_dir), transform=self.transforms(True))
            if train.classes != self.datasets["val"].classes:
                raise ValueError(
                    f"class folders differ between {self.train_dir}/ ({len(train.classes)}) "
                    f"and {self.val_dir}/ ({len(self.datasets['val'].classes)})"
                )
            self.datasets["train"] = train

    def mixup(self) -> Any | None:
        """timm ``Mixup`` for training batches, or ``None`` when both alphas are 0."""
        if self.mixup_alpha <= 0 and self.cutmix_alpha <= 0:
            return None
        from timm.data import Mixup

        return Mixup(
            mixup_alpha=self.mixup_alpha,
            cutmix_alpha=self.cutmix_alpha,
            prob=self.mixup_prob,
            label_smoothing=self.label_smoothing,
            num_classes=self.num_classes,
        )

    def _loader(self, split: str, train: bool) -> DataLoader:
        if split not in self.datasets:
            raise RuntimeError(f"{type(self).__name__}.setup() must run before asking for loaders")
        mixup = self.mixup() if train else None
        return DataLoader(
            self.datasets[split],
            batch_size=self.batch_size if train else self.eval_batch_size,
            shuffle=train,
            drop_last=train,  # timm Mixup needs an even batch
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            collate_fn=MixupCollate(mixup) if mixup is not None else None,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", train=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", train=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", train=False)

    def predict_dataloader(self) -> DataLoader:
        return self._loader("test", train=False)
