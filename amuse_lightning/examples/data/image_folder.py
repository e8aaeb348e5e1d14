"""ImageNet-layout folders with timm's transforms and Mixup/CutMix."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader, default_collate

from amuse_lightning.examples.timm_names import check_timm_model_name
from amuse_lightning.lightning.errors import DataNotFoundError

from .sampler import EpochShuffleSampler

__all__ = ["ImageFolderDataModule", "MixupCollate"]


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
        shuffle_seed: seed of the training order (default: the run's ``seed_everything`` seed);
            epoch ``e`` takes the order of ``EpochShuffleSampler(seed, e)``, so a resumed run
            reads the images in the uninterrupted run's order. timm's random transforms and
            Mixup draw from the workers' generators and are not replayed.
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
        shuffle_seed: int | None = None,
    ) -> None:
        super().__init__()
        self.shuffle_seed = shuffle_seed
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

    @classmethod
    def check_init_args(cls, init_args: Mapping[str, Any]) -> None:
        """Parse-time check (the CLI calls it): ``root`` and its validation folder exist, and
        timm knows ``model_name``."""
        root = init_args.get("root")
        if root is None or not Path(root).is_dir():
            raise DataNotFoundError(
                f"{root} does not exist; pass the dataset folder, e.g. --data.init_args.root "
                "/path/to/imagenet (it needs train/<class>/*.JPEG and val/<class>/*.JPEG)",
                key="root",
            )
        val = Path(root) / init_args.get("val_dir", "val")
        if not val.is_dir():
            raise DataNotFoundError(
                f"{val} is missing: the folder needs train/<class>/*.JPEG and "
                "val/<class>/*.JPEG (or set train_dir / val_dir)",
                key="root",
            )
        check_timm_model_name(init_args.get("model_name"))

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
            raise DataNotFoundError(
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
        dataset = self.datasets[split]
        sampler = EpochShuffleSampler(len(dataset), seed=self.shuffle_seed) if train else None
        return DataLoader(
            dataset,
            batch_size=self.batch_size if train else self.eval_batch_size,
            sampler=sampler,
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
