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

This module builds the payload (:func:`build_payload`), reads and validates it on load
(:func:`read_payload`: a payload of an unknown or newer format is refused with a clear error) and
applies it once the optimizer state is back (:meth:`ResumePayload.apply`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["CHECKPOINT_KEY", "FORMAT_VERSION", "ResumePayload", "build_payload", "read_payload"]

CHECKPOINT_KEY = "amuse"
#: Version of the ``checkpoint["amuse"]`` layout this code writes and the newest it reads.
FORMAT_VERSION = 1


def _cloned(values: Mapping[str, Tensor] | None) -> dict[str, Tensor] | None:
    """Detached copies made outside ``inference_mode`` (they may be loaded from any context)."""
    if values is None:
        return None
    with torch.inference_mode(False):
        return {name: value.detach().clone() for name, value in values.items()}


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
            names = {id(p): n for n, p in named.items()}
            params = [p for group in groups for p in group["params"]]
            missing = [names[id(p)] for p in params if names[id(p)] not in self.y]
            if missing:
                raise RuntimeError(
                    f"The checkpoint's y does not cover the parameters {missing[:5]}; "
                    "resume with the model the checkpoint was written for."
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
    wrong types, raises ``ValueError`` saying what to do.
    """
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
