"""Finisher variants scored inline: at a budget ``t`` of an AMUSE run, each variant is run by the
library's :func:`amuse_lightning.averaging.finish` (on copies of the model and optimizer) on the
batches the run will see next, and the finished model is scored on validation and test.

The run itself goes on unchanged: ``finish`` works on copies and restores every random stream,
and :class:`Lookahead` hands the cooldown the next batches without taking them from the run (the
batches are drawn once, in the run's order, and the run then consumes the same ones).
"""

from __future__ import annotations

import collections
import itertools
import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from torch import nn

from amuse_lightning import AMUSE
from amuse_lightning.averaging import Cooldown, finish


@dataclass(frozen=True)
class Variant:
    """One finisher: cooldown of ``fraction`` of the steps so far from ``start``, lr decayed to 0
    along ``shape`` from ``lr_factor`` times the run's current lr (``"auto"``: the library's rule
    of the steps so far), momentum carried over or ``"fresh"`` (``Cooldown`` in the library).
    Its id is ``start/shape/f=../lr_x..`` with ``/fresh`` appended for fresh momentum."""

    start: str
    shape: str
    fraction: float
    lr_factor: float | str
    momentum: str = "carried"

    @property
    def id(self) -> str:
        factor = self.lr_factor if isinstance(self.lr_factor, str) else f"{self.lr_factor:g}"
        text = f"{self.start}/{self.shape}/f={self.fraction:g}/lr_x{factor}"
        return text + ("/fresh" if self.momentum == "fresh" else "")

    @staticmethod
    def parse(text: str) -> Variant:
        start, shape, fraction, factor, *rest = text.split("/")
        momentum = rest[0] if rest else "carried"
        lr_factor = factor[4:] if factor[4:] == "auto" else float(factor[4:])
        return Variant(start, shape, float(fraction[2:]), lr_factor, momentum)

    def steps(self, t: int) -> int:
        """The cooldown's length from step ``t`` (the library's rounding)."""
        return Cooldown.steps_for(t, self.fraction)


def variant_grid(
    starts: tuple[str, ...],
    shapes: tuple[str, ...],
    fractions: tuple[float, ...],
    lr_factors: tuple[float, ...],
) -> list[Variant]:
    return [Variant(*v) for v in itertools.product(starts, shapes, fractions, lr_factors)]


def equal_compute_steps(t: int, fraction: float) -> int:
    """Total steps of a finished model from step ``t``: ``t`` plus the cooldown."""
    return t + Cooldown.steps_for(t, fraction)


class Lookahead:
    """An iterator over a run's batches that can show the next ``n`` without consuming them."""

    def __init__(self, batches: Iterator[Any]) -> None:
        self._source = batches
        self._ahead: collections.deque = collections.deque()

    def __iter__(self) -> Lookahead:
        return self

    def __next__(self) -> Any:
        return self._ahead.popleft() if self._ahead else next(self._source)

    def peek(self, n: int) -> list[Any]:
        while len(self._ahead) < n:
            self._ahead.append(next(self._source))
        return list(itertools.islice(self._ahead, n))


def finished_evals(
    task: Any,
    model: nn.Module,
    optimizer: AMUSE,
    stream: Lookahead,
    variants: list[Variant],
    t: int,
    seed: int,
) -> dict[str, dict]:
    """``variant id -> {"steps", "val", "test"}`` for the models finished from step ``t``; a
    cooldown that meets a non-finite gradient is recorded with ``diverged`` and score ``-inf``."""
    ahead = stream.peek(max(v.steps(t) for v in variants))
    out = {}
    for v in variants:
        bn = task.bn_batches(seed)
        # the function itself: finish calls it for its pass (a generator would be refused)
        extra = {} if bn is None or bn[1] <= 0 else {"bn_batches": bn[0], "max_bn_batches": bn[1]}
        k = v.steps(t)
        try:
            finished = finish(
                optimizer, model, ahead[:k], task.loss, steps=k, start=v.start, shape=v.shape,
                lr_factor=v.lr_factor, momentum=v.momentum, **extra,
            )  # fmt: skip
        except RuntimeError as err:  # AMUSE(nonfinite="raise") names the parameter
            if "finite" not in str(err):
                raise
            bad = {"score": -math.inf}
            out[v.id] = {"steps": k, "val": bad, "test": bad, "diverged": True}
            continue
        out[v.id] = {
            "steps": k,
            "val": task.evaluate(finished, "val"),
            "test": task.evaluate(finished, "test"),
        }
    model.train()
    return out
