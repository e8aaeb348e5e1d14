"""Functional AMUSE kernels: the Schedule-Free move of ``y`` and ``z`` over explicit tensors.

Notation of one step of a group (see ``amuse.py``): ``y_t`` is the parameter, ``z_t`` the state,
``U`` the direction, ``lr_t`` the warmed-up learning rate, ``c_t`` the averaging weight,
``beta_t`` the new interpolation weight and ``beta`` the one that built ``y_t`` (the new
``beta_t`` in reference-compatibility mode). With::

    k = 1 - 1 / beta                      x_t     = (1 - k) y_t + k z_t
    d = 1 - lr_t wd                       z_{t+1} = d z_t - a U,        a = lr_t * scale
    w = 1 - beta_t (1 - c_t)              y_{t+1} = (1 - w) x_t + w z_{t+1}

(``y_{t+1} = x_{t+1} + (1 - beta_t)(z_{t+1} - x_{t+1})`` with
``x_{t+1} = x_t + c_t (z_{t+1} - x_t)`` collapses to the last line), the new iterate is one
linear combination of ``y_t``, ``z_t`` and ``U``, so ``x_t`` is never formed::

    y_{t+1} = P y_t + Q z_t - w a U,      P = (1 - w)(1 - k),   Q = (1 - w) k + w d

``P + Q = 1`` without decay (``d = 1``), so ``y`` moves by one ``lerp`` towards ``z_t`` plus one
``add`` of ``U``, and ``z`` by one ``add``: three elementwise passes in all, each in place, and
``U`` (for Muon the bf16 Newton-Schulz output) is read where it lies. Decay costs one more pass
on each of ``y`` and ``z``, as in torch's Muon.

Single-tensor kernels (``*_``) serve the per-parameter path; ``*_foreach_`` ones take lists.
:class:`Workspace` holds the reusable buffers of the per-parameter path.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = [
    "Workspace",
    "decay_at_y_",
    "decay_at_y_foreach_",
    "interpolation_weights",
    "plain_update_",
    "plain_update_foreach_",
    "schedule_free_update_",
    "schedule_free_update_foreach_",
]


class Workspace:
    """Reusable scratch for one parameter (or one stack) at a time, so ``step()`` allocates no
    temporaries.

    One flat buffer per (dtype, device), grown to the largest request seen and carved into views;
    a request's views are valid until the next request. The largest request is what one matrix's
    Newton-Schulz would have allocated anyway, so the memory is that of torch's Muon's temporaries,
    kept between steps instead of allocated and freed in every one. The views of a request are
    kept too (the same request comes back every step), until the buffer grows. Not part of the
    state_dict.
    """

    def __init__(self) -> None:
        self._flat: dict[tuple[torch.dtype, torch.device], Tensor] = {}
        self._views: dict[tuple, list[Tensor]] = {}

    def take(self, shapes: Sequence[tuple[int, ...]], dtype: torch.dtype, device: torch.device):
        """Contiguous views of the given shapes, disjoint, in one buffer of ``dtype``."""
        request = (tuple(shapes), dtype, device)
        views = self._views.get(request)
        if views is not None:
            return views
        sizes = [_numel(s) for s in shapes]
        need = sum(sizes)
        key = (dtype, torch.device(device))
        flat = self._flat.get(key)
        if flat is None or flat.numel() < need:
            flat = self._flat[key] = torch.empty(need, dtype=dtype, device=device)
            self._views.clear()  # views of the old buffer would keep it alive
        views, start = [], 0
        for shape, size in zip(shapes, sizes, strict=True):
            views.append(flat[start : start + size].view(shape))
            start += size
        self._views[request] = views
        return views

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self._flat.values())


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


def interpolation_weights(beta: float, beta_t: float, c_t: float, decay: float) -> tuple:
    """``(P, Q, w)`` of ``y_{t+1} = P y_t + Q z_t - w a U`` (module docstring)."""
    k = 1.0 - 1.0 / beta
    w = 1.0 - beta_t * (1.0 - c_t)
    return (1.0 - w) * (1.0 - k), (1.0 - w) * k + w * decay, w


def schedule_free_update_(
    y: Tensor, z: Tensor, update: Tensor, *, beta: float, beta_t: float, c_t: float, lr: float,
    decay: float,
) -> None:  # fmt: skip
    """In place: ``y <- P y + Q z - w lr U`` then ``z <- d z - lr U`` (``U = update``)."""
    P, Q, w = interpolation_weights(beta, beta_t, c_t, decay)
    if decay == 1.0:
        y.lerp_(z, Q)
    else:
        y.mul_(P).add_(z, alpha=Q)
        z.mul_(decay)
    y.add_(update, alpha=-w * lr)
    z.add_(update, alpha=-lr)


def schedule_free_update_foreach_(
    ys: list[Tensor], zs: list[Tensor], updates: list[Tensor], *, betas: list[float],
    beta_t: float, c_t: float, lr: float, decay: float,
) -> None:  # fmt: skip
    """:func:`schedule_free_update_` over lists (``betas``: the beta that built each ``y``)."""
    weights = [interpolation_weights(b, beta_t, c_t, decay) for b in betas]
    w = weights[0][2]
    total = 1.0 - w * (1.0 - decay)  # P + Q, the same for every tensor
    torch._foreach_lerp_(ys, zs, [Q / total for _, Q, _ in weights])
    if decay != 1.0:
        torch._foreach_mul_(ys, total)
        torch._foreach_mul_(zs, decay)
    torch._foreach_add_(ys, updates, alpha=-w * lr)
    torch._foreach_add_(zs, updates, alpha=-lr)


def plain_update_(p: Tensor, update: Tensor, *, lr: float, decay: float) -> None:
    """Without averaging the parameter is the iterate: ``p <- d p - lr U``."""
    if decay != 1.0:
        p.mul_(decay)
    p.add_(update, alpha=-lr)


def plain_update_foreach_(
    ps: list[Tensor], updates: list[Tensor], *, lr: float, decay: float
) -> None:
    if decay != 1.0:
        torch._foreach_mul_(ps, decay)
    torch._foreach_add_(ps, updates, alpha=-lr)


def decay_at_y_(y: Tensor, z: Tensor, *, decay: float, beta: float) -> None:
    """Weight decay at ``y`` that keeps ``x`` fixed: ``z -= e y;  y -= e (1 - beta) y``."""
    z.add_(y, alpha=-decay)
    y.mul_(1.0 - decay * (1.0 - beta))


def decay_at_y_foreach_(
    ys: list[Tensor], zs: list[Tensor], *, decay: float, betas: list[float]
) -> None:
    torch._foreach_add_(zs, ys, alpha=-decay)
    torch._foreach_mul_(ys, [1.0 - decay * (1.0 - b) for b in betas])
