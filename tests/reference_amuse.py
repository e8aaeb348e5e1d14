"""A slow, obviously-correct AMUSE written from the equations (docs/algorithm.md), the test oracle.

It keeps x, y and z explicitly per parameter (float64, one tensor at a time, no foreach, no
batching), so it shares no algebra with the fast optimizer's memory-lean recovery of x.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)


def reference_newton_schulz(G: Tensor, steps: int) -> Tensor:
    """Quintic Newton-Schulz on one matrix in float64 (wide orientation)."""
    a, b, c = NS_COEFFICIENTS
    X = G.double()
    tall = X.shape[0] > X.shape[1]
    if tall:
        X = X.T
    X = X / (torch.linalg.norm(X) + 1e-7)
    for _ in range(steps):
        A = X @ X.T
        B = b * A + c * (A @ A)
        X = a * X + B @ X
    return X.T if tall else X


class ReferenceAMUSE:
    """One group of settings for all parameters; ``is_muon(p)`` picks the direction."""

    def __init__(self, params: list[Tensor], is_muon: list[bool], **cfg) -> None:
        self.params = params
        self.is_muon = is_muon
        self.cfg = cfg
        self.t = 0
        self.weight_sum = 0.0
        self.c_warmup = None
        self.beta_prev = cfg["beta1"]
        self.x = [p.detach().clone().double() for p in params]
        self.y = [p.detach().clone().double() for p in params]
        self.z = [p.detach().clone().double() for p in params]
        self.m = [torch.zeros_like(x) for x in self.x]
        self.v = [torch.zeros_like(x) for x in self.x]
        self.beta_t = cfg["beta1"]
        self.c_t = 0.0
        self.lr_t = 0.0
        self._beta_y: dict[int, float] = {}

    def schedule(self) -> tuple[float, float, float]:
        cfg = self.cfg
        self.t += 1
        t, T0 = self.t, cfg["warmup_steps"]
        lr_t = cfg["lr"] * min(1.0, t / T0)
        w = t ** cfg["r"] * lr_t ** cfg["weight_lr_power"]
        self.weight_sum += w
        c = w / self.weight_sum
        if t == T0:
            self.c_warmup = c
        if t <= T0 or cfg["rho"] == 0:
            beta = cfg["beta1"]
        else:
            s = c * (1 - self.c_warmup) / (self.c_warmup * (1 - c))
            beta = 1 - s ** cfg["rho"] * (1 - cfg["beta1"])
        return lr_t, c, beta

    def direction(self, i: int, g: Tensor) -> Tensor:
        cfg = self.cfg
        if self.is_muon[i]:
            mu = cfg["momentum"]
            self.m[i] = mu * self.m[i] + (1 - mu) * g
            u = (1 - mu) * g + mu * self.m[i] if cfg["nesterov"] else self.m[i]
            mat = u.reshape(u.shape[0], -1)
            rows, cols = mat.shape
            O = reference_newton_schulz(mat, cfg["ns_steps"])
            if cfg["aux_update_type"] == "adamw":
                scale = 0.2 * math.sqrt(max(rows, cols))
            else:
                scale = math.sqrt(max(1.0, rows / cols))
            return (scale * O).reshape(g.shape)
        if cfg["update_type"] == "sgd":
            return g
        b2 = cfg["beta2"]
        self.v[i] = b2 * self.v[i] + (1 - b2) * g * g
        return g / (torch.sqrt(self.v[i] / (1 - b2**self.t)) + cfg["eps"])

    def step(self, grads: list[Tensor | None]) -> None:
        cfg = self.cfg
        lr_t, c, beta = self.schedule()
        for i, g in enumerate(grads):
            if g is None:
                continue
            g = g.double()
            x, y, z = self.x[i], self.y[i], self.z[i]
            wd_y = cfg["weight_decay_at_y"]
            if wd_y:
                beta_y = self.beta_y(i)
                z = z - lr_t * wd_y * y
                y = y - lr_t * wd_y * (1 - beta_y) * y
            if cfg["reference_compat"]:
                x = y + (1 - 1 / beta) * (z - y)  # the public code's recovery with the new beta
            U = self.direction(i, g)
            wd = cfg["weight_decay"]
            if not self.is_muon[i] and cfg["update_type"] == "adamw":
                z = z - lr_t * (U + wd * z)
            else:
                z = z * (1 - lr_t * wd) - lr_t * U
            x = (1 - c) * x + c * z
            y = beta * x + (1 - beta) * z
            self.x[i], self.y[i], self.z[i] = x, y, z
            self._beta_y[i] = beta
        self.beta_t, self.c_t, self.lr_t = beta, c, lr_t

    def beta_y(self, i: int) -> float:
        return self._beta_y.get(i, self.cfg["beta1"])
