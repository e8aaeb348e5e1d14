"""Pure schedule functions of AMUSE: warmup lr, averaging weight c_t, interpolation beta_t.

All quantities are per parameter group; ``t`` is the group's 1-based step count and
``T0 = warmup_steps`` (docs/algorithm.md#schedule). Three mechanisms from the Schedule-Free
literature change the schedule when asked for (all off by default; docs/algorithm.md#mechanisms):

* the c warm-up (ScheduleFree+, arXiv 2605.19095): ``c_t = 1`` (``x`` follows ``z``) for
  ``t <= Tc = c_warmup_steps``; the average starts after it, ``c_t = w_t / sum_{Tc<s<=t} w_s``;
* a decoupled averaging window (Song et al., arXiv 2507.09846): ``c_t <- min(1, kappa c_t)``,
  ``kappa = c_scale`` (their ``(1 - beta) C``), so ``x`` weights recent ``z`` more;
* beta annealing (ScheduleFree+): instead of the ``rho`` rise, ``1 - beta_t`` moves from
  ``1 - beta1`` to ``1 - beta_final`` in log space over ``A = beta_anneal_steps`` steps.

The ``rho`` rise of ``beta_t`` is anchored on the plain weights ``q_t = w_t / sum_{s<=t} w_s``
(which equal ``c_t`` when neither of the first two mechanisms is on), so the averaging knobs
change ``x`` only.
"""

from __future__ import annotations

import math
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


def annealed_beta(t: int, beta1: float, beta_final: float, anneal_steps: int) -> float:
    """``1 - beta_t = (1 - beta1)^(1 - u) (1 - beta_final)^u``, ``u = min(1, t / A)``."""
    u = min(1.0, t / anneal_steps)
    if beta_final == 1.0:  # (1 - beta_final)^u = 0 for u > 0
        return beta1 if u == 0.0 else 1.0
    gap = math.exp((1.0 - u) * math.log1p(-beta1) + u * math.log1p(-beta_final))
    return 1.0 - gap if beta1 < 1.0 else 1.0


SHORT_RUN_STEPS = 1600
"""Runs annealed over up to this many steps end at ``beta_final = 0.9`` (``"auto"``)."""
LONG_RUN_STEPS = 6400
"""Runs annealed over this many steps or more end at ``beta_final = 0.965`` (``"auto"``)."""


def length_aware_beta_final(anneal_steps: int) -> float:
    """``beta_final="auto"``: the end of beta annealing chosen from its length ``A``::

        1 - beta_final = 0.1 * 0.35^u,    u = clamp(log2(A / 1600) / 2, 0, 1)

    0.9 up to 1,600 steps, ``1 - beta`` log-linear in ``log A`` between, 0.965 from 6,400 steps
    on (docs/optimizer.md, ``beta_final``, has the studies it comes from).
    """
    if anneal_steps <= SHORT_RUN_STEPS:
        return 0.9
    u = min(
        1.0, math.log2(anneal_steps / SHORT_RUN_STEPS) / math.log2(LONG_RUN_STEPS / SHORT_RUN_STEPS)
    )
    return 1.0 - 0.1 * 0.35**u


@dataclass(frozen=True)
class Mechanisms:
    """The optional schedule mechanisms of a group (module docstring); defaults are all off."""

    c_warmup_steps: int = 0
    c_scale: float = 1.0
    beta_anneal_steps: int = 0
    beta_final: float = 0.965


@dataclass(frozen=True)
class ScheduleState:
    """What a group must remember between steps to continue its schedule exactly.

    ``weight_sum`` is ``sum_{s<=t} w_s``; ``weight_sum_start`` its value at the end of the c
    warm-up (0 without one), so the average's own sum is their difference.
    """

    step: int = 0
    weight_sum: float = 0.0
    c_warmup: float | None = None
    weight_sum_start: float = 0.0


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
    mechanisms: Mechanisms = Mechanisms(),
) -> ScheduleStep:
    """One schedule step: ``t += 1``, ``W_t = W_{t-1} + w_t``, ``q_t = w_t / W_t``, then
    ``c_t`` (``q_t`` unless a mechanism changes it) and ``beta_t``.

    A zero sum (all weights so far zero, ``lr = 0``) gives weight 1: x then simply follows z.
    """
    t = state.step + 1
    lr_t = warmup_lr(lr, t, warmup_steps)
    w_t = averaging_weight(t, lr_t, r, weight_lr_power)
    weight_sum = state.weight_sum + w_t
    q_t = w_t / weight_sum if weight_sum > 0.0 else 1.0
    c_warmup = q_t if t == warmup_steps else state.c_warmup
    m = mechanisms
    start = weight_sum if t == m.c_warmup_steps else state.weight_sum_start
    if t <= m.c_warmup_steps:
        c_t = 1.0
    else:
        own_sum = weight_sum - start
        c_t = min(1.0, m.c_scale * (w_t / own_sum if own_sum > 0.0 else 1.0))
    if m.beta_anneal_steps > 0:
        beta_t = annealed_beta(t, beta1, m.beta_final, m.beta_anneal_steps)
    else:
        beta_t = interpolation_beta(t, q_t, c_warmup, beta1, rho, warmup_steps)
    return ScheduleStep(ScheduleState(t, weight_sum, c_warmup, start), lr_t, c_t, beta_t)


def advance_group_schedule(group: dict) -> ScheduleStep:
    """:func:`advance_schedule` of an AMUSE param group, from the state and settings it holds
    (``step``, ``weight_sum``, ``c_warmup``, ``weight_sum_start``; ``lr * lr_scale`` and the
    schedule arguments); the group is not changed (:func:`store_schedule` does that)."""
    return advance_schedule(
        ScheduleState(
            group["step"], group["weight_sum"], group["c_warmup"], group["weight_sum_start"]
        ),
        lr=group["lr"] * group["lr_scale"],
        warmup_steps=group["warmup_steps"],
        beta1=group["beta1"],
        rho=group["rho"],
        r=group["r"],
        weight_lr_power=group["weight_lr_power"],
        mechanisms=Mechanisms(
            group["c_warmup_steps"], group["c_scale"], group["beta_anneal_steps"],
            group["beta_final"],
        ),
    )  # fmt: skip


def store_schedule(group: dict, schedule: ScheduleStep) -> None:
    """Write the new schedule state and the step's scalars (kept for logging) into the group."""
    state = schedule.state
    group.update(
        step=state.step, weight_sum=state.weight_sum, c_warmup=state.c_warmup,
        weight_sum_start=state.weight_sum_start, lr_t=schedule.lr_t, c_t=schedule.c_t,
        beta_t=schedule.beta_t,
    )  # fmt: skip


def warn_if_degenerate(warmup_steps: int, rho: float) -> None:
    """With ``T0 = 1`` the rise formula has ``c_w = 1``, so ``S_t = 0`` and beta jumps to 1."""
    if warmup_steps == 1 and rho > 0.0:
        warnings.warn(
            "warmup_steps=1 with rho > 0 makes beta_t = 1 from step 2 on (the beta schedule is "
            "anchored at the end of warmup, c_w = c_1 = 1): gradients are then taken at x only. "
            "Use warmup_steps >= 2, or rho=0 for a constant beta.",
            stacklevel=3,
        )
