"""The FSDP2 LightningModule of ``tests/fsdp2_*_run.py`` and the references to check it against.

Lightning's ``ModelParallelStrategy`` relaunches the running script once per extra rank, so those
runs are scripts; they and the tests reading their results share the data, the net and the
single-process reference defined here.
"""

from __future__ import annotations

import functools

import torch
from lightning.pytorch import LightningModule
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

from tests.helpers.nets import make_optimizer, make_uneven_model

STEPS, GLOBAL_BATCH = 3, 8
MID_STEP = 2  # the callback run saves a checkpoint after this many steps


def dataset() -> TensorDataset:
    """STEPS global batches of GLOBAL_BATCH rows, read in order."""
    gen = torch.Generator().manual_seed(7)
    n = STEPS * GLOBAL_BATCH
    return TensorDataset(torch.randn(n, 6, generator=gen), torch.randn(n, 4, generator=gen))


class ShardedNet(LightningModule):
    """:func:`make_uneven_model` with every Linear and the whole net under ``fully_shard``."""

    def __init__(self) -> None:
        super().__init__()
        self.net = make_uneven_model()

    def configure_model(self) -> None:
        from torch.distributed.fsdp import fully_shard

        mesh = self.device_mesh["data_parallel"]
        for layer in self.net:
            if isinstance(layer, nn.Linear):
                fully_shard(layer, mesh=mesh)
        fully_shard(self.net, mesh=mesh)

    def whole(self) -> list[torch.Tensor]:
        """Every parameter gathered to its whole tensor (a collective: call it on every rank)."""
        return [p.full_tensor() for p in self.net.parameters()]

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int):
        x, y = batch
        return nn.functional.mse_loss(self.net(x), y)

    def configure_optimizers(self):
        return make_optimizer(self.net)

    def train_dataloader(self) -> DataLoader:
        """Unshuffled, so that the ranks' batch i together make global batch i."""
        world, rank = self.trainer.world_size, self.trainer.global_rank
        sampler = DistributedSampler(dataset(), num_replicas=world, rank=rank, shuffle=False)
        return DataLoader(dataset(), batch_size=GLOBAL_BATCH // world, sampler=sampler)


@functools.cache
def single_process_reference() -> tuple[
    tuple[str, ...], tuple[tuple[torch.Tensor, ...], ...], tuple[tuple[torch.Tensor, ...], ...]
]:
    """Names (as the LightningModule spells them), and y and x after every step, of one process
    training :func:`make_uneven_model` on the whole global batches. Cached: do not modify."""
    inputs, targets = dataset().tensors
    model = make_uneven_model()
    opt = make_optimizer(model)
    ys, xs = [], []
    for step in range(STEPS):
        rows = slice(GLOBAL_BATCH * step, GLOBAL_BATCH * (step + 1))
        opt.zero_grad()
        nn.functional.mse_loss(model(inputs[rows]), targets[rows]).backward()
        opt.step()
        ys.append(tuple(p.detach().clone() for p in model.parameters()))
        opt.eval()
        xs.append(tuple(p.detach().clone() for p in model.parameters()))
        opt.train()
    names = tuple(f"net.{n}" for n, _ in model.named_parameters())
    return names, tuple(ys), tuple(xs)
