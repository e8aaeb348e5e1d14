"""What an AMUSE run scores besides ``x`` at each budget, without changing the run: finished
models (:mod:`.finishing`) and power-EMAs of ``y`` / ``z`` (:mod:`.averages`).

A run asks for them through keys of its ``settings``: ``finishers`` (the task's variant grid
by :meth:`FinisherConfig.grid_name`, or ``"|"``-separated variant ids), ``averages``
(``"ema"``: the task's EMA widths; the task's ``finishing`` attribute (:class:`FinisherConfig`)
defines both) and, for a ``muon_wsd`` run, ``forks`` (the WSD fork's fraction ``f``,
:mod:`.forks`).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from torch import nn

from .averages import PowerEMAs
from .finishing import Lookahead, Variant, finished_evals, variant_grid
from .forks import wsd_fork_evals


@dataclass(frozen=True)
class FinisherConfig:
    """The finisher study of one task (``meta.config.finishing`` in its JSON).

    ``amuse_lrs``: AMUSE learning rates (one: the lr round 1 chose; several: swept with the
    anytime criterion); ``amuse_settings``: AMUSE overrides of every run; ``amuse_screen``:
    variants tried at the chosen lr. ``fixed_variant``: score only this finisher (no grid, no
    choice). ``ema_widths``: power-EMA relative widths tracked in every AMUSE run (empty: none).
    ``final_max_budget``: runs on the other seeds only up to this budget (AMUSE stops there,
    cosine runs beyond it are not made). ``equal_lr_from_t``: Muon + cosine for ``t + round(f t)``
    steps uses the lr tuned for ``t`` instead of a sweep of its own (a compute cut).
    """

    amuse_lrs: tuple[float, ...]
    starts: tuple[str, ...] = ("x", "y")
    shapes: tuple[str, ...] = ("linear", "1-sqrt")
    fractions: tuple[float, ...] = (0.1, 0.2)
    lr_factors: tuple[float, ...] = (0.1, 0.3, 1.0, 3.0)  # 0.1: the LM chose 0.3 of (0.3, 1, 3)
    amuse_settings: tuple[tuple[str, Any], ...] = ()
    amuse_screen: tuple[tuple[str, dict[str, Any]], ...] = ()
    fixed_variant: str | None = None
    ema_widths: tuple[float, ...] = ()
    final_max_budget: int | None = None
    equal_lr_from_t: bool = False

    def grid(self) -> list[Variant]:
        if self.fixed_variant is not None:
            return [Variant.parse(self.fixed_variant)]
        return variant_grid(self.starts, self.shapes, self.fractions, self.lr_factors)

    def grid_name(self) -> str:
        """The grid as a run's ``finishers`` setting: spelled out, so that a run made with
        another grid is never taken for one of this grid (``--resume``)."""
        if self.fixed_variant is not None:
            return self.fixed_variant
        parts = (self.starts, self.shapes, self.fractions, self.lr_factors)
        return "grid(" + ";".join(",".join(f"{v:g}" if isinstance(v, float) else v for v in part)
                                  for part in parts) + ")"  # fmt: skip

    def variants(self, name: str) -> list[Variant]:
        if name.startswith("grid"):
            if name not in ("grid", self.grid_name()):
                raise ValueError(f"finishers={name!r} is not this task's grid {self.grid_name()}")
            return self.grid()
        return [Variant.parse(v) for v in name.split("|")]


class Probes:
    """The extra scores of one AMUSE run; inert when the run's settings ask for none."""

    def __init__(
        self, task: Any, model: nn.Module, handle: Any, settings: dict[str, Any], seed: int
    ) -> None:
        finishers, averages = settings.pop("finishers", None), settings.pop("averages", None)
        forks = settings.pop("forks", None)
        self.fork_fraction = None if forks is None else float(forks)
        config: FinisherConfig | None = getattr(task, "finishing", None)
        if (finishers or averages) and config is None:
            raise ValueError(f"task {task.name!r} has no finishing config for {settings}")
        self.task, self.model, self.handle, self.seed = task, model, handle, seed
        self.variants = config.variants(finishers) if finishers else []
        self.emas: PowerEMAs | None = None
        if averages:
            (optimizer,) = handle.optimizers
            self.emas = PowerEMAs(model, optimizer, config.ema_widths)
        self.stream: Lookahead | None = None

    def wrap(self, batches: Iterator[Any]) -> Iterator[Any]:
        if not self.variants and self.fork_fraction is None:
            return batches
        self.stream = Lookahead(batches)
        return self.stream

    def after_step(self) -> None:
        if self.emas is not None:
            self.emas.update()

    def at(self, step: int) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.variants:
            assert self.stream is not None
            (optimizer,) = self.handle.optimizers
            out["finished"] = finished_evals(
                self.task, self.model, optimizer, self.stream, self.variants, step, self.seed
            )
        if self.emas is not None:
            out["averages"] = self.emas.evaluate(self.task, self.model, self.seed)
        if self.fork_fraction is not None:
            assert self.stream is not None
            out["forked"] = wsd_fork_evals(
                self.task, self.model, self.handle, self.stream, step, self.fork_fraction
            )
        return out
