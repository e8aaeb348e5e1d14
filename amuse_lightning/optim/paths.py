"""The three ways a group's parameters move in one step, as functions over tensor lists.

Each path takes one :class:`GroupMove` (the tensors and the step's scalars, see ``amuse.py``),
applies the decay at ``y`` if the group has one, computes the direction ``U`` from the group's
entry in :data:`~amuse_lightning.optim.directions.DIRECTIONS` and moves ``y`` and ``z`` with the
kernels of ``kernels.py``:

* :func:`move_per_parameter` (the CPU default): one tensor at a time, its direction in the
  workspace (``Direction.in_workspace`` on a batch of one), single-tensor kernels.
* :func:`move_batched` (the accelerator default): the tensors in batches (same shape for Muon,
  same dtype and device for the fallbacks), each batch's direction in the workspace (Muon: one
  stacked Newton-Schulz) and its move as foreach ops, the direction's scale folded into ``lr``;
  a :class:`~amuse_lightning.optim.captured.CompiledMuon` may run the Muon batches instead.
  Nothing parameter-sized is allocated: the workspace is kept between steps and grows to the
  largest batch.
* :func:`move_over_lists` (directions without a workspace form, and splits across ranks): the
  direction's list form over the whole group (new tensors), foreach kernels.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

from torch import Tensor

from .directions import DIRECTIONS, MatrixMap, direction_of, map_matrices
from .kernels import (
    Workspace,
    decay_at_y_,
    decay_at_y_foreach_,
    plain_update_,
    plain_update_foreach_,
    schedule_free_update_,
    schedule_free_update_foreach_,
)

__all__ = ["GroupMove", "batches", "move_batched", "move_over_lists", "move_per_parameter"]


@dataclass
class GroupMove:
    """One step of one group: the parameters with a gradient and what moves them.

    ``zs`` and ``betas`` (the beta each ``y`` is recovered with: the one that built it, or the
    new ``beta_t`` in reference-compatibility mode) are empty without averaging; ``buffers`` are
    the direction's state lists in the order of ``Direction.buffers``; ``decay = 1 - lr_t wd``,
    ``decay_y = lr_t wd_y``.
    """

    params: list[Tensor]
    grads: list[Tensor]
    zs: list[Tensor]
    betas: list[float]
    buffers: list[list[Tensor]]
    step: int
    lr: float
    beta_t: float
    c_t: float
    decay: float
    decay_y: float
    averaging: bool

    def select(self, indices: list[int]) -> GroupMove:
        """The same move restricted to the tensors at ``indices``."""

        def pick(values: list) -> list:
            return [values[i] for i in indices] if values else values

        return GroupMove(
            pick(self.params), pick(self.grads), pick(self.zs), pick(self.betas),
            [pick(b) for b in self.buffers], self.step, self.lr, self.beta_t, self.c_t,
            self.decay, self.decay_y, self.averaging,
        )  # fmt: skip


def _move_foreach(move: GroupMove, updates: list[Tensor], scale: float) -> None:
    """``y`` and ``z`` (or the bare iterate) of a list, ``U = scale * updates``."""
    if move.averaging:
        schedule_free_update_foreach_(
            move.params, move.zs, updates, betas=move.betas, beta_t=move.beta_t, c_t=move.c_t,
            lr=move.lr * scale, decay=move.decay,
        )  # fmt: skip
    else:
        plain_update_foreach_(move.params, updates, lr=move.lr * scale, decay=move.decay)


def move_per_parameter(move: GroupMove, group: dict, workspace: Workspace) -> None:
    """One tensor at a time: no temporaries where the direction has a workspace form."""
    spec = direction_of(group)
    for i, (p, g) in enumerate(zip(move.params, move.grads, strict=True)):
        own = [[tensors[i]] for tensors in move.buffers]
        if move.averaging and move.decay_y != 0.0:
            decay_at_y_(p, move.zs[i], decay=move.decay_y, beta=move.betas[i])
        if spec.in_workspace is not None:
            (update,), scale = spec.in_workspace([g], own, group, move.step, workspace)
        else:
            update, scale = spec.over_list([g], own, group, move.step, map_matrices)[0], 1.0
        if move.averaging:
            schedule_free_update_(
                p, move.zs[i], update, beta=move.betas[i], beta_t=move.beta_t, c_t=move.c_t,
                lr=move.lr * scale, decay=move.decay,
            )  # fmt: skip
        else:
            plain_update_(p, update, lr=move.lr * scale, decay=move.decay)


def batches(tensors: list[Tensor], same_shape: bool) -> list[list[int]]:
    """Indices of ``tensors`` grouped by (shape,) dtype and device, in order of first appearance."""
    found: dict[tuple, list[int]] = {}
    for i, t in enumerate(tensors):
        key = (tuple(t.shape) if same_shape else (), t.dtype, t.device)
        found.setdefault(key, []).append(i)
    return list(found.values())


CompiledStep = Callable[[GroupMove, dict], None]


def move_batched(
    move: GroupMove, group: dict, workspace: Workspace, compiled: CompiledStep | None = None
) -> None:
    """Batch by batch through the workspace form (see the module docstring); ``compiled``, if
    given, moves the Muon batches (``direction="muon"``) in one captured step each."""
    spec = direction_of(group)
    if spec.in_workspace is None:
        move_over_lists(move, group, map_matrices)
        return
    if move.averaging and move.decay_y != 0.0:
        decay_at_y_foreach_(move.params, move.zs, decay=move.decay_y, betas=move.betas)
    use_compiled = compiled is not None and spec is DIRECTIONS["muon"] and group["use_muon"]
    for indices in batches(move.params, spec.same_shape):
        part = move.select(indices)
        if use_compiled:
            compiled(part, group)
            continue
        updates, scale = spec.in_workspace(part.grads, part.buffers, group, move.step, workspace)
        _move_foreach(part, updates, scale)


def move_over_lists(move: GroupMove, group: dict, matrix_map: MatrixMap) -> None:
    """The whole group through the list form; on one process same-shape matrices are stacked."""
    if matrix_map is map_matrices:
        matrix_map = functools.partial(map_matrices, batch_same_shapes=True)
    if move.averaging and move.decay_y != 0.0:
        decay_at_y_foreach_(move.params, move.zs, decay=move.decay_y, betas=move.betas)
    updates = direction_of(group).over_list(move.grads, move.buffers, group, move.step, matrix_map)
    _move_foreach(move, updates, 1.0)
