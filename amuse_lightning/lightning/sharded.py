"""FSDP2 parameters (``fully_shard``: DTensors sharded by rows over a 1-D mesh) in the callback.

The swap works on each rank's local shard: ``optimizer.eval()``/``train()`` are elementwise, so
they act on shards, and the copy of ``y`` is a copy of the local shard. Checkpoints follow
Lightning's ``ModelParallelStrategy``: with ``save_distributed_checkpoint=True`` (its default)
``checkpoint["state_dict"]`` holds sharded DTensors and each rank writes its own shard of ``x``;
with ``False`` rank 0 holds whole tensors, gathered here with ``full_tensor()`` (a collective:
every rank takes part, rank 0 keeps the result). Which of the two applies is read from the
checkpoint's state_dict (:func:`holds_whole_tensors`), not from the strategy's private flag.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from lightning.pytorch.strategies import ModelParallelStrategy, Strategy
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from torch import Tensor

from amuse_lightning.optim.distributed import check_dtensor_layout, is_dtensor


def is_model_parallel(strategy: Strategy) -> bool:
    return isinstance(strategy, ModelParallelStrategy)


def holds_whole_tensors(state_dict: Mapping[str, Any]) -> bool:
    """Whether a checkpoint's ``state_dict`` takes whole tensors rather than shards.

    Decided from the checkpoint itself, the same on every rank: ``ModelParallelStrategy`` with
    ``save_distributed_checkpoint=True`` gives every rank a state_dict of sharded DTensors; with
    ``False`` rank 0 gets whole tensors and the other ranks an empty state_dict. Either way no
    DTensor in it means whole tensors (and every rank must then join the gather).
    """
    return not any(is_dtensor(value) for value in state_dict.values())


def check_fsdp2_params(params: Sequence[Tensor]) -> None:
    """Under ModelParallelStrategy every optimised tensor must be an FSDP2 DTensor on a 1-D mesh."""
    plain = sum(1 for p in params if not is_dtensor(p))
    if plain:
        raise MisconfigurationException(
            f"With ModelParallelStrategy, {plain} optimised tensor(s) are not sharded DTensors. "
            "AmuseCallback supports FSDP2 only: call torch.distributed.fsdp.fully_shard(module, "
            "mesh=self.device_mesh['data_parallel']) on the layers and on the whole model in "
            "configure_model, before configure_optimizers builds the optimizer."
        )
    try:
        check_dtensor_layout(params)
    except NotImplementedError as error:
        raise MisconfigurationException(str(error)) from error


def checkpoint_copy(live: Tensor, saved: Tensor) -> Tensor:
    """A new tensor with ``live``'s values laid out like the checkpoint's entry ``saved``
    (same DTensor-ness and device; Lightning offloads checkpoints to the CPU)."""
    value = live.detach().clone()
    return value if value.device == saved.device else value.to(saved.device)
