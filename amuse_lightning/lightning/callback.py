"""AmuseCallback: which weights (``y`` or ``x``) the rest of Lightning sees.

A schedule-free optimizer such as :class:`amuse_lightning.AMUSE` keeps the point where gradients
are taken, ``y``, in the parameters while training, and can convert them in place to the averaged
model ``x`` (``optimizer.eval()``) and back (``optimizer.train()``); ``group["train_mode"]`` says
which one the parameters hold. This callback makes those conversions at the right moments::

    hook (in order)                        parameters hold   optimizer mode
    -------------------------------------  ----------------  --------------
    training forward / backward / step     y                 train
    on_sanity_check_start / on_train_start resume: y from the checkpoint is put back here
    on_validation_start .. _end            x                 eval      (fit-time and standalone)
    on_test_start .. _end                  x                 eval
    on_predict_start .. _end               x                 eval
    on_validation_end (ours, then          y again           train     (bit for bit with
      ModelCheckpoint)                                                    swap="copy")
    on_train_end -> after fit returns      x                 eval      (``trainer.test()`` uses x)
    on_exception                           whatever was there before the evaluation started

Every checkpoint, from every save path, gets ``x`` in ``checkpoint["state_dict"]`` (new tensors;
the live parameters are never touched): when the module holds ``y`` at save time, ``x`` is made
by an exact temporary swap. The checkpoint also carries ``checkpoint["amuse"]`` (``y`` by
parameter name, and the training-time BatchNorm buffers when they differ from the saved ones), so
``trainer.fit(ckpt_path=...)`` continues the run bit for bit.

``save_weights_only=True`` skips callbacks' ``on_save_checkpoint`` but not the module's, so a
stand-in for ``pl_module.on_save_checkpoint`` goes on the module instance at ``setup`` and comes
off at ``teardown`` (:mod:`.save_hook`; it holds this callback's writer only weakly).

The hooks say when; :class:`~.swapper.Swapper` makes the moves (the stage's swap, ``x`` in with
its BatchNorm statistics, ``y`` back, a resume's ``y``). The callback's whole mutable state is
one :class:`~.state.SwapState`: a phase (:class:`~.state.Holds`, what the parameters hold and
why) plus what belongs to it. The swap itself is plain PyTorch
(:class:`amuse_lightning.averaging.AveragedWeights`); next door: :mod:`.checkpoint` (the resume
payload; a finished checkpoint is refused as a resume), :mod:`.batchnorm` (the Trainer's batches
for statistics at ``x``), :mod:`.checks` (what is refused at setup), :mod:`.sharded` (FSDP2).
"""

from __future__ import annotations

from typing import Any, Literal

from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.trainer.states import TrainerFn

from amuse_lightning.averaging.random_state import preserved_random_state
from amuse_lightning.averaging.snapshot import fingerprint
from amuse_lightning.averaging.swap import WeightSwap
from amuse_lightning.lightning.batchnorm import (
    BatchNormForward,
    batchnorm_buffer_names,
    default_bn_forward,
    recalibrate,
)
from amuse_lightning.lightning.checkpoint import (
    CHECKPOINT_KEY,
    read_payload,
    write_checkpoint,
)
from amuse_lightning.lightning.checks import check_fit_start, check_setup
from amuse_lightning.lightning.compat import remove_lr_finder_wrappers, sweep_at_applied_rates
from amuse_lightning.lightning.planned import fill_planned_steps, settle_planned_steps
from amuse_lightning.lightning.save_hook import install_module_save_hook, remove_module_save_hook
from amuse_lightning.lightning.schedule_log import schedule_metrics
from amuse_lightning.lightning.state import Holds, SwapState
from amuse_lightning.lightning.swapper import Swapper

__all__ = [
    "AmuseCallback",
    "WeightSwap",
    "batchnorm_buffer_names",
    "default_bn_forward",
    "preserved_random_state",
]

SwapMode = Literal["copy", "inplace"]
CopyDevice = Literal["same", "cpu"]


class AmuseCallback(Callback):
    """Show ``y`` to training and ``x`` to everything else, and checkpoint ``x``.

    Works with any optimizer that follows the Schedule-Free convention: ``optimizer.train()`` /
    ``optimizer.eval()`` convert the parameters in place between ``y`` and ``x`` and every param
    group carries ``train_mode`` (:class:`amuse_lightning.AMUSE`,
    ``schedulefree.AdamWScheduleFree``).
    Do not call ``optimizer.train()``/``eval()`` yourself when using this callback.

    Args:
        swap: ``"copy"`` (default) keeps a copy of ``y`` while ``x`` is in the parameters and
            writes it back bit for bit; ``"inplace"`` uses ``optimizer.eval()``/``train()`` only,
            which needs no extra memory during training but moves ``y`` by rounding error at
            each evaluation. Checkpoints and the sanity check always use an exact temporary
            copy, and at the end of fit ``y`` is copied before ``x`` is put in place (unless
            ``keep_y_in_checkpoint=False``), so a resumed run takes exactly the round trips the
            uninterrupted one took and continues bit for bit.
        y_copy_device: where the copy of ``y`` lives: ``"same"`` as the parameter, or ``"cpu"``
            to spare accelerator memory.
        bn_recalibration_batches: if ``N > 0``, re-estimate BatchNorm running statistics at ``x``
            with ``N`` training batches (train mode, no gradients, cumulative average) before
            each evaluation, at the end of fit and before a checkpoint's ``x`` is written. The
            batches come from a separate iterator over the training data; the random streams
            are restored afterwards, so the training run is unchanged. The training-time
            statistics come back with ``y``. Under DDP every rank estimates on its own batches
            and the estimates are merged (one all-reduce) into the average over all ranks'
            batches, identical on every rank and equal to the checkpoint's.
        bn_forward: how to run one recalibration batch through the module;
            defaults to :func:`default_bn_forward` (``module(batch[0])`` for tuple batches).
        keep_y_in_checkpoint: store ``y`` in ``checkpoint["amuse"]["y"]`` for an exact resume
            (default). Without it a resume recomputes ``y`` from ``x`` and ``z`` (close, not exact).
        log_schedule: log ``amuse/{beta_t,lr_t,c_t}/group{i}`` to the Trainer's loggers at the
            Trainer's ``log_every_n_steps``.
        allow_lr_scheduler: AMUSE warms its learning rate up by itself and averages instead of
            decaying; an LR scheduler is refused unless this is ``True`` (then you take
            responsibility, e.g. for a final cooldown).

    Use one AmuseCallback per Trainer (a second one is refused at setup). A param group that
    never stepped (added by ``add_param_group`` during an evaluation, or by ``BaseFinetuning``)
    holds ``x = y``; its ``train_mode`` flag is aligned with the other groups at each swap.

    Manual optimization is supported as long as the module uses exactly one schedule-free
    optimizer. Strategies: single device, DDP, and FSDP2 (``ModelParallelStrategy`` with
    ``fully_shard`` on a 1-D data-parallel mesh; the swap works on each rank's shard, checkpoints
    hold ``x`` in either checkpoint layout, but carry no ``y``, so a resume recomputes ``y`` from
    ``x`` and ``z``: close, not bit-exact; no BatchNorm recalibration).
    """

    def __init__(
        self,
        swap: SwapMode = "copy",
        y_copy_device: CopyDevice = "same",
        bn_recalibration_batches: int = 0,
        bn_forward: BatchNormForward | None = None,
        keep_y_in_checkpoint: bool = True,
        log_schedule: bool = True,
        allow_lr_scheduler: bool = False,
    ) -> None:
        if swap not in ("copy", "inplace"):
            raise ValueError(f"swap must be 'copy' or 'inplace', got {swap!r}.")
        if y_copy_device not in ("same", "cpu"):
            raise ValueError(f"y_copy_device must be 'same' or 'cpu', got {y_copy_device!r}.")
        if not isinstance(bn_recalibration_batches, int) or bn_recalibration_batches < 0:
            raise ValueError(
                "bn_recalibration_batches must be an int >= 0 (0 turns recalibration off), "
                f"got {bn_recalibration_batches!r}."
            )
        self.swap = swap
        self.y_copy_device = y_copy_device
        self.bn_recalibration_batches = bn_recalibration_batches
        self.bn_forward = bn_forward or default_bn_forward
        self.keep_y_in_checkpoint = keep_y_in_checkpoint
        self.log_schedule = log_schedule
        self.allow_lr_scheduler = allow_lr_scheduler
        self.last_schedule: dict[str, float] = {}
        self._state = SwapState()
        self._swapper = Swapper(self, self._state)

    @property
    def holds(self) -> Holds:
        """What the module's parameters hold, and why (see :class:`~.state.Holds`)."""
        return self._state.holds

    @property
    def weights(self) -> WeightSwap | None:
        """The swap of the optimizer this callback manages (``None`` while unmanaged): which
        parameters it converts and, while ``x`` is in them, the exact copy of ``y``
        (``weights.y_copy``)."""
        return self._state.weights

    # ------------------------------------------------------------------ setup / teardown
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        check_setup(trainer, pl_module, stage, AmuseCallback, {"bn_forward": default_bn_forward})
        if stage == "fit":
            self._state.start_fit()
        else:
            self._state.new_stage()
        install_module_save_hook(pl_module, self._write_weights_only, self._is_attached)
        sweep_at_applied_rates(trainer.callbacks)

    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        remove_module_save_hook(pl_module, self._write_weights_only)
        remove_lr_finder_wrappers(trainer.callbacks)

    def _is_attached(self, trainer: Trainer) -> bool:
        return any(cb is self for cb in trainer.callbacks)

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        optimizer = check_fit_start(
            trainer,
            pl_module,
            self.allow_lr_scheduler,
            self._swapper.recalibrates(pl_module),
            self.keep_y_in_checkpoint,
        )
        fill_planned_steps(optimizer, trainer)  # beta_anneal_steps="auto"
        weights = self._swapper.new_swap(optimizer)
        weights.to_y()  # a fresh schedule-free optimizer starts in eval mode
        self._state.manage(weights)

    # ------------------------------------------------------------------ training
    def on_sanity_check_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._swapper.finish_resume(pl_module)

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self._state.weights is not None:  # the checkpoint, if any, is loaded by now
            settle_planned_steps(self._state.weights.optimizer)
        self._swapper.finish_resume(pl_module)
        self._swapper.leave_evaluation()

    def on_train_batch_start(
        self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int
    ) -> None:
        self._swapper.y_for_training()

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        """Log the schedule; Lightning sends it to the loggers every ``log_every_n_steps``."""
        if not self.log_schedule or self._state.weights is None:
            return
        self.last_schedule = schedule_metrics(self._state.weights.optimizer)
        if self.last_schedule:
            pl_module.log_dict(self.last_schedule, on_step=True, on_epoch=False, batch_size=1)

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Leave ``x`` in the parameters (optimizer in eval mode) once training is over."""
        self._swapper.leave_evaluation()
        self._swapper.enter_x(trainer, pl_module, final=True)

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Fits that never reach ``on_train_end`` (e.g. ``fit(ckpt_path=...)`` with nothing
        left to train) end with ``x`` in the parameters too; after ``on_train_end`` this finds
        ``x`` already there and does nothing."""
        if self._state.weights is None:
            return
        self._swapper.finish_resume(pl_module)
        self._swapper.leave_evaluation()
        self._swapper.enter_x(trainer, pl_module, final=True)

    # ------------------------------------------------------------------ evaluation
    def on_validation_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._swapper.enter_x(trainer, pl_module, final=False)

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._swapper.leave_evaluation()

    def on_test_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._swapper.enter_x(trainer, pl_module, final=False)

    def on_test_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._swapper.leave_evaluation()

    def on_predict_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._swapper.enter_x(trainer, pl_module, final=False)

    def on_predict_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._swapper.leave_evaluation()

    def on_exception(
        self, trainer: Trainer, pl_module: LightningModule, exception: BaseException
    ) -> None:
        """Undo an evaluation swap so that weights and optimizer mode agree again. A fit that
        ends this way lets its optimizer go: a later stage converts the module's weights with it
        only if they are still the ones the fit left (not after a checkpoint or a state_dict
        was loaded into the module)."""
        self._swapper.leave_evaluation()
        weights = self._state.weights
        if trainer.state.fn == TrainerFn.FITTING and weights is not None:
            self._state.abandon(fingerprint(weights.local_params))

    # ------------------------------------------------------------------ BatchNorm
    def recalibrate_batchnorm(self, trainer: Trainer, pl_module: LightningModule) -> int:
        """Re-estimate BatchNorm running statistics of the weights now in ``pl_module`` with up
        to ``bn_recalibration_batches`` training batches; returns the number of batches used.

        Each BatchNorm layer is reset and run with ``momentum=None`` (cumulative average) in
        train mode under ``no_grad``; every random stream and data-source position is restored
        afterwards (:func:`.batchnorm.recalibrate`). Override to recalibrate differently.
        """
        return recalibrate(trainer, pl_module, self.bn_recalibration_batches, self.bn_forward)

    # ------------------------------------------------------------------ checkpoints
    def on_save_checkpoint(
        self, trainer: Trainer, pl_module: LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        self._write_checkpoint(trainer, pl_module, checkpoint, full=True)

    def _write_weights_only(
        self, trainer: Trainer, pl_module: LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        """The save hook stand-in's writer (``save_weights_only=True``): ``x`` only."""
        self._write_checkpoint(trainer, pl_module, checkpoint, full=False)

    def _write_checkpoint(
        self, trainer: Trainer, pl_module: LightningModule, checkpoint: dict[str, Any], full: bool
    ) -> None:
        """Write ``x`` into ``checkpoint["state_dict"]`` and, for a full checkpoint, what an exact
        resume needs into ``checkpoint["amuse"]``. Live tensors are never modified."""
        weights = self._swapper.weights_for(trainer)
        if weights is None or CHECKPOINT_KEY in checkpoint or "state_dict" not in checkpoint:
            return
        scope = self._state.scope if weights.holds_x else None
        if scope is None:
            scope = self._swapper.scope(trainer, pl_module, weights, exact=True)
        write_checkpoint(checkpoint, pl_module, scope, full=full, keep_y=self.keep_y_in_checkpoint)
        self._state.keep_x_bn(trainer.global_step, scope.bn_statistics)

    def on_load_checkpoint(
        self, trainer: Trainer, pl_module: LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        if trainer.state.fn != TrainerFn.FITTING:
            # a standalone stage loads the checkpoint's state_dict (x): nothing left to convert,
            # and a y kept from an earlier fit no longer belongs to these weights
            self._state.loaded_x()
            return
        # state_dict holds x when the checkpoint came from AmuseCallback; otherwise the payload
        # trusts the optimizer's saved train_mode flag. A finished checkpoint is refused here.
        self._state.pending = read_payload(checkpoint)
