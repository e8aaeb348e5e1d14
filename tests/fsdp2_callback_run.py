"""AmuseCallback under ModelParallelStrategy + FSDP2 on CPU (gloo), for test_callback_fsdp2.py.

Lightning's ModelParallelStrategy relaunches this script once per extra rank, so it has to be a
script. Usage: ``python tests/fsdp2_callback_run.py OUT_DIR {sharded,whole}``. Validation runs
after every step and records the whole weights it sees; a checkpoint is saved mid-training (the
module holds y then) and one after fit (the module holds x). Rank r writes ``OUT_DIR/rank{r}.pt``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from lightning.pytorch import Trainer
from lightning.pytorch.strategies import ModelParallelStrategy
from torch.utils.data import DataLoader

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from amuse_lightning import AmuseCallback
from tests.distributed_exit import finish_worker
from tests.helpers.sharded import GLOBAL_BATCH, MID_STEP, STEPS, ShardedNet, dataset


class RecordingNet(ShardedNet):
    """Records the modes training sees and the whole weights validation and saving see."""

    def __init__(self, out_dir: str) -> None:
        super().__init__()
        self.out_dir = Path(out_dir)
        self.seen: dict[str, list] = {"val": [], "train_modes": []}

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int):
        modes = {g["train_mode"] for g in self.trainer.optimizers[0].param_groups}
        self.seen["train_modes"].append(modes)
        return super().training_step(batch, batch_idx)

    def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
        if self.trainer.global_step == MID_STEP:
            self.seen["y_at_mid_save"] = self.whole()
            self.trainer.save_checkpoint(self.out_dir / "mid.ckpt")
            self.seen["y_after_mid_save"] = self.whole()

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        self.seen["val"].append((self.trainer.global_step, self.whole()))

    def val_dataloader(self) -> DataLoader:
        return DataLoader(dataset(), batch_size=GLOBAL_BATCH)


if __name__ == "__main__":
    torch.set_num_threads(1)
    out_dir, layout = Path(sys.argv[1]), sys.argv[2]
    strategy = ModelParallelStrategy(
        data_parallel_size=2, tensor_parallel_size=1,
        save_distributed_checkpoint=layout == "sharded",
    )  # fmt: skip
    trainer = Trainer(
        accelerator="cpu", devices=2, max_steps=STEPS, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, val_check_interval=1,
        limit_val_batches=1, num_sanity_val_steps=0, use_distributed_sampler=False,
        callbacks=[AmuseCallback()], strategy=strategy,
    )  # fmt: skip
    model = RecordingNet(str(out_dir))
    trainer.fit(model)
    model.seen["after_fit"] = model.whole()
    trainer.save_checkpoint(out_dir / "end.ckpt")
    model.seen["after_end_save"] = model.whole()
    torch.save(model.seen, out_dir / f"rank{trainer.global_rank}.pt")
    finish_worker()
