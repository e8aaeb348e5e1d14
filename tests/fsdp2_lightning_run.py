"""A Lightning run under ModelParallelStrategy + FSDP2 on CPU (gloo), for test_distributed.py.

Lightning's ModelParallelStrategy relaunches this script once per extra rank, so it has to be
a script (not a pytest function). Usage: ``python tests/fsdp2_lightning_run.py OUT_DIR``; every
rank writes ``OUT_DIR/rank{r}.pt`` with the whole parameters after training (y).
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.strategies import ModelParallelStrategy
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.distributed_exit import finish_worker
from tests.test_distributed import make_optimizer, make_uneven_model

STEPS, GLOBAL_BATCH = 3, 8


def dataset() -> TensorDataset:
    gen = torch.Generator().manual_seed(7)
    n = STEPS * GLOBAL_BATCH
    return TensorDataset(torch.randn(n, 6, generator=gen), torch.randn(n, 4, generator=gen))


class ShardedNet(LightningModule):
    def __init__(self, out_dir: str) -> None:
        super().__init__()
        self.out_dir = out_dir
        self.net = make_uneven_model()

    def configure_model(self) -> None:
        from torch.distributed.fsdp import fully_shard

        mesh = self.device_mesh["data_parallel"]
        for layer in self.net:
            if isinstance(layer, nn.Linear):
                fully_shard(layer, mesh=mesh)
        fully_shard(self.net, mesh=mesh)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int):
        x, y = batch
        return nn.functional.mse_loss(self.net(x), y)

    def configure_optimizers(self):
        return make_optimizer(self.net)

    def train_dataloader(self) -> DataLoader:
        world, rank = self.trainer.world_size, self.trainer.global_rank
        sampler = DistributedSampler(dataset(), num_replicas=world, rank=rank, shuffle=False)
        return DataLoader(dataset(), batch_size=GLOBAL_BATCH // world, sampler=sampler)

    def on_train_end(self) -> None:
        whole = [p.full_tensor() for p in self.net.parameters()]
        torch.save(whole, Path(self.out_dir) / f"rank{self.global_rank}.pt")


if __name__ == "__main__":
    torch.set_num_threads(1)
    trainer = Trainer(
        accelerator="cpu", devices=2, max_steps=STEPS, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
        use_distributed_sampler=False,
        strategy=ModelParallelStrategy(data_parallel_size=2, tensor_parallel_size=1),
    )  # fmt: skip
    trainer.fit(ShardedNet(sys.argv[1]))
    finish_worker()
