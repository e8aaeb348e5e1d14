"""What AmuseCallback checks before it touches any weight; every error says what to change."""

from __future__ import annotations

import inspect
from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.core.optimizer import LightningOptimizer
from lightning.pytorch.strategies import (
    DDPStrategy,
    ModelParallelStrategy,
    SingleDeviceStrategy,
    Strategy,
)
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from lightning.pytorch.utilities.model_helpers import is_overridden
from lightning.pytorch.utilities.rank_zero import rank_zero_warn

from amuse_lightning.lightning.factories import is_schedule_free
from amuse_lightning.lightning.sharded import check_fsdp2_params, is_model_parallel

__all__ = [
    "check_fit_start",
    "check_fsdp2",
    "check_no_other_averaging",
    "check_params_belong_to",
    "check_precision",
    "check_setup",
    "check_single_instance",
    "check_strategy",
    "check_trainable",
    "fit_optimizer",
    "unwrap",
]


def check_setup(
    trainer: Trainer, pl_module: LightningModule, stage: str, kind: type[Callback],
    defaults: dict[str, Any],
) -> None:  # fmt: skip
    """Everything refused at ``setup``: the strategy, 16-bit parameters, a second callback of
    ``kind`` (named by its options other than ``defaults``), another weight-averaging callback,
    and, for ``fit``, a module with nothing to train (unless ``configure_model`` builds it
    later)."""
    check_strategy(trainer.strategy)
    check_precision(str(trainer.precision))
    check_single_instance(trainer.callbacks, kind, defaults)
    check_no_other_averaging(trainer.callbacks)
    if stage == "fit" and not is_overridden("configure_model", pl_module):
        check_trainable(pl_module)


def check_fit_start(
    trainer: Trainer, pl_module: LightningModule, allow_lr_scheduler: bool, recalibrates: bool,
    keep_y: bool,
) -> torch.optim.Optimizer:  # fmt: skip
    """Everything refused at ``on_fit_start``, once the optimizer exists; returns it."""
    optimizer = fit_optimizer(trainer, allow_lr_scheduler)
    check_trainable(pl_module)
    check_params_belong_to(optimizer, pl_module)
    if is_model_parallel(trainer.strategy):
        check_fsdp2(optimizer, recalibrates, keep_y)
    return optimizer


def check_precision(precision: str) -> None:
    """Refuse 16-bit parameters (``"bf16-true"``, ``"16-true"``): the averaging state would live
    in 16 bits, where the averaging increments vanish and fp16 second moments underflow."""
    if precision not in ("bf16-true", "16-true"):
        return
    mixed = "bf16-mixed" if precision.startswith("bf16") else "16-mixed"
    raise MisconfigurationException(
        f"AmuseCallback: precision={precision!r} keeps the parameters, and so AMUSE's z and the "
        "averaged x, in 16 bits: once the averaging weight c_t falls under 16-bit resolution the "
        "average stops moving, and in float16 the fallback's second moments underflow. Use "
        f"precision={mixed!r}: float32 weights and optimizer state, 16-bit compute."
    )


def check_strategy(strategy: Strategy) -> None:
    """Single device, DDP and ModelParallelStrategy (FSDP2) pass; anything else is refused."""
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


def _other_averaging_kinds() -> tuple[type, ...]:
    """Lightning's own weight-averaging callbacks (``WeightAveraging`` is Lightning >= 2.5)."""
    from lightning.pytorch.callbacks import StochasticWeightAveraging

    kinds: list[type] = [StochasticWeightAveraging]
    try:
        from lightning.pytorch.callbacks import WeightAveraging
    except ImportError:  # pragma: no cover - Lightning < 2.5
        pass
    else:
        kinds.append(WeightAveraging)
    return tuple(kinds)


def check_no_other_averaging(callbacks: list[Callback]) -> None:
    """Refuse another weight-averaging callback (EMA, SWA) next to AmuseCallback.

    Both would swap weights into the module around evaluation and checkpoints: listed first,
    the other callback's average ends up under ``optimizer.eval()``; listed after, it averages
    ``y`` and replaces ``x`` in validation and checkpoints. Neither is what either promises.
    """
    others = [cb for cb in callbacks if isinstance(cb, _other_averaging_kinds())]
    if not others:
        return
    names = ", ".join(type(cb).__name__ for cb in others)
    raise MisconfigurationException(
        f"AmuseCallback cannot share the Trainer with another weight-averaging callback ({names}):"
        " each swaps its own average into the module for validation and checkpoints, and "
        "together they evaluate and save a mixture of the two. AMUSE already averages: its x "
        f"is the anytime model. Remove {names} from Trainer(callbacks=...), or remove "
        "AmuseCallback and use a plain optimizer (e.g. torch.optim.AdamW) with it."
    )


def check_trainable(pl_module: LightningModule) -> None:
    if any(p.requires_grad for p in pl_module.parameters()):
        return
    raise MisconfigurationException(
        f"{type(pl_module).__name__} has no trainable parameters (none with requires_grad=True), "
        "so AMUSE has nothing to optimise. Unfreeze the layers to train, or remove AmuseCallback "
        "if this run only evaluates."
    )


def check_params_belong_to(optimizer: torch.optim.Optimizer, pl_module: LightningModule) -> None:
    own = {id(p) for p in pl_module.parameters()}
    foreign = sum(1 for g in optimizer.param_groups for p in g["params"] if id(p) not in own)
    if foreign:
        raise MisconfigurationException(
            f"The optimizer holds {foreign} tensor(s) that are not parameters of "
            f"{type(pl_module).__name__}; AmuseCallback checkpoints y by parameter name. Register "
            "them as nn.Parameter on the module, or optimise them separately."
        )


def check_fsdp2(optimizer: torch.optim.Optimizer, recalibrates: bool, keep_y: bool) -> None:
    """Under ModelParallelStrategy: FSDP2 DTensors only, and no BatchNorm recalibration; says
    once that checkpoints cannot carry ``y`` there (a resume is close, not bit-exact)."""
    check_fsdp2_params([p for group in optimizer.param_groups for p in group["params"]])
    if recalibrates:
        raise MisconfigurationException(
            "BatchNorm recalibration (bn_recalibration_batches > 0) is not supported with "
            "ModelParallelStrategy yet; set bn_recalibration_batches=0 or use strategy='ddp'."
        )
    if keep_y:
        rank_zero_warn(
            "AmuseCallback under FSDP2 (ModelParallelStrategy): checkpoints hold x but not y (its "
            "shards cannot travel in checkpoint['amuse']), so fit(ckpt_path=...) rebuilds y from "
            "x and z: the resumed run matches the uninterrupted one to rounding, not bit for "
            "bit. Use strategy='ddp' for bit-exact resumes; AmuseCallback(keep_y_in_checkpoint="
            "False) silences this warning."
        )


def unwrap(optimizer: Any) -> torch.optim.Optimizer:
    """The torch optimizer behind a ``LightningOptimizer`` (anything else is returned as is)."""
    return optimizer.optimizer if isinstance(optimizer, LightningOptimizer) else optimizer


def fit_optimizer(trainer: Trainer, allow_lr_scheduler: bool) -> torch.optim.Optimizer:
    """The fit's one schedule-free optimizer, with no LR scheduler unless allowed."""
    optimizers = [unwrap(o) for o in trainer.optimizers]
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
    if trainer.lr_scheduler_configs and not allow_lr_scheduler:
        kinds = ", ".join(type(c.scheduler).__name__ for c in trainer.lr_scheduler_configs)
        raise MisconfigurationException(
            f"configure_optimizers returned an LR scheduler ({kinds}) next to "
            f"{type(optimizer).__name__}. AMUSE has a built-in linear warmup (warmup_steps) "
            "and averages the iterates instead of decaying the learning rate, so a scheduler "
            "fights it. Remove the scheduler, or pass AmuseCallback(allow_lr_scheduler=True) "
            "to combine them on purpose."
        )
    return optimizer


def changed_options(obj: Any, defaults: dict[str, Any] | None = None) -> dict[str, Any]:
    """The constructor arguments of ``obj`` (read back from its attributes of the same names)
    that differ from their defaults; ``defaults`` replaces a signature default (e.g. ``None``
    that the constructor turns into a function)."""
    options = {}
    for name, parameter in inspect.signature(type(obj).__init__).parameters.items():
        if name == "self" or parameter.kind in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD):
            continue
        default = (defaults or {}).get(name, parameter.default)
        value = getattr(obj, name, default)
        if value is not default and value != default:
            options[name] = value
    return options


def check_single_instance(
    callbacks: list[Callback], kind: type[Callback], defaults: dict[str, Any] | None = None
) -> None:
    """At most one callback of ``kind``; the error names them by the arguments that differ from
    the defaults (:func:`changed_options`) and says which single one to keep."""

    def options(callback: Callback) -> dict[str, Any]:
        return changed_options(callback, defaults)

    found = [cb for cb in callbacks if isinstance(cb, kind)]
    if len(found) < 2:
        return
    name = kind.__name__
    described = ", ".join(_call(name, options(cb)) for cb in found)
    merged: dict[str, Any] = {}
    clashes = set()
    for cb in found:
        for key, value in options(cb).items():
            if key in merged and merged[key] != value:
                clashes.add(key)
            merged[key] = value
    keep = _call(name, merged)
    if clashes:
        keep += f"; they disagree on {', '.join(sorted(clashes))}: choose one value"
    raise MisconfigurationException(
        f"The Trainer has {len(found)} {name} instances: {described}. Each would swap the "
        "weights and write checkpoints on its own, and only the first one's options take "
        f"effect: keep only one {name}, given every option you need (here {keep}), and remove "
        "the others from Trainer(callbacks=...)."
    )


def _call(name: str, options: dict[str, Any]) -> str:
    shown = ", ".join(f"{k}={getattr(v, '__name__', None) or repr(v)}" for k, v in options.items())
    return f"{name}({shown})"
