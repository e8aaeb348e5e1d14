"""AmuseCallback under DDP (2 CPU processes, gloo): identical parameters on every rank, x in
checkpoints, evaluation at x on every rank."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.strategies import DDPStrategy

from amuse_lightning import AmuseCallback
from tests.callback_testkit import (
    Recorder,
    assert_same,
    bn_statistics_at,
    expected_x,
    params_only,
    trainer,
)


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


def recording_forward(module: BatchNormRankDump, batch: Any) -> None:
    """The default recalibration forward, noting which inputs each rank used at which step."""
    module.recalibration_inputs.append((module.global_step, batch[0].detach().clone()))
    module(batch[0])


class BatchNormRankDump(RankDump):
    """RankDump with BatchNorm; also records the statistics every rank holds when validation
    starts (after AmuseCallback's hook), after fit, and the recalibration inputs."""

    def __init__(self, out_dir: str) -> None:
        super().__init__(out_dir, batchnorm=True)
        self.bn_at_validation_start: list[tuple[int, dict]] = []
        self.recalibration_inputs: list[tuple[int, torch.Tensor]] = []

    def on_validation_start(self) -> None:
        self.bn_at_validation_start.append((self.global_step, self.bn_state()))

    def on_fit_end(self) -> None:
        super().on_fit_end()
        path = Path(self.out_dir) / f"rank{self.global_rank}.pt"
        dump = torch.load(path, weights_only=False)
        dump.update(
            bn_start=self.bn_at_validation_start,
            bn_final=self.bn_state(),
            recalibration_inputs=self.recalibration_inputs,
        )
        torch.save(dump, path)


@pytest.mark.slow
@pytest.mark.xdist_group("multiprocess")
@pytest.mark.parametrize("broadcast_buffers", [True, False])
def test_ddp_batchnorm_recalibration_is_the_same_on_every_rank(tmp_path, broadcast_buffers):
    """Every rank evaluates x with the same statistics, estimated from every rank's batches,
    and checkpoints carry them, with and without DDP's buffer broadcast."""
    torch.manual_seed(0)
    model = BatchNormRankDump(str(tmp_path))
    checkpoint = ModelCheckpoint(tmp_path / "ck", save_top_k=-1, every_n_train_steps=3)
    strategy = DDPStrategy(start_method="spawn", broadcast_buffers=broadcast_buffers)
    amuse = AmuseCallback(bn_recalibration_batches=2, bn_forward=recording_forward)
    run = trainer(
        tmp_path,
        [amuse, checkpoint],
        strategy=strategy,
        devices=2,
        max_epochs=2,
        enable_checkpointing=True,
    )
    run.fit(model)

    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in (0, 1)]
    starts = [dict(rank["bn_start"]) for rank in ranks]
    assert sorted(starts[0]) == sorted(starts[1]) == [0, 3, 6]
    for step in starts[0]:
        assert_same(starts[1][step], starts[0][step])
    vals = [[e["__bn__"] for k, _, e in rank["events"] if k == "val"] for rank in ranks]
    assert len(vals[0]) == len(vals[1]) > 0
    for a, b in zip(*vals, strict=True):
        assert_same(a, b)
    assert_same(ranks[1]["bn_final"], ranks[0]["bn_final"])

    # the oracle: statistics of x over the batches of both ranks (2 each, one estimate per step)
    records = Recorder()
    records.events = ranks[0]["events"]
    for step, seen in starts[0].items():
        inputs = [b for rank in ranks for at, b in rank["recalibration_inputs"] if at == step]
        assert len(inputs) == 4
        x = expected_x(records.y_at_step(step))
        assert_same(seen, bn_statistics_at(x, inputs), exact=False)
    paths = sorted((tmp_path / "ck").glob("*.ckpt"))
    assert len(paths) == 2
    for path in paths:
        saved = torch.load(path, weights_only=False)
        state = {k: v for k, v in saved["state_dict"].items() if "running" in k}
        assert_same(state, starts[0][saved["global_step"]])
