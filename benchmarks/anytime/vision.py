"""Task 1: Fashion-MNIST from scratch with the demo's CIFAR-style ResNet (one block per stage).

Data: a fixed random ``train_size`` subset of the 60k training images (an "epoch" is one pass
over it), ``val_size`` other training images for validation, the first ``test_size`` test images.
Training batches go through the library's :class:`~amuse_lightning.examples.data.BatchAugment`
(random crop with 2-pixel zero padding, horizontal flip, normalisation), as the demo's datamodule
does. Score: accuracy.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn

from amuse_lightning import partition_parameters
from amuse_lightning.examples.data import BatchAugment, FashionMNISTDataModule
from amuse_lightning.examples.models import CifarResNet

from .probes import FinisherConfig
from .protocol import BatchNormSource, StudyConfig


@dataclass(frozen=True)
class VisionConfig:
    train_size: int = 2048
    val_size: int = 1000
    test_size: int = 2000
    subset_seed: int = 1234
    width: int = 8
    num_blocks: tuple[int, ...] = (1, 1, 1, 1)
    batch_size: int = 128
    eval_batch_size: int = 1000
    crop_padding: int = 2
    bn_batches: int = 8
    epochs: tuple[int, ...] = (1, 2, 4, 8)

    @property
    def steps_per_epoch(self) -> int:
        return self.train_size // self.batch_size


def study_config(cfg: VisionConfig, quick: bool) -> StudyConfig:
    lr = (3e-3, 1e-2) if quick else (3e-3, 1e-2, 3e-2)
    return StudyConfig(
        budgets=tuple(e * cfg.steps_per_epoch for e in cfg.epochs),
        lr_grid={
            "adamw_cosine": lr if quick else (*lr, 1e-1),  # 3e-2 was its top at 8 epochs
            # Muon + cosine chose the top of the 3-point grid at every budget: one more point
            "muon_cosine": lr if quick else (*lr, 1e-1),
            "sf_adamw": lr,
            "amuse": (1e-2, 3e-2) if quick else (1e-2, 3e-2, 1e-1),
        },
        weight_decay=0.05,
        seeds=(0, 1) if quick else (0, 1, 2),
        variants=SCREEN[:2] if quick else SCREEN,
        workers=1 if quick else 2,
    )


SCREEN: tuple[tuple[str, dict], ...] = (
    ("beta1=0.9", {"beta1": 0.9}),
    ("beta1=0.6,rho=0.8", {"beta1": 0.6, "rho": 0.8}),
    ("rho=0,beta1=0.9", {"beta1": 0.9, "rho": 0.0}),
    ("warmup=15%", {"warmup_fraction": 0.15}),
    ("wd_at_y", {"wd_at_y": True}),
    ("r=1", {"r": 1.0}),
    # added after the first screens: the two per-task winners together, and a larger fixed beta
    ("rho=0,beta1=0.9,r=1", {"beta1": 0.9, "rho": 0.0, "r": 1.0}),
    ("rho=0,beta1=0.95", {"beta1": 0.95, "rho": 0.0}),
    ("fallback lr x0.3", {"fallback_lr_ratio": 0.3}),
    ("fallback lr x3", {"fallback_lr_ratio": 3.0}),
)

QUICK = VisionConfig(
    train_size=256,
    val_size=256,
    test_size=256,
    width=4,
    batch_size=64,
    eval_batch_size=256,
    bn_batches=2,
    epochs=(1, 2),
)


QUICK_FINISHING = FinisherConfig(
    amuse_lrs=(3e-2,), shapes=("1-sqrt",), fractions=(0.2,), lr_factors=(1.0,), ema_widths=(0.1,)
)


class VisionTask:
    name = "vision"

    def __init__(self, quick: bool = False) -> None:
        self.cfg = QUICK if quick else VisionConfig()
        self.study = study_config(self.cfg, quick)
        # round 2: the lr round 1 chose for x; power-EMAs of y and z tracked in every run
        self.finishing = (
            QUICK_FINISHING
            if quick
            else FinisherConfig(amuse_lrs=(3e-2,), ema_widths=(0.05, 0.1, 0.2))
        )
        mean, std = FashionMNISTDataModule.mean, FashionMNISTDataModule.std
        self.train_aug = BatchAugment(
            mean, std, train=True, crop_padding=self.cfg.crop_padding, hflip=0.5
        )
        self.plain = BatchAugment(mean, std, train=False)

    def setup(self) -> None:
        cfg = self.cfg
        train_x, train_y, test_x, test_y = FashionMNISTDataModule(download=False).load_arrays()
        perm = torch.randperm(
            len(train_x), generator=torch.Generator().manual_seed(cfg.subset_seed)
        )
        tr, va = perm[: cfg.train_size], perm[cfg.train_size : cfg.train_size + cfg.val_size]
        self.train = (train_x[tr], train_y[tr].long())
        self.splits = {
            "val": self._normalised(train_x[va], train_y[va]),
            "test": self._normalised(test_x[: cfg.test_size], test_y[: cfg.test_size]),
        }

    def _normalised(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        images, labels = self.plain(list(zip(x, y.long(), strict=True)))
        return images, labels

    def build_model(self, seed: int) -> nn.Module:
        return CifarResNet(10, 1, self.cfg.width, self.cfg.num_blocks)

    def param_groups(self, model: nn.Module, weight_decay: float) -> list[dict]:
        return partition_parameters(model).param_groups(weight_decay=weight_decay)

    def train_batches(self, seed: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Shuffled drop-last epochs, forever; order and augmentation from torch's global
        generator, which the run seeded."""
        x, y = self.train
        b = self.cfg.batch_size
        while True:
            perm = torch.randperm(len(x))
            for i in range(len(x) // b):
                idx = perm[i * b : (i + 1) * b]
                yield tuple(self.train_aug(list(zip(x[idx], y[idx], strict=True))))

    def loss(self, model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        return F.cross_entropy(model(batch[0]), batch[1])

    @torch.no_grad()
    def evaluate(self, model: nn.Module, split: str) -> dict[str, float]:
        model.eval()
        images, labels = self.splits[split]
        correct, total_loss = 0, 0.0
        for i in range(0, len(images), self.cfg.eval_batch_size):
            logits = model(images[i : i + self.cfg.eval_batch_size])
            target = labels[i : i + self.cfg.eval_batch_size]
            total_loss += F.cross_entropy(logits, target, reduction="sum").item()
            correct += int((logits.argmax(1) == target).sum())
        acc = correct / len(images)
        return {"score": acc, "accuracy": acc, "loss": total_loss / len(images)}

    def bn_batches(self, seed: int) -> BatchNormSource:
        """``bn_batches`` augmented training batches of a stream of their own (seeded per run)
        for BatchNorm at an averaged model, as the callback does before each evaluation (the
        caller draws them inside ``preserved_random_state``)."""

        def batches() -> Iterator[torch.Tensor]:
            torch.manual_seed(10_000 + seed)
            for images, _ in self.train_batches(seed):
                yield images

        return batches, self.cfg.bn_batches
