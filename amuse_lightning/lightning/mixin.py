"""AmuseMixin: a LightningModule's ``configure_optimizers`` built from the Muon/fallback partition.

Usage::

    class Model(AmuseMixin, LightningModule):
        def __init__(self, optimizer: OptimizerCallable | None = None):
            super().__init__()
            self.optimizer = optimizer   # LightningCLI dependency injection; None -> AMUSE()
            self.net = ...

    Trainer(callbacks=[AmuseCallback()]).fit(Model())

The optimizer factory receives ``partition.param_groups(...)`` (dicts with ``params``, ``names``,
``use_muon``, and ``lr_scale`` when ``layer_decay`` is set). A factory whose optimizer has no
``train()`` / ``eval()`` (not schedule-free, e.g. ``torch.optim.AdamW`` for a baseline) is allowed
with a warning: it trains, but there are no averaged weights ``x`` for ``AmuseCallback`` to swap in.
Anything that is not a ``torch.optim.Optimizer`` is a ``TypeError``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch import nn
from torch.optim import Optimizer

from amuse_lightning.lightning.factories import (
    AmuseFactory,
    OptimizerFactory,
    default_amuse_factory,
    is_schedule_free,
)
from amuse_lightning.partition import Partition, layer_decay_scales, partition_parameters

__all__ = ["AmuseFactory", "AmuseMixin", "default_amuse_factory"]

#: Attribute the mixin writes on the module: ``{param name: {"use_muon", "reason", "shape"}}``.
PARTITION_ATTR = "amuse_partition_by_name"


class AmuseMixin:
    """Mix into a LightningModule (``class M(AmuseMixin, LightningModule)``).

    Class attributes are defaults; instance attributes set in ``__init__`` override them.
    ``optimizer`` is a factory ``param_groups -> Optimizer`` (LightningCLI ``OptimizerCallable``);
    ``None`` builds ``AMUSE(groups)`` with its defaults. ``muon_patterns`` / ``fallback_patterns``
    are name globs forwarded to :func:`partition_parameters`; ``layer_decay`` turns on timm
    layer-wise lr scales (:func:`layer_decay_scales`). Override :meth:`amuse_param_groups` to
    set per-side lr or weight decay.
    """

    optimizer: OptimizerFactory | None = None
    muon_patterns: Sequence[str] = ()
    fallback_patterns: Sequence[str] = ()
    layer_decay: float | None = None
    partition_report: str = "compact"

    def amuse_partition(self) -> Partition:
        """The partition of this module, recomputed when its parameters or settings change."""
        module = self._amuse_module()
        key = (
            tuple(
                (name, id(p), p.requires_grad)
                for name, p in module.named_parameters(remove_duplicate=False)
            ),
            tuple(self.muon_patterns),
            tuple(self.fallback_patterns),
        )
        cached = self.__dict__.get("_amuse_partition_cache")
        if cached is not None and cached[0] == key:
            return cached[1]
        partition = partition_parameters(
            module, muon=self.muon_patterns, fallback=self.fallback_patterns
        )
        self.__dict__["_amuse_partition_cache"] = (key, partition)
        return partition

    def amuse_param_groups(self, partition: Partition) -> list[dict]:
        """Param groups handed to the optimizer factory (override to pass lr / weight decay)."""
        lr_scales = None
        if self.layer_decay is not None:
            lr_scales = layer_decay_scales(self._amuse_module(), self.layer_decay)
        return partition.param_groups(lr_scales=lr_scales)

    def configure_optimizers(self) -> Optimizer:
        """Partition (fresh for each fit), log the table, build the optimizer from the groups."""
        self.__dict__.pop("_amuse_partition_cache", None)
        partition = self.amuse_partition()
        groups = self.amuse_param_groups(partition)
        report = partition.report(self.partition_report)
        if report:
            rank_zero_info(report)
        setattr(self, PARTITION_ATTR, partition.by_name())
        factory = self.optimizer if self.optimizer is not None else default_amuse_factory()
        optimizer = factory(groups)
        if _check_built(optimizer, factory):
            self._amuse_warn_without_callback()
        return optimizer

    def _amuse_module(self) -> nn.Module:
        if not isinstance(self, nn.Module):
            raise TypeError(
                f"AmuseMixin must be mixed into a LightningModule / nn.Module, "
                f"not {type(self).__name__}; write class M(AmuseMixin, LightningModule)."
            )
        return self

    def _amuse_warn_without_callback(self) -> None:
        try:
            trainer = self.trainer  # LightningModule.trainer raises when no Trainer is attached
        except (AttributeError, RuntimeError):  # AttributeError: a plain nn.Module
            return
        if trainer is None:
            return
        try:
            from amuse_lightning.lightning.callback import AmuseCallback
        except ModuleNotFoundError as err:
            if err.name != "amuse_lightning.lightning.callback":
                raise
            return
        if not any(isinstance(cb, AmuseCallback) for cb in trainer.callbacks):
            rank_zero_warn(
                "AmuseMixin: the Trainer has no AmuseCallback, so validation, checkpoints and the "
                "model after fit see the training iterate y, not the averaged x; add "
                "Trainer(callbacks=[AmuseCallback()])."
            )


def _check_built(optimizer: Any, factory: Any) -> bool:
    """Raise if ``optimizer`` is no Optimizer; warn and return False if it is not schedule-free."""
    if not isinstance(optimizer, Optimizer):
        raise TypeError(
            f"the optimizer factory {factory!r} returned {type(optimizer).__name__}, not a "
            "torch.optim.Optimizer; it must map a list of param groups to one optimizer "
            "(e.g. class_path: amuse_lightning.AMUSE)."
        )
    if not is_schedule_free(optimizer):
        rank_zero_warn(
            f"AmuseMixin: {type(optimizer).__name__} has no train()/eval(), so it is not "
            "schedule-free: it trains, but there is no averaged model x to evaluate or save. "
            "Use amuse_lightning.AMUSE unless this is a deliberate baseline."
        )
        return False
    return True
