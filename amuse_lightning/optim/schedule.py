"""Pure schedule functions of AMUSE: warmup lr, averaging weight c_t, interpolation beta_t.

All quantities are per parameter group; ``t`` is the group's 1-based step count and
``T0 = warmup_steps`` (the equations are repeated in ``amuse.py``'s module docstring).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass


def warmup_lr(lr: float, t: int, warmup_steps: int) -> float:
    """Linear warmup: ``lr_t = lr * min(1, t / T0)``."""
    return lr * min(1.0, t / warmup_steps)


def averaging_weight(t: int, lr_t: float, r: float, weight_lr_power: float) -> float:
    """Unnormalised averaging weight ``w_t = t^r * lr_t^weight_lr_power``."""
    return (t**r) * (lr_t**weight_lr_power)


def interpolation_beta(
    t: int, c_t: float, c_warmup: float | None, beta1: float, rho: float, warmup_steps: int
) -> float:
    """The gradient-evaluation mix ``beta_t``.

    ``beta_t = beta1`` for ``t <= T0``; afterwards, with ``c_w = c_{T0}``::

        S_t    = c_t (1 - c_w) / (c_w (1 - c_t))
        beta_t = 1 - S_t^rho (1 - beta1)

    With uniform weights ``S_t = (T0 - 1) / (t - 1)``, the paper's schedule. ``rho = 0`` keeps
    ``beta_t = beta1`` (SFMuon).
    """
    if t <= warmup_steps or rho == 0.0 or c_warmup is None:
        return beta1
    if c_t >= 1.0:  # nothing has been averaged yet (all earlier weights were zero)
        return beta1
    ratio = c_t * (1.0 - c_warmup) / (c_warmup * (1.0 - c_t))
    return 1.0 - (ratio**rho) * (1.0 - beta1)


@dataclass(frozen=True)
class ScheduleState:
    """What a group must remember between steps to continue its schedule exactly."""

    step: int = 0
    weight_sum: float = 0.0
    c_warmup: float | None = None


@dataclass(frozen=True)
class ScheduleStep:
    """The scalars of one step: the new state and what the update uses (and the logs show)."""

    state: ScheduleState
    lr_t: float
    c_t: float
    beta_t: float


def advance_schedule(
    state: ScheduleState,
    *,
    lr: float,
    warmup_steps: int,
    beta1: float,
    rho: float,
    r: float,
    weight_lr_power: float,
) -> ScheduleStep:
    """One schedule step: ``t += 1``, ``W_t = W_{t-1} + w_t``, ``c_t = w_t / W_t``, ``beta_t``.

    ``c_t = 1`` when all weights so far are zero (``lr = 0``): x then simply follows z.
    """
    t = state.step + 1
    lr_t = warmup_lr(lr, t, warmup_steps)
    w_t = averaging_weight(t, lr_t, r, weight_lr_power)
    weight_sum = state.weight_sum + w_t
    c_t = w_t / weight_sum if weight_sum > 0.0 else 1.0
    c_warmup = c_t if t == warmup_steps else state.c_warmup
    beta_t = interpolation_beta(t, c_t, c_warmup, beta1, rho, warmup_steps)
    return ScheduleStep(ScheduleState(t, weight_sum, c_warmup), lr_t, c_t, beta_t)


def warn_if_degenerate(warmup_steps: int, rho: float) -> None:
    """With ``T0 = 1`` the rise formula has ``c_w = 1``, so ``S_t = 0`` and beta jumps to 1."""
    if warmup_steps == 1 and rho > 0.0:
        warnings.warn(
            "warmup_steps=1 with rho > 0 makes beta_t = 1 from step 2 on (the beta schedule is "
            "anchored at the end of warmup, c_w = c_1 = 1): gradients are then taken at x only. "
            "Use warmup_steps >= 2, or rho=0 for a constant beta.",
            stacklevel=3,
        )
