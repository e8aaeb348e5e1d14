"""LightningModules for the examples: a CIFAR-style ResNet and timm models (ViT fine-tuning).

Both mix in :class:`~amuse_lightning.AmuseMixin`, so ``configure_optimizers`` partitions the
parameters (Muon for hidden matrices and conv kernels; the fallback update for the stem, the head,
norms, biases and tokens) and hands the groups to ``optimizer``: a LightningCLI
``OptimizerCallable`` (YAML ``class_path: amuse_lightning.optim.AMUSE`` + ``init_args``). Without
one, AMUSE gets the vision defaults ``lr=1e-2, beta1=0.8, beta_anneal_steps="auto"`` (beta annealed
over the run's planned steps, which ``AmuseCallback`` fills in).

Warmup: by default the optimizer's own ``warmup_steps`` runs (what ``--print_config`` shows).
``warmup_fraction=f`` instead builds the optimizer with
``warmup_steps = max(2, round(f * trainer.estimated_stepping_batches))`` and logs the count; it
is an error next to an optimizer ``warmup_steps`` other than the optimizer's default (see
:mod:`amuse_lightning.examples.warmup`). Only optimizers whose constructor takes
``warmup_steps`` (AMUSE, SFMuon) receive it.

Settings are checked before anything is built: ``check_init_args`` (called by the
``amuse-lightning`` CLI when the config is parsed, and by ``__init__``) raises
:class:`~amuse_lightning.lightning.errors.ConfigError` naming the argument.

Loss: cross-entropy with ``label_smoothing`` on integer labels; on soft targets (a Mixup/CutMix
batch, shape ``(batch, classes)``) timm's ``SoftTargetCrossEntropy``
``L = mean_i sum_k -t_ik log softmax(z_i)_k``. Metrics (torchmetrics): ``train_acc`` (integer
labels only), ``val_acc``/``test_acc`` top-1, and for :class:`TimmClassifier` ``*_acc_top5``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torchmetrics
from lightning.pytorch import LightningModule
from lightning.pytorch.cli import OptimizerCallable
from torch import nn
from torch.optim import Optimizer

from amuse_lightning.examples.models import CifarResNet
from amuse_lightning.examples.pretrained import check_pretrained_weights
from amuse_lightning.examples.timm_names import check_timm_model_name
from amuse_lightning.examples.warmup import (
    check_warmup_settings,
    configure_with_warmup,
    warmup_steps_from_fraction,
)
from amuse_lightning.lightning.errors import ConfigError
from amuse_lightning.lightning.factories import (
    optimizer_class_of,
    with_warmup_steps,
)
from amuse_lightning.lightning.mixin import AmuseMixin
from amuse_lightning.optim.hardware import onednn_runs_avx512

__all__ = [
    "VISION_AMUSE_DEFAULTS",
    "ImageClassifier",
    "ResNetClassifier",
    "TimmClassifier",
    "optimizer_class_of",
    "warmup_steps_from_fraction",
    "with_warmup_steps",
]

VISION_AMUSE_DEFAULTS: dict[str, float | str] = {
    "lr": 1e-2,
    "beta1": 0.8,
    "beta_anneal_steps": "auto",
}
"""AMUSE settings for a classifier given no ``optimizer`` (docs/algorithm.md#hyperparameters)."""


class ImageClassifier(AmuseMixin, LightningModule):
    """Shared training/eval steps of the example classifiers (subclasses set ``self.model``).

    Args:
        num_classes: number of classes.
        label_smoothing: cross-entropy label smoothing for integer labels.
        optimizer: ``param_groups -> Optimizer``; ``None`` builds AMUSE with
            :data:`VISION_AMUSE_DEFAULTS`.
        warmup_fraction: warmup length as a fraction of the total optimizer steps (see module
            docstring); ``None`` (default) keeps the optimizer's ``warmup_steps``.
        muon_patterns, fallback_patterns: parameter-name globs forcing a side of the partition.
        top_k: extra top-k accuracy logged as ``*_acc_top{k}`` (``None``/1: none).
    """

    def __init__(
        self,
        num_classes: int,
        label_smoothing: float = 0.0,
        optimizer: OptimizerCallable | None = None,
        warmup_fraction: float | None = None,
        muon_patterns: Sequence[str] = (),
        fallback_patterns: Sequence[str] = (),
        top_k: int | None = None,
    ) -> None:
        super().__init__()
        check_warmup_settings(warmup_fraction, optimizer)
        self.num_classes = num_classes
        self.label_smoothing = label_smoothing
        self.optimizer = optimizer
        self.warmup_fraction = warmup_fraction
        self.muon_patterns = tuple(muon_patterns)
        self.fallback_patterns = tuple(fallback_patterns)
        self.top_k = top_k if top_k is not None and 1 < top_k <= num_classes else None
        self.train_acc = self._accuracy(1)
        self.val_acc = self._accuracy(1)
        self.test_acc = self._accuracy(1)
        if self.top_k is not None:
            self.val_acc_topk = self._accuracy(self.top_k)
            self.test_acc_topk = self._accuracy(self.top_k)

    def _accuracy(self, top_k: int) -> torchmetrics.Metric:
        return torchmetrics.Accuracy(task="multiclass", num_classes=self.num_classes, top_k=top_k)

    # -- optimisation ------------------------------------------------------------------------

    @classmethod
    def check_init_args(cls, init_args: Mapping[str, Any]) -> None:
        """Check parsed ``init_args`` (YAML values) before anything is built; raises
        :class:`ConfigError` naming the argument."""
        check_warmup_settings(init_args.get("warmup_fraction"), init_args.get("optimizer"))

    def configure_optimizers(self) -> Optimizer:
        """AmuseMixin's optimizer, with ``warmup_steps`` from ``warmup_fraction`` when set
        (:func:`~amuse_lightning.examples.warmup.configure_with_warmup`)."""
        return configure_with_warmup(self, VISION_AMUSE_DEFAULTS)

    # -- steps -------------------------------------------------------------------------------

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def loss(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Soft-target cross-entropy for ``(B, C)`` float targets, else smoothed cross-entropy."""
        if target.ndim == 2 and target.is_floating_point():
            return torch.sum(-target * torch.log_softmax(logits, dim=-1), dim=-1).mean()
        return nn.functional.cross_entropy(logits, target, label_smoothing=self.label_smoothing)

    def training_step(self, batch: Sequence[torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, target = batch
        logits = self(x)
        loss = self.loss(logits, target)
        self.log("train_loss", loss, prog_bar=True)
        if target.ndim == 1:
            self.train_acc(logits, target)
            self.log("train_acc", self.train_acc, on_step=False, on_epoch=True)
        return loss

    def _eval_step(self, batch: Sequence[torch.Tensor], stage: str) -> None:
        x, target = batch
        logits = self(x)
        self.log(f"{stage}_loss", self.loss(logits, target), sync_dist=True)
        acc = getattr(self, f"{stage}_acc")
        acc(logits, target)
        self.log(f"{stage}_acc", acc, prog_bar=True)
        if self.top_k is not None:
            topk = getattr(self, f"{stage}_acc_topk")
            topk(logits, target)
            self.log(f"{stage}_acc_top{self.top_k}", topk)

    def validation_step(self, batch: Sequence[torch.Tensor], batch_idx: int) -> None:
        self._eval_step(batch, "val")

    def test_step(self, batch: Sequence[torch.Tensor], batch_idx: int) -> None:
        self._eval_step(batch, "test")

    def predict_step(self, batch: Any, batch_idx: int) -> dict[str, torch.Tensor]:
        """``{"probs": softmax, "preds": argmax}`` (and ``"target"`` when the batch has labels)."""
        x = batch[0] if isinstance(batch, (list, tuple)) else batch
        probs = torch.softmax(self(x), dim=-1)
        out = {"probs": probs, "preds": probs.argmax(dim=-1)}
        if isinstance(batch, (list, tuple)) and len(batch) > 1:
            out["target"] = batch[1]
        return out


class ResNetClassifier(ImageClassifier):
    """CIFAR-style ResNet (3x3 stem, no max-pool) trained with AMUSE.

    Args:
        num_classes: outputs (10 for CIFAR-10 / Fashion-MNIST, 100 for CIFAR-100).
        in_channels: 3 for RGB, 1 for Fashion-MNIST.
        width: stem / first-stage channels (64 = ResNet-18; 16 trains on a CPU).
        num_blocks: basic blocks per stage (``[2, 2, 2, 2]`` = ResNet-18).
        channels_last: keep weights and inputs in ``torch.channels_last``. ``None`` (default)
            decides per device at the first forward pass: on accelerators (the fast layout for
            mixed precision), and on CPUs where oneDNN runs AVX-512 kernels (there the forward
            and backward of the demo model took 0.70x the time of the default layout); not on
            other CPUs, where torch 2.14.1's oneDNN AVX2 kernels crash the backward pass of
            channels-last convolutions narrower than 8 channels. ``True`` on such a CPU with
            ``width < 8`` is refused at the first forward pass.
        (the rest as :class:`ImageClassifier`)
    """

    def __init__(
        self,
        num_classes: int = 10,
        in_channels: int = 3,
        width: int = 64,
        num_blocks: Sequence[int] = (2, 2, 2, 2),
        label_smoothing: float = 0.0,
        channels_last: bool | None = None,
        optimizer: OptimizerCallable | None = None,
        warmup_fraction: float | None = None,
        muon_patterns: Sequence[str] = (),
        fallback_patterns: Sequence[str] = (),
    ) -> None:
        super().__init__(
            num_classes, label_smoothing, optimizer, warmup_fraction, muon_patterns,
            fallback_patterns,
        )  # fmt: skip
        self.save_hyperparameters(ignore=["optimizer"])
        self.channels_last = channels_last
        self.width = width
        self.model = CifarResNet(num_classes, in_channels, width, tuple(num_blocks))
        self._layout: tuple[str, bool] | None = None  # (device type, channels last) in use

    def uses_channels_last(self, device: torch.device) -> bool:
        """The layout on ``device`` (see ``channels_last``); raises where ``True`` would crash."""
        if device.type != "cpu":
            return self.channels_last is not False
        safe = onednn_runs_avx512()
        if self.channels_last is None:
            return safe
        if self.channels_last and not safe and self.width < 8:
            raise ValueError(
                f"channels_last=True with width={self.width} on this CPU: torch's oneDNN AVX2 "
                "convolution kernels crash (segmentation fault) in the backward pass of "
                "channels-last convolutions narrower than 8 channels. Use width >= 8, or "
                "channels_last: null (the layout chosen per device) or false."
            )
        return bool(self.channels_last)

    def setup(self, stage: str) -> None:
        """Pick the layout for the Trainer's device before a strategy wraps the model (DDP's
        gradient buckets follow the parameters' layout)."""
        self._apply_layout(self.trainer.strategy.root_device)

    def _apply_layout(self, device: torch.device) -> bool:
        if self._layout is None or self._layout[0] != device.type:
            last = self.uses_channels_last(device)
            layout = torch.channels_last if last else torch.contiguous_format
            self.model.to(memory_format=layout)  # in place: the optimizer keeps its parameters
            self._layout = (device.type, last)
        return self._layout[1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._apply_layout(x.device):
            x = x.contiguous(memory_format=torch.channels_last)
        return self.model(x)


class TimmClassifier(ImageClassifier):
    """Any timm image model (ViT fine-tuning) trained with AMUSE and layer-wise lr decay.

    The model is ``timm.create_model(model_name, pretrained=..., num_classes=...,
    drop_path_rate=..., **model_kwargs)``. Pretrained weights come from timm's hub
    (``pretrained=True``), from a local file (``pretrained_file``: timm's
    ``pretrained_cfg_overlay=dict(file=...)``, which adapts the head to ``num_classes``), or from
    a full checkpoint of this architecture (``checkpoint_path``, timm's own argument).

    ``layer_decay`` (e.g. 0.65 for ViT-B, 0.75 for ViT-S) scales the lr of layer ``i`` of ``L`` by
    ``layer_decay ** (L - 1 - i)`` through the param groups' ``lr_scale``, which AMUSE applies.

    Args:
        model_name: timm model name, e.g. ``vit_small_patch16_224``.
        num_classes: classes of the new head.
        pretrained: load timm's pretrained weights (needs the hub or a local cache).
        pretrained_file: local weights file (``.safetensors``/``.pth``/``.npz``) to start from.
        checkpoint_path: full model checkpoint (same ``num_classes``) to load after creation.
        drop_path_rate: stochastic depth.
        model_kwargs: more ``create_model`` keywords (e.g. ``img_size: 32`` for tests).
        layer_decay: layer-wise lr decay in (0, 1], ``None`` for none.
        top_k: extra top-k accuracy (``val_acc_top5``); dropped when ``num_classes < top_k``.
        (the rest as :class:`ImageClassifier`)
    """

    def __init__(
        self,
        model_name: str = "vit_small_patch16_224",
        num_classes: int = 1000,
        pretrained: bool = False,
        pretrained_file: str | None = None,
        checkpoint_path: str | None = None,
        drop_path_rate: float = 0.1,
        model_kwargs: dict[str, Any] | None = None,
        layer_decay: float | None = 0.75,
        label_smoothing: float = 0.1,
        optimizer: OptimizerCallable | None = None,
        warmup_fraction: float | None = None,
        muon_patterns: Sequence[str] = (),
        fallback_patterns: Sequence[str] = (),
        top_k: int | None = 5,
    ) -> None:
        super().__init__(
            num_classes, label_smoothing, optimizer, warmup_fraction, muon_patterns,
            fallback_patterns, top_k,
        )  # fmt: skip
        self.save_hyperparameters(ignore=["optimizer"])
        _check_layer_decay(layer_decay)
        check_timm_model_name(model_name)
        self.layer_decay = layer_decay
        self.model = self._create_model(
            model_name, pretrained, pretrained_file, checkpoint_path, drop_path_rate, model_kwargs
        )

    @classmethod
    def check_init_args(cls, init_args: Mapping[str, Any]) -> None:
        """As :meth:`ImageClassifier.check_init_args`, plus the timm model name (unknown names
        get the closest ones) and ``layer_decay``."""
        super().check_init_args(init_args)
        _check_layer_decay(init_args.get("layer_decay"))
        check_timm_model_name(init_args.get("model_name"))

    @classmethod
    def check_downloads(cls, init_args: Mapping[str, Any]) -> None:
        """With ``pretrained: true`` and no ``pretrained_file`` / ``checkpoint_path``: the
        weights are cached or their host answers within seconds (the CLI calls this after every
        other check; offline, timm's hub download would retry for about a minute)."""
        if _wants_download(init_args):
            check_pretrained_weights(str(init_args.get("model_name")))

    def _create_model(
        self,
        model_name: str,
        pretrained: bool,
        pretrained_file: str | None,
        checkpoint_path: str | None,
        drop_path_rate: float,
        model_kwargs: dict[str, Any] | None,
    ) -> nn.Module:
        import timm

        settings = {"pretrained": pretrained, "pretrained_file": pretrained_file,
                    "checkpoint_path": checkpoint_path}  # fmt: skip
        if _wants_download(settings):
            check_pretrained_weights(model_name)
        kwargs = dict(model_kwargs or {})
        if pretrained_file is not None:
            kwargs["pretrained_cfg_overlay"] = {"file": pretrained_file}
        if checkpoint_path is not None:
            kwargs["checkpoint_path"] = checkpoint_path
        return timm.create_model(
            model_name,
            pretrained=pretrained or pretrained_file is not None,
            num_classes=self.num_classes,
            drop_path_rate=drop_path_rate,
            **kwargs,
        )


def _wants_download(init_args: Mapping[str, Any]) -> bool:
    return bool(init_args.get("pretrained")) and not (
        init_args.get("pretrained_file") or init_args.get("checkpoint_path")
    )


def _check_layer_decay(layer_decay: float | None) -> None:
    if layer_decay is not None and not 0.0 < layer_decay <= 1.0:
        raise ConfigError(f"must be in (0, 1] or null, got {layer_decay}", key="layer_decay")
