"""How AmuseCallback moves the module between ``y`` and ``x``; the callback's hooks say when.

:class:`Swapper` makes every move the hooks ask for, each through the callback's one
:class:`~.state.SwapState` (which checks every change of phase):

- :meth:`Swapper.weights_for`: the :class:`~amuse_lightning.averaging.WeightSwap` of the stage's
  optimizer: the fit's, or one a finished fit left; none for a standalone stage that loaded
  ``x`` from a checkpoint, nor for the optimizer of a fit that ended with an exception once the
  module's weights were replaced since.
- :meth:`Swapper.enter_x`: ``x`` in for an evaluation loop, or for good after training, through
  one :class:`~amuse_lightning.averaging.AveragedWeights` scope (:meth:`Swapper.scope`) that
  brings BatchNorm statistics at ``x`` when the callback recalibrates: one estimate per
  optimizer step, shared by an evaluation and the checkpoint of that step.
- :meth:`Swapper.leave_evaluation`: ``y`` and the training BatchNorm buffers back, bit for bit.
- :meth:`Swapper.y_for_training`: ``y`` at every training batch, repairing (with one warning)
  an ``x`` that a manual ``optimizer.eval()`` left.
- :meth:`Swapper.finish_resume`: a resumed run's ``y`` back once the optimizer state is loaded.

The callback's settings are read through :class:`SwapSettings` (the callback itself), so this
module imports nothing from the callback.
"""

from __future__ import annotations

from typing import Any, Protocol

from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.utilities.rank_zero import rank_zero_warn

from amuse_lightning.averaging.batchnorm import batchnorm_buffer_names
from amuse_lightning.averaging.context import AveragedWeights
from amuse_lightning.averaging.swap import WeightSwap
from amuse_lightning.lightning.checks import unwrap
from amuse_lightning.lightning.factories import is_schedule_free
from amuse_lightning.lightning.state import WEIGHTS_REPLACED_AFTER_FAILED_FIT, Holds, SwapState

__all__ = ["SwapSettings", "Swapper"]

MANUAL_EVAL = (
    "The parameters held x at the start of a training batch: something called "
    "optimizer.eval() outside AmuseCallback. Switched back with optimizer.train(). "
    "Remove manual optimizer.train()/eval() calls; AmuseCallback manages them."
)


class SwapSettings(Protocol):
    """What :class:`Swapper` reads from the callback (see ``AmuseCallback``'s arguments)."""

    swap: str
    y_copy_device: str
    bn_recalibration_batches: int
    keep_y_in_checkpoint: bool

    def recalibrate_batchnorm(self, trainer: Trainer, pl_module: LightningModule) -> int: ...


class Swapper:
    """The moves between ``y`` and ``x`` of one callback (``settings``) on its ``state``."""

    def __init__(self, settings: SwapSettings, state: SwapState) -> None:
        self.settings = settings
        self.state = state

    def new_swap(self, optimizer: Any) -> WeightSwap:
        """A swap of ``optimizer`` with the callback's copy settings."""
        settings = self.settings
        return WeightSwap(optimizer, settings.swap == "copy", settings.y_copy_device)

    def recalibrates(self, pl_module: LightningModule) -> bool:
        """Whether ``x`` gets BatchNorm statistics of its own (asked for, and BatchNorm there)."""
        asked = self.settings.bn_recalibration_batches > 0
        return asked and bool(batchnorm_buffer_names(pl_module))

    def weights_for(self, trainer: Trainer) -> WeightSwap | None:
        """The swap for this stage: the fit's, or one for an optimizer a finished fit left."""
        state = self.state
        if state.holds is Holds.X_FROM_CHECKPOINT:
            return None  # a standalone stage loaded x from a checkpoint: nothing to convert
        optimizers = [unwrap(o) for o in trainer.optimizers]
        if len(optimizers) != 1 or not is_schedule_free(optimizers[0]):
            return None
        if state.weights is None or state.weights.optimizer is not optimizers[0]:
            weights = self.new_swap(optimizers[0])
            if not state.adoptable(weights):
                rank_zero_warn(WEIGHTS_REPLACED_AFTER_FAILED_FIT)
                return None
            state.manage(weights)
        return state.weights

    def enter_x(self, trainer: Trainer, pl_module: LightningModule, final: bool) -> None:
        """Put ``x`` (and, with recalibration, its BatchNorm statistics) into the parameters:
        for an evaluation loop, or for good when training is over (``final``)."""
        weights = self.weights_for(trainer)
        state = self.state
        if weights is None or state.holds is Holds.X_FOR_EVALUATION:
            return
        if weights.holds_x:  # x is there already (after fit, or a manual eval())
            if final:
                state.swapped_to_x(final=True, scope=None)
            return
        # after training y is kept exactly even with swap="inplace": checkpoints written after
        # fit must carry the y the run would continue from
        # likewise in the sanity check: a resumed run must not take an in-place round trip that
        # the uninterrupted run never took
        keep_y = final and self.settings.keep_y_in_checkpoint
        exact = True if keep_y or trainer.sanity_checking else None
        scope = self.scope(trainer, pl_module, weights, exact)
        scope.enter()
        state.swapped_to_x(final, scope)
        state.keep_x_bn(trainer.global_step, scope.bn_statistics)

    def scope(
        self, trainer: Trainer, pl_module: LightningModule, weights: WeightSwap,
        exact: bool | None,
    ) -> AveragedWeights:  # fmt: skip
        """An :class:`AveragedWeights` for ``weights``: with the BatchNorm statistics at the
        current ``x`` (from the cache of this optimizer step, or re-estimated) if recalibrating."""
        options: dict[str, Any] = {}
        if self.recalibrates(pl_module):
            cached = self.state.x_bn_at(trainer.global_step)
            if cached is not None:
                options["bn_statistics"] = cached
            else:
                recalibrate = self.settings.recalibrate_batchnorm
                options["bn_reestimate"] = lambda: recalibrate(trainer, pl_module)
        return AveragedWeights(weights.optimizer, pl_module, swap=weights, exact=exact, **options)

    def leave_evaluation(self) -> None:
        """End an evaluation swap: ``y`` (and the training BatchNorm buffers) back, bit for bit."""
        state = self.state
        if state.holds is not Holds.X_FOR_EVALUATION:
            return
        assert state.weights is not None
        if state.scope is not None:
            state.scope.restore()
        state.weights.to_y()  # an x something else put in (no scope) goes back too
        state.back_to_y()

    def y_for_training(self) -> None:
        """``y`` in the parameters at a training batch: an evaluation swap still in place ends;
        an ``x`` something else put in (a manual ``eval()``) goes back, with one warning."""
        state = self.state
        if state.weights is None or not state.weights.holds_x:
            return
        if state.holds is Holds.X_FOR_EVALUATION:
            self.leave_evaluation()
            return
        state.repairs += 1
        if state.repairs == 1:
            rank_zero_warn(MANUAL_EVAL)
        state.weights.to_y()

    def finish_resume(self, pl_module: LightningModule) -> None:
        """After the optimizer state is loaded: put ``y`` (and training BN buffers) back."""
        state = self.state
        pending = state.take_pending()
        if pending is None or state.weights is None:
            return
        pending.apply(pl_module, state.weights.optimizer)
        state.x_bn = None
