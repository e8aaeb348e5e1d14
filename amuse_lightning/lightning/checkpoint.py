"""What a checkpoint carries for an exact resume: ``checkpoint["amuse"]``.

:class:`~amuse_lightning.lightning.callback.AmuseCallback` writes the averaged model ``x`` into
``checkpoint["state_dict"]`` (so ``Model.load_from_checkpoint`` needs no optimizer). ``x`` alone
does not continue a run bit for bit: the training point ``y`` is recomputed from ``x`` and ``z``
in floating point. The payload next to it therefore holds::

    checkpoint["amuse"] = {
        "format": 1,                     # FORMAT_VERSION, checked on load
        "y": {name: tensor} | None,      # the parameters at y, by parameter name
        "train_buffers": {name: tensor} | None,  # training-time BatchNorm buffers, when the
    }                                             # saved ones are the recalibrated ones at x

This module fills a checkpoint (:func:`write_checkpoint`): ``x`` into the state_dict
(:func:`write_x_state_dict`) and the payload
(:func:`build_payload`), reads and validates it on load (:func:`read_payload`: a payload of an
unknown or newer format is refused with a clear error) and applies it once the optimizer state is
back (:meth:`ResumePayload.apply`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from amuse_lightning.averaging.context import AveragedWeights
from amuse_lightning.averaging.snapshot import parameter_names
from amuse_lightning.lightning.sharded import checkpoint_copy, holds_whole_tensors
from amuse_lightning.optim.distributed import is_dtensor

__all__ = [
    "CHECKPOINT_KEY",
    "FINISHER_KEY",
    "FORMAT_VERSION",
    "ResumePayload",
    "build_payload",
    "read_payload",
    "refuse_finished",
    "write_checkpoint",
    "write_x_state_dict",
]

CHECKPOINT_KEY = "amuse"
#: Where a finished checkpoint (:mod:`amuse_lightning.lightning.finish`) says where it came from.
FINISHER_KEY = "amuse_finisher"
#: Version of the ``checkpoint["amuse"]`` layout this code writes and the newest it reads.
FORMAT_VERSION = 1


def _cloned(values: Mapping[str, Tensor] | None) -> dict[str, Tensor] | None:
    """Detached copies made outside ``inference_mode`` (they may be loaded from any context)."""
    if values is None:
        return None
    with torch.inference_mode(False):
        return {name: value.detach().clone() for name, value in values.items()}


def write_x_state_dict(
    module: nn.Module, state_dict: dict[str, Any], scope: AveragedWeights
) -> dict[str, Tensor] | None:
    """Replace the parameters (and, when ``scope`` brings BatchNorm statistics at ``x``, those
    buffers) in a checkpoint's ``state_dict`` by copies of ``x``, made inside ``scope`` (an exact
    temporary swap). Returns the training-time BatchNorm buffers ``scope`` put aside (``None``
    without BatchNorm statistics at ``x``). The live tensors end as they started, also after an
    exception."""
    weights = scope.swap
    param_ids = {id(p) for p in weights.params}
    whole = holds_whole_tensors(state_dict)
    with scope:
        train_bn = scope.train_bn
        bn_names = set(train_bn or ())
        for key, live in module.state_dict(keep_vars=True).items():
            if id(live) not in param_ids and key not in bn_names:
                continue
            if whole and is_dtensor(live):  # a collective: every rank, rank 0 keeps it
                live = live.full_tensor()
            if key in state_dict:
                state_dict[key] = checkpoint_copy(live, state_dict[key])
    return train_bn


def write_checkpoint(
    checkpoint: dict[str, Any], module: nn.Module, scope: AveragedWeights, *, full: bool,
    keep_y: bool,
) -> None:  # fmt: skip
    """Write ``x`` into ``checkpoint["state_dict"]`` and, for a ``full`` checkpoint (not a
    ``save_weights_only`` one), the payload (``y`` if ``keep_y``) into ``checkpoint["amuse"]``.

    ``scope`` is the callback's :class:`~amuse_lightning.averaging.AveragedWeights`: the active
    one when the module holds ``x`` already (evaluation, or after fit: the state_dict is ``x``,
    ``y`` comes from the swap's copy, the training BatchNorm buffers from the scope), otherwise
    a fresh one that :func:`write_x_state_dict` enters for the copy. Under FSDP2 ``y``'s shards
    cannot travel in the payload (rank 0 writes it alone), so a resume recomputes ``y`` from
    ``x`` and ``z``.
    """
    weights = scope.swap
    names = parameter_names(module)
    y: dict[str, Tensor] | None = None
    if weights.holds_x:
        train_bn = scope.train_bn
        y_values = weights.y_copy
        if y_values is not None:
            y = {names[id(p)]: v for p, v in zip(weights.params, y_values, strict=True)}
    else:
        train_bn = write_x_state_dict(module, checkpoint["state_dict"], scope)
        y = {names[id(p)]: p.detach() for p in weights.params}  # y is back in place
    if not full:
        return
    sharded = any(is_dtensor(p) for p in weights.params)
    checkpoint[CHECKPOINT_KEY] = build_payload(y if keep_y and not sharded else None, train_bn)


def build_payload(
    y: Mapping[str, Tensor] | None, train_buffers: Mapping[str, Tensor] | None
) -> dict[str, Any]:
    """The ``checkpoint["amuse"]`` entry: copies of ``y`` and of the training BatchNorm buffers."""
    return {"format": FORMAT_VERSION, "y": _cloned(y), "train_buffers": _cloned(train_buffers)}


@dataclass(frozen=True)
class ResumePayload:
    """What ``trainer.fit(ckpt_path=...)`` puts back once the optimizer state is loaded.

    Attributes:
        y: parameter values at ``y`` by name, or ``None`` (then ``y`` is recomputed from ``x``
            and ``z`` by ``optimizer.train()``: close, not bit-exact).
        train_buffers: training-time BatchNorm buffers to load, or ``None``.
        from_amuse: ``False`` for a checkpoint written without AmuseCallback: its state_dict
            holds whatever the optimizer's saved ``train_mode`` says, so that flag is trusted.
    """

    y: dict[str, Tensor] | None = None
    train_buffers: dict[str, Tensor] | None = None
    from_amuse: bool = True

    @torch.no_grad()
    def apply(self, module: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        """Put ``y`` (and the training BatchNorm buffers) into ``module`` and leave ``optimizer``
        in train mode. Raises if ``y`` does not cover every optimised parameter."""
        groups = optimizer.param_groups
        if self.y:
            named = dict(module.named_parameters())
            names = parameter_names(module)
            params = [p for group in groups for p in group["params"]]
            missing = [names[id(p)] for p in params if names[id(p)] not in self.y]
            unknown = [name for name in self.y if name not in named]
            if missing or unknown:
                raise RuntimeError(
                    f"The checkpoint's y does not match the module: no y for {missing[:5]}, y for "
                    f"parameters the module does not have {unknown[:5]}; resume with the model "
                    "the checkpoint was written for."
                )
            for name, value in self.y.items():
                named[name].copy_(value)
            for group in groups:
                group["train_mode"] = True
        else:
            if self.from_amuse:  # the loaded state_dict is x, whatever the saved flag says
                for group in groups:
                    group["train_mode"] = False
            optimizer.train()
        if self.train_buffers:
            buffers = dict(module.named_buffers())
            for name, value in self.train_buffers.items():
                buffers[name].copy_(value)


def read_payload(checkpoint: Mapping[str, Any]) -> ResumePayload:
    """The resume payload of a loaded checkpoint, validated.

    A checkpoint without ``checkpoint["amuse"]`` (written without AmuseCallback) gives a payload
    with ``from_amuse=False``. A payload of another format version, or one whose entries have the
    wrong types, raises ``ValueError`` saying what to do; so does a finished checkpoint
    (:func:`refuse_finished`).
    """
    refuse_finished(checkpoint)
    payload = checkpoint.get(CHECKPOINT_KEY)
    if payload is None:
        return ResumePayload(from_amuse=False)
    if not isinstance(payload, Mapping) or "format" not in payload:
        raise ValueError(
            f"checkpoint[{CHECKPOINT_KEY!r}] is not an AmuseCallback resume payload (no 'format' "
            "entry). Remove that key from the checkpoint, or resume with the code that wrote it."
        )
    version = payload["format"]
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise ValueError(
            f"checkpoint[{CHECKPOINT_KEY!r}] has an unknown format {version!r}; this "
            f"amuse-lightning reads format 1 to {FORMAT_VERSION}."
        )
    if version > FORMAT_VERSION:
        raise ValueError(
            f"checkpoint[{CHECKPOINT_KEY!r}] has format {version}, written by a newer "
            f"amuse-lightning; this version reads format 1 to {FORMAT_VERSION}. Upgrade "
            "amuse-lightning to resume from it (Model.load_from_checkpoint still works: the "
            "state_dict holds x)."
        )
    entries = {key: payload.get(key) for key in ("y", "train_buffers")}
    for key, value in entries.items():
        if value is not None and not isinstance(value, Mapping):
            raise ValueError(
                f"checkpoint[{CHECKPOINT_KEY!r}][{key!r}] must be a dict of tensors by name or "
                f"None, got {type(value).__name__}."
            )
    return ResumePayload(
        y=None if entries["y"] is None else dict(entries["y"]),
        train_buffers=None if entries["train_buffers"] is None else dict(entries["train_buffers"]),
    )


def refuse_finished(checkpoint: Mapping[str, Any], path: Any = "This checkpoint") -> None:
    """Raise ``ValueError`` for a checkpoint the finisher wrote (it carries
    ``checkpoint["amuse_finisher"]``): it holds a finished model, not a run to continue or to
    finish again; the message names the run's own checkpoint to use instead."""
    info = checkpoint.get(FINISHER_KEY)
    if info is None:
        return
    info = info if isinstance(info, Mapping) else {}
    source = info.get("source") or "the run's checkpoint"
    raise ValueError(
        f"{path} holds a finished model (a cooldown of {info.get('steps', '?')} steps from step "
        f"{info.get('source_step', '?')} of {source}), not a run: the cooldown turned the "
        "averaging off and decayed the learning rate to zero. To continue or finish the run, "
        f"use its own checkpoint ({source}); to train the finished weights as a new run, load "
        "them with Model.load_from_checkpoint and fit without ckpt_path."
    )
