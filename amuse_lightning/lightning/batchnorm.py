"""BatchNorm running statistics at ``x``: re-estimate them without touching the training run.

The running statistics a BatchNorm layer gathered while training belong to the ``y`` iterates;
the averaged model ``x`` needs its own. :func:`recalibrate` resets every BatchNorm layer and runs
a few training batches through the module in train mode with ``momentum=None``, i.e. the
cumulative average

    running_mean = (1 / N) sum_{i=1..N} mean(batch_i),   likewise running_var,

on a separate iterator over the training data and inside :func:`preserved_random_state`, so the
data order and every random stream of the run stay as they were.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.distributed as dist
from lightning.pytorch import LightningDataModule, LightningModule, Trainer
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from lightning.pytorch.utilities.model_helpers import is_overridden
from torch import Tensor
from torch.nn.modules.batchnorm import _BatchNorm
from torch.utils.data import DataLoader, IterableDataset

from amuse_lightning.lightning.compat import private_attribute

BatchNormForward = Callable[[LightningModule, Any], Any]


def batchnorm_buffer_names(module: torch.nn.Module) -> list[str]:
    """Names (as in ``module.state_dict()``) of every BatchNorm running-statistics buffer."""
    names = []
    for prefix, layer in module.named_modules():
        if isinstance(layer, _BatchNorm) and layer.track_running_stats:
            dot = f"{prefix}." if prefix else ""
            names += [f"{dot}running_mean", f"{dot}running_var", f"{dot}num_batches_tracked"]
    return names


def snapshot_buffers(module: torch.nn.Module, names: Iterable[str]) -> dict[str, Tensor]:
    """Copies of the named buffers, made outside ``inference_mode`` so they can be loaded later
    from any context."""
    buffers = dict(module.named_buffers())
    with torch.inference_mode(False):
        return {name: buffers[name].detach().clone() for name in names}


@torch.no_grad()
def load_buffers(module: torch.nn.Module, values: dict[str, Tensor]) -> None:
    """Copy ``values`` (by buffer name) into the module's buffers in place."""
    buffers = dict(module.named_buffers())
    for name, value in values.items():
        buffers[name].copy_(value)


def default_bn_forward(module: LightningModule, batch: Any) -> None:
    """Forward pass used for BatchNorm recalibration: ``module(batch[0])`` for a tuple/list
    batch (inputs, targets, ...), ``module(batch)`` otherwise."""
    inputs = batch[0] if isinstance(batch, (list, tuple)) else batch
    module(inputs)


def _generators_of(loader: Any) -> list[torch.Generator]:
    """torch.Generator objects a DataLoader (or its samplers) draws from."""
    found: list[torch.Generator] = []
    batch_sampler = getattr(loader, "batch_sampler", None)
    for owner in (
        loader,
        getattr(loader, "sampler", None),
        batch_sampler,
        getattr(batch_sampler, "sampler", None),
    ):
        gen = getattr(owner, "generator", None)
        if isinstance(gen, torch.Generator) and all(gen is not g for g in found):
            found.append(gen)
    return found


@contextmanager
def preserved_random_state(generators: Iterable[torch.Generator] = ()) -> Iterator[None]:
    """Restore the global random streams (python, numpy, torch CPU and CUDA) and the given
    generators on exit, so work done inside leaves no trace in the run's randomness."""
    generators = list(generators)
    python_state = random.getstate()
    torch_state = torch.get_rng_state()
    cuda_states = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None
    generator_states = [g.get_state() for g in generators]
    try:
        import numpy

        numpy_state = numpy.random.get_state()
    except ImportError:  # pragma: no cover - numpy ships with torch in practice
        numpy = None
    try:
        yield
    finally:
        random.setstate(python_state)
        torch.set_rng_state(torch_state)
        if cuda_states is not None:
            torch.cuda.set_rng_state_all(cuda_states)
        for gen, state in zip(generators, generator_states, strict=True):
            gen.set_state(state)
        if numpy is not None:
            numpy.random.set_state(numpy_state)


def _fresh_loader(loader: Any) -> Any:
    """A loader over the same data and sampler as ``loader`` with its own iterator, so that
    iterating it never touches the training iterator (persistent workers, stateful loaders)."""
    if not isinstance(loader, DataLoader):
        return loader
    common: dict[str, Any] = {
        "num_workers": loader.num_workers,
        "collate_fn": loader.collate_fn,
        "pin_memory": loader.pin_memory,
        "timeout": loader.timeout,
        "worker_init_fn": loader.worker_init_fn,
        "generator": loader.generator,
    }
    if loader.num_workers > 0:
        common["multiprocessing_context"] = loader.multiprocessing_context
        common["prefetch_factor"] = loader.prefetch_factor
    if isinstance(loader.dataset, IterableDataset) or loader.batch_sampler is None:
        return DataLoader(
            loader.dataset, batch_size=loader.batch_size, drop_last=loader.drop_last, **common
        )
    return DataLoader(loader.dataset, batch_sampler=loader.batch_sampler, **common)


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


def reestimate_running_stats(
    module: torch.nn.Module,
    batches: Iterable[Any],
    max_batches: int,
    forward: Callable[[Any], Any],
) -> int:
    """Re-estimate the BatchNorm running statistics of ``module``'s current weights from up to
    ``max_batches`` of ``batches``, each run through ``forward``; returns the number used.

    Every tracking BatchNorm layer is reset and run with ``momentum=None`` (a cumulative
    average) in train mode under ``no_grad``; layer momenta and every module's train/eval flag
    are restored afterwards, also after an exception. Needs no Trainer (plain training loops and
    the benchmarks call it); random streams are the caller's (:func:`preserved_random_state`).
    """
    layers = [m for m in module.modules() if isinstance(m, _BatchNorm) and m.track_running_stats]
    momenta = [m.momentum for m in layers]
    modes = [(m, m.training) for m in module.modules()]
    used = 0
    if max_batches <= 0:
        return used
    with torch.no_grad():
        try:
            for m in layers:
                m.reset_running_stats()
                m.momentum = None
            module.train()
            for batch in batches:
                forward(batch)
                used += 1
                if used == max_batches:
                    break
        finally:
            for m, momentum in zip(layers, momenta, strict=True):
                m.momentum = momentum
            for m, training in modes:
                m.training = training
    return used


def recalibrate(
    trainer: Trainer, pl_module: LightningModule, max_batches: int, forward: BatchNormForward
) -> int:
    """Re-estimate the BatchNorm running statistics of the weights now in ``pl_module`` with up
    to ``max_batches`` training batches (:func:`reestimate_running_stats`) drawn from a fresh
    iterator over the training data, with every random stream restored afterwards; returns the
    number of batches used. Under data parallelism the ranks' estimates are merged
    (:func:`merge_across_ranks`); every rank must call this at the same point.
    """
    loader = recalibration_loader(trainer)
    with preserved_random_state(_generators_of(loader)):
        iterator = iter(_fresh_loader(loader))
        try:
            used = reestimate_running_stats(
                pl_module,
                iterator,
                max_batches,
                lambda batch: _forward_batch(trainer, pl_module, batch, forward),
            )
        finally:
            del iterator
    layers = [m for m in pl_module.modules() if isinstance(m, _BatchNorm)]
    with torch.no_grad():
        used = merge_across_ranks([m for m in layers if m.track_running_stats], used)
    if used == 0:
        raise RuntimeError(
            "BatchNorm recalibration got no batches from the train dataloader; give it data "
            "or set AmuseCallback(bn_recalibration_batches=0)."
        )
    return used


def merge_across_ranks(layers: list[_BatchNorm], used: int) -> int:
    """Under data parallelism every rank estimated the statistics on its own shard; replace them
    on every rank by the estimate over all ranks' batches and return the batches used in all.

    With ``n_r`` batches on rank ``r`` and its cumulative averages ``m_r`` (likewise the
    variances), every rank gets ``m = sum_r n_r m_r / sum_r n_r``: the cumulative average over
    all ``sum_r n_r`` batches, identical on every rank (one all-reduce, in float64).
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return used
    buffers = [b for m in layers for b in (m.running_mean, m.running_var)]
    if not buffers:
        return used
    count = torch.ones(1, dtype=torch.float64, device=buffers[0].device)
    flat = torch.cat([count, *(b.detach().double().flatten() for b in buffers)]) * used
    dist.all_reduce(flat)
    total = round(flat[0].item())
    if total == 0:
        return 0
    flat = flat[1:] / total
    offset = 0
    for buffer in buffers:
        buffer.copy_(flat[offset : offset + buffer.numel()].view_as(buffer))
        offset += buffer.numel()
    for m in layers:
        m.num_batches_tracked.fill_(total)
    return total


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
