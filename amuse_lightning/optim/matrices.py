"""What every direction shares: the Newton-Schulz dtype of a group, the matrix view of a list of
tensors (``map_matrices``: one call per same-shape stack, or a drop-in that splits the work across
ranks), momentum and second moments over tensor lists (docs/algorithm.md#muon).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from .polar import NS_DTYPES, as_matrix, newton_schulz


def ns_dtype(group: dict) -> torch.dtype:
    """The group's Newton-Schulz dtype (stored as a name such as ``"bfloat16"``)."""
    return NS_DTYPES[group["ns_dtype"]]


BatchFn = Callable[[Tensor], Tensor]
MatrixMap = Callable[..., list[Tensor]]
"""``map_matrices`` or a drop-in that splits the work across ranks (``distributed.RankSplit``)."""


def map_matrices(
    tensors: Sequence[Tensor],
    fn: BatchFn,
    wire_dtype: torch.dtype | None = None,
    batch_same_shapes: bool | None = None,
) -> list[Tensor]:
    """Apply ``fn`` to every tensor viewed as a matrix, batching same-shape matrices.

    ``fn`` gets a stack of shape ``(B, rows, cols)`` and returns a stack of the same shape; the
    results come back in the tensors' own shapes (conv kernels ``(out, in, kh, kw)`` are flattened
    to ``(out, in*kh*kw)`` for ``fn`` and reshaped back). ``batch_same_shapes`` (default: on for
    accelerators, off on CPU) stacks every (shape, dtype, device) bucket into one call; on CPU the
    2-D kernels on each matrix beat the stack copy plus batched kernels (``step_time.py``).
    ``wire_dtype`` promises that every result is exactly representable in that dtype (e.g. a bf16
    Newton-Schulz cast up), so a distributed map may send results in it; here it is unused.
    """
    matrices = [as_matrix(t) for t in tensors]
    if batch_same_shapes is None:
        batch_same_shapes = bool(matrices) and matrices[0].device.type != "cpu"
    if not batch_same_shapes:
        return [fn(m.unsqueeze(0))[0].view(t.shape) for m, t in zip(matrices, tensors, strict=True)]
    buckets: dict[tuple, list[int]] = {}
    for i, m in enumerate(matrices):
        buckets.setdefault((tuple(m.shape), m.dtype, m.device), []).append(i)
    out: list[Tensor | None] = [None] * len(tensors)
    for indices in buckets.values():
        batch = torch.stack([matrices[i] for i in indices])
        result = fn(batch)
        for k, i in enumerate(indices):
            out[i] = result[k].view(tensors[i].shape)
    return out  # type: ignore[return-value]


def second_moment_(second: list[Tensor], values: Sequence[Tensor], beta2: float) -> None:
    """The one second-moment update of every direction: ``v <- beta2 v + (1 - beta2) x*x``."""
    torch._foreach_mul_(second, beta2)
    torch._foreach_addcmul_(second, list(values), list(values), 1.0 - beta2)


def momentum_inputs(
    grads: Sequence[Tensor], momenta: list[Tensor], mu: float, nesterov: bool
) -> list[Tensor]:
    """EMA momentum ``m = m + (1 - mu)(g - m)``; returns ``u = g + mu (m - g)`` or ``m``."""
    torch._foreach_lerp_(momenta, list(grads), 1.0 - mu)
    if nesterov:
        return list(torch._foreach_lerp(list(grads), momenta, mu))
    return momenta


def newton_schulz_of(group: dict) -> Callable[[Tensor], Tensor]:
    """``stack -> NS(stack)`` with the group's steps, dtype and coefficients."""
    return lambda b: newton_schulz(
        b, group["ns_steps"], ns_dtype(group), coefficients=group["ns_coefficients"]
    )
