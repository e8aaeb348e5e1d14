"""FSDP2 resume under AmuseCallback on CPU (gloo), for test_loop_configurations.py.

Lightning's ModelParallelStrategy relaunches this script once per extra rank, so it has to be a
script. Usage: ``python tests/fsdp2_resume_run.py OUT_DIR``. Three fits run in the same
processes: an uninterrupted one of two epochs, one of one epoch followed by
``trainer.save_checkpoint`` (a sharded checkpoint), and one that resumes from it with
``fit(ckpt_path=...)``. Rank r writes ``OUT_DIR/rank{r}.pt``: the whole y after every step
and the whole x after fit, per run.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from lightning.pytorch import Trainer
from lightning.pytorch.strategies import ModelParallelStrategy

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from amuse_lightning import AmuseCallback
from tests.distributed_exit import finish_worker
from tests.helpers.sharded import ShardedNet

EPOCHS = 2


class Recording(ShardedNet):
    def __init__(self) -> None:
        super().__init__()
        self.ys: dict[int, list[torch.Tensor]] = {}

    def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
        self.ys[self.trainer.global_step] = [p.full_tensor() for p in self.net.parameters()]


def fit(out_dir: Path, max_epochs: int, ckpt_path: Path | None = None) -> tuple[Recording, Trainer]:
    trainer = Trainer(
        accelerator="cpu", devices=2, max_epochs=max_epochs, logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        num_sanity_val_steps=0, use_distributed_sampler=False, callbacks=[AmuseCallback()],
        strategy=ModelParallelStrategy(data_parallel_size=2, tensor_parallel_size=1),
    )  # fmt: skip
    model = Recording()
    trainer.fit(model, ckpt_path=ckpt_path)
    return model, trainer


if __name__ == "__main__":
    torch.set_num_threads(1)
    out_dir = Path(sys.argv[1])
    results = {}
    reference, _ = fit(out_dir, EPOCHS)
    results["reference"] = (reference.ys, [p.full_tensor() for p in reference.net.parameters()])
    first, first_trainer = fit(out_dir, 1)
    first_trainer.save_checkpoint(out_dir / "first.ckpt")
    resumed, _ = fit(out_dir, EPOCHS, ckpt_path=out_dir / "first.ckpt")
    results["resumed"] = (resumed.ys, [p.full_tensor() for p in resumed.net.parameters()])
    torch.save(results, out_dir / f"rank{first_trainer.global_rank}.pt")
    finish_worker()
