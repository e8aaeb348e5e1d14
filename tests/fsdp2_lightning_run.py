"""A Lightning run under ModelParallelStrategy + FSDP2 on CPU (gloo), for test_distributed_fsdp2.py.

Lightning's ModelParallelStrategy relaunches this script once per extra rank, so it has to be
a script (not a pytest function). Usage: ``python tests/fsdp2_lightning_run.py OUT_DIR``; every
rank writes ``OUT_DIR/rank{r}.pt`` with the whole parameters after training (y).
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from lightning.pytorch import Trainer
from lightning.pytorch.strategies import ModelParallelStrategy

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.distributed_exit import finish_worker
from tests.helpers.sharded import STEPS, ShardedNet


class WriteFinalWeights(ShardedNet):
    def __init__(self, out_dir: str) -> None:
        super().__init__()
        self.out_dir = out_dir

    def on_train_end(self) -> None:
        torch.save(self.whole(), Path(self.out_dir) / f"rank{self.global_rank}.pt")


if __name__ == "__main__":
    torch.set_num_threads(1)
    trainer = Trainer(
        accelerator="cpu", devices=2, max_steps=STEPS, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
        use_distributed_sampler=False,
        strategy=ModelParallelStrategy(data_parallel_size=2, tensor_parallel_size=1),
    )  # fmt: skip
    trainer.fit(WriteFinalWeights(sys.argv[1]))
    finish_worker()
