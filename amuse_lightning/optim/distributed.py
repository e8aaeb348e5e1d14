"""Split the matrix work of the Muon family across data-parallel ranks (plain torch.distributed).

Under data parallelism (DDP) every rank holds the same gradients after the all-reduce, so every
rank would run the same Newton-Schulz iterations on the same matrices. Instead each rank
orthogonalises only its share and the results are all-gathered:

1. **Assignment** (:func:`assign_matrices`): matrix ``i`` of shape ``(m, n)`` costs
   ``cost_i = m n min(m, n)`` (each NS iteration is two or three products of that size). Matrices
   are taken in decreasing cost and each goes to the least-loaded rank (greedy
   longest-processing-time, ties to the lower rank), so the largest per-rank load is at most
   ``4/3`` of the best possible one. The assignment depends only on the shapes, so every rank
   computes the same one without communication.
2. **Compute**: a rank stacks the same-shape matrices of its share and runs one batched call per
   shape (the same batching as the single-process path).
3. **Exchange** (:class:`RankSplit`): each rank packs its results into one flat buffer, padded to
   the longest share, and one ``all_gather`` per dtype hands every rank every result (results of
   a bf16 Newton-Schulz are bf16 numbers cast up, so they travel in bf16: half the bytes, exact).
   Each rank unpacks views into the gathered buffer. The gathered bytes are the same on every
   rank, so parameters stay identical on every rank after every step.

Everything elementwise (momentum, second moments, the Schedule-Free averaging) stays local: it is
cheap, and every rank already has the whole (all-reduced) gradient.

FSDP2 (``fully_shard``, DTensor parameters on a 1-D mesh, rows sharded): the elementwise work
runs on the local shards through DTensor, and :class:`ShardedMatrixMap` hands Newton-Schulz whole
matrices: it all-gathers each input, splits the whole matrices over the mesh's ranks as above, and
each rank keeps its own rows of every result. That moves every matrix twice per step (once
gathered, once in the result exchange); an all-to-all to the owning rank and back would move
``2 / world_size`` of that (the plan for large models).

All ranks must call with the same list of shapes in the same order (DDP guarantees the same
parameters have gradients on every rank); the first call with a new list checks that with one
small all-reduce and raises if the ranks disagree, instead of hanging.
"""

from __future__ import annotations

import functools
import math
import zlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor

from .polar import as_matrix

__all__ = [
    "ExchangePlan",
    "MatrixMapChoice",
    "RankSplit",
    "ShardedMatrixMap",
    "assign_matrices",
    "check_dtensor_layout",
    "is_dtensor",
    "matrix_cost",
    "plan_exchange",
    "split_world_size",
]

Shape = tuple[int, ...]
BatchFn = Callable[[Tensor], Tensor]


def matrix_cost(shape: Sequence[int]) -> int:
    """Work of one Newton-Schulz iteration on an ``(m, n)`` matrix, up to a constant.

    ``cost = m n min(m, n)``; a conv kernel ``(out, in, kh, kw)`` counts as ``(out, in kh kw)``.
    """
    m, n = int(shape[0]), _numel(tuple(shape[1:]))
    return m * n * min(m, n)


@functools.lru_cache(maxsize=512)
def assign_matrices(shapes: tuple[Shape, ...], world_size: int) -> tuple[int, ...]:
    """Owner rank of every matrix: greedy longest-processing-time on ``cost = m n min(m, n)``.

    Matrices are visited by decreasing cost (ties: by shape, then by position, so same-shape
    matrices are dealt round-robin); each goes to the rank with the smallest load so far (ties: the
    lower rank). Deterministic: it depends only on ``shapes`` and ``world_size``. The largest load
    is at most ``(4/3 - 1/(3 world_size))`` times the optimum, and at most
    ``total / world_size + max cost``.
    """
    if world_size < 1:
        raise ValueError(f"world_size must be >= 1, got {world_size}")
    costs = [matrix_cost(s) for s in shapes]
    order = sorted(range(len(shapes)), key=lambda i: (-costs[i], shapes[i], i))
    loads = [0] * world_size
    owners = [0] * len(shapes)
    for i in order:
        rank = min(range(world_size), key=lambda r: (loads[r], r))
        owners[i] = rank
        loads[rank] += costs[i]
    return tuple(owners)


@dataclass(frozen=True)
class ExchangePlan:
    """Where every matrix lives in the gathered buffer.

    ``batches[r]`` lists rank ``r``'s same-shape batches (tuples of matrix indices) in packing
    order; ``offsets[i]`` is matrix ``i``'s start inside its owner's slot; every slot holds
    ``slot_numel`` elements (the longest share; shorter shares are padded).
    """

    owners: tuple[int, ...]
    batches: tuple[tuple[tuple[int, ...], ...], ...]
    offsets: tuple[int, ...]
    slot_numel: int


@functools.lru_cache(maxsize=512)
def plan_exchange(shapes: tuple[Shape, ...], world_size: int) -> ExchangePlan:
    """Assign the matrices (:func:`assign_matrices`) and lay each rank's results out in one slot."""
    owners = assign_matrices(shapes, world_size)
    batches: list[tuple[tuple[int, ...], ...]] = []
    offsets = [0] * len(shapes)
    longest = 0
    for rank in range(world_size):
        by_shape: dict[Shape, list[int]] = {}
        for i, owner in enumerate(owners):
            if owner == rank:
                by_shape.setdefault(shapes[i], []).append(i)
        rank_batches = tuple(tuple(indices) for _, indices in sorted(by_shape.items()))
        cursor = 0
        for indices in rank_batches:
            for i in indices:
                offsets[i] = cursor
                cursor += _numel(shapes[i])
        longest = max(longest, cursor)
        batches.append(rank_batches)
    return ExchangePlan(owners, tuple(batches), tuple(offsets), longest)


def _numel(shape: Sequence[int]) -> int:
    return math.prod(int(d) for d in shape)


def split_world_size(process_group: dist.ProcessGroup | None = None) -> int:
    """World size of ``process_group`` if torch.distributed is initialised, else 1."""
    if not (dist.is_available() and dist.is_initialized()):
        return 1
    return dist.get_world_size(process_group)


def _all_gather(out: Tensor, inp: Tensor, group: dist.ProcessGroup | None) -> None:
    gather = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
    gather(out, inp, group=group)


class RankSplit:
    """A drop-in for :func:`~amuse_lightning.optim.directions.map_matrices` that splits the work.

    ``RankSplit(group)(tensors, fn)`` returns ``fn`` applied to every tensor viewed as a matrix,
    like ``map_matrices``, but this rank calls ``fn`` only on its share (one batched call per
    shape) and gets the other results from one all-gather per (dtype, device). ``fn`` must return
    a stack of the shape and dtype it was given.

    Attributes:
        local_matrices: how many matrices this rank passed to ``fn`` so far (for tests and logs).
    """

    def __init__(self, process_group: dist.ProcessGroup | None = None) -> None:
        if not (dist.is_available() and dist.is_initialized()):
            raise RuntimeError(
                "RankSplit needs an initialised torch.distributed process group; call "
                "torch.distributed.init_process_group first, or construct AMUSE with "
                "distributed=False to orthogonalise every matrix on every rank"
            )
        self.process_group = process_group
        self.rank = dist.get_rank(process_group)
        self.world_size = dist.get_world_size(process_group)
        self.local_matrices = 0
        self._checked: set[tuple[tuple[Shape, ...], str, str]] = set()

    def __call__(
        self, tensors: Sequence[Tensor], fn: BatchFn, wire_dtype: torch.dtype | None = None
    ) -> list[Tensor]:
        """``fn`` on this rank's share, then one all-gather per (dtype, device) bucket.

        ``wire_dtype``: the caller's promise that every result is exactly representable in it
        (a bf16 Newton-Schulz cast up to fp32); results are then sent in it when it is narrower.
        """
        matrices = [as_matrix(t) for t in tensors]
        buckets: dict[tuple[torch.dtype, torch.device], list[int]] = {}
        for i, m in enumerate(matrices):
            buckets.setdefault((m.dtype, m.device), []).append(i)
        out: list[Tensor | None] = [None] * len(tensors)
        for (dtype, device), indices in buckets.items():
            wire = dtype
            if wire_dtype is not None and wire_dtype.itemsize < dtype.itemsize:
                wire = wire_dtype
            results = self._exchange([matrices[i] for i in indices], fn, dtype, wire, device)
            for i, result in zip(indices, results, strict=True):
                out[i] = result.view(tensors[i].shape)
        return out  # type: ignore[return-value]

    def _exchange(
        self,
        matrices: list[Tensor],
        fn: BatchFn,
        dtype: torch.dtype,
        wire: torch.dtype,
        device: torch.device,
    ) -> list[Tensor]:
        shapes = tuple(tuple(m.shape) for m in matrices)
        self._check_same_shapes(shapes, dtype, device)
        plan = plan_exchange(shapes, self.world_size)
        send = torch.empty(plan.slot_numel, dtype=wire, device=device)
        for indices in plan.batches[self.rank]:
            if device.type == "cpu":  # per-matrix 2-D kernels on CPU, as map_matrices does
                result = torch.cat([fn(matrices[i].unsqueeze(0)) for i in indices])
            else:
                result = fn(torch.stack([matrices[i] for i in indices]))
            if result.shape != (len(indices), *shapes[indices[0]]) or result.dtype != dtype:
                raise RuntimeError(
                    f"matrix function returned {tuple(result.shape)} {result.dtype} for a stack of "
                    f"{len(indices)} x {shapes[indices[0]]} {dtype}; it must keep shape and dtype"
                )
            start = plan.offsets[indices[0]]
            send[start : start + result.numel()].view(result.shape).copy_(result)
            self.local_matrices += len(indices)
        gathered = torch.empty(self.world_size * plan.slot_numel, dtype=wire, device=device)
        _all_gather(gathered, send, self.process_group)
        slots = gathered.view(self.world_size, plan.slot_numel).to(dtype)
        return [
            slots[owner, start : start + m.numel()].view(m.shape)
            for m, owner, start in zip(matrices, plan.owners, plan.offsets, strict=True)
        ]

    def _check_same_shapes(
        self, shapes: tuple[Shape, ...], dtype: torch.dtype, device: torch.device
    ) -> None:
        """Once per new shape list: one all-reduce proving every rank splits the same matrices."""
        key = (shapes, str(dtype), device.type)
        if key in self._checked:
            return
        digest = zlib.crc32(repr(key[:2]).encode())
        probe = torch.tensor([digest, -digest], dtype=torch.int64, device=device)
        dist.all_reduce(probe, op=dist.ReduceOp.MAX, group=self.process_group)
        if int(probe[0]) != digest or int(probe[1]) != -digest:
            raise RuntimeError(
                f"rank {self.rank} splits {len(shapes)} matrices {shapes} ({dtype}) but another "
                "rank has a different list: every rank must step the same parameters with "
                "gradients. Give every rank the same parameters (DDP does), or construct AMUSE "
                "with distributed=False."
            )
        self._checked.add(key)


def is_dtensor(t: Tensor) -> bool:
    """Whether ``t`` is a DTensor (a parameter sharded by FSDP2 ``fully_shard`` or TP)."""
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # pragma: no cover - torch without DTensor
        return False
    return isinstance(t, DTensor)


def check_dtensor_layout(params: Iterable[Tensor]) -> None:
    """Accept FSDP2 layouts (1-D mesh, ``Shard(0)`` or ``Replicate()``); explain anything else."""
    for p in params:
        if not is_dtensor(p):
            continue
        mesh, placements = p.device_mesh, p.placements
        row_sharded = all(pl.is_replicate() or (pl.is_shard() and pl.dim == 0) for pl in placements)
        if mesh.ndim != 1 or not row_sharded:
            raise NotImplementedError(
                f"AMUSE got a DTensor parameter (shape {tuple(p.shape)}) on a {mesh.ndim}-D "
                f"device mesh with placements {placements}: only FSDP2 sharding over a 1-D "
                "mesh (fully_shard(module, mesh=mesh['data_parallel']), Shard(0)) is supported; "
                "tensor parallelism and HSDP are not. Supported setups: a single device, DDP "
                "(Lightning strategy='ddp'), and FSDP2 fully_shard on a 1-D mesh."
            )


class ShardedMatrixMap:
    """``map_matrices`` for DTensor inputs (FSDP2): whole matrices for ``fn``, shards back.

    Every input shard is all-gathered into its whole matrix (``full_tensor``), ``fn`` runs on the
    whole matrices (split across the mesh's ranks by ``split`` when given, else on every rank),
    and each rank keeps the rows of every result that its own shard covers (no communication:
    every rank holds the same whole results). Elementwise work never comes here, so it stays on
    the local shards.
    """

    def __init__(self, split: RankSplit | None = None) -> None:
        self.split = split

    def __call__(
        self, tensors: Sequence[Tensor], fn: BatchFn, wire_dtype: torch.dtype | None = None
    ) -> list[Tensor]:
        from .directions import map_matrices

        whole = [t.full_tensor() if is_dtensor(t) else t for t in tensors]
        results = (self.split or map_matrices)(whole, fn, wire_dtype)
        return [
            _reshard_like(result, like) if is_dtensor(like) else result
            for result, like in zip(results, tensors, strict=True)
        ]


def _reshard_like(whole: Tensor, like: Tensor) -> Tensor:
    """The DTensor with ``like``'s layout whose whole value is ``whole`` (same on every rank)."""
    from torch.distributed.tensor import distribute_tensor

    try:  # every rank already holds ``whole``: slice locally, no broadcast
        return distribute_tensor(whole, like.device_mesh, like.placements, src_data_rank=None)
    except TypeError:  # pragma: no cover - torch < 2.6: broadcast from rank 0 (same values)
        return distribute_tensor(whole, like.device_mesh, like.placements)


def _local_map() -> Callable[..., list[Tensor]]:
    from .directions import map_matrices

    return map_matrices


class MatrixMapChoice:
    """Which matrix map an optimizer's group uses (a mixin of ``AMUSE``).

    Needs ``distributed`` and ``process_group`` attributes; caches ``_rank_split`` (the split over
    ``process_group``) and ``_sharded_maps`` (one :class:`ShardedMatrixMap` per DTensor mesh).
    """

    distributed: bool | None
    process_group: dist.ProcessGroup | None
    _rank_split: RankSplit | None
    _sharded_maps: dict[int, ShardedMatrixMap]

    def _matrix_map(self, params: list[Tensor]) -> Callable[..., list[Tensor]]:
        """``map_matrices``, or a :class:`RankSplit` over ``process_group`` when splitting.

        FSDP2 (DTensor) parameters get a :class:`ShardedMatrixMap` over their own mesh.
        """
        if params and is_dtensor(params[0]):
            return self._sharded_map(params[0])
        if self.distributed is False:
            return _local_map()
        if split_world_size(self.process_group) == 1:
            if self.distributed:
                raise RuntimeError(
                    "AMUSE(distributed=True) needs torch.distributed initialised with more than "
                    "one rank; call init_process_group first or use distributed=None (auto)"
                )
            return _local_map()
        if self._rank_split is None:
            self._rank_split = RankSplit(self.process_group)
        return self._rank_split

    def _sharded_map(self, param: Tensor) -> ShardedMatrixMap:
        mesh = param.device_mesh
        key = id(mesh)
        if key not in self._sharded_maps:
            split = None
            if self.distributed is not False and mesh.size() > 1:
                split = RankSplit(mesh.get_group())
            self._sharded_maps[key] = ShardedMatrixMap(split)
        return self._sharded_maps[key]

    def rank_splits(self) -> tuple[RankSplit, ...]:
        """The splits of the Newton-Schulz work across ranks this optimizer has made so far.

        The split over ``process_group`` (DDP) and one per FSDP2 device mesh that is split;
        empty on one process or with ``distributed=False``. Each reports ``local_matrices``, how
        many matrices this rank orthogonalised; read them, do not call them.
        """
        splits = [self._rank_split] + [m.split for m in self._sharded_maps.values()]
        return tuple(split for split in splits if split is not None)
