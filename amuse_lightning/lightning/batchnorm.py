"""BatchNorm statistics at ``x`` inside a Trainer: which batches, and how they reach the module.

The re-estimate itself (every layer reset, a cumulative average over a few training batches)
is plain PyTorch: :mod:`amuse_lightning.averaging.batchnorm`. This module finds the Trainer's
training data (also before the fit loop has set it up), iterates it through a fresh loader so
the training iterator is never touched (:mod:`amuse_lightning.averaging.batches`, shared with
the plain-PyTorch layer), sends each batch through the precision plugin, the
transfer hooks and the strategy as training would, and keeps every random stream as it was
(:func:`~amuse_lightning.averaging.preserved_random_state`). The names the callback used to
import from here stay importable.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from lightning.pytorch import LightningDataModule, LightningModule, Trainer
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from lightning.pytorch.utilities.model_helpers import is_overridden
from torch.utils.data import DataLoader

from amuse_lightning.averaging.batches import check_separate_iterator, fresh_loader
from amuse_lightning.averaging.batchnorm import (
    batchnorm_buffer_names,
    batchnorm_layers,
    merge_batchnorm_across_ranks,
    reestimate_batchnorm,
)
from amuse_lightning.averaging.random_state import preserved_data_state, preserved_random_state
from amuse_lightning.averaging.snapshot import load_buffers, snapshot_buffers
from amuse_lightning.lightning.compat import private_attribute

__all__ = [
    "BatchNormForward",
    "batchnorm_buffer_names",
    "default_bn_forward",
    "load_buffers",
    "merge_across_ranks",
    "preserved_random_state",
    "recalibrate",
    "recalibration_loader",
    "reestimate_running_stats",
    "snapshot_buffers",
]

BatchNormForward = Callable[[LightningModule, Any], Any]

#: The Lightning-free name (:func:`amuse_lightning.averaging.merge_batchnorm_across_ranks`).
merge_across_ranks = merge_batchnorm_across_ranks


def default_bn_forward(module: LightningModule, batch: Any) -> None:
    """Forward pass used for BatchNorm recalibration: ``module(batch[0])`` for a tuple/list
    batch (inputs, targets, ...), ``module(batch)`` otherwise."""
    inputs = batch[0] if isinstance(batch, (list, tuple)) else batch
    module(inputs)


def reestimate_running_stats(
    module: torch.nn.Module,
    batches: Iterable[Any],
    max_batches: int,
    forward: Callable[[Any], Any],
) -> int:
    """Kept for earlier callers: :func:`amuse_lightning.averaging.reestimate_batchnorm` with a
    one-argument ``forward(batch)``."""
    return reestimate_batchnorm(module, batches, max_batches, lambda _, batch: forward(batch))


def _train_loader_of(trainer: Trainer) -> Any:
    """The fit's train dataloader(s), also before the fit loop has set them up (sanity check)."""
    if trainer.train_dataloader is not None:
        return trainer.train_dataloader
    source: Any = trainer.datamodule  # fit(datamodule=...) excludes train_dataloaders
    if source is None:
        # the module's hook or fit(train_dataloaders=...): no public way to tell them apart
        # before the fit loop's set-up
        source = private_attribute(
            trainer.fit_loop,
            "_data_source.instance",
            "Pass the training data in a LightningDataModule, or set "
            "AmuseCallback(bn_recalibration_batches=0).",
        )
    if isinstance(source, (LightningModule, LightningDataModule)):
        return source.train_dataloader() if is_overridden("train_dataloader", source) else None
    return source


def recalibration_loader(trainer: Trainer) -> Any:
    """The Trainer's single train dataloader."""
    loader = _train_loader_of(trainer)
    if loader is None:
        raise MisconfigurationException(
            "bn_recalibration_batches > 0 needs training batches to re-estimate BatchNorm "
            "statistics, but this Trainer has no train dataloader. Pass train_dataloaders or "
            "a datamodule with train_dataloader(), or set bn_recalibration_batches=0."
        )
    if isinstance(loader, (dict, list, tuple)):
        raise MisconfigurationException(
            "BatchNorm recalibration supports a single train dataloader; got "
            f"{type(loader).__name__} of loaders. Subclass AmuseCallback and override "
            "recalibrate_batchnorm, or set bn_recalibration_batches=0."
        )
    return loader


def recalibrate(
    trainer: Trainer, pl_module: LightningModule, max_batches: int, forward: BatchNormForward
) -> int:
    """Re-estimate the BatchNorm running statistics of the weights now in ``pl_module`` with up
    to ``max_batches`` training batches (:func:`~amuse_lightning.averaging.reestimate_batchnorm`)
    drawn from a fresh iterator over the training data, with every random stream restored
    afterwards (the global ones and every generator found in the loader, its sampler, dataset
    and transforms); returns the number of batches used. Under data parallelism the ranks'
    estimates are merged (:func:`merge_across_ranks`); every rank must call this at the same
    point.
    """
    loader = recalibration_loader(trainer)
    with preserved_data_state(loader):  # also the generators and positions of its parts
        check_separate_iterator(
            loader,
            "or set bn_recalibration_batches=0",
            MisconfigurationException,
            what="BatchNorm recalibration",
        )
        iterator = iter(fresh_loader(loader)) if isinstance(loader, DataLoader) else iter(loader)
        try:
            used = reestimate_batchnorm(
                pl_module,
                iterator,
                max_batches,
                lambda module, batch: _forward_batch(trainer, module, batch, forward),
            )
        finally:
            del iterator
    used = merge_batchnorm_across_ranks(batchnorm_layers(pl_module), used)
    if used == 0:
        raise RuntimeError(
            "BatchNorm recalibration got no batches from the train dataloader; give it data "
            "or set AmuseCallback(bn_recalibration_batches=0)."
        )
    return used


def _before_transfer(trainer: Trainer, pl_module: LightningModule, batch: Any) -> Any:
    """``on_before_batch_transfer`` of the datamodule when it overrides it, else the module's
    (the datamodule wins, as in Lightning's own batch loop)."""
    datamodule = trainer.datamodule
    if datamodule is not None and is_overridden("on_before_batch_transfer", datamodule):
        return datamodule.on_before_batch_transfer(batch, 0)
    return pl_module.on_before_batch_transfer(batch, 0)


def _forward_batch(
    trainer: Trainer, pl_module: LightningModule, batch: Any, forward: BatchNormForward
) -> None:
    """One batch through the module as training would see it: precision, transfer hooks, device."""
    batch = trainer.precision_plugin.convert_input(batch)
    batch = _before_transfer(trainer, pl_module, batch)
    batch = trainer.strategy.batch_to_device(batch, dataloader_idx=0)
    with trainer.precision_plugin.forward_context():
        forward(pl_module, batch)
