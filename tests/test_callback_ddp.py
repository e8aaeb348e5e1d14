"""AmuseCallback under DDP (2 CPU processes, gloo): identical parameters on every rank, x in
checkpoints, evaluation at x on every rank."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from amuse_lightning import AmuseCallback
from tests.callback_testkit import Recorder, assert_same, expected_x, params_only, trainer


class RankDump(Recorder):
    """Writes each rank's records and final weights to ``out_dir/rank{r}.pt`` at fit end."""

    def __init__(self, out_dir: str, **kwargs) -> None:
        super().__init__(**kwargs)
        self.out_dir = out_dir

    def on_fit_end(self) -> None:
        modes = {bool(g["train_mode"]) for g in self.trainer.optimizers[0].param_groups}
        dump = {"events": self.events, "final": self.snapshot(), "modes": modes}
        torch.save(dump, Path(self.out_dir) / f"rank{self.global_rank}.pt")


@pytest.mark.slow
@pytest.mark.xdist_group("multiprocess")
def test_ddp_ranks_agree_and_checkpoints_hold_x(tmp_path):
    torch.manual_seed(0)
    model = RankDump(str(tmp_path))
    checkpoint = ModelCheckpoint(tmp_path / "ck", save_top_k=-1, every_n_train_steps=2)
    run = trainer(
        tmp_path,
        [AmuseCallback(), checkpoint],
        strategy="ddp_spawn",
        devices=2,
        max_epochs=2,
        val_check_interval=0.5,
        enable_checkpointing=True,
    )
    run.fit(model)

    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in (0, 1)]
    steps = [[e for k, _, e in rank["events"] if k == "step_end"] for rank in ranks]
    assert len(steps[0]) == len(steps[1]) == 6  # 24 samples per rank, batch 8, 2 epochs
    for a, b in zip(*steps, strict=True):
        assert_same(params_only(a), params_only(b))
    assert_same(ranks[0]["final"], ranks[1]["final"])
    assert ranks[0]["modes"] == ranks[1]["modes"] == {False}

    records = Recorder()
    records.events = ranks[0]["events"]
    assert_same(ranks[0]["final"], expected_x(records.of_kind("step_end")[-1][1]))
    for rank in ranks:
        events = rank["events"]
        records.events = events
        vals = [i for i, (kind, _, _) in enumerate(events) if kind == "val"]
        assert vals
        for index in vals:
            assert_same(params_only(events[index][2]), expected_x(records.last_y_before(index)))

    records.events = ranks[0]["events"]
    paths = sorted((tmp_path / "ck").glob("*.ckpt"))
    assert len(paths) == 3
    for path in paths:
        saved = torch.load(path, weights_only=False)
        entry = records.y_at_step(saved["global_step"])
        assert_same(dict(saved["state_dict"]), expected_x(entry))
        assert_same(saved["amuse"]["y"], params_only(entry))
    # ddp_spawn hands rank 0's final weights back to this process: x
    assert_same({n: p.detach() for n, p in model.named_parameters()}, ranks[0]["final"])
