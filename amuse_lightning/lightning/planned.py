"""``beta_anneal_steps="auto"``: beta annealed over the run's planned optimizer steps.

Beta annealing (``docs/algorithm.md#mechanisms``) needs its length ``A`` up front. The round-3
studies annealed over the longest budget of the run and scored ``x`` at every budget up to it;
a Lightning ``Trainer`` knows that number before the first step
(``trainer.estimated_stepping_batches``: ``max_steps``, or ``max_epochs`` times the optimizer
steps per epoch, after ``limit_train_batches``, gradient accumulation and the devices).
:class:`~amuse_lightning.AmuseCallback` calls :func:`fill_planned_steps` when ``fit`` starts;
on a resume the checkpoint's optimizer state, loaded right after, brings the count the run
started with, so a resumed run keeps its schedule even when ``max_epochs`` grew (and a resume, or
``finish``, of a run whose data has no length needs no estimate). :func:`settle_planned_steps`,
once the checkpoint is loaded, refuses a count still missing and gives the optimizer's
``defaults`` the run's count, so that a group added later (``BaseFinetuning`` unfreezing a
backbone) anneals on the same schedule.
"""

from __future__ import annotations

import math

from lightning.pytorch import Trainer
from lightning.pytorch.utilities import rank_zero_info
from torch.optim import Optimizer

from amuse_lightning.lightning.errors import ConfigError
from amuse_lightning.optim.validation import PLANNED, adopt_beta_final, resolve_beta_final

__all__ = ["fill_planned_steps", "settle_planned_steps"]


def fill_planned_steps(optimizer: Optimizer, trainer: Trainer) -> int | None:
    """Replace ``beta_anneal_steps="auto"`` in ``optimizer``'s groups by the Trainer's planned
    optimizer steps and return that count (``None`` where no group asks for it).

    Raises :class:`ConfigError` when a new run has no planned end (``max_epochs=-1`` and no
    ``max_steps``, or data without a length and no ``max_steps``), naming the settings that give
    it one. A resume leaves ``"auto"`` in place then: its checkpoint brings the count.
    """
    groups = [g for g in optimizer.param_groups if g.get("beta_anneal_steps") == PLANNED]
    if not groups:
        return None
    total = trainer.estimated_stepping_batches
    resuming = trainer.ckpt_path is not None
    if not math.isfinite(total) or total < 1:
        if resuming:
            return None
        raise ConfigError(_NO_PLAN.format(total=total), key="beta_anneal_steps")
    steps = int(total)
    for group in groups:
        group["beta_anneal_steps"] = steps
        resolve_beta_final(group)  # beta_final="auto": from the length, stored as a number
    if resuming:  # the checkpoint's groups replace these; settle_planned_steps reads them
        return steps
    if optimizer.defaults.get("beta_anneal_steps") == PLANNED:
        optimizer.defaults["beta_anneal_steps"] = steps
        resolve_beta_final(optimizer.defaults)
    finals = sorted({g["beta_final"] for g in groups if g["beta_final"] != PLANNED})
    ends = f", beta_final={'/'.join(f'{b:.4g}' for b in finals)}" if finals else ""
    rank_zero_info(f"beta_anneal_steps={steps}: the run's planned optimizer steps ('auto'){ends}")
    return steps


_NO_PLAN = (
    "'auto' anneals beta over the run's planned optimizer steps, but this run has none "
    "({total}); set trainer max_steps (or max_epochs, with data of known length), or give the "
    "number of steps"
)


def settle_planned_steps(optimizer: Optimizer) -> None:
    """After a checkpoint is loaded (training starts): no group may still say ``"auto"``, and the
    optimizer's ``defaults`` take the groups' count (for groups added later)."""
    if any(g.get("beta_anneal_steps") == PLANNED for g in optimizer.param_groups):
        raise ConfigError(_NO_PLAN.format(total="no count in the checkpoint either"),
                          key="beta_anneal_steps")  # fmt: skip
    if optimizer.defaults.get("beta_anneal_steps") == PLANNED:
        counts = [g.get("beta_anneal_steps", 0) for g in optimizer.param_groups]
        optimizer.defaults["beta_anneal_steps"] = max(counts, default=0)
        adopt_beta_final(optimizer.defaults, optimizer.param_groups)  # the checkpoint's value
        resolve_beta_final(optimizer.defaults)
