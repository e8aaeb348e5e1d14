"""Warmup as a fraction of the run, for the example LightningModules.

The rule (what a printed config means):

- ``warmup_fraction: null`` (the default): the optimizer's own ``warmup_steps`` runs, exactly
  as ``--print_config`` shows it.
- ``warmup_fraction: f``: the optimizer is built with
  ``warmup_steps = max(2, round(f * trainer.estimated_stepping_batches))`` in place of its
  default ``warmup_steps``, and the step count is logged when ``fit`` starts.
- Both set (``warmup_fraction`` and an optimizer ``warmup_steps`` other than the optimizer's
  default) is a :class:`~amuse_lightning.lightning.errors.ConfigError`: keep one of them.

An optimizer that takes no ``warmup_steps`` (e.g. ``torch.optim.SGD``) or a run of unknown length
keeps its settings, with a warning. A fit resumed from a checkpoint (also the finisher's) skips
the rule: the checkpoint's optimizer state brings the run's own ``warmup_steps``. A warmup as
long as the whole run (``warmup_steps: 86`` with
``--trainer.max_steps 20``: the learning rate never reaches its set value and ``beta_t`` never
rises) gets a warning naming both numbers (:func:`warn_if_warmup_covers_run`).
"""

from __future__ import annotations

import math
import warnings
from typing import Any

from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch.optim import Optimizer

from amuse_lightning.lightning.errors import ConfigError
from amuse_lightning.lightning.factories import (
    OptimizerFactory,
    changed_argument,
    default_amuse_factory,
    factory_from_config,
    with_warmup_steps,
)
from amuse_lightning.lightning.mixin import AmuseMixin
from amuse_lightning.lightning.planned import fill_planned_steps

__all__ = [
    "apply_warmup_fraction",
    "check_warmup_settings",
    "configure_with_warmup",
    "warmup_steps_from_fraction",
    "warn_if_warmup_covers_run",
]


def warmup_steps_from_fraction(fraction: float, total_steps: float) -> int | None:
    """``max(2, round(fraction * total_steps))``, or ``None`` when the run length is unknown.

    The floor is 2 because one warmup step anchors AMUSE's beta schedule at ``c_1 = 1``, which
    sends ``beta_t`` to 1 (gradients taken at ``x`` only) from the second step on.
    """
    if not 0.0 <= fraction <= 1.0:
        raise ConfigError(f"must be in [0, 1] or null, got {fraction}", key="warmup_fraction")
    if not math.isfinite(total_steps) or total_steps <= 0:
        return None
    return max(2, round(fraction * total_steps))


def check_warmup_settings(warmup_fraction: float | None, optimizer: Any) -> None:
    """Raise :class:`ConfigError` for a ``warmup_fraction`` outside [0, 1], or one set next to
    an explicit optimizer ``warmup_steps``. ``optimizer`` is a factory or a parsed
    ``{"class_path", "init_args"}`` spec."""
    if warmup_fraction is None:
        return
    warmup_steps_from_fraction(warmup_fraction, 1)  # the range
    factory = factory_from_config(optimizer) or optimizer
    steps = changed_argument(factory, "warmup_steps")
    if steps is not None:
        raise ConfigError(
            f"{warmup_fraction} and the optimizer's warmup_steps={steps} both set the warmup; "
            f"keep one: warmup_fraction: null runs {steps} warmup steps",
            key="warmup_fraction",
        )


def apply_warmup_fraction(
    factory: OptimizerFactory, warmup_fraction: float, total_steps: float
) -> tuple[OptimizerFactory, int | None]:
    """``factory`` rebuilt with the warmup of ``warmup_fraction`` of ``total_steps``, and that
    step count (logged); ``(factory, None)`` with a warning when it cannot apply."""
    steps = warmup_steps_from_fraction(warmup_fraction, total_steps)
    rebuilt = None if steps is None else with_warmup_steps(factory, steps)
    if rebuilt is None:
        warnings.warn(
            f"warmup_fraction={warmup_fraction} ignored: the run length is unknown "
            f"({total_steps} steps) or the optimizer takes no warmup_steps; set "
            "max_epochs/max_steps or warmup_fraction=null",
            stacklevel=3,
        )
        return factory, None
    rank_zero_info(
        f"warmup_steps={steps}: warmup_fraction={warmup_fraction} of {total_steps:.0f} "
        "optimizer steps (set warmup_fraction: null to use the optimizer's warmup_steps)"
    )
    return rebuilt, steps


def warn_if_warmup_covers_run(optimizer: Optimizer, total_steps: float) -> bool:
    """Warn (and return ``True``) when the optimizer's ``warmup_steps`` reach the end of a run
    of ``total_steps`` optimizer steps; a run of unknown length is not checked."""
    steps = [g["warmup_steps"] for g in optimizer.param_groups if "warmup_steps" in g]
    if not steps or not math.isfinite(total_steps) or total_steps <= 0:
        return False
    if max(steps) < total_steps:
        return False
    rank_zero_warn(
        f"warmup_steps={max(steps)} covers the whole run of {total_steps:.0f} optimizer steps: "
        "the learning rate never reaches its set value and beta_t never rises. Set "
        "model.init_args.warmup_fraction (e.g. 0.05; with the optimizer's warmup_steps left "
        "at its default) or fewer warmup_steps."
    )
    return True


def configure_with_warmup(module: Any, defaults: dict[str, float]) -> Optimizer:
    """``configure_optimizers`` of an example module (an :class:`AmuseMixin` with ``optimizer``
    and ``warmup_fraction`` attributes): AmuseMixin's optimizer from ``module.optimizer`` (or
    AMUSE with ``defaults``), with ``warmup_steps`` from ``warmup_fraction`` when set, and the
    warning of :func:`warn_if_warmup_covers_run` when a step count covers the whole run. A fit
    resumed from a checkpoint skips both: its optimizer state brings the run's own warm-up.
    ``beta_anneal_steps="auto"`` is filled in here as well (:func:`fill_planned_steps`)."""
    trainer = module._trainer
    resuming = trainer is not None and trainer.ckpt_path is not None
    factory = module.optimizer or default_amuse_factory(**defaults)
    if module.warmup_fraction is not None and not resuming:
        total = float(trainer.estimated_stepping_batches)
        factory, steps = apply_warmup_fraction(factory, module.warmup_fraction, total)
        if steps is not None:
            module.resolved_warmup_steps = steps
    original, module.optimizer = module.optimizer, factory
    try:
        optimizer = AmuseMixin.configure_optimizers(module)
    finally:
        module.optimizer = original
    if (
        module.warmup_fraction is None
        and trainer is not None
        and not resuming
        and not trainer.fast_dev_run
    ):  # warm-up given as a step count, inside fit: the run's length is known
        warn_if_warmup_covers_run(optimizer, float(trainer.estimated_stepping_batches))
    if trainer is not None:  # also without AmuseCallback, which would fill it at fit start
        fill_planned_steps(optimizer, trainer)
    return optimizer
