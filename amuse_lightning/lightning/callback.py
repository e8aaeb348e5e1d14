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

``save_weights_only=True`` skips every callback's ``on_save_checkpoint``; Lightning still calls the
LightningModule's. The callback therefore puts a thin stand-in for ``pl_module.on_save_checkpoint``
on the module instance at ``setup`` (:mod:`.save_hook`; it calls the callback
first, then the module's own hook) and removes it at ``teardown``. After an exception (Lightning
calls no ``teardown`` then) the stand-in stays until the next ``setup``/``teardown``; it does
nothing while the module is attached to a Trainer without this callback.

The pieces live next door: :mod:`.swap` (the exact ``y`` <-> ``x`` swap) and
:mod:`.batchnorm` (BatchNorm statistics at ``x``, preserved random streams).
"""

from __future__ import annotations

import inspect
from typing import Any, Literal

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.strategies import (
    DDPStrategy,
    ModelParallelStrategy,
    SingleDeviceStrategy,
    Strategy,
)
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from lightning.pytorch.utilities.model_helpers import is_overridden
from lightning.pytorch.utilities.rank_zero import rank_zero_warn
from torch import Tensor

from amuse_lightning.lightning.batchnorm import (
    BatchNormForward,
    batchnorm_buffer_names,
    default_bn_forward,
    load_buffers,
    preserved_random_state,
    recalibrate,
    snapshot_buffers,
)
from amuse_lightning.lightning.save_hook import install_module_save_hook, remove_module_save_hook
from amuse_lightning.lightning.sharded import (
    check_fsdp2_params,
    checkpoint_copy,
    is_model_parallel,
    saves_whole_tensors,
)
from amuse_lightning.lightning.swap import WeightSwap, is_schedule_free
from amuse_lightning.optim.distributed import is_dtensor

__all__ = [
    "AmuseCallback",
    "WeightSwap",
    "batchnorm_buffer_names",
    "default_bn_forward",
    "preserved_random_state",
]

SwapMode = Literal["copy", "inplace"]
CopyDevice = Literal["same", "cpu"]

CHECKPOINT_KEY = "amuse"
_CHECKPOINT_FORMAT = 1
# group key -> keys an optimizer may store it under (AMUSE, then Meta's schedulefree)
_SCHEDULE_KEYS: dict[str, tuple[str, ...]] = {
    "beta_t": ("beta_t",),
    "lr_t": ("lr_t", "scheduled_lr"),
    "c_t": ("c_t",),
}


# ----------------------------------------------------------------------------------------------
# Checks at setup
# ----------------------------------------------------------------------------------------------
def _check_strategy(strategy: Strategy) -> None:
    names = [cls.__name__ for cls in type(strategy).__mro__]
    supported = isinstance(strategy, (SingleDeviceStrategy, DDPStrategy, ModelParallelStrategy))
    if supported and not any("DeepSpeed" in name for name in names):
        return
    raise MisconfigurationException(
        f"AmuseCallback does not support the {type(strategy).__name__} strategy yet. Supported: "
        "a single device (strategy='auto'), DDP (strategy='ddp', 'ddp_spawn', 'ddp_fork', "
        "'ddp_notebook') and FSDP2 (ModelParallelStrategy(tensor_parallel_size=1) with "
        "fully_shard in configure_model). FSDP1 (FSDPStrategy) flattens parameters while "
        "Newton-Schulz needs whole matrices, and DeepSpeed ignores checkpoint['state_dict']; "
        "use strategy='ddp' or ModelParallelStrategy."
    )


def _check_trainable(pl_module: LightningModule) -> None:
    if any(p.requires_grad for p in pl_module.parameters()):
        return
    raise MisconfigurationException(
        f"{type(pl_module).__name__} has no trainable parameters (none with requires_grad=True), "
        "so AMUSE has nothing to optimise. Unfreeze the layers to train, or remove AmuseCallback "
        "if this run only evaluates."
    )


def _check_params_belong_to(optimizer: torch.optim.Optimizer, pl_module: LightningModule) -> None:
    own = {id(p) for p in pl_module.parameters()}
    foreign = sum(1 for g in optimizer.param_groups for p in g["params"] if id(p) not in own)
    if foreign:
        raise MisconfigurationException(
            f"The optimizer holds {foreign} tensor(s) that are not parameters of "
            f"{type(pl_module).__name__}; AmuseCallback checkpoints y by parameter name. Register "
            "them as nn.Parameter on the module, or optimise them separately."
        )


def _options(callback: AmuseCallback) -> dict[str, Any]:
    """The constructor arguments of ``callback`` that differ from their defaults."""
    defaults = inspect.signature(AmuseCallback.__init__).parameters
    options = {}
    for name, parameter in defaults.items():
        if name == "self" or not hasattr(callback, name):
            continue
        value = getattr(callback, name)
        default = default_bn_forward if name == "bn_forward" else parameter.default
        if value is not default and value != default:
            options[name] = value
    return options


def _describe(options: dict[str, Any]) -> str:
    shown = ", ".join(f"{k}={getattr(v, '__name__', None) or repr(v)}" for k, v in options.items())
    return f"AmuseCallback({shown})"


def _check_single_instance(callbacks: list[Callback]) -> None:
    found = [cb for cb in callbacks if isinstance(cb, AmuseCallback)]
    if len(found) < 2:
        return
    described = ", ".join(_describe(_options(cb)) for cb in found)
    merged: dict[str, Any] = {}
    clashes = set()
    for cb in found:
        for name, value in _options(cb).items():
            if name in merged and merged[name] != value:
                clashes.add(name)
            merged[name] = value
    keep = _describe(merged)
    if clashes:
        keep += f" (they disagree on {', '.join(sorted(clashes))}: choose one value)"
    raise MisconfigurationException(
        f"The Trainer has {len(found)} AmuseCallback instances: {described}. Each would swap "
        "the weights and write checkpoints on its own, and only the first one's options take "
        "effect: keep only one AmuseCallback, given every option you need (here "
        f"{keep}), and remove the others from Trainer(callbacks=...)."
    )


def _unwrap(optimizer: Any) -> torch.optim.Optimizer:
    return getattr(optimizer, "_optimizer", optimizer)  # LightningOptimizer -> torch optimizer


# ----------------------------------------------------------------------------------------------
# The callback
# ----------------------------------------------------------------------------------------------
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
            each evaluation. Checkpoints always use an exact temporary copy, and at the end of
            fit ``y`` is copied before ``x`` is put in place (unless
            ``keep_y_in_checkpoint=False``), so checkpoints written after fit resume exactly.
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
        self._weights: WeightSwap | None = None
        self._eval_swapped = False  # x is in the parameters because an evaluation loop runs
        self._train_bn: dict[str, Tensor] | None = None  # y-time BN buffers while x's are loaded
        self._x_bn_cache: tuple[Any, dict[str, Tensor]] | None = None
        self._pending_resume: dict[str, Any] | None = None
        self._loaded_x_for_eval = False
        self._warned_outside_eval = False

    # ------------------------------------------------------------------ setup / teardown
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        _check_strategy(trainer.strategy)
        _check_single_instance(trainer.callbacks)
        if stage == "fit":
            if not is_overridden("configure_model", pl_module):
                _check_trainable(pl_module)
            self._weights = None
            self._eval_swapped = False
            self._train_bn = None
            self._x_bn_cache = None
            self._pending_resume = None
        self._loaded_x_for_eval = False
        install_module_save_hook(self, pl_module)

    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        remove_module_save_hook(self, pl_module)

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        optimizer = self._fit_optimizer(trainer)
        _check_trainable(pl_module)
        if trainer.lr_scheduler_configs and not self.allow_lr_scheduler:
            kinds = ", ".join(type(c.scheduler).__name__ for c in trainer.lr_scheduler_configs)
            raise MisconfigurationException(
                f"configure_optimizers returned an LR scheduler ({kinds}) next to "
                f"{type(optimizer).__name__}. AMUSE has a built-in linear warmup (warmup_steps) "
                "and averages the iterates instead of decaying the learning rate, so a scheduler "
                "fights it. Remove the scheduler, or pass AmuseCallback(allow_lr_scheduler=True) "
                "to combine them on purpose."
            )
        _check_params_belong_to(optimizer, pl_module)
        if is_model_parallel(trainer.strategy):
            self._check_fsdp2(optimizer, pl_module)
        self._weights = WeightSwap(optimizer, self.swap == "copy", self.y_copy_device)
        self._weights.to_y()  # a fresh schedule-free optimizer starts in eval mode

    def _check_fsdp2(self, optimizer: torch.optim.Optimizer, pl_module: LightningModule) -> None:
        check_fsdp2_params([p for group in optimizer.param_groups for p in group["params"]])
        if self._recalibrates(pl_module):
            raise MisconfigurationException(
                "BatchNorm recalibration (bn_recalibration_batches > 0) is not supported with "
                "ModelParallelStrategy yet; set bn_recalibration_batches=0 or use strategy='ddp'."
            )

    def _fit_optimizer(self, trainer: Trainer) -> torch.optim.Optimizer:
        optimizers = [_unwrap(o) for o in trainer.optimizers]
        if len(optimizers) != 1:
            raise MisconfigurationException(
                f"AmuseCallback needs exactly one optimizer, got {len(optimizers)}. AMUSE is one "
                "hybrid optimizer: put every parameter in it (Muon groups for matrices, "
                "fallback groups for the rest) instead of returning several optimizers."
            )
        optimizer = optimizers[0]
        if not is_schedule_free(optimizer):
            raise MisconfigurationException(
                f"AmuseCallback needs a schedule-free optimizer (train()/eval() methods and "
                f"'train_mode' in every param group), got {type(optimizer).__name__}. Return "
                "amuse_lightning.AMUSE (or e.g. schedulefree.AdamWScheduleFree) from "
                "configure_optimizers, or remove AmuseCallback."
            )
        return optimizer

    # ------------------------------------------------------------------ training
    def on_sanity_check_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._finish_resume(pl_module)

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._finish_resume(pl_module)
        self._leave_eval(pl_module)

    def on_train_batch_start(
        self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int
    ) -> None:
        weights = self._weights
        if weights is None or not weights.holds_x:
            return
        if self._eval_swapped:
            self._leave_eval(pl_module)
            return
        if not self._warned_outside_eval:
            rank_zero_warn(
                "The parameters held x at the start of a training batch: something called "
                "optimizer.eval() outside AmuseCallback. Switched back with optimizer.train(). "
                "Remove manual optimizer.train()/eval() calls; AmuseCallback manages them."
            )
            self._warned_outside_eval = True
        weights.to_y()

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if not self.log_schedule or self._weights is None or not trainer.loggers:
            return
        if not trainer._logger_connector.should_update_logs:  # log_every_n_steps
            return
        self.last_schedule = self._schedule_metrics(self._weights.optimizer)
        step = trainer.fit_loop.epoch_loop._batches_that_stepped
        for logger in trainer.loggers:
            logger.log_metrics(self.last_schedule, step=step)

    @staticmethod
    def _schedule_metrics(optimizer: torch.optim.Optimizer) -> dict[str, float]:
        metrics = {}
        for index, group in enumerate(optimizer.param_groups):
            for name, keys in _SCHEDULE_KEYS.items():
                key = next((k for k in keys if k in group), None)
                if key is not None:
                    metrics[f"amuse/{name}/group{index}"] = float(group[key])
        return metrics

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Leave ``x`` in the parameters (optimizer in eval mode) once training is over."""
        self._leave_eval(pl_module)
        self._enter_x(trainer, pl_module, for_evaluation=False)

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Fits that never reach ``on_train_end`` (e.g. ``fit(ckpt_path=...)`` with nothing
        left to train) end with ``x`` in the parameters too; after ``on_train_end`` this finds
        ``x`` already there and does nothing."""
        if self._weights is None:
            return
        self._finish_resume(pl_module)
        self._leave_eval(pl_module)
        self._enter_x(trainer, pl_module, for_evaluation=False)

    # ------------------------------------------------------------------ evaluation
    def on_validation_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._enter_x(trainer, pl_module, for_evaluation=True)

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._leave_eval(pl_module)

    def on_test_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._enter_x(trainer, pl_module, for_evaluation=True)

    def on_test_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._leave_eval(pl_module)

    def on_predict_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._enter_x(trainer, pl_module, for_evaluation=True)

    def on_predict_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._leave_eval(pl_module)

    def on_exception(
        self, trainer: Trainer, pl_module: LightningModule, exception: BaseException
    ) -> None:
        """Undo an evaluation swap so that weights and optimizer mode agree again."""
        self._leave_eval(pl_module)

    def _weights_for(self, trainer: Trainer) -> WeightSwap | None:
        """The swap for this stage: the fit's, or one for an optimizer a finished fit left."""
        if self._loaded_x_for_eval:
            return None  # a standalone stage loaded x from a checkpoint: nothing to convert
        optimizers = [_unwrap(o) for o in trainer.optimizers]
        if len(optimizers) != 1 or not is_schedule_free(optimizers[0]):
            return None
        if self._weights is None or self._weights.optimizer is not optimizers[0]:
            self._weights = WeightSwap(optimizers[0], self.swap == "copy", self.y_copy_device)
        return self._weights

    def _enter_x(self, trainer: Trainer, pl_module: LightningModule, for_evaluation: bool) -> None:
        weights = self._weights_for(trainer)
        # after training (not for an evaluation) y is kept exactly even with swap="inplace":
        # checkpoints written after fit must carry the y the run would continue from
        exact = True if not for_evaluation and self.keep_y_in_checkpoint else None
        if weights is None or self._eval_swapped or not weights.to_x(exact=exact):
            return
        self._eval_swapped = for_evaluation
        if not self._recalibrates(pl_module):
            return
        try:
            self._train_bn = snapshot_buffers(pl_module, batchnorm_buffer_names(pl_module))
            self._load_x_bn_stats(trainer, pl_module)
        except BaseException:
            self._eval_swapped = True
            self._leave_eval(pl_module)
            raise

    def _leave_eval(self, pl_module: LightningModule) -> None:
        if not self._eval_swapped or self._weights is None:
            return
        if self._train_bn is not None:
            load_buffers(pl_module, self._train_bn)
            self._train_bn = None
        self._weights.to_y()
        self._eval_swapped = False

    # ------------------------------------------------------------------ BatchNorm
    def _recalibrates(self, pl_module: LightningModule) -> bool:
        return self.bn_recalibration_batches > 0 and bool(batchnorm_buffer_names(pl_module))

    def _load_x_bn_stats(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Put BatchNorm statistics estimated at the current ``x`` into the module (cached per
        optimizer step, so evaluation and the checkpoint of one step share one estimate)."""
        assert self._weights is not None
        key = (id(self._weights.optimizer), trainer.global_step)
        if self._x_bn_cache is not None and self._x_bn_cache[0] == key:
            load_buffers(pl_module, self._x_bn_cache[1])
            return
        self.recalibrate_batchnorm(trainer, pl_module)
        self._x_bn_cache = (key, snapshot_buffers(pl_module, batchnorm_buffer_names(pl_module)))

    def recalibrate_batchnorm(self, trainer: Trainer, pl_module: LightningModule) -> int:
        """Re-estimate BatchNorm running statistics of the weights now in ``pl_module`` with up
        to ``bn_recalibration_batches`` training batches; returns the number of batches used.

        Each BatchNorm layer is reset and run with ``momentum=None`` (cumulative average) in
        train mode under ``no_grad``; every random stream is restored afterwards
        (:func:`.batchnorm.recalibrate`). Override to recalibrate differently.
        """
        return recalibrate(trainer, pl_module, self.bn_recalibration_batches, self.bn_forward)

    # ------------------------------------------------------------------ checkpoints
    def on_save_checkpoint(
        self, trainer: Trainer, pl_module: LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        self._write_checkpoint(trainer, pl_module, checkpoint, full=True)

    def _write_checkpoint(
        self, trainer: Trainer, pl_module: LightningModule, checkpoint: dict[str, Any], full: bool
    ) -> None:
        """Write ``x`` into ``checkpoint["state_dict"]`` and, for a full checkpoint, what an exact
        resume needs into ``checkpoint["amuse"]``. Live tensors are never modified."""
        weights = self._weights_for(trainer)
        if weights is None or CHECKPOINT_KEY in checkpoint or "state_dict" not in checkpoint:
            return
        names = {id(p): n for n, p in pl_module.named_parameters()}
        if weights.holds_x:  # the live state_dict already is x
            y_values = weights.y_copy
            y = None
            if y_values is not None:
                y = {names[id(p)]: v for p, v in zip(weights.params, y_values, strict=True)}
            train_bn = self._train_bn
        else:
            train_bn = self._write_x_state_dict(
                trainer, pl_module, checkpoint["state_dict"], weights
            )
            y = {names[id(p)]: p.detach() for p in weights.params}  # y is back in place
        if not full:
            return
        # FSDP2: y's shards cannot travel in checkpoint["amuse"] (rank 0 writes it alone), so
        # a resume recomputes y from x and z (close, not bit-exact)
        sharded = any(is_dtensor(p) for p in weights.params)
        keep_y = self.keep_y_in_checkpoint and y is not None and not sharded
        checkpoint[CHECKPOINT_KEY] = {
            "format": _CHECKPOINT_FORMAT,
            "y": _cloned(y) if keep_y else None,
            "train_buffers": _cloned(train_bn) if train_bn is not None else None,
        }

    def _write_x_state_dict(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        state_dict: dict[str, Any],
        weights: WeightSwap,
    ) -> dict[str, Tensor] | None:
        """Replace the parameters (and, with recalibration, the BatchNorm buffers) in
        ``state_dict`` by copies of ``x`` through an exact temporary swap; returns the
        training-time BatchNorm buffers when recalibration replaced them."""
        param_ids = {id(p) for p in weights.params}
        whole = saves_whole_tensors(trainer.strategy)
        recalibrates = self._recalibrates(pl_module)
        bn_names = set(batchnorm_buffer_names(pl_module)) if recalibrates else set()
        train_bn = snapshot_buffers(pl_module, bn_names) if recalibrates else None
        weights.to_x(exact=True)
        try:
            if recalibrates:
                self._load_x_bn_stats(trainer, pl_module)
            for key, live in pl_module.state_dict(keep_vars=True).items():
                if id(live) not in param_ids and key not in bn_names:
                    continue
                if whole and is_dtensor(live):  # a collective: every rank, rank 0 keeps it
                    live = live.full_tensor()
                if key in state_dict:
                    state_dict[key] = checkpoint_copy(live, state_dict[key])
        finally:
            if train_bn is not None:
                load_buffers(pl_module, train_bn)
            weights.to_y()
        return train_bn

    def on_load_checkpoint(
        self, trainer: Trainer, pl_module: LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        if trainer.state.fn != TrainerFn.FITTING:
            # a standalone stage loads the checkpoint's state_dict (x): nothing left to convert,
            # and a y kept from an earlier fit no longer belongs to these weights
            self._loaded_x_for_eval = True
            self._weights = None
            return
        state = checkpoint.get(CHECKPOINT_KEY)
        # state_dict holds x when the checkpoint came from AmuseCallback; otherwise trust the
        # optimizer's saved train_mode flag.
        self._pending_resume = dict(state) if state is not None else {"foreign": True}

    def _finish_resume(self, pl_module: LightningModule) -> None:
        """After the optimizer state is loaded: put ``y`` (and training BN buffers) back."""
        state, self._pending_resume = self._pending_resume, None
        weights = self._weights
        if state is None or weights is None:
            return
        groups = weights.optimizer.param_groups
        y = state.get("y")
        with torch.no_grad():
            if y:
                named = dict(pl_module.named_parameters())
                names = {id(p): n for n, p in named.items()}
                missing = [names[id(p)] for p in weights.params if names[id(p)] not in y]
                if missing:
                    raise RuntimeError(
                        f"The checkpoint's y does not cover the parameters {missing[:5]}; "
                        "resume with the model the checkpoint was written for."
                    )
                for name, value in y.items():
                    named[name].copy_(value)
                for group in groups:
                    group["train_mode"] = True
            else:
                if not state.get("foreign"):
                    for group in groups:
                        group["train_mode"] = False
                weights.optimizer.train()
            if state.get("train_buffers"):
                load_buffers(pl_module, state["train_buffers"])
        self._x_bn_cache = None


def _cloned(values: dict[str, Tensor]) -> dict[str, Tensor]:
    with torch.inference_mode(False):
        return {name: value.detach().clone() for name, value in values.items()}
