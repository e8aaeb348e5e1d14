"""AMUSE with the public reference code's structure: one Python loop iteration per parameter.

Same math as ``amuse_lightning.AMUSE`` for Muon groups (one Newton-Schulz call per matrix, one
elementwise op chain per tensor); it exists only as the "per-parameter loop" anchor of
``step_time.py``.
"""

from __future__ import annotations

import torch

from amuse_lightning.optim.directions import muon_scale
from amuse_lightning.optim.polar import as_matrix, newton_schulz
from amuse_lightning.optim.schedule import ScheduleState, advance_schedule


class LoopAMUSE(torch.optim.Optimizer):
    def __init__(self, params, lr=1e-2, beta1=0.8, rho=0.3, warmup_steps=100, momentum=0.95):
        super().__init__(params, dict(lr=lr, beta1=beta1, rho=rho, warmup_steps=warmup_steps,
                                      momentum=momentum))  # fmt: skip
        self.schedule = ScheduleState()
        self.beta = beta1

    @torch.no_grad()
    def step(self, closure=None):
        group = self.param_groups[0]
        step = advance_schedule(
            self.schedule, lr=group["lr"], warmup_steps=group["warmup_steps"],
            beta1=group["beta1"], rho=group["rho"], r=0.0, weight_lr_power=2.0,
        )  # fmt: skip
        self.schedule = step.state
        mu = group["momentum"]
        for p in group["params"]:
            state = self.state[p]
            if not state:
                state["z"] = p.detach().clone()
                state["momentum_buffer"] = torch.zeros_like(p)
            z, m = state["z"], state["momentum_buffer"]
            m.lerp_(p.grad, 1 - mu)
            u = p.grad.lerp(m, mu)
            mat = as_matrix(u)
            ortho = newton_schulz(mat, 5, torch.bfloat16).view_as(p)
            p.lerp_(z, 1 - 1 / self.beta)  # y -> x
            z.add_(ortho, alpha=-step.lr_t * muon_scale(*mat.shape, "adamw"))
            p.lerp_(z, 1 - step.beta_t * (1 - step.c_t))
        self.beta = step.beta_t
