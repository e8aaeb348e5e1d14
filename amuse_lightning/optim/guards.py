"""What ``AMUSE.step()`` checks first: dense gradients, and none non-finite (one cheap pass)."""

from __future__ import annotations

import warnings

import torch
from torch import Tensor

Work = list[tuple[dict, list[Tensor], list[Tensor]]]
"""``(group, params, grads)`` of every group, the parameters that have a gradient."""


def gradients_finite(work: Work, policy: str) -> bool:
    """``True`` to go on; ``False`` to skip the step (``policy="skip"``, with a warning).

    ``policy="raise"`` raises FloatingPointError naming the first parameter with a non-finite
    gradient. A 2-norm per tensor is one fast pass (the inf-norm is ~10x slower on CPU); it can
    overflow only for absurdly large finite gradients, which the exact per-tensor check clears.
    """
    grads = [g for _, _, group_grads in work for g in group_grads]
    if not grads:
        return True
    low = [g for g in grads if g.dtype in (torch.float16, torch.bfloat16)]
    high = [g for g in grads if g.dtype not in (torch.float16, torch.bfloat16)]
    norms = list(torch._foreach_norm(low, 2, dtype=torch.float32)) if low else []
    norms += list(torch._foreach_norm(high, 2)) if high else []
    by_device: dict[torch.device, list[Tensor]] = {}
    for norm in norms:
        by_device.setdefault(norm.device, []).append(norm)
    if all(bool(torch.stack(norms).isfinite().all()) for norms in by_device.values()):
        return True
    name = first_nonfinite(work)
    if name is None:
        return True
    if policy == "raise":
        raise FloatingPointError(
            f"non-finite gradient in {name}; nothing was updated. Fix the loss or the "
            "learning rate, or construct AMUSE(..., nonfinite='skip') to skip such steps."
        )
    warnings.warn(f"skipping AMUSE step: non-finite gradient in {name}", stacklevel=3)
    return False


def first_nonfinite(work: Work) -> str | None:
    """The name (or group/index) and shape of the first parameter with a non-finite gradient."""
    for group_index, (group, params, grads) in enumerate(work):
        for p, g in zip(params, grads, strict=True):
            if not bool(torch.isfinite(g).all()):
                names = group.get("names")
                index = next(i for i, q in enumerate(group["params"]) if q is p)
                if names is not None and index < len(names):
                    return f"parameter {names[index]!r} (shape {tuple(p.shape)})"
                return f"param_groups[{group_index}]['params'][{index}] (shape {tuple(p.shape)})"
    return None


def params_with_grad(group: dict) -> tuple[list[Tensor], list[Tensor]]:
    """The group's parameters that have a gradient, and those gradients (dense only)."""
    params, grads = [], []
    for p in group["params"]:
        if p.grad is None:
            continue
        if p.grad.is_sparse:
            raise RuntimeError("AMUSE does not support sparse gradients; use a dense module.")
        params.append(p)
        grads.append(p.grad)
    return params, grads
