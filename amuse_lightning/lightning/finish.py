"""Finish a checkpointed AMUSE run in Lightning: a short cooldown, written as a new checkpoint.

:func:`finish_checkpoint` resumes the run from a checkpoint with ``trainer.fit(ckpt_path=...)``
(so precision, devices, the data order and the transfer hooks are the run's own), turns the
optimizer into the cooldown of :mod:`amuse_lightning.averaging.finisher` at the first training
batch (:class:`CooldownCallback`), trains ``k = fraction * t`` more steps with the learning rate
decayed to zero, re-estimates BatchNorm statistics at the finished weights and saves a normal
Lightning checkpoint of them (``Model.load_from_checkpoint(path)`` gives the finished model).
The source checkpoint is only read, so the run it came from stays resumable bit for bit.

The finished checkpoint carries ``checkpoint["amuse_finisher"]`` (where it came from and the
cooldown's settings). It is a model to evaluate or deploy: ``trainer.fit(ckpt_path=...)`` with
:class:`AmuseCallback` refuses it, and so does :func:`finish_checkpoint` as a source (both name
the run's own checkpoint instead). The output is never the source checkpoint (same file by
resolved path, also through a symlink), and an existing output is replaced only with
``overwrite=True``.

The cooldown's Trainer runs epoch after epoch and stops when the cooldown has its steps
(``trainer.should_stop``) instead of setting ``max_steps``: with ``max_steps`` (iteration-based
training) and validation off, Lightning 2.6 resumes an epoch-end checkpoint inside the finished
epoch and trains one phantom batch of it; without, the first batch is the one the run would
train on next.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import Callback, LightningDataModule, LightningModule, Trainer
from lightning.pytorch.callbacks import Checkpoint

from amuse_lightning.averaging.finisher import (
    DEFAULT_FRACTION,
    DEFAULT_LR_FACTOR,
    Cooldown,
    begin_cooldown,
)
from amuse_lightning.lightning.callback import AmuseCallback
from amuse_lightning.lightning.checkpoint import FINISHER_KEY, refuse_finished
from amuse_lightning.lightning.checks import unwrap

__all__ = [
    "CooldownCallback",
    "FinishResult",
    "check_output",
    "finish_checkpoint",
    "read_run_steps",
]


class CooldownCallback(Callback):
    """Runs the fit as a cooldown: from its first training batch on, the AMUSE optimizer takes
    plain steps of its directions from ``cooldown.start`` with the rate ``lr_t`` of the resumed
    step times ``cooldown.multiplier(i)`` at optimizer step ``i`` (gradient accumulation counts
    once per optimizer step). Put it after :class:`AmuseCallback` in ``callbacks``. With
    ``stop=True`` it ends the fit (``trainer.should_stop``) once the cooldown's steps are done."""

    def __init__(self, cooldown: Cooldown, source: str = "", stop: bool = False) -> None:
        self.cooldown = cooldown
        self.source = source
        self.stop = stop
        self._first_step: int | None = None
        self._peaks: list[float] = []

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        optimizers = [unwrap(o) for o in trainer.optimizers]
        if len(optimizers) != 1:
            raise ValueError(f"a cooldown needs exactly one optimizer, got {len(optimizers)}")
        schedule = begin_cooldown(optimizers[0], self.cooldown)  # type: ignore[arg-type]
        self._peaks = list(schedule.base_lrs)
        self._first_step = trainer.global_step

    def on_before_optimizer_step(
        self, trainer: Trainer, pl_module: LightningModule, optimizer: torch.optim.Optimizer
    ) -> None:
        assert self._first_step is not None, "the cooldown starts in on_train_start"
        factor = self.cooldown.multiplier(trainer.global_step - self._first_step)
        for group, peak in zip(unwrap(optimizer).param_groups, self._peaks, strict=True):
            group["lr"] = peak * factor

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        assert self._first_step is not None, "the cooldown starts in on_train_start"
        if self.stop and trainer.global_step - self._first_step >= self.cooldown.steps:
            trainer.should_stop = True

    def on_save_checkpoint(
        self, trainer: Trainer, pl_module: LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        checkpoint[FINISHER_KEY] = {
            "source": self.source,
            "source_step": self._first_step,
            **asdict(self.cooldown),
        }


@dataclass(frozen=True)
class FinishResult:
    """What :func:`finish_checkpoint` did: the checkpoint written and the compute it cost."""

    path: Path
    source_step: int
    cooldown: Cooldown

    @property
    def total_steps(self) -> int:
        return self.source_step + self.cooldown.steps


def read_run_steps(ckpt_path: str | Path) -> int:
    """The optimizer steps of the run a checkpoint was written at; refuses a checkpoint without
    optimizer state (a finisher continues the optimizer: its ``z``, momentum, second moments)
    and a finished one (:func:`~.checkpoint.refuse_finished`)."""
    return _run_position(ckpt_path)[0]


def _run_position(ckpt_path: str | Path) -> tuple[int, int]:
    """``(global_step, epoch)`` of a checkpoint :func:`read_run_steps` accepts."""
    checkpoint: Mapping[str, Any] = torch.load(
        ckpt_path, map_location="cpu", weights_only=False, mmap=True
    )
    refuse_finished(checkpoint, ckpt_path)
    if not checkpoint.get("optimizer_states"):
        raise ValueError(
            f"{ckpt_path} has no optimizer state (was it written with save_weights_only=True, "
            "or by Model.save/torch.save of the weights?). Finishing continues the run's "
            "optimizer; use a full Lightning checkpoint of the run (ModelCheckpoint's default, "
            "or trainer.save_checkpoint(path))."
        )
    return int(checkpoint.get("global_step", 0)), int(checkpoint.get("epoch", 0))


def finish_checkpoint(
    model: LightningModule,
    ckpt_path: str | Path,
    output: str | Path,
    *,
    datamodule: LightningDataModule | None = None,
    train_dataloaders: Any = None,
    fraction: float = DEFAULT_FRACTION,
    steps: int | None = None,
    start: str = "x",
    shape: str = "linear",
    lr_factor: float | str = DEFAULT_LR_FACTOR,
    momentum: str = "carried",
    bn_recalibration_batches: int = 50,
    trainer_options: Mapping[str, Any] | None = None,
    callbacks: list[Callback] | None = None,
    overwrite: bool = False,
) -> FinishResult:
    """Finish the AMUSE run of ``ckpt_path`` (see the module docstring) and write the finished
    model to ``output``; returns a :class:`FinishResult`.

    ``model`` and ``datamodule`` (or ``train_dataloaders``) are built as for the run;
    ``trainer_options`` are the run's Trainer arguments (accelerator, devices, precision, ...);
    the finisher sets the steps, turns validation, logging and checkpointing off and adds its
    callbacks. ``bn_recalibration_batches`` training batches re-estimate BatchNorm statistics
    at the finished weights (no effect on a model without BatchNorm). ``output`` must not be
    the source checkpoint; an existing ``output`` is replaced only with ``overwrite=True``.
    """
    check_output(ckpt_path, output, overwrite)
    source_step, source_epoch = _run_position(ckpt_path)
    if source_step < 1:
        raise ValueError(
            f"{ckpt_path} was written before the first optimizer step: nothing to finish."
        )
    length = steps if steps is not None else Cooldown.steps_for(source_step, fraction)
    cooldown = Cooldown(length, start, shape, lr_factor, momentum)  # type: ignore[arg-type]
    kept = [cb for cb in (callbacks or []) if not isinstance(cb, (Checkpoint, AmuseCallback))]
    options = {
        **dict(trainer_options or {}),
        "max_steps": -1,  # the cooldown stops the fit (see the module docstring)
        # a bound the cooldown never reaches (an epoch has at least one step), so the run's
        # length is finite for whatever estimates it (a warm-up given as a fraction of the run:
        # the optimizer's own state, restored from the checkpoint, replaces it anyway)
        "max_epochs": source_epoch + cooldown.steps + 1,
        "min_steps": None,
        "min_epochs": None,
        "limit_val_batches": 0,
        "num_sanity_val_steps": 0,
        "enable_checkpointing": False,
        "logger": False,
        "callbacks": [
            AmuseCallback(bn_recalibration_batches=bn_recalibration_batches),
            CooldownCallback(cooldown, source=str(ckpt_path), stop=True),
            *kept,
        ],
    }
    trainer = Trainer(**options)
    trainer.fit(model, train_dataloaders=train_dataloaders, datamodule=datamodule,
                ckpt_path=ckpt_path)  # fmt: skip
    if trainer.global_step != source_step + cooldown.steps:
        raise RuntimeError(
            f"the cooldown stopped at step {trainer.global_step} instead of "
            f"{source_step + cooldown.steps} (did the training data run out?); nothing written."
        )
    trainer.save_checkpoint(output)
    return FinishResult(Path(output), source_step, cooldown)


def check_output(source: str | Path, output: str | Path, overwrite: bool) -> None:
    """Refuse (``ValueError``) an ``output`` that is the ``source`` checkpoint (by resolved path,
    so also ``dir/./name`` and symlinks, or the same file by inode), a directory, or an existing
    file without ``overwrite``: the source is the run's resumable state."""
    source, output = Path(source), Path(output)
    same = output.resolve() == source.resolve()
    if not same and output.exists() and source.exists():
        same = os.path.samefile(output, source)
    if same:
        raise ValueError(
            f"the output {output} is the source checkpoint {source}: finishing writes a new "
            "checkpoint and must not replace the run's resumable state. Pass another output path."
        )
    if output.is_dir():
        raise ValueError(f"the output {output} is a directory; pass a file path to write to.")
    if output.exists() and not overwrite:
        raise ValueError(
            f"the output {output} exists already; pass another output path, or overwrite=True to "
            "replace it."
        )
