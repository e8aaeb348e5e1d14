"""What moves z: the update direction ``U_t`` of one parameter group, as pure functions
(docs/algorithm.md#muon), and the table that names every direction.

Every function takes the gradients (never modified) and the state buffers it updates as explicit
tensor lists (``AMUSE._init_group`` creates them) and returns one update per parameter:

* Muon (matrices, here): ``m = m + (1 - mu)(g - m)``, input ``u = g + mu (m - g)`` (Nesterov)
  or ``m``; ``U = s NS(u)`` with ``s = 0.2 sqrt(max(rows, cols))`` (``aux_update_type="adamw"``)
  or ``sqrt(max(1, rows / cols))`` (``"sgd"``); conv kernels are flattened to
  ``(out, in*kh*kw)``.
* AdaMuon, the spectral power family and the Adam fallback: :mod:`.adaptive`; fallback SGD:
  ``U = g``. What they share (the matrix map, momentum, second moments): :mod:`.matrices`.
 Each direction has a list form (foreach
ops and ``matrix_map``: same-shape batching, or a split across ranks; its outputs are new
tensors) and, for Muon and the fallbacks, a workspace form that writes into a
:class:`~amuse_lightning.optim.kernels.Workspace` kept between steps instead of allocating
(``muon_update_batch`` over same-shape tensors stacked, ``adam_update_batch``); a batch of one is
the per-parameter path. The table :data:`DIRECTIONS` (Muon side) and :data:`FALLBACKS` names each
direction's state buffers and both forms; :func:`direction_of` picks a group's entry, and the
optimizer, :func:`buffer_names` and :func:`compute_direction` all read it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from .adaptive import (
    SPECTRAL_INPUTS,
    adam_fallback,
    adam_update,
    adam_update_batch,
    adamuon_direction,
    spectral_direction,
)
from .kernels import Workspace
from .matrices import (
    BatchFn,
    MatrixMap,
    map_matrices,
    momentum_inputs,
    newton_schulz_of,
    ns_dtype,
    second_moment_,
)
from .polar import as_matrix, newton_schulz_, ns_schedule

__all__ = [
    "DIRECTIONS",
    "FALLBACKS",
    "FALLBACK_UPDATES",
    "MUON_DIRECTIONS",
    "MUON_SCALINGS",
    "SPECTRAL_INPUTS",
    "BatchFn",
    "Direction",
    "MatrixMap",
    "adam_fallback",
    "adam_update",
    "adam_update_batch",
    "adamuon_direction",
    "buffer_names",
    "compute_direction",
    "direction_of",
    "map_matrices",
    "momentum_inputs",
    "muon_direction",
    "muon_scale",
    "muon_update",
    "muon_update_batch",
    "ns_dtype",
    "second_moment_",
    "spectral_direction",
]

MUON_SCALINGS = ("adamw", "sgd")


def muon_scale(rows: int, cols: int, aux_update_type: str) -> float:
    """Scale of the orthogonalised update.

    ``"adamw"``: ``0.2 sqrt(max(rows, cols))`` (update RMS about 0.2, AdamW learning rates carry
    over); ``"sgd"``: ``sqrt(max(1, rows / cols))`` (the original Muon rule).
    """
    if aux_update_type == "adamw":
        return 0.2 * math.sqrt(max(rows, cols))
    return math.sqrt(max(1.0, rows / cols))


def muon_direction(
    grads: Sequence[Tensor], momenta: list[Tensor], group: dict,
    matrix_map: MatrixMap = map_matrices,
) -> list[Tensor]:  # fmt: skip
    """Muon over a list: ``U = s NS(u)`` (see the module docstring)."""
    inputs = momentum_inputs(grads, momenta, group["momentum"], group["nesterov"])
    ortho = matrix_map(inputs, newton_schulz_of(group), ns_dtype(group))
    scales = [muon_scale(*as_matrix(u).shape, group["aux_update_type"]) for u in inputs]
    torch._foreach_mul_(ortho, scales)
    return ortho


def muon_update(
    grad: Tensor, momentum: Tensor, group: dict, workspace: Workspace
) -> tuple[Tensor, float]:
    """Muon for one matrix without allocating: ``(NS(u), s)``; :func:`muon_update_batch` of one."""
    (update,), scale = muon_update_batch([grad], [momentum], group, workspace)
    return update, scale


def muon_update_batch(
    grads: Sequence[Tensor], momenta: list[Tensor], group: dict, workspace: Workspace
) -> tuple[list[Tensor], float]:
    """Muon for ``B`` same-shape tensors without allocating: ``([NS(u_1), ...], s)`` in ``grad``'s
    dtype and shape, ``s`` the scale every one of them still needs.

    Everything lives in the workspace: the Nesterov inputs ``u_k`` are written into one stack
    ``(B, rows, cols)`` of ``grad``'s dtype, cast once into the Newton-Schulz iterate (wide
    orientation) and orthogonalised as one batch (:func:`~amuse_lightning.optim.polar.
    newton_schulz_`; a batch of one takes the 2-D kernels), and the result is cast back once
    into the first stack. Mixed-dtype elementwise ops would each allocate a parameter-sized cast,
    so the caller gets ``grad``'s dtype and folds ``s`` into its own update. The returned views
    are valid until the workspace's next use.
    """
    grads, batch, mu = list(grads), len(grads), group["momentum"]
    first = grads[0]
    rows, cols = as_matrix(first).shape
    wide = rows <= cols
    short, long = (rows, cols) if wide else (cols, rows)
    dtype, grad_dtype, device = ns_dtype(group), first.dtype, first.device
    lead = (batch,) if batch > 1 else ()  # one matrix: the 2-D kernels (addmm), faster on CPU
    iterates = [(*lead, short, long)] * 2 + [(*lead, short, short)] * 2
    if dtype == grad_dtype:
        X, spare, gram, poly = workspace.take(iterates, dtype, device)
        U = X if wide else X.mT
    else:
        (U,) = workspace.take([(*lead, rows, cols)], grad_dtype, device)
        X, spare, gram, poly = workspace.take(iterates, dtype, device)
    if batch == 1:  # u = g + mu (m - g), or m
        momenta[0].lerp_(first, 1.0 - mu)
        g, m = as_matrix(first), as_matrix(momenta[0])
        if group["nesterov"]:
            torch.lerp(g, m, mu, out=U)
        else:
            U.copy_(m)
    else:  # the same in place on copies of g, one foreach op each
        torch._foreach_lerp_(momenta, grads, 1.0 - mu)
        inputs = list(U.unbind(0))
        torch._foreach_copy_(inputs, [as_matrix(g) for g in grads])
        if group["nesterov"]:
            torch._foreach_lerp_(inputs, [as_matrix(m) for m in momenta], mu)
        else:
            torch._foreach_copy_(inputs, [as_matrix(m) for m in momenta])
    if dtype != grad_dtype:
        X.copy_(U if wide else U.mT)
    schedule, norm_factor = ns_schedule(group["ns_coefficients"], group["ns_steps"])
    out = newton_schulz_(X, spare, gram, poly, schedule, norm_factor)
    out = out if wide else out.mT
    if dtype != grad_dtype and _cast_back(batch, device, wide, first.ndim):
        out = U.copy_(out)
    results = [out] if batch == 1 else out.unbind(0)
    updates = [_shaped(o, g.shape) for o, g in zip(results, grads, strict=True)]
    return updates, muon_scale(rows, cols, group["aux_update_type"])


def _cast_back(batch: int, device: torch.device, wide: bool, ndim: int) -> bool:
    """Whether a Newton-Schulz result in ``ns_dtype`` is cast back to the gradient's dtype.

    The casts are exact either way. On CPU a mixed-dtype update would allocate a cast per op, and
    a stack's foreach update would fall back to one kernel per tensor, so both cast back once. A
    single matrix on an accelerator is read where it lies (its kernels cast on the fly), except a
    tall conv kernel, whose transposed result has no view in the kernel's shape.
    """
    return batch > 1 or device.type == "cpu" or (not wide and ndim > 2)


def _shaped(matrix: Tensor, shape: torch.Size) -> Tensor:
    """``matrix`` in a parameter's shape: a view, except for a transposed conv-kernel result."""
    try:
        return matrix.view(shape)
    except RuntimeError:  # a tall conv kernel with an NS-dtype result: no 4-D view of out.mT
        return matrix.reshape(shape)


ListForm = Callable[[Sequence[Tensor], Sequence[list[Tensor]], dict, int, MatrixMap], list[Tensor]]
WorkspaceForm = Callable[
    [Sequence[Tensor], Sequence[list[Tensor]], dict, int, Workspace], tuple[list[Tensor], float]
]


@dataclass(frozen=True)
class Direction:
    """One way to move ``z``: the state it keeps and the forms that compute ``U``.

    Attributes:
        buffers: the state buffers (besides ``z`` and ``beta``) of a group, in order.
        over_list: ``(grads, buffers, group, step, matrix_map) -> updates``, new tensors, any
            shapes; the matrix work goes through ``matrix_map``.
        in_workspace: ``(grads, buffers, group, step, workspace) -> (updates, scale)`` without
            allocating (``updates`` are workspace views, ``scale`` still to be folded into the
            move), or ``None`` (then the list form serves every path).
        same_shape: whether ``in_workspace`` needs tensors of one shape (a batch is one stack).
    """

    buffers: Callable[[dict], tuple[str, ...]]
    over_list: ListForm
    in_workspace: WorkspaceForm | None = None
    same_shape: bool = False


def _spectral_buffers(group: dict) -> tuple[str, ...]:
    rms = group["spectral_input"] == "rms"
    return ("exp_avg", "exp_avg_sq") if rms else ("momentum_buffer",)


DIRECTIONS: dict[str, Direction] = {
    "muon": Direction(
        buffers=lambda group: ("momentum_buffer",),
        over_list=lambda g, b, group, step, mm: muon_direction(g, b[0], group, mm),
        in_workspace=lambda g, b, group, step, ws: muon_update_batch(g, b[0], group, ws),
        same_shape=True,
    ),
    "adamuon": Direction(
        buffers=lambda group: ("momentum_buffer", "exp_avg_sq"),
        over_list=lambda g, b, group, step, mm: adamuon_direction(g, b[0], b[1], group, mm),
    ),
    "spectral": Direction(
        buffers=_spectral_buffers,
        over_list=lambda g, b, group, step, mm: spectral_direction(
            g, b[0], b[1] if len(b) > 1 else None, group, step, mm
        ),
    ),
}
"""The Muon-side directions (``group["direction"]`` of a ``use_muon`` group)."""

FALLBACKS: dict[str, Direction] = {
    "adamw": Direction(
        buffers=lambda group: ("exp_avg_sq",),
        over_list=lambda g, b, group, step, mm: adam_fallback(g, b[0], group, step),
        in_workspace=lambda g, b, group, step, ws: (
            adam_update_batch(g, b[0], group, step, ws),
            1.0,
        ),
    ),
    "sgd": Direction(  # U = g (read only, never modified)
        buffers=lambda group: (),
        over_list=lambda g, b, group, step, mm: list(g),
        in_workspace=lambda g, b, group, step, ws: (list(g), 1.0),
    ),
}
"""The fallback updates (``group["update_type"]`` of a group without Muon)."""

MUON_DIRECTIONS = tuple(DIRECTIONS)
FALLBACK_UPDATES = tuple(FALLBACKS)


def direction_of(group: dict) -> Direction:
    """The table entry of a group: its ``direction`` with Muon, else its ``update_type``."""
    if group["use_muon"]:
        return DIRECTIONS[group["direction"]]
    return FALLBACKS[group["update_type"]]


def buffer_names(group: dict) -> tuple[str, ...]:
    """The state buffers (besides ``z`` and ``beta``) the group's direction keeps, in order."""
    return direction_of(group).buffers(group)


def compute_direction(
    grads: Sequence[Tensor],
    buffers: Sequence[list[Tensor]],
    group: dict,
    step: int,
    matrix_map: MatrixMap = map_matrices,
) -> list[Tensor]:
    """The group's direction over lists (its table entry's list form).

    ``buffers`` are the state lists named by :func:`buffer_names`, in that order. ``matrix_map``
    runs the per-matrix work; pass a ``distributed.RankSplit`` to split it across ranks.
    """
    return direction_of(group).over_list(grads, buffers, group, step, matrix_map)
