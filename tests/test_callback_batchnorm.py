"""AmuseCallback BatchNorm recalibration: evaluation and checkpoints use statistics estimated at x,
and the training run (data order, random streams, y, training statistics) does not change."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from torch.utils.data import DataLoader

from amuse_lightning import AmuseCallback
from amuse_lightning.lightning.callback import batchnorm_buffer_names, preserved_random_state
from tests.callback_testkit import (
    Recorder,
    assert_same,
    bn_statistics_at,
    differs,
    expected_x,
    first_inputs,
    make_data,
    params_only,
    trainer,
)

N_BATCHES = 3


def recalibrated(
    x: dict[str, torch.Tensor], n_batches: int = N_BATCHES, scale: float = 1.0
) -> dict[str, torch.Tensor]:
    """Oracle: BatchNorm statistics of weights ``x`` from the first ``n_batches`` training
    batches (the training loader does not shuffle in these tests), inputs multiplied by
    ``scale``."""
    loader = DataLoader(make_data(48, seed=0), batch_size=8)
    return bn_statistics_at(x, first_inputs(loader, n_batches, scale))


def fit(tmp_path: Path, callbacks: list, seed: int = 0, **kwargs: Any) -> tuple[Recorder, Any]:
    model_kwargs = {k: kwargs.pop(k) for k in ("dropout", "shuffle", "fail_at") if k in kwargs}
    ckpt_path = kwargs.pop("ckpt_path", None)
    pl.seed_everything(seed)
    model = Recorder(batchnorm=True, **model_kwargs)
    run = trainer(tmp_path, callbacks, val_check_interval=0.5, **kwargs)
    run.fit(model, ckpt_path=ckpt_path)
    return model, run


def test_validation_and_test_use_statistics_recalibrated_at_x(tmp_path):
    model, run = fit(tmp_path, [AmuseCallback(bn_recalibration_batches=N_BATCHES)], max_epochs=1)
    checked = 0
    for index, (kind, _, entry) in enumerate(model.events):
        if kind == "val":
            x = expected_x(model.last_y_before(index))
            assert_same(params_only(entry), x)
            assert_same(entry["__bn__"], recalibrated(x))
            checked += 1
    assert checked == 5
    final_x = expected_x(model.of_kind("step_end")[-1][1])
    assert_same(model.bn_state(), recalibrated(final_x))  # after fit: x with its statistics
    run.test(model)
    assert_same(model.of_kind("test")[-1][1]["__bn__"], recalibrated(final_x))


def test_training_time_statistics_come_back_after_evaluation(tmp_path):
    model, _ = fit(tmp_path, [AmuseCallback(bn_recalibration_batches=N_BATCHES)], max_epochs=1)
    reference, _ = fit(tmp_path, [AmuseCallback()], max_epochs=1)
    for (_, with_recal), (_, without) in zip(
        model.of_kind("step_end"), reference.of_kind("step_end"), strict=True
    ):
        assert_same(with_recal["__bn__"], without["__bn__"])
    vals = zip(model.of_kind("val"), reference.of_kind("val"), strict=True)
    assert any(differs(a["__bn__"], b["__bn__"]) for (_, a), (_, b) in vals)


def test_checkpoints_carry_statistics_estimated_at_their_x(tmp_path):
    every_2 = ModelCheckpoint(tmp_path / "ck", save_top_k=-1, every_n_train_steps=2)
    model, _ = fit(
        tmp_path,
        [AmuseCallback(bn_recalibration_batches=N_BATCHES), every_2],
        max_epochs=1,
        enable_checkpointing=True,
    )
    paths = sorted((tmp_path / "ck").glob("*.ckpt"))
    assert len(paths) == 3
    for path in paths:
        checkpoint = torch.load(path, weights_only=False)
        entry = model.y_at_step(checkpoint["global_step"])
        x = expected_x(entry)
        state = checkpoint["state_dict"]
        assert_same({k: v for k, v in state.items() if k in x}, x)
        assert_same({k: v for k, v in state.items() if "running" in k}, recalibrated(x))
        train_stats = checkpoint["amuse"]["train_buffers"]
        assert_same({k: v for k, v in train_stats.items() if "running" in k}, entry["__bn__"])


def test_training_run_is_identical_with_and_without_recalibration(tmp_path):
    """Dropout, a shuffling loader and python/numpy/torch draws in training_step: the data
    order, the random streams and every y are the same with recalibration on."""
    runs = []
    for batches in (0, 4):
        callbacks = [
            AmuseCallback(bn_recalibration_batches=batches),
            ModelCheckpoint(tmp_path / f"ck{batches}", save_top_k=-1, every_n_train_steps=2),
        ]
        runs.append(
            fit(
                tmp_path,
                callbacks,
                max_epochs=2,
                dropout=0.3,
                shuffle=True,
                enable_checkpointing=True,
            )[0]
        )
    plain, recal = runs
    assert len(plain.train_batches) == len(recal.train_batches) == 12
    for a, b in zip(plain.train_batches, recal.train_batches, strict=True):
        assert torch.equal(a, b)
    assert plain.random_draws == recal.random_draws
    for (_, a), (_, b) in zip(plain.of_kind("step_end"), recal.of_kind("step_end"), strict=True):
        assert_same(params_only(a), params_only(b))
        assert_same(a["__bn__"], b["__bn__"])
    # x (the weights) agree after fit; only the statistics differ
    assert_same(plain.snapshot(), recal.snapshot())
    assert differs(plain.bn_state(), recal.bn_state())


def test_resume_with_recalibration_equals_uninterrupted(tmp_path):
    amuse = dict(bn_recalibration_batches=N_BATCHES)
    reference, ref_run = fit(tmp_path / "a", [AmuseCallback(**amuse)], max_epochs=2)
    checkpoint = ModelCheckpoint(
        tmp_path / "ck", save_top_k=-1, save_on_train_epoch_end=True, filename="{step}"
    )
    with pytest.raises(RuntimeError, match="planned failure"):
        fit(
            tmp_path / "b",
            [AmuseCallback(**amuse), checkpoint],
            max_epochs=2,
            fail_at={"train": 8},
            enable_checkpointing=True,
        )
    resumed, res_run = fit(
        tmp_path / "c",
        [AmuseCallback(**amuse)],
        seed=11,
        max_epochs=2,
        ckpt_path=tmp_path / "ck" / "step=6.ckpt",
    )
    ref_steps = dict(reference.of_kind("step_end"))
    for step, entry in resumed.of_kind("step_end"):
        assert_same(params_only(entry), params_only(ref_steps[step]))
        assert_same(entry["__bn__"], ref_steps[step]["__bn__"])
    assert_same(resumed.snapshot(), reference.snapshot())
    assert_same(resumed.bn_state(), reference.bn_state())
    assert res_run.global_step == ref_run.global_step == 12


def test_custom_bn_forward_is_used(tmp_path):
    calls = []

    def forward(module, batch):
        calls.append(batch[0].shape[0])
        module(batch[0] * 2.0)

    model, _ = fit(
        tmp_path, [AmuseCallback(bn_recalibration_batches=2, bn_forward=forward)], max_epochs=1
    )
    # three estimates of 2 batches each: sanity check, validations at steps 3 and 6 (the end of
    # fit reuses step 6's estimate)
    assert calls == [8] * 2 * 3
    # the statistics are those of the transformed inputs, and differ from the plain ones
    model_x = expected_x(model.of_kind("step_end")[-1][1])
    assert_same(model.bn_state(), recalibrated(model_x, 2, scale=2.0))
    assert differs(model.bn_state(), recalibrated(model_x, 2))


class CountingSampler(torch.utils.data.SequentialSampler):
    """Counts how many iterators were drawn from it: in ``iterations`` (its own state, which a
    recalibration pass must leave as it was) and in ``drawn`` (a list mutated in place, which
    the restore does not reach: it shows every pass)."""

    def __init__(self, data: Any) -> None:
        super().__init__(data)
        self.iterations = 0
        self.drawn: list[int] = []

    def __iter__(self):
        self.iterations += 1
        self.drawn.append(1)
        return super().__iter__()


class CountedData(Recorder):
    def train_dataloader(self) -> DataLoader:
        data = make_data(self.hparams.n_train, seed=0)
        self.sampler = CountingSampler(data)
        return DataLoader(data, batch_size=self.hparams.batch_size, sampler=self.sampler)


@pytest.mark.parametrize("batchnorm", [False, True])
def test_recalibration_without_batchnorm_layers_is_a_no_op(tmp_path, batchnorm):
    """Without BatchNorm layers nothing is drawn: no recalibration forward, no extra pass over
    the training data, and the weights after fit are x. (With BatchNorm, the control case, the
    same observations do see the recalibration.)"""
    calls = []

    def forward(module, batch):
        calls.append(1)
        module(batch[0])

    pl.seed_everything(0)
    model = CountedData(batchnorm=batchnorm)
    callback = AmuseCallback(bn_recalibration_batches=4, bn_forward=forward)
    trainer(tmp_path, [callback], max_epochs=1, val_check_interval=0.5).fit(model)
    assert bool(batchnorm_buffer_names(model)) == batchnorm
    extra_passes = len(model.sampler.drawn) - 1  # the one epoch of training
    assert model.sampler.iterations == 1  # the sampler's own counter shows training's pass only
    if batchnorm:
        assert calls and extra_passes > 0
    else:
        assert calls == [] and extra_passes == 0
    assert_same(model.snapshot(), expected_x(model.of_kind("step_end")[-1][1]))


def test_preserved_random_state_restores_every_stream():
    gen = torch.Generator()

    def seed_all() -> None:
        random.seed(1)
        np.random.seed(1)
        torch.manual_seed(1)
        gen.manual_seed(5)

    def draw() -> tuple[float, ...]:
        return (
            random.random(),
            float(np.random.rand()),
            float(torch.rand(())),
            float(torch.rand((), generator=gen)),
        )

    seed_all()
    expected = draw()
    seed_all()
    with preserved_random_state([gen]):
        draw()
        draw()
    assert draw() == expected


def test_bad_recalibration_count_is_refused():
    with pytest.raises(ValueError, match="bn_recalibration_batches"):
        AmuseCallback(bn_recalibration_batches=-1)
