"""The optimizers of the anytime studies behind one interface.

Budget methods (one run per budget, lr schedule over that budget):

- ``adamw_cosine``: torch.optim.AdamW, linear warmup then cosine to zero.
- ``muon_cosine``: torch.optim.Muon (``adjust_lr_fn="match_rms_adamw"``, momentum 0.95 Nesterov)
  for the library's Muon partition (conv kernels as ``(out, in*kh*kw)`` views) plus AdamW for the
  fallback tensors, both with the same warmup + cosine.

Anytime methods (one run, evaluated at every budget):

- ``muon_wsd``: the same Muon + AdamW pair at a constant lr after the same linear warm-up: its
  live iterate is the constant-lr peer, and a fork decayed to zero at any budget
  (:mod:`.forks`) is the warmup-stable-decay (WSD) model a practitioner would ship.
- ``sf_adamw``: schedulefree.AdamWScheduleFree (evaluated at ``x``).
- ``amuse`` / ``amuse_*``: :class:`amuse_lightning.AMUSE` with the library defaults plus the
  overrides in the run's ``settings``.

Every method takes the same param groups (the library's partition, ``lr_scale`` for layer decay;
torch optimizers get ``lr * lr_scale`` as the group lr) and the same weight decay.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from amuse_lightning import AMUSE
from amuse_lightning.averaging import averaged_weights

BUDGET_METHODS = ("adamw_cosine", "muon_cosine")
ANYTIME_BASELINES = ("sf_adamw",)
PEER_METHODS = ("muon_wsd",)


def is_budget_method(method: str) -> bool:
    return method in BUDGET_METHODS


def warmup_constant(warmup: int) -> Callable[[int], float]:
    """``lr(s) / lr = (s + 1) / warmup`` for ``s < warmup``, then 1 (0-based step ``s``)."""
    return lambda step: min(1.0, (step + 1) / warmup)


def warmup_cosine(warmup: int, total: int) -> Callable[[int], float]:
    """``lr(s) / lr = (s + 1) / warmup`` for ``s < warmup``, then ``(1 + cos(pi u)) / 2`` with
    ``u = (s - warmup) / (total - warmup)`` (0-based step ``s``; reaches 0 after the last step)."""

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    return factor


@dataclass
class OptimizerHandle:
    """The optimizers of one run: step, and the weights to evaluate."""

    model: nn.Module
    optimizers: list[torch.optim.Optimizer]
    averaged: bool  # True: parameters hold y while training; x is the model to evaluate
    schedulers: list[torch.optim.lr_scheduler.LRScheduler] = field(default_factory=list)
    flat_views: list[tuple[torch.Tensor, torch.Tensor]] = field(default_factory=list)

    def zero_grad(self) -> None:
        self.model.zero_grad(set_to_none=True)
        for view, _ in self.flat_views:
            view.grad = None

    def step(self) -> None:
        for view, param in self.flat_views:
            view.grad = param.grad.view_as(view)
        for opt in self.optimizers:
            opt.step()
        for scheduler in self.schedulers:
            scheduler.step()

    def evaluation_weights(
        self, bn: tuple[Callable[[], Iterator[Any]], int] | None = None
    ) -> contextlib.AbstractContextManager:
        """The model to evaluate inside ``with``: ``x`` for averaged methods, through the
        library's :func:`~amuse_lightning.averaging.averaged_weights` (an exact copy of ``y``
        written back on exit; with ``bn = (batches, count)`` BatchNorm statistics re-estimated at
        ``x`` from ``count`` of ``batches()`` and the training statistics restored, every random
        stream left as it was); the iterate itself for budget methods."""
        if not self.averaged:
            return contextlib.nullcontext()
        batches, count = bn if bn is not None and bn[1] > 0 else (None, None)
        (optimizer,) = self.optimizers
        return averaged_weights(optimizer, self.model, bn_batches=batches, max_bn_batches=count)


def torch_groups(groups: list[dict], lr: float) -> list[dict]:
    """Partition groups -> plain torch groups: ``lr * lr_scale``, library keys dropped."""
    out = []
    for g in groups:
        plain = {"params": g["params"], "lr": lr * g.get("lr_scale", 1.0)}
        if "weight_decay" in g:
            plain["weight_decay"] = g["weight_decay"]
        out.append(plain)
    return out


def build_optimizer(
    method: str,
    model: nn.Module,
    groups: list[dict],
    *,
    lr: float,
    weight_decay: float,
    warmup_steps: int,
    total_steps: int,
    settings: dict[str, Any] | None = None,
) -> OptimizerHandle:
    """``groups``: the library partition's groups with ``weight_decay`` set (0 for 1-D)."""
    settings = dict(settings or {})
    if method == "adamw_cosine":
        opt = torch.optim.AdamW(torch_groups(groups, lr), lr=lr)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, warmup_cosine(warmup_steps, total_steps))
        return OptimizerHandle(model, [opt], False, [sched])
    if method == "muon_cosine":
        return _muon_pair(model, groups, lr, warmup_cosine(warmup_steps, total_steps))
    if method == "muon_wsd":
        return _muon_pair(model, groups, lr, warmup_constant(warmup_steps))
    if method == "sf_adamw":
        import schedulefree

        opt = schedulefree.AdamWScheduleFree(
            torch_groups(groups, lr), lr=lr, warmup_steps=warmup_steps, weight_decay=weight_decay
        )
        opt.train()
        return OptimizerHandle(model, [opt], True)
    if method.startswith("amuse"):
        opt = AMUSE(groups, lr=lr, warmup_steps=warmup_steps, **settings)
        return OptimizerHandle(model, [opt], True)
    raise ValueError(f"unknown method {method!r}")


def _muon_pair(
    model: nn.Module, groups: list[dict], lr: float, factor: Callable[[int], float]
) -> OptimizerHandle:
    """torch.optim.Muon takes 2-D tensors only: it gets ``(out, -1)`` views of the kernels
    (sharing storage, so its in-place update moves the model); AdamW takes the fallback side.
    Both follow the lr ``factor`` of the 0-based step."""
    views, muon_groups = [], []
    for g in groups:
        if not g["use_muon"]:
            continue
        group_views = [(p.detach().view(p.shape[0], -1), p) for p in g["params"]]
        views += group_views
        muon_groups.append(
            {
                "params": [v for v, _ in group_views],
                "lr": lr * g.get("lr_scale", 1.0),
                "weight_decay": g.get("weight_decay", 0.0),
            }
        )
    muon = torch.optim.Muon(
        muon_groups, lr=lr, momentum=0.95, nesterov=True, adjust_lr_fn="match_rms_adamw"
    )
    adamw = torch.optim.AdamW(torch_groups([g for g in groups if not g["use_muon"]], lr), lr=lr)
    scheds = [torch.optim.lr_scheduler.LambdaLR(o, factor) for o in (muon, adamw)]
    return OptimizerHandle(model, [muon, adamw], False, scheds, views)
