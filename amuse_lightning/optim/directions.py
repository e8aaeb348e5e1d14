"""What moves z: the update direction ``U_t`` of one parameter group (docs/algorithm.md#muon).

Every function takes the group's gradients (never modified) and the per-parameter state dicts,
creates its buffers lazily, and returns one update tensor per parameter. Elementwise work uses
foreach ops over the whole group; matrix work stacks same-shape matrices into one batch.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from .polar import as_matrix, newton_schulz, spectral_power

MUON_DIRECTIONS = ("muon", "adamuon", "spectral")
FALLBACK_UPDATES = ("adamw", "sgd")
MUON_SCALINGS = ("adamw", "sgd")
SPECTRAL_INPUTS = ("momentum", "rms")
NS_DTYPES = {
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
    "float32": torch.float32,
    "float64": torch.float64,
}
"""Newton-Schulz dtypes by name; groups store the name (plain data for any state_dict reader)."""


def ns_dtype(group: dict) -> torch.dtype:
    """The group's Newton-Schulz dtype (stored as a name such as ``"bfloat16"``)."""
    return NS_DTYPES[group["ns_dtype"]]


def ns_dtype_name(dtype: torch.dtype | str) -> str:
    """``torch.bfloat16`` or ``"bfloat16"`` -> ``"bfloat16"``; anything else -> ValueError."""
    name = str(dtype).removeprefix("torch.") if isinstance(dtype, torch.dtype) else dtype
    if name not in NS_DTYPES:
        raise ValueError(
            f"ns_dtype must be one of {tuple(NS_DTYPES)} (or the torch dtype), got {dtype!r}"
        )
    return name


State = dict[str, Any]
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


def muon_scale(rows: int, cols: int, aux_update_type: str) -> float:
    """Scale of the orthogonalised update.

    ``"adamw"``: ``0.2 sqrt(max(rows, cols))`` (update RMS about 0.2, AdamW learning rates carry
    over); ``"sgd"``: ``sqrt(max(1, rows / cols))`` (the original Muon rule).
    """
    if aux_update_type == "adamw":
        return 0.2 * math.sqrt(max(rows, cols))
    return math.sqrt(max(1.0, rows / cols))


def _buffers(states: Sequence[State], key: str, like: Sequence[Tensor]) -> list[Tensor]:
    for state, ref in zip(states, like, strict=True):
        if key not in state:
            state[key] = torch.zeros_like(ref, memory_format=torch.preserve_format)
    return [state[key] for state in states]


def _momentum_input(grads: Sequence[Tensor], states: Sequence[State], group: dict) -> list[Tensor]:
    """EMA momentum ``m = m + (1 - mu)(g - m)``; Nesterov input ``u = g + mu (m - g)``."""
    mu = group["momentum"]
    momenta = _buffers(states, "momentum_buffer", grads)
    torch._foreach_lerp_(momenta, list(grads), 1.0 - mu)
    if group["nesterov"]:
        return list(torch._foreach_lerp(list(grads), momenta, mu))
    return momenta


def muon_direction(
    grads: Sequence[Tensor],
    states: Sequence[State],
    group: dict,
    matrix_map: MatrixMap = map_matrices,
) -> list[Tensor]:
    """Muon: ``U = scale * NS5(u)`` with ``u`` the (Nesterov) momentum; one buffer."""
    ortho, scales = muon_parts(grads, states, group, matrix_map)
    torch._foreach_mul_(ortho, scales)
    return ortho


def muon_parts(
    grads: Sequence[Tensor],
    states: Sequence[State],
    group: dict,
    matrix_map: MatrixMap = map_matrices,
    keep_ns_dtype: bool = False,
) -> tuple[list[Tensor], list[float]]:
    """``NS5(u)`` and the scales still to apply, so a caller can fold them into its update.

    ``keep_ns_dtype`` leaves the orthogonalised matrices in the Newton-Schulz dtype (no cast
    back); only for the local map, whose consumer adds them with a per-tensor ``alpha``.
    """
    inputs = _momentum_input(grads, states, group)
    dtype = ns_dtype(group)
    out_dtype = dtype if keep_ns_dtype else None
    ortho = matrix_map(
        inputs, lambda b: newton_schulz(b, group["ns_steps"], dtype, out_dtype=out_dtype), dtype
    )
    scales = [muon_scale(*as_matrix(u).shape, group["aux_update_type"]) for u in inputs]
    return ortho, scales


def _newton_schulz(batch: Tensor, group: dict) -> Tensor:
    return newton_schulz(batch, group["ns_steps"], ns_dtype(group))


def adamuon_direction(
    grads: Sequence[Tensor],
    states: Sequence[State],
    group: dict,
    matrix_map: MatrixMap = map_matrices,
) -> list[Tensor]:
    """AdaMuon (arXiv 2507.11005): second moment of the orthogonalised sign, RMS-0.2 rescale.

    ``O = NS5(sign(u))``, ``V = mu V + (1 - mu) O*O``, ``O_hat = O / (sqrt(V) + eps)``,
    ``U = 0.2 sqrt(rows*cols) / ||O_hat||_F * O_hat``. Buffers: momentum and V.
    """
    inputs = _momentum_input(grads, states, group)
    signs = torch._foreach_sign(inputs)
    ortho = matrix_map(signs, lambda b: _newton_schulz(b, group), ns_dtype(group))
    second = _buffers(states, "exp_avg_sq", grads)
    torch._foreach_lerp_(second, torch._foreach_mul(ortho, ortho), 1.0 - group["momentum"])
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
    grads: Sequence[Tensor],
    states: Sequence[State],
    group: dict,
    step: int,
    matrix_map: MatrixMap = map_matrices,
) -> list[Tensor]:
    """Spectral power family (arXiv 2602.04669): ``U = Psi_p(O) = U_O Sigma^p V_O^T``, no rescale.

    ``O`` is the (Nesterov) momentum for ``spectral_input="momentum"``, or Adam's RMS-normalised
    update ``m_hat / (sqrt(v_hat) + eps)`` (bias-corrected) for ``spectral_input="rms"``.
    """
    if group["spectral_input"] == "momentum":
        inputs = _momentum_input(grads, states, group)
    else:
        inputs = _rms_normalised(grads, states, group, step)
    power = group["spectral_power"]
    wire = ns_dtype(group) if power == 0 else None  # p = 0 is a plain Newton-Schulz
    return matrix_map(
        inputs, lambda b: spectral_power(b, power, group["ns_steps"], ns_dtype(group)), wire
    )


def _rms_normalised(
    grads: Sequence[Tensor], states: Sequence[State], group: dict, step: int
) -> list[Tensor]:
    mu, beta2 = group["momentum"], group["beta2"]
    first = _buffers(states, "exp_avg", grads)
    second = _buffers(states, "exp_avg_sq", grads)
    torch._foreach_lerp_(first, list(grads), 1.0 - mu)
    torch._foreach_mul_(second, beta2)
    torch._foreach_addcmul_(second, list(grads), list(grads), 1.0 - beta2)
    denom = torch._foreach_div(second, 1.0 - beta2**step)
    torch._foreach_sqrt_(denom)
    torch._foreach_add_(denom, group["eps"])
    out = torch._foreach_div(first, denom)
    torch._foreach_div_(out, 1.0 - mu**step)
    return list(out)


def adam_fallback(
    grads: Sequence[Tensor], states: Sequence[State], group: dict, step: int
) -> list[Tensor]:
    """Adam without a first moment (the interpolation supplies momentum).

    ``v = beta2 v + (1 - beta2) g^2``, ``U = g / (sqrt(v / (1 - beta2^t)) + eps)``.
    """
    beta2 = group["beta2"]
    second = _buffers(states, "exp_avg_sq", grads)
    torch._foreach_mul_(second, beta2)
    torch._foreach_addcmul_(second, list(grads), list(grads), 1.0 - beta2)
    denom = torch._foreach_div(second, 1.0 - beta2**step)
    torch._foreach_sqrt_(denom)
    torch._foreach_add_(denom, group["eps"])
    return list(torch._foreach_div(list(grads), denom))


def compute_direction(
    grads: Sequence[Tensor],
    states: Sequence[State],
    group: dict,
    step: int,
    matrix_map: MatrixMap = map_matrices,
) -> list[Tensor]:
    """Dispatch on the group: Muon-side ``direction`` or fallback ``update_type``.

    ``matrix_map`` runs the per-matrix work (Newton-Schulz, spectral powers); pass a
    ``distributed.RankSplit`` to split it across data-parallel ranks.
    """
    if group["use_muon"]:
        direction = group["direction"]
        if direction == "muon":
            return muon_direction(grads, states, group, matrix_map)
        if direction == "adamuon":
            return adamuon_direction(grads, states, group, matrix_map)
        return spectral_direction(grads, states, group, step, matrix_map)
    if group["update_type"] == "adamw":
        return adam_fallback(grads, states, group, step)
    return list(grads)  # "sgd": U = g (read only, never modified)
