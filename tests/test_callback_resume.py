"""AmuseCallback resume: crash, then fit(ckpt_path=...) equals the uninterrupted run bit for bit."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from amuse_lightning import AmuseCallback
from tests.callback_testkit import (
    Recorder,
    assert_same,
    optimizer_state_equal,
    params_only,
    trainer,
)


def run(
    tmp_path: Path,
    *,
    max_epochs: int,
    seed: int = 0,
    ckpt_path: Path | None = None,
    checkpoint: ModelCheckpoint | None = None,
    amuse: AmuseCallback | None = None,
    use_callback: bool = True,
    **model_kwargs: Any,
) -> tuple[Recorder, pl.Trainer]:
    pl.seed_everything(seed)
    model = Recorder(**model_kwargs)
    callbacks: list = [amuse or AmuseCallback()] if use_callback else []
    if checkpoint is not None:
        callbacks.append(checkpoint)
    fit_trainer = trainer(
        tmp_path,
        callbacks,
        max_epochs=max_epochs,
        val_check_interval=0.5,
        enable_checkpointing=checkpoint is not None,
    )
    if "fail_at" in model_kwargs:
        with pytest.raises(RuntimeError, match="planned failure"):
            fit_trainer.fit(model, ckpt_path=ckpt_path)
    else:
        fit_trainer.fit(model, ckpt_path=ckpt_path)
    return model, fit_trainer


def assert_same_run(reference: Recorder, ref_trainer, resumed: Recorder, res_trainer) -> None:
    """Same y after every step since the resume, same final x, same optimizer state."""
    ref_steps = {step: params_only(e) for step, e in reference.of_kind("step_end")}
    resumed_steps = resumed.of_kind("step_end")
    assert resumed_steps, "the resumed run trained"
    for step, entry in resumed_steps:
        assert_same(params_only(entry), ref_steps[step])
    assert res_trainer.global_step == ref_trainer.global_step
    assert_same(resumed.snapshot(), reference.snapshot())
    optimizer_state_equal(
        res_trainer.optimizers[0].state_dict(), ref_trainer.optimizers[0].state_dict()
    )


def epoch_checkpoint(directory: Path) -> ModelCheckpoint:
    return ModelCheckpoint(
        directory, save_top_k=-1, save_on_train_epoch_end=True, filename="{epoch}-{step}"
    )


@pytest.mark.parametrize("optimizer", ["amuse", "schedulefree"])
def test_resume_from_epoch_end_equals_uninterrupted(tmp_path, optimizer):
    reference = run(tmp_path / "a", max_epochs=3, optimizer=optimizer)
    run(
        tmp_path / "b",
        max_epochs=3,
        checkpoint=epoch_checkpoint(tmp_path / "ck"),
        fail_at={"train": 9},
        optimizer=optimizer,
    )
    ckpt = tmp_path / "ck" / "epoch=0-step=6.ckpt"
    resumed = run(tmp_path / "c", max_epochs=3, seed=123, ckpt_path=ckpt, optimizer=optimizer)
    assert resumed[0].of_kind("step_end")[0][0] == 7
    assert_same_run(*reference, *resumed)


def test_resume_from_mid_epoch_equals_uninterrupted(tmp_path):
    """Checkpoint after step 4 of a 6-step epoch; data depends on the step, not the loader."""
    reference = run(tmp_path / "a", max_epochs=2, data_by_step=True)
    every_4 = ModelCheckpoint(tmp_path / "ck", save_top_k=-1, every_n_train_steps=4)
    run(
        tmp_path / "b",
        max_epochs=2,
        checkpoint=every_4,
        fail_at={"train": 5},
        data_by_step=True,
    )
    ckpt = tmp_path / "ck" / "epoch=0-step=4.ckpt"
    resumed = run(tmp_path / "c", max_epochs=2, seed=7, ckpt_path=ckpt, data_by_step=True)
    assert resumed[0].of_kind("step_end")[0][0] == 5
    assert_same_run(*reference, *resumed)


def test_resume_from_checkpoint_written_inside_validation(tmp_path):
    """A validation-end checkpoint (save_on_train_epoch_end=False) is written right after the
    swap back; a mid-epoch one sits between two training batches."""
    reference = run(tmp_path / "a", max_epochs=2, data_by_step=True)
    on_val = ModelCheckpoint(
        tmp_path / "ck", save_top_k=-1, save_on_train_epoch_end=False, filename="{step}"
    )
    run(tmp_path / "b", max_epochs=2, checkpoint=on_val, fail_at={"train": 4}, data_by_step=True)
    resumed = run(
        tmp_path / "c", max_epochs=2, seed=5, ckpt_path=tmp_path / "ck" / "step=3.ckpt",
        data_by_step=True,
    )  # fmt: skip
    assert_same_run(*reference, *resumed)


def test_resume_from_last_checkpoint_saved_after_fit(tmp_path):
    """last.ckpt written at train end, when the module already holds x, continues exactly."""
    reference = run(tmp_path / "a", max_epochs=3)
    last = ModelCheckpoint(tmp_path / "ck", save_top_k=0, save_last=True)
    run(tmp_path / "b", max_epochs=2, checkpoint=last)
    resumed = run(tmp_path / "c", max_epochs=3, seed=3, ckpt_path=tmp_path / "ck" / "last.ckpt")
    assert resumed[0].of_kind("step_end")[0][0] == 13
    assert_same_run(*reference, *resumed)


def test_resume_from_manual_checkpoint_after_fit(tmp_path):
    reference = run(tmp_path / "a", max_epochs=2)
    _, first_trainer = run(tmp_path / "b", max_epochs=1)
    first_trainer.save_checkpoint(tmp_path / "after_fit.ckpt")
    resumed = run(tmp_path / "c", max_epochs=2, seed=3, ckpt_path=tmp_path / "after_fit.ckpt")
    assert_same_run(*reference, *resumed)


def test_resume_with_copy_on_cpu_equals_uninterrupted(tmp_path):
    """y_copy_device='cpu' changes nothing in the numbers."""
    reference = run(tmp_path / "a", max_epochs=2, amuse=AmuseCallback(y_copy_device="cpu"))
    run(
        tmp_path / "b",
        max_epochs=2,
        checkpoint=epoch_checkpoint(tmp_path / "ck"),
        amuse=AmuseCallback(y_copy_device="cpu"),
        fail_at={"train": 8},
    )
    resumed = run(
        tmp_path / "c",
        max_epochs=2,
        seed=9,
        ckpt_path=tmp_path / "ck" / "epoch=0-step=6.ckpt",
        amuse=AmuseCallback(y_copy_device="cpu"),
    )
    assert_same_run(*reference, *resumed)
    assert_same_run(*run(tmp_path / "d", max_epochs=2), *resumed)  # same numbers as "same"


def _inplace_checkpoint(tmp_path: Path, where: str) -> Path:
    """Writes a checkpoint of an inplace run after its first epoch; returns its path."""
    inplace = AmuseCallback(swap="inplace")
    if where == "epoch_end":  # written while the module holds y (the run then crashes)
        run(tmp_path, max_epochs=2, checkpoint=epoch_checkpoint(tmp_path / "ck"), amuse=inplace,
            fail_at={"train": 8})  # fmt: skip
        return tmp_path / "ck" / "epoch=0-step=6.ckpt"
    if where == "save_last":  # ModelCheckpoint at train end: the module holds x already
        last = ModelCheckpoint(tmp_path / "ck", save_top_k=0, save_last=True)
        run(tmp_path, max_epochs=1, checkpoint=last, amuse=inplace)
        return tmp_path / "ck" / "last.ckpt"
    _, first = run(tmp_path, max_epochs=1, amuse=inplace)  # trainer.save_checkpoint after fit
    first.save_checkpoint(tmp_path / "after_fit.ckpt")
    return tmp_path / "after_fit.ckpt"


@pytest.mark.parametrize(
    "where",
    ["epoch_end", "save_last", "after_fit"],
)
def test_resume_from_inplace_checkpoint_equals_uninterrupted_inplace_run(tmp_path, where):
    """swap='inplace' moves y by rounding at each evaluation; a resume must continue from the
    very y the uninterrupted inplace run continued from."""
    reference = run(tmp_path / "a", max_epochs=2, amuse=AmuseCallback(swap="inplace"))
    path = _inplace_checkpoint(tmp_path / "b", where)
    saved_y = torch.load(path, weights_only=False)["amuse"]["y"]
    assert saved_y is not None, "keep_y_in_checkpoint=True but the checkpoint has no y"
    # the y the uninterrupted run's 7th training step saw (after the inplace round trips)
    y_at_7 = next(e for k, step, e in reference[0].events if k == "train" and step == 6)
    assert_same(saved_y, params_only(y_at_7))
    resumed = run(
        tmp_path / "c", max_epochs=2, seed=9, ckpt_path=path, amuse=AmuseCallback(swap="inplace")
    )
    assert resumed[0].of_kind("step_end")[0][0] == 7
    assert_same_run(*reference, *resumed)


def test_resume_without_y_in_checkpoint_is_close(tmp_path):
    """keep_y_in_checkpoint=False: y is rebuilt from x and z (rounding-level difference)."""
    reference, _ = run(tmp_path / "a", max_epochs=2)
    run(
        tmp_path / "b",
        max_epochs=2,
        checkpoint=epoch_checkpoint(tmp_path / "ck"),
        amuse=AmuseCallback(keep_y_in_checkpoint=False),
        fail_at={"train": 8},
    )
    resumed, res_trainer = run(
        tmp_path / "c",
        max_epochs=2,
        seed=9,
        ckpt_path=tmp_path / "ck" / "epoch=0-step=6.ckpt",
        amuse=AmuseCallback(keep_y_in_checkpoint=False),
    )
    first_step, first_y = resumed.of_kind("step_end")[0]
    ref_y = dict(reference.of_kind("step_end"))[first_step]
    assert_same(params_only(first_y), params_only(ref_y), exact=False)
    assert_same(resumed.snapshot(), reference.snapshot(), exact=False)
    assert {g["train_mode"] for g in res_trainer.optimizers[0].param_groups} == {False}


def test_resume_from_checkpoint_written_without_the_callback(tmp_path):
    """A checkpoint from a plain run (y in state_dict, train mode) resumes exactly too."""
    reference = run(tmp_path / "a", max_epochs=2)
    run(
        tmp_path / "b",
        max_epochs=1,
        checkpoint=epoch_checkpoint(tmp_path / "ck"),
        use_callback=False,
    )
    checkpoint = torch.load(tmp_path / "ck" / "epoch=0-step=6.ckpt", weights_only=False)
    assert "amuse" not in checkpoint
    resumed = run(
        tmp_path / "c", max_epochs=2, seed=4, ckpt_path=tmp_path / "ck" / "epoch=0-step=6.ckpt"
    )
    assert_same_run(*reference, *resumed)


def test_resume_with_nothing_left_to_train_leaves_x_consistent(tmp_path):
    _, first_trainer = run(
        tmp_path / "b", max_epochs=1, checkpoint=epoch_checkpoint(tmp_path / "ck")
    )
    x = {n: p.detach().clone() for n, p in first_trainer.lightning_module.named_parameters()}
    again, again_trainer = run(
        tmp_path / "c", max_epochs=1, seed=2, ckpt_path=tmp_path / "ck" / "epoch=0-step=6.ckpt"
    )
    assert_same(again.snapshot(), x)
    assert {g["train_mode"] for g in again_trainer.optimizers[0].param_groups} == {False}
    again_trainer.save_checkpoint(tmp_path / "again.ckpt")
    original = torch.load(tmp_path / "ck" / "epoch=0-step=6.ckpt", weights_only=False)
    copy = torch.load(tmp_path / "again.ckpt", weights_only=False)
    assert_same(dict(copy["state_dict"]), dict(original["state_dict"]))
    assert_same(copy["amuse"]["y"], original["amuse"]["y"])
