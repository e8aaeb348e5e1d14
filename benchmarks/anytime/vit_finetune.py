"""Task 3: fine-tuning a small timm ViT through the example ``TimmClassifier``.

A ``vit_tiny_patch16_224`` resized for 28 x 28 grey images (patch 7, width 64, depth 4, 2 heads;
no weight download) is pre-trained by this study on Fashion-MNIST classes 0-4 with AdamW +
warmup-cosine and saved to ``checkpoints/anytime/`` (git-ignored; reused when present). Every
fine-tuning run then builds ``TimmClassifier(pretrained_file=...)`` for classes 5-9 (timm loads the
file and drops the 5-class head), with layer decay 0.75 through the library's
``layer_decay_scales`` (``lr_scale`` per group), label smoothing 0.1, and the library's
``BatchAugment``. Fine-tuning data: ``train_size`` training images of classes 5-9, ``val_size``
others for validation, the first ``test_size`` test images of classes 5-9. Score: accuracy.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

from amuse_lightning.examples import TimmClassifier
from amuse_lightning.examples.data import BatchAugment, FashionMNISTDataModule
from amuse_lightning.partition import layer_decay_scales

from .probes import FinisherConfig
from .protocol import StudyConfig
from .vision import QUICK_FINISHING, SCREEN

CACHE = Path(__file__).resolve().parents[2] / "checkpoints" / "anytime"


@dataclass(frozen=True)
class ViTConfig:
    model_name: str = "vit_tiny_patch16_224"
    model_kwargs: dict = field(
        default_factory=lambda: dict(
            img_size=28, patch_size=7, in_chans=1, embed_dim=64, depth=4, num_heads=2
        )
    )
    pretrain_steps: int = 300
    pretrain_lr: float = 2e-3
    pretrain_batch: int = 128
    layer_decay: float = 0.75
    label_smoothing: float = 0.1
    train_size: int = 2048
    val_size: int = 1000
    test_size: int = 2000
    subset_seed: int = 4321
    batch_size: int = 64
    crop_padding: int = 2
    budgets: tuple[int, ...] = (16, 32, 64, 128)


QUICK = ViTConfig(
    model_kwargs=dict(img_size=28, patch_size=7, in_chans=1, embed_dim=16, depth=2, num_heads=2),
    pretrain_steps=10,
    train_size=256,
    val_size=128,
    test_size=128,
    batch_size=32,
    budgets=(4, 8),
)


class ViTTask:
    name = "vit"

    def __init__(self, quick: bool = False) -> None:
        self.cfg = QUICK if quick else ViTConfig()
        grid = (1e-3, 3e-3) if quick else (1e-3, 3e-3, 1e-2)
        self.study = StudyConfig(
            budgets=self.cfg.budgets,
            # Muon + cosine and AMUSE chose the top of the 3-point grid: one more point for both
            # (and a second one for Muon + cosine, which then chose 3e-2 at three budgets)
            lr_grid={
                "adamw_cosine": grid,
                "sf_adamw": grid,
                "muon_cosine": grid if quick else (*grid, 3e-2, 1e-1),
                "amuse": grid if quick else (*grid, 3e-2),
            },
            weight_decay=0.05,
            seeds=(0, 1) if quick else (0, 1, 2),
            variants=SCREEN[:2] if quick else SCREEN,
            workers=1 if quick else 2,
        )
        # round 2: the lr round 1 chose for x; power-EMAs of y and z tracked in every run
        self.finishing = (
            dataclasses.replace(QUICK_FINISHING, amuse_lrs=(3e-3,))
            if quick
            # lr factor 0.03 added after the ViT chose the bottom of (0.1, 0.3, 1, 3)
            else FinisherConfig(
                amuse_lrs=(1e-2,),
                lr_factors=(0.03, 0.1, 0.3, 1.0, 3.0),
                ema_widths=(0.05, 0.1, 0.2),
            )
        )
        mean, std = FashionMNISTDataModule.mean, FashionMNISTDataModule.std
        self.train_aug = BatchAugment(
            mean, std, train=True, crop_padding=self.cfg.crop_padding, hflip=0.5
        )
        self.plain = BatchAugment(mean, std, train=False)

    def prepare(self) -> None:
        """Pre-train once in the main process (the workers then find the cached file)."""
        train_x, train_y, _, _ = FashionMNISTDataModule(download=False).load_arrays()
        keep = train_y.long() < 5
        pretrain(self.cfg, self.train_aug, train_x[keep], train_y.long()[keep])

    def setup(self) -> None:
        cfg = self.cfg
        train_x, train_y, test_x, test_y = FashionMNISTDataModule(download=False).load_arrays()
        train_y, test_y = train_y.long(), test_y.long()
        self.pretrained = pretrain(cfg, self.train_aug, train_x[train_y < 5], train_y[train_y < 5])
        x, y = train_x[train_y >= 5], train_y[train_y >= 5] - 5
        perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(cfg.subset_seed))
        tr, va = perm[: cfg.train_size], perm[cfg.train_size : cfg.train_size + cfg.val_size]
        self.train = (x[tr], y[tr])
        tx, ty = test_x[test_y >= 5][: cfg.test_size], test_y[test_y >= 5][: cfg.test_size] - 5
        self.splits = {
            "val": self.plain(list(zip(x[va], y[va], strict=True))),
            "test": self.plain(list(zip(tx, ty, strict=True))),
        }

    def build_model(self, seed: int) -> nn.Module:
        return TimmClassifier(
            self.cfg.model_name,
            num_classes=5,
            pretrained_file=str(self.pretrained),
            drop_path_rate=0.0,
            model_kwargs=dict(self.cfg.model_kwargs),
            layer_decay=self.cfg.layer_decay,
            label_smoothing=self.cfg.label_smoothing,
            top_k=None,
        )

    def param_groups(self, model: nn.Module, weight_decay: float) -> list[dict]:
        scales = layer_decay_scales(model, self.cfg.layer_decay)
        return model.amuse_partition().param_groups(weight_decay=weight_decay, lr_scales=scales)

    def train_batches(self, seed: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        yield from epochs(self.train, self.cfg.batch_size, self.train_aug)

    def loss(self, model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        return model.loss(model(batch[0]), batch[1])

    @torch.no_grad()
    def evaluate(self, model: nn.Module, split: str) -> dict[str, float]:
        model.eval()
        images, labels = self.splits[split]
        logits = model(images)
        loss = torch.nn.functional.cross_entropy(logits, labels).item()
        acc = (logits.argmax(1) == labels).float().mean().item()
        return {"score": acc, "accuracy": acc, "loss": loss}

    def bn_batches(self, seed: int) -> None:
        return None  # LayerNorm only: nothing to re-estimate


def epochs(data: tuple[torch.Tensor, torch.Tensor], batch: int, aug: BatchAugment) -> Iterator:
    """Shuffled drop-last epochs forever (torch's global generator, seeded by the run)."""
    x, y = data
    while True:
        perm = torch.randperm(len(x))
        for i in range(len(x) // batch):
            idx = perm[i * batch : (i + 1) * batch]
            yield tuple(aug(list(zip(x[idx], y[idx], strict=True))))


def pretrain(cfg: ViTConfig, aug: BatchAugment, x: torch.Tensor, y: torch.Tensor) -> Path:
    """AdamW + warmup-cosine on classes 0-4 (seed 0); the state dict is cached by config."""
    import timm

    from .methods import warmup_cosine

    key = json.dumps(
        {k: v for k, v in asdict(cfg).items() if k.startswith(("model", "pretrain"))},
        sort_keys=True,
    )
    path = CACHE / f"vit_pretrain_{hashlib.sha1(key.encode()).hexdigest()[:10]}.pth"
    if path.is_file():
        return path
    torch.manual_seed(0)
    model = timm.create_model(cfg.model_name, num_classes=5, drop_path_rate=0.0, **cfg.model_kwargs)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.pretrain_lr, weight_decay=0.05)
    warmup = max(2, cfg.pretrain_steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, warmup_cosine(warmup, cfg.pretrain_steps))
    stream = epochs((x, y), cfg.pretrain_batch, aug)
    for step in range(cfg.pretrain_steps):
        images, labels = next(stream)
        loss = torch.nn.functional.cross_entropy(model(images), labels, label_smoothing=0.1)
        if not math.isfinite(loss.item()):
            raise RuntimeError("ViT pre-training diverged; lower pretrain_lr")
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if step % 100 == 0:
            print(f"  pretrain step {step}: loss {loss.item():.3f}", flush=True)
    CACHE.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(model.state_dict(), tmp)
    tmp.replace(path)
    return path
