"""A run resumed at an epoch boundary trains on the uninterrupted run's batches.

The example datamodules shuffle with :class:`EpochShuffleSampler` and seed each batch's
augmentation by its sample indices; a plain ``DataLoader(shuffle=True)`` under the same
``seed_everything`` does not give the same batches after a resume (the README says so; the last
test shows it).
"""

from __future__ import annotations

from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from lightning.fabric.utilities.distributed import DistributedSamplerWrapper
from lightning.pytorch.callbacks import ModelCheckpoint
from torch import nn
from torch.utils.data import DataLoader

from amuse_lightning import AMUSE, AmuseCallback
from amuse_lightning.examples.data import (
    BatchAugment,
    EpochShuffleSampler,
    IndexedDataset,
    SyntheticImageDataModule,
    TensorImageDataset,
)
from tests.helpers.nets import split_groups
from tests.helpers.trainers import quiet_trainer

EPOCHS, STOP_AFTER = 3, 2


def synthetic(**kwargs) -> SyntheticImageDataModule:
    settings = dict(
        num_classes=4, in_channels=1, image_size=8, num_train=96, val_size=32, num_test=16,
        batch_size=16, augment=True, crop_padding=2,
    )  # fmt: skip
    return SyntheticImageDataModule(**{**settings, **kwargs})


class BatchRecorder(pl.LightningModule):
    """A linear classifier that records every training batch with its epoch."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.Tanh(), nn.Linear(16, 4))
        self.batches: list[tuple[int, torch.Tensor, torch.Tensor]] = []

    def training_step(self, batch, batch_idx: int):
        images, labels = batch
        self.batches.append((self.current_epoch, images.clone(), labels.clone()))
        return nn.functional.cross_entropy(self.net(images), labels)

    def configure_optimizers(self) -> AMUSE:
        return AMUSE(split_groups(self.net.parameters()), lr=0.05, warmup_steps=2)


class PlainShuffle(pl.LightningDataModule):
    """The same images through ``DataLoader(shuffle=True)``: order from the global generator."""

    def __init__(self) -> None:
        super().__init__()
        self.inner = synthetic()

    def setup(self, stage: str | None = None) -> None:
        self.inner.setup(stage)

    def train_dataloader(self) -> DataLoader:
        collate = BatchAugment(self.inner.mean, self.inner.std)
        return DataLoader(self.inner.train_set, batch_size=16, shuffle=True, collate_fn=collate)


def fit(model, data, tmp_path: Path, max_epochs: int, ckpt_path: str | None = None):
    pl.seed_everything(0, verbose=False)
    trainer = quiet_trainer(
        max_epochs=max_epochs,
        limit_val_batches=0,
        enable_checkpointing=True,
        callbacks=[AmuseCallback(), ModelCheckpoint(tmp_path / "ck", save_last=True)],
    )
    trainer.fit(model, datamodule=data, ckpt_path=ckpt_path)
    return trainer


def epoch_batches(model: BatchRecorder, epoch: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(x, y) for e, x, y in model.batches if e == epoch]


def same_batches(a: list, b: list) -> bool:
    return len(a) == len(b) and all(
        torch.equal(x, u) and torch.equal(y, v) for (x, y), (u, v) in zip(a, b, strict=True)
    )


def resumed_and_uninterrupted(make_data, tmp_path: Path) -> tuple[BatchRecorder, BatchRecorder]:
    whole = BatchRecorder()
    fit(whole, make_data(), tmp_path / "whole", EPOCHS)
    fit(BatchRecorder(), make_data(), tmp_path / "first", STOP_AFTER)
    resumed = BatchRecorder()
    last = str(tmp_path / "first" / "ck" / "last.ckpt")
    fit(resumed, make_data(), tmp_path / "resumed", EPOCHS, ckpt_path=last)
    return whole, resumed


def test_resumed_run_trains_on_the_uninterrupted_runs_batches(tmp_path):
    whole, resumed = resumed_and_uninterrupted(synthetic, tmp_path)
    assert {e for e, _, _ in resumed.batches} == {STOP_AFTER}  # only the epoch after the resume
    after = epoch_batches(whole, STOP_AFTER)
    assert len(after) == 4
    assert same_batches(epoch_batches(resumed, STOP_AFTER), after)  # order and augmentation
    assert not same_batches(epoch_batches(whole, 0), epoch_batches(whole, 1))  # epochs differ
    for a, b in zip(whole.parameters(), resumed.parameters(), strict=True):
        assert torch.equal(a, b)  # and so the resumed weights equal the uninterrupted ones


def test_plain_shuffled_loader_gives_other_batches_after_a_resume(tmp_path):
    """Why the sampler exists: with shuffle=True + seed_everything the resumed epoch differs."""
    whole, resumed = resumed_and_uninterrupted(PlainShuffle, tmp_path)
    assert not same_batches(epoch_batches(resumed, STOP_AFTER), epoch_batches(whole, STOP_AFTER))


def test_order_is_a_function_of_seed_and_epoch(monkeypatch):
    sampler = EpochShuffleSampler(50, seed=3)
    orders = []
    for epoch in range(3):
        sampler.set_epoch(epoch)
        orders.append(list(sampler))
        assert list(sampler) == orders[-1]  # iterating twice draws nothing
        assert sorted(orders[-1]) == list(range(50))
    assert len({tuple(o) for o in orders}) == 3
    other = EpochShuffleSampler(50, seed=4)
    assert list(other) != orders[0]
    other.load_state_dict(sampler.state_dict())
    assert list(other) == orders[2]
    monkeypatch.setenv("PL_GLOBAL_SEED", "3")
    assert list(EpochShuffleSampler(50)) == orders[0]  # seed_everything's seed by default
    with pytest.raises(ValueError, match="num_samples"):
        EpochShuffleSampler(-1)


def test_lightning_forwards_the_epoch_through_its_distributed_wrapper():
    """Under DDP Lightning wraps a custom sampler; set_epoch must still reach it."""
    inner = EpochShuffleSampler(20, seed=1)
    wrapper = DistributedSamplerWrapper(inner, num_replicas=2, rank=1, shuffle=False)
    wrapper.set_epoch(5)
    assert inner.epoch == 5
    assert list(wrapper) == inner.permutation(5).tolist()[1::2]


def test_augmentation_is_a_function_of_the_batch_indices():
    images = torch.randint(0, 256, (10, 1, 8, 8), dtype=torch.uint8)
    data = IndexedDataset(TensorImageDataset(images, torch.arange(10)))
    collate = BatchAugment((0.5,), (0.25,), train=True, crop_padding=2, hflip=0.5, seed=7)
    batch = [data[i] for i in (3, 1, 4, 5)]
    first = collate(batch)[0]
    torch.manual_seed(123)  # the global generator plays no part
    assert torch.equal(collate(batch)[0], first)
    assert not torch.equal(collate([data[i] for i in (3, 1, 4, 6)])[0][:3], first[:3])
    with pytest.raises(ValueError, match="IndexedDataset"):
        collate([TensorImageDataset(images, torch.arange(10))[0]])
