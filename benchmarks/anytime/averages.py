"""Power-function EMAs of ``y`` and of ``z`` tracked during an AMUSE run (Karras et al. 2023,
"Analyzing and improving the training dynamics of diffusion models", post-hoc EMA section).

A power EMA with exponent ``gamma`` averages the iterates ``theta_1 .. theta_t`` with weights
proportional to ``s^gamma`` (exactly: ``theta_s`` weighs ``(s^(gamma+1) - (s-1)^(gamma+1)) /
t^(gamma+1)``, the integral of ``u^gamma`` over ``(s - 1, s]``); it is updated after step ``t`` by::

    ema_t = beta_t ema_{t-1} + (1 - beta_t) theta_t,     beta_t = (1 - 1/t)^(gamma + 1)

and its relative width (standard deviation of the weights over the run so far divided by its
length) is ``sigma_rel = sqrt(gamma + 1) / ((gamma + 2) sqrt(gamma + 3))``, the same at every
``t``. Each average is scored on a copy of the model with its tensors loaded and, where the
task has BatchNorm, the statistics re-estimated for that average (the library's
``reestimate_batchnorm`` inside ``preserved_random_state``), so the run is not touched.
"""

from __future__ import annotations

import copy
import math
from typing import Any

import torch
from torch import Tensor, nn

from amuse_lightning import AMUSE
from amuse_lightning.averaging import preserved_random_state, reestimate_batchnorm


def sigma_rel(gamma: float) -> float:
    return math.sqrt(gamma + 1) / ((gamma + 2) * math.sqrt(gamma + 3))


def gamma_for(width: float) -> float:
    """The exponent ``gamma >= 0`` with relative width ``width`` (bisection; ``sigma_rel`` falls
    with gamma there, from 0.289 at gamma = 0: e.g. 0.05 -> 16.97, 0.1 -> 6.94)."""
    if not 0.0 < width <= sigma_rel(0.0):
        raise ValueError(f"relative width must be in (0, {sigma_rel(0.0):.3f}], got {width}")
    low, high = 0.0, 1e6
    for _ in range(200):
        mid = (low + high) / 2
        low, high = (mid, high) if sigma_rel(mid) > width else (low, mid)
    return (low + high) / 2


class PowerEMAs:
    """Power EMAs of ``y`` (the parameters while training) and ``z`` (AMUSE's state) for every
    relative width in ``widths``; call :meth:`update` after every optimizer step."""

    def __init__(self, model: nn.Module, optimizer: AMUSE, widths: tuple[float, ...]) -> None:
        self.params = list(model.parameters())
        self.optimizer = optimizer
        self.gammas = {w: gamma_for(w) for w in widths}
        self.emas: dict[str, list[Tensor]] = {}
        self.t = 0

    def names(self) -> list[str]:
        return [f"ema_{src}_{w:g}" for src in ("y", "z") for w in self.gammas]

    @torch.no_grad()
    def update(self) -> None:
        self.t += 1
        sources = {
            "y": [p.detach() for p in self.params],
            "z": [self.optimizer.state[p].get("z", p).detach() for p in self.params],
        }
        for src, values in sources.items():
            for w, gamma in self.gammas.items():
                name = f"ema_{src}_{w:g}"
                if name not in self.emas:
                    self.emas[name] = [v.clone() for v in values]
                    continue
                weight = 1.0 - (1.0 - 1.0 / self.t) ** (gamma + 1)
                torch._foreach_lerp_(self.emas[name], values, weight)

    def evaluate(self, task: Any, model: nn.Module, seed: int) -> dict[str, dict]:
        """``name -> {"val", "test"}`` of every average (scored on copies of ``model``)."""
        return {name: evaluate_weights(task, model, self.emas[name], seed) for name in self.names()}


def evaluate_weights(task: Any, model: nn.Module, weights: list[Tensor], seed: int) -> dict:
    """Validation and test metrics of ``model`` with ``weights`` as its parameters, on a copy;
    BatchNorm statistics re-estimated for these weights where the task has BatchNorm."""
    twin = copy.deepcopy(model)
    with torch.no_grad():
        for p, w in zip(twin.parameters(), weights, strict=True):
            p.copy_(w)
    bn = task.bn_batches(seed)
    if bn is not None and bn[1] > 0:
        with preserved_random_state():
            reestimate_batchnorm(twin, bn[0](), bn[1])
    return {"val": task.evaluate(twin, "val"), "test": task.evaluate(twin, "test")}
