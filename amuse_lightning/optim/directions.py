"""What moves z: the update direction ``U_t`` of one parameter group, as pure functions
(docs/algorithm.md#muon).

Every function takes the gradients (never modified) and the state buffers it updates as explicit
tensor lists (``AMUSE._init_group`` creates them) and returns one update per parameter:

* Muon (matrices): ``m = m + (1 - mu)(g - m)``, input ``u = g + mu (m - g)`` (Nesterov) or ``m``;
  ``U = s NS(u)`` with ``s = 0.2 sqrt(max(rows, cols))`` (``aux_update_type="adamw"``) or
  ``sqrt(max(1, rows / cols))`` (``"sgd"``); conv kernels are flattened to ``(out, in*kh*kw)``.
* AdaMuon: ``O = NS(sign(u))``, ``V = mu V + (1 - mu) O*O``, ``O_hat = O / (sqrt(V) + eps)``,
  ``U = 0.2 sqrt(rows cols) O_hat / ||O_hat||_F``.
* Spectral power ``p``: ``U = Psi_p(O)`` of the momentum input, or of Adam's bias-corrected
  ``m_hat / (sqrt(v_hat) + eps)`` (``spectral_input="rms"``).
* Fallback AdamW (no first moment): ``v = beta2 v + (1 - beta2) g^2``,
  ``U = g / (sqrt(v / (1 - beta2^t)) + eps)``; fallback SGD: ``U = g``.

Every second moment goes through :func:`second_moment_`. The list functions use foreach ops and
``matrix_map`` (same-shape batching, or a split across ranks); ``muon_update`` and
``adam_update`` are the single-tensor forms of the per-parameter path, which write into a
:class:`~amuse_lightning.optim.kernels.Workspace` instead of allocating.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from .kernels import Workspace
from .polar import as_matrix, newton_schulz, newton_schulz_, ns_schedule, spectral_power

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


def buffer_names(group: dict) -> tuple[str, ...]:
    """The state buffers (besides ``z`` and ``beta``) the group's direction keeps, in order."""
    if group["use_muon"]:
        if group["direction"] == "adamuon":
            return ("momentum_buffer", "exp_avg_sq")
        if group["direction"] == "spectral" and group["spectral_input"] == "rms":
            return ("exp_avg", "exp_avg_sq")
        return ("momentum_buffer",)
    return ("exp_avg_sq",) if group["update_type"] == "adamw" else ()


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


def _ns(group: dict) -> Callable[[Tensor], Tensor]:
    return lambda b: newton_schulz(
        b, group["ns_steps"], ns_dtype(group), coefficients=group["ns_coefficients"]
    )


def muon_direction(
    grads: Sequence[Tensor], momenta: list[Tensor], group: dict,
    matrix_map: MatrixMap = map_matrices,
) -> list[Tensor]:  # fmt: skip
    """Muon over a list: ``U = s NS(u)`` (see the module docstring)."""
    inputs = momentum_inputs(grads, momenta, group["momentum"], group["nesterov"])
    ortho = matrix_map(inputs, _ns(group), ns_dtype(group))
    scales = [muon_scale(*as_matrix(u).shape, group["aux_update_type"]) for u in inputs]
    torch._foreach_mul_(ortho, scales)
    return ortho


def muon_update(
    grad: Tensor, momentum: Tensor, group: dict, workspace: Workspace
) -> tuple[Tensor, float]:
    """Muon for one matrix without allocating: ``(NS(u), s)``, ``NS(u)`` in ``grad``'s dtype.

    Everything lives in the workspace: the Nesterov input ``u`` in a buffer of ``grad``'s dtype,
    cast once into the Newton-Schulz iterate (:func:`~amuse_lightning.optim.polar.newton_schulz_`),
    whose result is cast back once into the first buffer. Mixed-dtype elementwise ops would each
    allocate a parameter-sized cast, so the caller gets ``grad``'s dtype and folds ``s`` into its
    own update. The returned view, in ``grad``'s shape, is valid until the workspace's next use.
    """
    momentum.lerp_(grad, 1.0 - group["momentum"])
    g, m = as_matrix(grad), as_matrix(momentum)
    rows, cols = g.shape
    short, long = min(rows, cols), max(rows, cols)
    dtype = ns_dtype(group)
    iterates = [(short, long), (short, long), (short, short), (short, short)]
    if dtype == grad.dtype:
        X, spare, gram, poly = workspace.take(iterates, dtype, grad.device)
        u = X if rows <= cols else X.mT
    else:
        (u,) = workspace.take([(rows, cols)], grad.dtype, grad.device)
        X, spare, gram, poly = workspace.take(iterates, dtype, grad.device)
    if group["nesterov"]:
        torch.lerp(g, m, group["momentum"], out=u)
    else:
        u.copy_(m)
    if dtype != grad.dtype:
        X.copy_(u if rows <= cols else u.mT)
    schedule, norm_factor = ns_schedule(group["ns_coefficients"], group["ns_steps"])
    out = newton_schulz_(X, spare, gram, poly, schedule, norm_factor)
    out = out if rows <= cols else out.mT
    if dtype != grad.dtype:
        out = u.copy_(out)
    try:
        out = out.view(grad.shape)
    except RuntimeError:  # a tall conv kernel with an NS-dtype result: no 4-D view of out.mT
        out = out.reshape(grad.shape)
    return out, muon_scale(rows, cols, group["aux_update_type"])


def adamuon_direction(
    grads: Sequence[Tensor], momenta: list[Tensor], second: list[Tensor], group: dict,
    matrix_map: MatrixMap = map_matrices,
) -> list[Tensor]:  # fmt: skip
    """AdaMuon (arXiv 2507.11005); buffers: momentum and ``V`` (module docstring)."""
    inputs = momentum_inputs(grads, momenta, group["momentum"], group["nesterov"])
    signs = torch._foreach_sign(inputs)
    ortho = matrix_map(signs, _ns(group), ns_dtype(group))
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
    second_moment_([second], [grad], group["beta2"])
    (denom,) = workspace.take([tuple(second.shape)], second.dtype, second.device)
    torch.div(second, 1.0 - group["beta2"] ** step, out=denom)
    denom.sqrt_().add_(group["eps"])
    return torch.div(grad, denom, out=denom)


def compute_direction(
    grads: Sequence[Tensor],
    buffers: Sequence[list[Tensor]],
    group: dict,
    step: int,
    matrix_map: MatrixMap = map_matrices,
) -> list[Tensor]:
    """Dispatch on the group: Muon-side ``direction`` or fallback ``update_type``.

    ``buffers`` are the state lists named by :func:`buffer_names`, in that order. ``matrix_map``
    runs the per-matrix work; pass a ``distributed.RankSplit`` to split it across ranks.
    """
    if group["use_muon"]:
        direction = group["direction"]
        if direction == "muon":
            return muon_direction(grads, buffers[0], group, matrix_map)
        if direction == "adamuon":
            return adamuon_direction(grads, buffers[0], buffers[1], group, matrix_map)
        second = buffers[1] if len(buffers) > 1 else None
        return spectral_direction(grads, buffers[0], second, group, step, matrix_map)
    if group["update_type"] == "adamw":
        return adam_fallback(grads, buffers[0], group, step)
    return list(grads)  # "sgd": U = g (read only, never modified)
