"""The callback's state: what the parameters hold, why, and what belongs to that.

:class:`Holds` names the phases; :class:`SwapState` is the callback's whole mutable state and the
one place its phase changes (:meth:`SwapState.move`, checked against :data:`TRANSITIONS`)::

    UNMANAGED --fit starts--> Y --evaluation loop--> X_FOR_EVALUATION --its end--> Y
        |                     |                                                     (bit-exact)
        |                     +--training ends--> X_FINAL (the anytime model stays after fit)
        |                     +--fit ends with an exception--> UNMANAGED (the optimizer is let go)
        +--standalone stage loads a checkpoint--> X_FROM_CHECKPOINT --next setup--> UNMANAGED

Next to the phase it keeps the :class:`~amuse_lightning.averaging.WeightSwap` of the fit's
optimizer, the :class:`~amuse_lightning.averaging.AveragedWeights` scope that put ``x`` in (it
holds the training-time BatchNorm buffers while recalibrated ones at ``x`` are loaded), a
one-entry cache of those recalibrated statistics, and the resume payload waiting for the
optimizer state.
"""

from __future__ import annotations

from enum import Enum
from typing import Any

import torch
from torch import Tensor

from amuse_lightning.averaging.context import AveragedWeights
from amuse_lightning.averaging.snapshot import fingerprint
from amuse_lightning.averaging.swap import WeightSwap
from amuse_lightning.lightning.checkpoint import ResumePayload

__all__ = ["TRANSITIONS", "WEIGHTS_REPLACED_AFTER_FAILED_FIT", "Holds", "SwapState"]

WEIGHTS_REPLACED_AFTER_FAILED_FIT = (
    "AmuseCallback: the last fit ended with an exception and the module's weights were replaced "
    "since (a checkpoint or a state_dict was loaded), so they are evaluated as they are, not "
    "converted with that fit's optimizer. To evaluate the averaged model of a checkpoint written "
    "by AmuseCallback, pass ckpt_path=... (its state_dict is x)."
)


class Holds(Enum):
    """What the module's parameters hold, and why."""

    UNMANAGED = "weights as they are: no schedule-free optimizer known"
    Y = "y, the training iterate"
    X_FOR_EVALUATION = "x for a validation/test/predict loop; y comes back at its end"
    X_FINAL = "x after training: the anytime model"
    X_FROM_CHECKPOINT = "x loaded from a checkpoint by a standalone stage: nothing to convert"


#: Allowed phase changes (a phase may always stay what it is).
TRANSITIONS: dict[Holds, frozenset[Holds]] = {
    Holds.UNMANAGED: frozenset({Holds.Y, Holds.X_FINAL, Holds.X_FROM_CHECKPOINT}),
    Holds.Y: frozenset(
        {Holds.X_FOR_EVALUATION, Holds.X_FINAL, Holds.X_FROM_CHECKPOINT, Holds.UNMANAGED}
    ),
    Holds.X_FOR_EVALUATION: frozenset({Holds.Y}),
    Holds.X_FINAL: frozenset({Holds.Y, Holds.X_FROM_CHECKPOINT, Holds.UNMANAGED}),
    Holds.X_FROM_CHECKPOINT: frozenset({Holds.UNMANAGED}),
}


class SwapState:
    """Everything the callback changes while it runs.

    Attributes:
        holds: the phase (:class:`Holds`).
        weights: the swap for the optimizer in use (``None`` while unmanaged).
        scope: the scope that put ``x`` in for an evaluation or for good (``None`` while the
            parameters hold ``y``, or hold an ``x`` something else put there); its ``train_bn``
            are the training-time BatchNorm buffers while recalibrated ones are loaded.
        x_bn: ``(key, buffers)``: BatchNorm statistics recalibrated at the ``x`` of ``key``.
        pending: resume payload loaded with the checkpoint, applied once the optimizer state is.
        repairs: how often the parameters held ``x`` at a training batch because something else
            called ``optimizer.eval()`` (the callback warns the first time).
        abandoned: ``(id(optimizer), fingerprint)`` of a fit that ended with an exception: that
            optimizer converts the module's weights again only while they are still the ones
            the fit left (:func:`~amuse_lightning.averaging.snapshot.fingerprint`).
    """

    def __init__(self) -> None:
        self.start_fit()

    def move(self, to: Holds) -> None:
        """Change the phase; an unlisted change is a bug in the callback and raises."""
        if to is not self.holds and to not in TRANSITIONS[self.holds]:
            raise RuntimeError(f"AmuseCallback: no transition from {self.holds.name} to {to.name}")
        self.holds = to

    # ------------------------------------------------------------------ transitions
    def start_fit(self) -> None:
        """A new fit (or a new callback): nothing from earlier stages is kept."""
        self.holds = Holds.UNMANAGED
        self.weights: WeightSwap | None = None
        self.scope: AveragedWeights | None = None
        self.x_bn: tuple[Any, dict[str, Tensor]] | None = None
        self.pending: ResumePayload | None = None
        self.repairs = 0
        self.abandoned: tuple[int, Tensor] | None = None

    def manage(self, weights: WeightSwap) -> None:
        """Take charge of ``weights`` (a fit's optimizer, or the one a finished fit left): the
        phase follows what their parameters hold now."""
        self.weights, self.scope, self.x_bn = weights, None, None
        self.holds = Holds.UNMANAGED  # a different optimizer than before: start from scratch
        self.move(Holds.X_FINAL if weights.holds_x else Holds.Y)

    def swapped_to_x(self, final: bool, scope: AveragedWeights | None) -> None:
        """``x`` is now in the parameters (put there by ``scope``, or already there): for an
        evaluation loop, or for good after training."""
        if scope is not None:
            self.scope = scope
        self.move(Holds.X_FINAL if final else Holds.X_FOR_EVALUATION)

    def back_to_y(self) -> None:
        """``y`` is back in the parameters; the training BatchNorm buffers are restored."""
        self.scope = None
        self.move(Holds.Y)

    def loaded_x(self) -> None:
        """A standalone stage loaded ``x`` from a checkpoint: the fit's ``y`` no longer belongs."""
        self.weights = None
        self.scope = None
        self.x_bn = None
        self.move(Holds.X_FROM_CHECKPOINT)

    def abandon(self, fingerprint: Tensor) -> None:
        """A fit ended with an exception: let its optimizer go, remembering it with a
        ``fingerprint`` of the weights it left (``y``), so that a later stage converts them with
        it only if nothing replaced them (a checkpoint or a state_dict loaded since)."""
        if self.weights is not None:
            self.abandoned = (id(self.weights.optimizer), fingerprint)
        self.weights = self.scope = self.x_bn = self.pending = None
        self.move(Holds.UNMANAGED)

    def x_bn_at(self, step: int) -> dict[str, Tensor] | None:
        """The BatchNorm statistics at ``x`` of optimizer step ``step`` if already estimated
        (evaluation and the checkpoint of one step share one estimate)."""
        if self.x_bn is None or self.weights is None:
            return None
        key, statistics = self.x_bn
        return statistics if key == (id(self.weights.optimizer), step) else None

    def keep_x_bn(self, step: int, statistics: dict[str, Tensor] | None) -> None:
        """Remember the statistics at ``x`` of optimizer step ``step`` (if there are any)."""
        if statistics is not None and self.weights is not None:
            self.x_bn = ((id(self.weights.optimizer), step), statistics)

    def adoptable(self, weights: WeightSwap) -> bool:
        """Whether a stage may convert the module's weights with ``weights``' optimizer: not if
        it belongs to a fit that ended with an exception and the weights changed since
        (converting another model's weights with that run's ``z`` would give a mixture)."""
        if self.abandoned is None or self.abandoned[0] != id(weights.optimizer):
            return True
        if torch.equal(fingerprint(weights.local_params), self.abandoned[1]):
            self.abandoned = None  # still the run's own y: it converts to the run's x
            return True
        return False

    def new_stage(self) -> None:
        """``setup`` of a standalone stage: a checkpoint's ``x`` from the last one is let go."""
        if self.holds is Holds.X_FROM_CHECKPOINT:
            self.move(Holds.UNMANAGED)

    def take_pending(self) -> ResumePayload | None:
        """The resume payload, handed out once."""
        pending, self.pending = self.pending, None
        return pending
