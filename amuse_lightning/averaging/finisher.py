"""The finisher: a short cooldown from any point of an AMUSE run, on a copy of the run.

The averaged model ``x`` is good at any step, but a run whose learning rate is annealed to zero
for its budget ends better. A finisher buys that annealing after the fact: from step ``t`` of
an AMUSE run it runs ``k = fraction * t`` more steps (10-20 % is the usual range, after
Hägele et al. 2024, "Scaling laws and compute-optimal training beyond fixed training durations")
of the same directions *without* averaging, with the learning rate decayed to zero, and returns
the finished weights. The run it started from is not touched (the finisher works on copies and
restores every random stream), so it continues bit for bit as if nothing had happened.

One cooldown step ``i = 0 .. k-1`` on each parameter ``p`` (the run's Muon / fallback directions
``U`` with their momentum and second-moment buffers carried over; ``z`` and averaging dropped)::

    p_0     = x_t  (start="x"),  y_t  (start="y")  or  z_t  (start="z", the fast sequence: the
              analogue of a constant-rate run's iterate, which a WSD cooldown starts from)
    lr_i    = lr_factor * lr_t * g(i / k),   g(u) = 1 - u  ("linear")  or  1 - sqrt(u)  ("1-sqrt")
    p_{i+1} = p_i (1 - lr_i wd) - lr_i U_i        (U_i from the gradient at p_i)

``lr_t`` is the run's learning rate at step ``t`` (warm-up included, ``lr_scale`` applied per
group). ``weight_decay_at_y`` of the run becomes plain decoupled decay of ``p``. The momentum
buffers (Muon's, AdaMuon's, the spectral directions' first moments) are carried over, or reset
to zero with ``momentum="fresh"``; second moments are always carried over.

:func:`begin_cooldown` turns an AMUSE optimizer (a copy) into that cooldown and returns the
schedule as a standard ``LambdaLR``; :func:`finish` does the whole thing on copies of a model and
its optimizer and returns the finished model.
"""

from __future__ import annotations

import copy
import itertools
import math
from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR

from amuse_lightning.optim import AMUSE

from .batches import Batches, check_reiterable, one_pass, passes
from .batchnorm import reestimate_batchnorm, require_batches
from .random_state import preserved_data_state

__all__ = [
    "AUTO_LR_FACTOR",
    "COOLDOWN_MOMENTA",
    "COOLDOWN_SHAPES",
    "COOLDOWN_STARTS",
    "DEFAULT_FRACTION",
    "DEFAULT_LR_FACTOR",
    "Cooldown",
    "FinishReport",
    "begin_cooldown",
    "copy_run",
    "finish",
]

Start = Literal["x", "y", "z"]
Shape = Literal["linear", "1-sqrt"]
Momentum = Literal["carried", "fresh"]
COOLDOWN_STARTS: tuple[str, ...] = ("x", "y", "z")
COOLDOWN_SHAPES: tuple[str, ...] = ("linear", "1-sqrt")
COOLDOWN_MOMENTA: tuple[str, ...] = ("carried", "fresh")
FIRST_MOMENTS = ("momentum_buffer", "exp_avg")
"""The state buffers ``momentum="fresh"`` resets (second moments are kept)."""
DEFAULT_FRACTION = 0.2
AUTO_LR_FACTOR = "auto"
AUTO_PEAK, AUTO_KNEE = 0.3, 800
"""``lr_factor="auto"``: ``0.3 min(1, 800 / t)`` for a cooldown from step ``t``. Round 3 fitted
it on the horizon and LM studies (the best constant factor was 0.3 up to 800 steps and fell
about as ``1/t`` beyond). On round 3's runs (with the ``rho`` rise) it did not beat the constant
0.1 on the vision task (+4.67 against +4.70 points over the WSD fork, validation); on round 3b's
runs, with beta annealed as Lightning runs AMUSE, it beat 0.1 on all four tasks (validation:
vision, the GPT and the ViT on the sweep seed, the long run on every seed), so it became the
default (docs/results.md)."""
DEFAULT_LR_FACTOR: float | str = AUTO_LR_FACTOR
"""The other defaults come from the finisher studies (chosen on validation at equal total steps;
``docs/results.md``): a cooldown of 20 % beat 10 % on two of three tasks; linear decay was as
good as 1-sqrt or better (a tie on one task); on the ``rho``-rise runs of round 2 the start
(``x`` or ``y``) made no difference beyond noise; factors 1 and 3 lost everywhere. Before round
3b the factor was a constant 0.1 (pass ``lr_factor=0.1`` for the earlier finisher). On annealed
runs ``start="y"`` did better than ``"x"`` on all four tasks (the short ones on one seed, the
long run at every budget on every seed, a check written down before it ran); the default stays
``"x"`` until a later round changes it on purpose (docs/results.md)."""


@dataclass(frozen=True)
class Cooldown:
    """What a finisher runs: ``steps`` steps from ``start``, the learning rate decayed to zero
    along ``shape`` from ``lr_factor`` times the run's current rate, with the run's momentum
    ``"carried"`` over or started ``"fresh"``."""

    steps: int
    start: Start = "x"
    shape: Shape = "linear"
    lr_factor: float | str = DEFAULT_LR_FACTOR
    momentum: Momentum = "carried"

    def __post_init__(self) -> None:
        if not isinstance(self.steps, int) or isinstance(self.steps, bool) or self.steps < 1:
            raise ValueError(f"cooldown steps must be an int >= 1, got {self.steps!r}")
        if self.start not in COOLDOWN_STARTS:
            raise ValueError(f"cooldown start must be one of {COOLDOWN_STARTS}, got {self.start!r}")
        if self.shape not in COOLDOWN_SHAPES:
            raise ValueError(f"cooldown shape must be one of {COOLDOWN_SHAPES}, got {self.shape!r}")
        number = isinstance(self.lr_factor, (int, float)) and not isinstance(self.lr_factor, bool)
        if not (self.lr_factor == AUTO_LR_FACTOR or (number and 0 < self.lr_factor < math.inf)):
            raise ValueError(
                f"cooldown lr_factor must be a number > 0 or 'auto', got {self.lr_factor!r}"
            )
        if self.momentum not in COOLDOWN_MOMENTA:
            raise ValueError(
                f"cooldown momentum must be one of {COOLDOWN_MOMENTA}, got {self.momentum!r}"
            )

    @staticmethod
    def steps_for(run_steps: int, fraction: float) -> int:
        """``round(fraction * run_steps)``, at least 1: the length of a cooldown from step
        ``run_steps`` that costs ``fraction`` of the run so far."""
        if not (isinstance(fraction, (int, float)) and 0.0 < fraction <= 1.0):
            raise ValueError(f"fraction must be in (0, 1], got {fraction!r}")
        return max(1, round(fraction * run_steps))

    def factor_at(self, run_steps: int) -> float:
        """The lr factor of a cooldown from step ``run_steps`` (``"auto"``: :data:`AUTO_PEAK`
        ``* min(1, AUTO_KNEE / run_steps)``)."""
        if self.lr_factor == AUTO_LR_FACTOR:
            return AUTO_PEAK * min(1.0, AUTO_KNEE / max(1, run_steps))
        return float(self.lr_factor)

    def multiplier(self, i: int) -> float:
        """``g(i / steps)``: the factor of cooldown step ``i`` (0-based; 0 from ``steps`` on)."""
        u = min(1.0, max(0, i) / self.steps)
        return 1.0 - u if self.shape == "linear" else 1.0 - math.sqrt(u)


def run_steps(optimizer: torch.optim.Optimizer) -> int:
    """The steps an AMUSE run has taken (the largest group step count)."""
    return max((int(group.get("step", 0)) for group in optimizer.param_groups), default=0)


def _current_lr(group: dict[str, Any]) -> float:
    """``lr * min(1, t / T0)``: the group's base rate with the run's warm-up at step ``t``."""
    t = max(1, int(group["step"]))
    return float(group["lr"]) * min(1.0, t / int(group["warmup_steps"]))


@torch.no_grad()
def begin_cooldown(optimizer: AMUSE, cooldown: Cooldown) -> LambdaLR:
    """Turn ``optimizer`` (in place: use a copy, see :func:`copy_run`) into the cooldown.

    The parameters are set to the start point (``x``, ``y`` or ``z``), ``z`` is dropped and every
    group runs its direction without averaging from its current learning rate times
    ``cooldown.lr_factor`` (first moments reset with ``cooldown.momentum="fresh"``). Returns the
    schedule: call its ``step()`` after every ``optimizer.step()``; after ``cooldown.steps``
    steps the rate is zero.
    """
    if not isinstance(optimizer, AMUSE):
        raise TypeError(
            f"a cooldown needs an AMUSE optimizer (its direction is kept), got "
            f"{type(optimizer).__name__}"
        )
    if cooldown.start == "x":
        optimizer.eval()
    else:
        optimizer.train()
    if cooldown.start == "z":
        for group in optimizer.param_groups:
            for p in group["params"]:
                state = optimizer.state.get(p)
                if state and "z" in state:
                    p.copy_(state["z"])
    factor = cooldown.factor_at(run_steps(optimizer))
    for group in optimizer.param_groups:
        group.update(
            lr=_current_lr(group) * factor,
            warmup_steps=1,
            averaging=False,
            weight_decay=group["weight_decay"] + group["weight_decay_at_y"],
            weight_decay_at_y=0.0,
            train_mode=True,
        )
        group.pop("initial_lr", None)
        for p in group["params"]:
            state = optimizer.state.get(p)
            if state:
                state.pop("z", None)
                state.pop("beta", None)
                if cooldown.momentum == "fresh":
                    for name in FIRST_MOMENTS:
                        if name in state:
                            state[name].zero_()
    return LambdaLR(optimizer, cooldown.multiplier)


def copy_run(module: nn.Module, optimizer: AMUSE) -> tuple[nn.Module, AMUSE]:
    """Independent copies of ``module`` and of ``optimizer`` over the copy's parameters (its
    state deep-copied), so that whatever the copies do leaves the originals untouched."""
    if not isinstance(optimizer, AMUSE):
        raise TypeError(f"copy_run needs an AMUSE optimizer, got {type(optimizer).__name__}")
    originals = list(module.parameters())
    twin = copy.deepcopy(module)
    index = {id(p): i for i, p in enumerate(originals)}
    copies = list(twin.parameters())
    groups = []
    for group in optimizer.param_groups:
        missing = [p for p in group["params"] if id(p) not in index]
        if missing:
            raise ValueError(
                f"{len(missing)} optimised parameter(s) are not parameters of the module; pass "
                "the module the optimizer was built for."
            )
        groups.append(
            {**{k: v for k, v in group.items() if k != "params"},
             "params": [copies[index[id(p)]] for p in group["params"]]}
        )  # fmt: skip
    twin_optimizer = AMUSE(
        groups, nonfinite=optimizer.nonfinite, distributed=False, foreach=optimizer.foreach
    )
    twin_optimizer.load_state_dict(copy.deepcopy(optimizer.state_dict()))
    return twin, twin_optimizer


LossFn = Callable[[nn.Module, Any], torch.Tensor]


@dataclass(frozen=True)
class FinishReport:
    """What :func:`finish` ran; the finished model carries it as ``finished.amuse_finisher``.

    Attributes:
        source_step: the steps the run had taken (``t``).
        cooldown: the cooldown's length, start, shape and lr factor.
        start_lrs: the learning rate of the cooldown's first step in every param group
            (``lr_factor * lr_t``, the group's ``lr_scale`` applied; it decays to zero from
            there).
        bn_batches_used: batches the BatchNorm re-estimate used (0 without ``bn_batches``).
    """

    source_step: int
    cooldown: Cooldown
    start_lrs: tuple[float, ...]
    bn_batches_used: int = 0

    @property
    def total_steps(self) -> int:
        """The steps the finished model cost: the run's and the cooldown's."""
        return self.source_step + self.cooldown.steps


def finish(
    optimizer: AMUSE,
    module: nn.Module,
    batches: Batches,
    loss_fn: LossFn,
    *,
    fraction: float = DEFAULT_FRACTION,
    steps: int | None = None,
    start: Start = "x",
    shape: Shape = "linear",
    lr_factor: float | str = DEFAULT_LR_FACTOR,
    momentum: Momentum = "carried",
    bn_batches: Batches | None = None,
    max_bn_batches: int | None = None,
    bn_forward: Callable[[nn.Module, Any], Any] | None = None,
) -> nn.Module:
    """A finished copy of ``module``: a cooldown (module docstring) of ``steps`` steps, by
    default ``fraction`` of the steps the run has taken, on copies of the module and optimizer.

    Args:
        optimizer, module: the AMUSE run to finish (left exactly as they are).
        batches: training batches for the cooldown. A DataLoader (the training loop's own is
            fine: it is read through a fresh loader over the same dataset and sampler, pass
            after pass until the cooldown has its steps), another iterable that gives a new
            iterator on every ``iter()``, or a function returning one (called for every pass).
            A list or tuple is taken as exactly these batches, in order (too few is an error).
            A one-shot iterator (a generator, ``iter(loader)``, ``itertools.cycle(loader)``) is
            refused: it would be used up, and the loader's generators behind it, which decide
            the run's data order, cannot be found and restored.
        loss_fn: ``loss_fn(model, batch)`` returns the loss to minimise.
        fraction, steps: the cooldown's length (``steps`` wins when given).
        start, shape, lr_factor, momentum: see :class:`Cooldown`.
        bn_batches, max_bn_batches, bn_forward: re-estimate BatchNorm statistics of the finished
            weights with up to ``max_bn_batches`` of ``bn_batches`` (taken as ``batches`` is,
            one pass; no batches at all is an error) with ``bn_forward(model, batch)`` (default
            ``model(batch[0])`` for tuple batches).

    Returns the finished model in eval mode (``.train()`` to train it on), with
    ``finished.amuse_finisher``, a :class:`FinishReport` of what ran. Every random stream (the
    global ones, and the generators ``batches`` / ``bn_batches`` keep: a loader's, its
    sampler's, its dataset's and transforms') and the plain attributes of the loaders' datasets
    and samplers are restored afterwards, so finishing twice gives the same weights and the run
    continues unchanged.
    """
    check_reiterable(batches, "batches", "finish")
    check_reiterable(bn_batches, "bn_batches", "finish")
    if max_bn_batches is not None and (not isinstance(max_bn_batches, int) or max_bn_batches < 1):
        raise ValueError(f"max_bn_batches must be an int >= 1 or None, got {max_bn_batches!r}")
    source_step = run_steps(optimizer)
    length = steps if steps is not None else Cooldown.steps_for(source_step, fraction)
    cooldown = Cooldown(length, start, shape, lr_factor, momentum)
    used = 0
    with preserved_data_state(batches, bn_batches):
        twin, twin_optimizer = copy_run(module, optimizer)
        schedule = begin_cooldown(twin_optimizer, cooldown)
        start_lrs = tuple(
            float(lr) * group.get("lr_scale", 1.0)
            for lr, group in zip(schedule.base_lrs, twin_optimizer.param_groups, strict=True)
        )
        twin.train()
        stream = _cooldown_batches(batches, cooldown.steps)
        try:
            for batch in stream:
                twin_optimizer.zero_grad(set_to_none=True)
                with torch.enable_grad():
                    loss_fn(twin, batch).backward()
                twin_optimizer.step()
                schedule.step()
        finally:
            stream.close()  # a loader's workers end here
        if bn_batches is not None:
            pass_ = one_pass(bn_batches, "bn_batches", "or leave bn_batches=None")
            try:
                used = require_batches(
                    reestimate_batchnorm(twin, pass_, max_bn_batches, bn_forward)
                )
            finally:
                del pass_
    twin_optimizer.zero_grad(set_to_none=True)
    twin.eval()
    twin.amuse_finisher = FinishReport(source_step, cooldown, start_lrs, used)
    return twin


def _cooldown_batches(batches: Batches, steps: int) -> Generator[Any, None, None]:
    """``steps`` batches: a list or tuple as given (too few is an error), anything else pass
    after pass (:func:`~.batches.passes`)."""
    if not isinstance(batches, (list, tuple)):
        yield from itertools.islice(passes(batches, "batches", "or pass a list of batches"), steps)
        return
    if len(batches) < steps:
        raise ValueError(
            f"the cooldown needs {steps} batches but `batches` ran out after {len(batches)}; "
            "pass a longer list, or the DataLoader itself (finish iterates a loader again when "
            "it runs out)."
        )
    yield from batches[:steps]
