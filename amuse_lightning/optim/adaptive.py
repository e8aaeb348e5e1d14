"""The directions with a second moment or a spectral power: AdaMuon, the spectral power family
and the Adam fallback (docs/algorithm.md#adamuon, #spectral, #fallback), over tensor lists.

* AdaMuon: ``O = NS(sign(u))``, ``V = mu V + (1 - mu) O*O``, ``O_hat = O / (sqrt(V) + eps)``,
  ``U = 0.2 sqrt(rows cols) O_hat / ||O_hat||_F``.
* Spectral power ``p``: ``U = Psi_p(O)`` of the momentum input, or of Adam's bias-corrected
  ``m_hat / (sqrt(v_hat) + eps)`` (``spectral_input="rms"``).
* Fallback AdamW (no first moment): ``v = beta2 v + (1 - beta2) g^2``,
  ``U = g / (sqrt(v / (1 - beta2^t)) + eps)``; :func:`adam_update_batch` computes it in a
  :class:`~amuse_lightning.optim.kernels.Workspace` instead of allocating.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from .kernels import Workspace
from .matrices import (
    MatrixMap,
    map_matrices,
    momentum_inputs,
    newton_schulz_of,
    ns_dtype,
    second_moment_,
)
from .polar import spectral_power

SPECTRAL_INPUTS = ("momentum", "rms")


def adamuon_direction(
    grads: Sequence[Tensor], momenta: list[Tensor], second: list[Tensor], group: dict,
    matrix_map: MatrixMap = map_matrices,
) -> list[Tensor]:  # fmt: skip
    """AdaMuon (arXiv 2507.11005); buffers: momentum and ``V`` (module docstring)."""
    inputs = momentum_inputs(grads, momenta, group["momentum"], group["nesterov"])
    signs = torch._foreach_sign(inputs)
    ortho = matrix_map(signs, newton_schulz_of(group), ns_dtype(group))
    second_moment_(second, ortho, group["momentum"])
    denom = torch._foreach_sqrt(second)
    torch._foreach_add_(denom, group["eps"])
    torch._foreach_div_(ortho, denom)
    norms = torch._foreach_norm(ortho)
    factors = [
        0.2 * math.sqrt(o.numel()) / n.clamp_min(1e-30) for o, n in zip(ortho, norms, strict=True)
    ]
    torch._foreach_mul_(ortho, factors)
    return ortho


def spectral_direction(
    grads: Sequence[Tensor], first: list[Tensor], second: list[Tensor] | None, group: dict,
    step: int, matrix_map: MatrixMap = map_matrices,
) -> list[Tensor]:  # fmt: skip
    """Spectral power family (arXiv 2602.04669): ``U = Psi_p(O)``, no rescale.

    ``first`` is the momentum (``spectral_input="momentum"``) or Adam's first moment (``"rms"``,
    then ``second`` is its second moment).
    """
    if group["spectral_input"] == "momentum":
        inputs = momentum_inputs(grads, first, group["momentum"], group["nesterov"])
    else:
        inputs = _rms_normalised(grads, first, second, group, step)
    power = group["spectral_power"]
    wire = ns_dtype(group) if power == 0 else None  # p = 0 is a plain Newton-Schulz
    return matrix_map(
        inputs,
        lambda b: spectral_power(
            b, power, group["ns_steps"], ns_dtype(group), coefficients=group["ns_coefficients"]
        ),
        wire,
    )


def _rms_normalised(
    grads: Sequence[Tensor], first: list[Tensor], second: list[Tensor], group: dict, step: int
) -> list[Tensor]:
    """Adam's bias-corrected ``m_hat / (sqrt(v_hat) + eps)``."""
    mu = group["momentum"]
    torch._foreach_lerp_(first, list(grads), 1.0 - mu)
    second_moment_(second, grads, group["beta2"])
    out = _adam_normalise(first, second, group, step)
    torch._foreach_div_(out, 1.0 - mu**step)
    return out


def _adam_normalise(
    numer: Sequence[Tensor], second: list[Tensor], group: dict, step: int
) -> list[Tensor]:
    denom = torch._foreach_div(second, 1.0 - group["beta2"] ** step)
    torch._foreach_sqrt_(denom)
    torch._foreach_add_(denom, group["eps"])
    return list(torch._foreach_div(list(numer), denom))


def adam_fallback(
    grads: Sequence[Tensor], second: list[Tensor], group: dict, step: int
) -> list[Tensor]:
    """Adam without a first moment: ``U = g / (sqrt(v / (1 - beta2^t)) + eps)``."""
    second_moment_(second, grads, group["beta2"])
    return _adam_normalise(grads, second, group, step)


def adam_update(
    grad: Tensor, second: Tensor, group: dict, step: int, workspace: Workspace
) -> Tensor:
    """:func:`adam_fallback` of one tensor, computed in the workspace (valid until its next use)."""
    return adam_update_batch([grad], [second], group, step, workspace)[0]


def adam_update_batch(
    grads: Sequence[Tensor], second: list[Tensor], group: dict, step: int, workspace: Workspace
) -> list[Tensor]:
    """:func:`adam_fallback` over tensors of one dtype and device, in the workspace (views valid
    until its next use): the denominators, then the quotients ``g / denom`` (in place of the
    denominator for a single tensor, in a second set of views for a batch)."""
    grads, n = list(grads), len(grads)
    second_moment_(second, grads, group["beta2"])
    shapes = [tuple(v.shape) for v in second]
    views = workspace.take(shapes * (1 if n == 1 else 2), second[0].dtype, second[0].device)
    denom = views[:n]
    torch._foreach_copy_(denom, second)
    torch._foreach_div_(denom, 1.0 - group["beta2"] ** step)
    torch._foreach_sqrt_(denom)
    torch._foreach_add_(denom, group["eps"])
    if n == 1:
        return [torch.div(grads[0], denom[0], out=denom[0])]
    out = views[n:]
    torch._foreach_copy_(out, grads)
    torch._foreach_div_(out, denom)
    return out
