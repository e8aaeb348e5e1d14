"""AmuseCallback checkpoints: every save path writes x into checkpoint["state_dict"]."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint, OnExceptionCheckpoint

from amuse_lightning import AmuseCallback
from tests.callback_testkit import (
    Recorder,
    assert_same,
    differs,
    expected_x,
    params_only,
    trainer,
)


class Saver(Recorder):
    """Calls ``trainer.save_checkpoint`` itself at planned ``(hook, step)`` points."""

    def __init__(self, plan: dict[tuple[str, int], tuple[str, bool]] | None = None, **kwargs):
        super().__init__(**kwargs)
        self.plan = dict(plan or {})

    def _save_if_planned(self, hook: str) -> None:
        planned = self.plan.pop((hook, self.trainer.global_step), None)
        if planned is not None:
            path, weights_only = planned
            self.trainer.save_checkpoint(path, weights_only=weights_only)

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        super().on_train_batch_end(outputs, batch, batch_idx)
        self._save_if_planned("train")

    def validation_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        loss = super().validation_step(batch, batch_idx)
        if batch_idx == 0:
            self._save_if_planned("val")
        return loss


def check_checkpoint(path: Path, model: Recorder, full: bool = True) -> dict[str, Any]:
    """state_dict == x of the y and z the run had at the checkpoint's step; y stored exactly."""
    checkpoint = torch.load(path, weights_only=False)
    entry = model.y_at_step(checkpoint["global_step"])
    x = expected_x(entry)
    assert_same(dict(checkpoint["state_dict"]), x)
    loaded = type(model).load_from_checkpoint(path)
    assert_same({n: p.detach() for n, p in loaded.named_parameters()}, x)
    if full:
        assert_same(checkpoint["amuse"]["y"], params_only(entry))
        assert "optimizer_states" in checkpoint
    else:
        assert "amuse" not in checkpoint and "optimizer_states" not in checkpoint
    return checkpoint


def fit(tmp_path: Path, model: Recorder, callbacks: list, **kwargs: Any) -> pl.Trainer:
    pl.seed_everything(0)
    run = trainer(tmp_path, [AmuseCallback(), *callbacks], enable_checkpointing=True, **kwargs)
    run.fit(model)
    return run


def saved(directory: Path) -> list[Path]:
    return sorted(directory.glob("*.ckpt"))


def test_epoch_end_checkpoints_hold_x(tmp_path):
    model = Recorder()
    every_epoch = ModelCheckpoint(tmp_path / "ck", save_top_k=-1, save_on_train_epoch_end=True)
    fit(tmp_path, model, [every_epoch], max_epochs=2, val_check_interval=0.5)
    paths = saved(tmp_path / "ck")
    assert len(paths) == 2
    steps = [check_checkpoint(p, model)["global_step"] for p in paths]
    assert sorted(steps) == [6, 12]


def test_every_n_train_steps_checkpoints_hold_x(tmp_path):
    model = Recorder()
    every_2 = ModelCheckpoint(tmp_path / "ck", save_top_k=-1, every_n_train_steps=2)
    fit(tmp_path, model, [every_2], max_epochs=1, val_check_interval=0.5)
    steps = sorted(check_checkpoint(p, model)["global_step"] for p in saved(tmp_path / "ck"))
    assert steps == [2, 4, 6]


def test_validation_end_checkpoints_hold_x(tmp_path):
    model = Recorder()
    on_val = ModelCheckpoint(
        tmp_path / "ck", save_top_k=-1, save_on_train_epoch_end=False, filename="{step}"
    )
    fit(tmp_path, model, [on_val], max_epochs=1, val_check_interval=0.5)
    steps = sorted(check_checkpoint(p, model)["global_step"] for p in saved(tmp_path / "ck"))
    assert steps == [3, 6]


def test_monitored_top_k_checkpoint_holds_x(tmp_path):
    model = Recorder()
    best = ModelCheckpoint(tmp_path / "ck", monitor="val_loss", save_top_k=1, save_last=True)
    fit(tmp_path, model, [best], max_epochs=2)
    assert best.best_model_path
    check_checkpoint(Path(best.best_model_path), model)
    check_checkpoint(tmp_path / "ck" / "last.ckpt", model)


def test_save_last_at_train_end_holds_x_and_exact_y(tmp_path):
    """Only on_train_end saves here, when the module already holds x (y comes from the copy)."""
    model = Recorder()
    last_only = ModelCheckpoint(tmp_path / "ck", save_top_k=0, save_last=True)
    fit(tmp_path, model, [last_only], max_epochs=1)
    assert [p.name for p in saved(tmp_path / "ck")] == ["last.ckpt"]
    checkpoint = check_checkpoint(tmp_path / "ck" / "last.ckpt", model)
    assert checkpoint["global_step"] == 6


@pytest.mark.parametrize("failing_hook", ["train", "val"])
def test_on_exception_checkpoint_holds_x(tmp_path, failing_hook):
    model = Recorder(fail_at={failing_hook: 3})
    on_exception = OnExceptionCheckpoint(tmp_path / "ck")
    with pytest.raises(RuntimeError, match="planned failure"):
        fit(tmp_path, model, [on_exception], max_epochs=2, val_check_interval=0.5)
    checkpoint = check_checkpoint(tmp_path / "ck" / "on_exception.ckpt", model)
    assert checkpoint["global_step"] == 3


def test_model_checkpoint_save_on_exception_holds_x(tmp_path):
    model = Recorder(fail_at={"train": 4})
    on_exception = ModelCheckpoint(tmp_path / "ck", save_top_k=0, save_on_exception=True)
    with pytest.raises(RuntimeError, match="planned failure"):
        fit(tmp_path, model, [on_exception], max_epochs=1)
    paths = saved(tmp_path / "ck")
    assert paths
    for path in paths:
        check_checkpoint(path, model)


def test_manual_save_checkpoint_during_training_validation_and_after_fit(tmp_path):
    plan = {
        ("train", 2): (str(tmp_path / "train_step2.ckpt"), False),
        ("val", 3): (str(tmp_path / "inside_validation.ckpt"), False),
        ("train", 4): (str(tmp_path / "weights_step4.ckpt"), True),
        ("val", 6): (str(tmp_path / "weights_in_validation.ckpt"), True),
    }
    model = Saver(plan)
    run = fit(tmp_path, model, [], max_epochs=1, val_check_interval=0.5)
    assert not model.plan, "every planned save ran"
    check_checkpoint(tmp_path / "train_step2.ckpt", model)
    check_checkpoint(tmp_path / "inside_validation.ckpt", model)
    check_checkpoint(tmp_path / "weights_step4.ckpt", model, full=False)
    check_checkpoint(tmp_path / "weights_in_validation.ckpt", model, full=False)
    run.save_checkpoint(tmp_path / "after_fit.ckpt")
    run.save_checkpoint(tmp_path / "after_fit_weights.ckpt", weights_only=True)
    check_checkpoint(tmp_path / "after_fit.ckpt", model)
    check_checkpoint(tmp_path / "after_fit_weights.ckpt", model, full=False)


def test_save_weights_only_model_checkpoint_holds_x(tmp_path):
    model = Recorder()
    weights = ModelCheckpoint(
        tmp_path / "ck", save_top_k=-1, every_n_train_steps=2, save_weights_only=True
    )
    fit(tmp_path, model, [weights], max_epochs=1, val_check_interval=0.5)
    steps = sorted(
        check_checkpoint(p, model, full=False)["global_step"] for p in saved(tmp_path / "ck")
    )
    assert steps == [2, 4, 6]


def test_module_save_hook_is_removed_after_fit(tmp_path):
    model = Recorder()
    fit(tmp_path, model, [], max_epochs=1)
    assert "on_save_checkpoint" not in model.__dict__


def test_users_on_save_checkpoint_sees_x_with_weights_only(tmp_path):
    class Inspector(Saver):
        def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
            self.seen[checkpoint["global_step"]] = {
                k: v.clone() for k, v in checkpoint["state_dict"].items()
            }

    model = Inspector({("train", 3): (str(tmp_path / "w.ckpt"), True)})
    model.seen = {}
    fit(tmp_path, model, [], max_epochs=1, num_sanity_val_steps=0)
    assert_same(model.seen[3], expected_x(model.y_at_step(3)))


@pytest.mark.parametrize("swap", ["copy", "inplace"])
def test_saving_checkpoints_does_not_change_training(tmp_path, swap):
    """Checkpoints use an exact temporary copy even with swap='inplace'."""
    runs = []
    for save in (False, True):
        pl.seed_everything(0)
        model = Recorder()
        callbacks = [ModelCheckpoint(tmp_path / f"ck{save}", save_top_k=-1, every_n_train_steps=1)]
        trainer(
            tmp_path,
            [AmuseCallback(swap=swap), *(callbacks if save else [])],
            enable_checkpointing=save,
            max_epochs=2,
            limit_val_batches=0,
        ).fit(model)
        runs.append(model)
    assert len(saved(tmp_path / "ckTrue")) == 12
    assert_same(runs[0].snapshot(), runs[1].snapshot())
    without, with_saves = (run.of_kind("step_end") for run in runs)
    for (_, a), (_, b) in zip(without, with_saves, strict=True):
        assert_same(params_only(a), params_only(b))
    assert differs(runs[1].snapshot(), params_only(runs[1].of_kind("step_end")[-1][1]))


def test_keep_y_false_stores_no_y(tmp_path):
    model = Recorder()
    pl.seed_everything(0)
    run = trainer(tmp_path, [AmuseCallback(keep_y_in_checkpoint=False)], max_epochs=1)
    run.fit(model)
    run.save_checkpoint(tmp_path / "no_y.ckpt")
    checkpoint = torch.load(tmp_path / "no_y.ckpt", weights_only=False)
    assert checkpoint["amuse"]["y"] is None
    assert_same(dict(checkpoint["state_dict"]), expected_x(model.y_at_step(6)))


def test_test_with_ckpt_path_uses_its_x_and_forgets_the_old_y(tmp_path):
    model = Recorder()
    epoch_end = ModelCheckpoint(tmp_path / "ck", save_top_k=-1, save_on_train_epoch_end=True)
    run = fit(tmp_path, model, [epoch_end], max_epochs=2)
    first = sorted(saved(tmp_path / "ck"))[0]
    x_first = expected_x(model.y_at_step(torch.load(first, weights_only=False)["global_step"]))
    run.test(model, ckpt_path=first)
    assert_same(params_only(model.of_kind("test")[-1][1]), x_first)
    run.save_checkpoint(tmp_path / "after_test.ckpt")
    checkpoint = torch.load(tmp_path / "after_test.ckpt", weights_only=False)
    assert_same(dict(checkpoint["state_dict"]), x_first)
    assert "amuse" not in checkpoint  # the final y does not belong to the loaded x
