"""Warmup-stable-decay (WSD) forks of a constant-lr run, scored inline.

At a budget ``t`` of a ``muon_wsd`` run (Muon + AdamW at a constant lr after warm-up), the fork
takes ``k = round(f t)`` more steps on the batches the run sees next (a :class:`~.finishing.
Lookahead` hands them out without consuming them) with every group's lr decayed linearly to zero,
``lr_i = lr_t (1 - i / k)`` for ``i = 0 .. k-1`` (the finisher's ``linear`` shape, so both cost
the same ``k`` steps), and is scored on validation and test. Then the model, the optimizers, the
schedulers and every random stream are put back exactly, and the run goes on as if the fork had
never happened (Hägele et al. 2024: one constant-lr run, a cooldown forked whenever a model is
needed).
"""

from __future__ import annotations

import copy
import math
from typing import Any

import torch
from torch import nn

from amuse_lightning.averaging import Cooldown, preserved_random_state

from .finishing import Lookahead


def wsd_fork_evals(
    task: Any, model: nn.Module, handle: Any, stream: Lookahead, t: int, fraction: float
) -> dict[str, Any]:
    """``{"steps", "val", "test"}`` of the fork from step ``t`` (``diverged`` and score ``-inf``
    when its loss turns non-finite); the run's state is restored afterwards."""
    k = Cooldown.steps_for(t, fraction)
    batches = stream.peek(k)
    saved_model = copy.deepcopy(model.state_dict())
    saved_optimizers = [copy.deepcopy(o.state_dict()) for o in handle.optimizers]
    saved_schedulers = [copy.deepcopy(s.state_dict()) for s in handle.schedulers]
    peaks = [[g["lr"] for g in o.param_groups] for o in handle.optimizers]
    was_training = model.training
    out: dict[str, Any]
    with preserved_random_state():
        model.train()
        diverged = False
        for i, batch in enumerate(batches):
            for optimizer, lrs in zip(handle.optimizers, peaks, strict=True):
                for group, peak in zip(optimizer.param_groups, lrs, strict=True):
                    group["lr"] = peak * (1.0 - i / k)
            loss = task.loss(model, batch)
            if not torch.isfinite(loss):
                diverged = True
                break
            handle.zero_grad()
            loss.backward()
            for view, param in handle.flat_views:
                view.grad = param.grad.view_as(view)
            for optimizer in handle.optimizers:
                optimizer.step()
        if diverged:
            bad = {"score": -math.inf}
            out = {"steps": k, "val": bad, "test": bad, "diverged": True}
        else:
            out = {"steps": k, "val": task.evaluate(model, "val"),
                   "test": task.evaluate(model, "test")}  # fmt: skip
    handle.zero_grad()
    model.load_state_dict(saved_model)
    for optimizer, state in zip(handle.optimizers, saved_optimizers, strict=True):
        optimizer.load_state_dict(state)
    for scheduler, state in zip(handle.schedulers, saved_schedulers, strict=True):
        scheduler.load_state_dict(state)
    model.train(was_training)
    return out
