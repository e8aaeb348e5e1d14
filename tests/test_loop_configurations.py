"""AmuseCallback across Lightning loop configurations.

Each run records the weights every hook sees (:class:`tests.callback_testkit.Recorder`) and is
checked against ``x`` computed independently from the optimizer state after each step:
``x = y + (1 - 1/beta)(z - y)`` with the ``z`` and the ``beta`` that built ``y`` read from
``optimizer.state``. Training must see ``y`` (train mode), every evaluation ``x``, and after
``fit`` the module holds ``x`` with every group in eval mode.
"""

from __future__ import annotations

import csv
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import BaseFinetuning, EarlyStopping, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from torch import nn
from torch.utils.data import DataLoader

from amuse_lightning import AMUSE, AmuseCallback
from tests.callback_testkit import (
    Recorder,
    assert_same,
    check_evaluation_sees_x,
    check_training_sees_y,
    expected_x,
    make_data,
    optimizer_state_equal,
    params_only,
    trainer,
)


def modes(run: pl.Trainer) -> set[bool]:
    return {bool(g["train_mode"]) for g in run.optimizers[0].param_groups}


def check_fit(model: Recorder, run: pl.Trainer) -> tuple[int, int]:
    """y in training, x in validation, x held after fit; returns (train, val) steps checked."""
    trained = check_training_sees_y(model)
    validated = check_evaluation_sees_x(model, "val")
    assert_same(model.snapshot(), expected_x(model.of_kind("step_end")[-1][1]))
    assert modes(run) == {False}
    return trained, validated


def val_steps(model: Recorder) -> list[int]:
    return [step for step, _ in model.of_kind("val")]


class MultiVal(Recorder):
    """One validation loader, or two as a list or as a dict."""

    def __init__(self, loaders: str = "one", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.loaders = loaders

    def val_dataloader(self) -> Any:
        if self.loaders == "one":
            return super().val_dataloader()
        loaders = [DataLoader(make_data(8, seed=s), batch_size=8) for s in (1, 5)]
        return {"a": loaders[0], "b": loaders[1]} if self.loaders == "dict" else loaders

    def optimizer_modes(self) -> set[bool]:
        return super().optimizer_modes() if self.trainer.optimizers else set()

    def validation_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> torch.Tensor:
        self.record("val", {"__modes__": self.optimizer_modes()})
        inputs, targets = batch
        loss = nn.functional.mse_loss(self(inputs), targets)
        self.log("val_loss", loss, add_dataloader_idx=True)
        return loss


# ------------------------------------------------------------------------------ fit variants
def _early_stopping() -> dict[str, Any]:
    # min_delta=1e3 never counts as progress: the second validation (step 4 of 8) stops the run
    stop = EarlyStopping("val_loss", min_delta=1e3, patience=0, check_on_train_epoch_end=False)
    return dict(callbacks=[stop], val_check_interval=0.25, max_epochs=3)


FIT_CONFIGURATIONS = {
    "early_stopping_mid_epoch": (_early_stopping, dict(n_train=64), [0, 2, 4], 4),
    "val_every_2_epochs_with_interval": (
        lambda: dict(check_val_every_n_epoch=2, val_check_interval=3, max_epochs=2),
        {},
        [0, 9, 12],
        12,
    ),
    "two_val_loaders": (lambda: dict(val_check_interval=0.5), dict(loaders="list"), None, 12),
    "dict_val_loaders": (lambda: dict(val_check_interval=0.5), dict(loaders="dict"), None, 12),
}


@pytest.mark.parametrize("name", sorted(FIT_CONFIGURATIONS))
def test_fit_configuration_sees_y_in_training_and_x_in_validation(tmp_path, name):
    options, model_kwargs, expected_val_steps, last_step = FIT_CONFIGURATIONS[name]
    kwargs = options()
    callbacks = kwargs.pop("callbacks", [])
    pl.seed_everything(0)
    model = MultiVal(**model_kwargs)
    run = trainer(tmp_path, [AmuseCallback(), *callbacks], **kwargs)
    run.fit(model)
    trained, validated = check_fit(model, run)
    assert run.global_step == trained == last_step
    if expected_val_steps is not None:
        assert sorted(set(val_steps(model))) == expected_val_steps
    else:  # both loaders at every check: sanity (1 batch each) + 2 checks x 2 epochs x 2 loaders
        assert validated == 2 + 2 * 2 * 2
        assert sorted(set(val_steps(model))) == [0, 3, 6, 9, 12]


def test_validate_before_fit_then_fit_is_unchanged(tmp_path):
    """validate() before any optimizer exists evaluates the weights as they are; the fit after it
    on the same Trainer equals a fit without it."""
    pl.seed_everything(0)
    model = MultiVal()
    initial = model.snapshot()
    run = trainer(tmp_path, [AmuseCallback()], max_epochs=1, val_check_interval=0.5)
    run.validate(model)
    assert len(model.of_kind("val")) == 2
    for _, entry in model.of_kind("val"):
        assert_same(params_only(entry), initial)
    model.events.clear()
    run.fit(model)
    assert check_fit(model, run) == (6, 5)

    pl.seed_everything(0)
    alone = Recorder()
    trainer(tmp_path / "alone", [AmuseCallback()], max_epochs=1, val_check_interval=0.5).fit(alone)
    assert_same(model.snapshot(), alone.snapshot())


@pytest.mark.parametrize("which", ["best", "last"])
def test_validate_test_predict_with_ckpt_path_see_the_checkpoints_x(tmp_path, which):
    pl.seed_everything(0)
    model = Recorder()
    best = ModelCheckpoint(tmp_path / "ck", monitor="val_loss", save_top_k=1, save_last=True)
    run = trainer(
        tmp_path, [AmuseCallback(), best], max_epochs=2, val_check_interval=0.5,
        enable_checkpointing=True,
    )  # fmt: skip
    run.fit(model)
    path = best.best_model_path if which == "best" else best.last_model_path
    step = torch.load(path, weights_only=False)["global_step"]
    x = expected_x(model.y_at_step(step))
    for stage, kind in (("validate", "val"), ("test", "test"), ("predict", "predict")):
        seen = len(model.of_kind(kind))
        getattr(run, stage)(model, ckpt_path=which)
        entries = model.of_kind(kind)[seen:]
        assert len(entries) == 2, stage
        for _, entry in entries:
            assert_same(params_only(entry), x)
        assert_same(model.snapshot(), x)  # the loaded x stays, nothing converts it


def test_fit_with_ckpt_path_last_equals_uninterrupted(tmp_path):
    pl.seed_everything(0)
    reference = Recorder()
    ref_run = trainer(tmp_path / "a", [AmuseCallback()], max_epochs=2, val_check_interval=0.5)
    ref_run.fit(reference)

    def resumable(max_epochs: int, seed: int) -> tuple[Recorder, pl.Trainer]:
        pl.seed_everything(seed)
        model = Recorder()
        last = ModelCheckpoint(tmp_path / "ck", save_top_k=0, save_last=True)
        run = trainer(
            tmp_path / "b", [AmuseCallback(), last], max_epochs=max_epochs,
            val_check_interval=0.5, enable_checkpointing=True,
        )  # fmt: skip
        run.fit(model, ckpt_path="last" if max_epochs == 2 else None)
        return model, run

    resumable(1, seed=0)
    resumed, res_run = resumable(2, seed=5)
    assert resumed.of_kind("step_end")[0][0] == 7
    ref_steps = dict(reference.of_kind("step_end"))
    for step, entry in resumed.of_kind("step_end"):
        assert_same(params_only(entry), params_only(ref_steps[step]))
    # the resumed run's sanity check sees the checkpoint's x (its state_dict), later ones their x
    assert check_evaluation_sees_x(resumed, "val") == 1 + 2 * 2
    assert_same(resumed.snapshot(), reference.snapshot())
    assert modes(res_run) == {False}
    optimizer_state_equal(res_run.optimizers[0].state_dict(), ref_run.optimizers[0].state_dict())


def test_torch_compile(tmp_path):
    """A compiled module (eager backend: no C++ toolchain needed) trains on y, validates on x."""
    pl.seed_everything(0)
    model = Recorder()
    run = trainer(tmp_path, [AmuseCallback()], max_epochs=1, val_check_interval=0.5)
    run.fit(torch.compile(model, backend="eager"))
    assert check_fit(model, run) == (6, 5)


class Interrupted(Recorder):
    def validation_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        loss = super().validation_step(batch, batch_idx)
        if self.trainer.global_step == 3:
            raise KeyboardInterrupt
        return loss


def test_keyboard_interrupt_in_validation_leaves_y_and_train_mode(tmp_path):
    pl.seed_everything(0)
    model = Interrupted()
    run = trainer(tmp_path, [AmuseCallback()], max_epochs=2, val_check_interval=0.5)
    handler = signal.getsignal(signal.SIGINT)
    try:
        with pytest.raises(SystemExit):  # Lightning's graceful shutdown ends in sys.exit(1)
            run.fit(model)
    finally:
        signal.signal(signal.SIGINT, handler)  # Lightning ignores SIGINT after an interrupt
    assert check_evaluation_sees_x(model, "val") == 2  # sanity check, then step 3
    assert check_training_sees_y(model) == 3
    assert_same(model.snapshot(), params_only(model.y_at_step(3)))
    assert modes(run) == {True}
    run.test(model)  # the interrupted fit's optimizer still converts: test sees x
    assert_same(params_only(model.of_kind("test")[-1][1]), expected_x(model.y_at_step(3)))


def test_log_every_n_steps_logs_the_schedule_of_the_logged_steps(tmp_path):
    pl.seed_everything(0)
    model = Recorder()
    logger = CSVLogger(tmp_path, name="csv")
    run = trainer(
        tmp_path, [AmuseCallback()], logger=logger, log_every_n_steps=4, max_epochs=2,
        val_check_interval=0.5,
    )  # fmt: skip
    run.fit(model)
    check_fit(model, run)
    with open(Path(logger.log_dir) / "metrics.csv") as handle:
        rows = [r for r in csv.DictReader(handle) if r.get("amuse/beta_t/group0")]
    # logged after optimizer steps 4, 8, 12 (Lightning's logged step is the step count - 1)
    assert [int(r["step"]) for r in rows] == [3, 7, 11]
    first_matrix = "z:net.0.weight"
    for row in rows:
        step = int(row["step"]) + 1
        beta = model.y_at_step(step)[first_matrix.replace("z:", "beta:")]
        assert float(row["amuse/beta_t/group0"]) == pytest.approx(beta, rel=1e-6)


@pytest.mark.slow
@pytest.mark.xdist_group("multiprocess")
def test_fsdp2_resume_stays_within_rounding_of_the_uninterrupted_run(tmp_path):
    """FSDP2 checkpoints carry no y (its shards cannot travel in rank 0's metadata), so a resume
    rebuilds y from x and z: equal to the uninterrupted run up to rounding, stated here as
    atol=1e-6 on weights of size ~0.5 (measured: about 1e-7 after three more steps)."""
    script = Path(__file__).with_name("fsdp2_resume_run.py")
    done = subprocess.run(
        [sys.executable, str(script), str(tmp_path)], capture_output=True, text=True, timeout=480
    )
    assert done.returncode == 0, done.stderr[-3000:]
    for rank in (0, 1):
        runs = torch.load(tmp_path / f"rank{rank}.pt", weights_only=False)
        (reference_ys, reference_x), (resumed_ys, resumed_x) = runs["reference"], runs["resumed"]
        assert sorted(reference_ys) == [1, 2, 3, 4, 5, 6] and sorted(resumed_ys) == [4, 5, 6]
        for step, ys in resumed_ys.items():
            for a, b in zip(ys, reference_ys[step], strict=True):
                torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
        for a, b in zip(resumed_x, reference_x, strict=True):
            torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
        # and the comparison can fail: x and y of a step differ by far more than that
        gaps = [
            (a - b).abs().max().item() for a, b in zip(reference_x, reference_ys[6], strict=True)
        ]
        assert max(gaps) > 1e-3


# ------------------------------------------------------------------------------ issue 12 gaps
def test_second_amuse_callback_is_refused_at_setup_naming_which_to_keep(tmp_path):
    model = Recorder()
    before = model.snapshot()
    run = trainer(
        tmp_path, [AmuseCallback(), AmuseCallback(bn_recalibration_batches=5)], max_epochs=1
    )
    with pytest.raises(
        MisconfigurationException,
        match=r"(?s)2 AmuseCallback.*keep only one.*"
        r"here AmuseCallback\(bn_recalibration_batches=5\)",
    ):
        run.fit(model)
    assert not model.events  # refused before anything ran
    assert_same(model.snapshot(), before)


class GrowsAtValidationEnd(Recorder):
    """Starts with the last layer frozen and outside the optimizer; the first fit-time
    validation after a step adds it as a new param group (the optimizer is in eval mode then)."""

    def configure_optimizers(self) -> torch.optim.Optimizer:
        head = self.net[-1]
        for p in head.parameters():
            p.requires_grad_(False)
        body = [p for p in self.parameters() if p.requires_grad]
        matrices = [p for p in body if p.ndim >= 2]
        others = [p for p in body if p.ndim < 2]
        groups = [{"params": matrices, "use_muon": True}, {"params": others, "use_muon": False}]
        return AMUSE(groups, lr=0.05, warmup_steps=2, rho=0.5, ns_dtype=torch.float32)

    def on_validation_epoch_end(self) -> None:
        head = list(self.net[-1].parameters())
        if self.trainer.global_step > 0 and not head[0].requires_grad:
            for p in head:
                p.requires_grad_(True)
            self.trainer.optimizers[0].add_param_group({"params": head, "use_muon": False})
            self.trainer.save_checkpoint(Path(self.trainer.default_root_dir) / "grown.ckpt")


def test_param_group_added_during_validation_joins_the_swap(tmp_path):
    pl.seed_everything(0)
    model = GrowsAtValidationEnd()
    run = trainer(tmp_path, [AmuseCallback()], max_epochs=2, val_check_interval=0.5)
    run.fit(model)
    assert len(run.optimizers[0].param_groups) == 3
    check_fit(model, run)
    head = model.y_at_step(run.global_step)
    assert "z:net.4.weight" in head  # the new group trained, with its own z
    # the checkpoint written right after the group was added: x, and a y for every parameter
    # (the new ones never stepped: their y is their value)
    grown = torch.load(tmp_path / "grown.ckpt", weights_only=False)
    entry = model.y_at_step(grown["global_step"])
    assert_same(dict(grown["state_dict"]), expected_x(entry))
    assert_same(grown["amuse"]["y"], params_only(entry))


class FinetuneHead(BaseFinetuning):
    """Freezes the first layer, then unfreezes it into the optimizer at epoch 1."""

    def freeze_before_training(self, pl_module: pl.LightningModule) -> None:
        self.freeze(pl_module.net[0])

    def finetune_function(self, pl_module, current_epoch, optimizer) -> None:
        if current_epoch == 1:
            self.unfreeze_and_add_param_group(pl_module.net[0], optimizer, train_bn=True)


class FrozenStart(Recorder):
    def configure_optimizers(self) -> torch.optim.Optimizer:
        import schedulefree

        trainable = [p for p in self.parameters() if p.requires_grad]
        return schedulefree.AdamWScheduleFree(trainable, lr=0.05, warmup_steps=2)


def test_base_finetuning_with_adamw_schedulefree(tmp_path):
    """AdamWScheduleFree gives the unfrozen group train_mode=False while training runs."""
    pl.seed_everything(0)
    model = FrozenStart(optimizer="schedulefree")
    run = trainer(tmp_path, [AmuseCallback(), FinetuneHead()], max_epochs=2, val_check_interval=0.5)
    run.fit(model)
    assert len(run.optimizers[0].param_groups) == 2
    check_fit(model, run)
    assert "z:net.0.weight" in model.y_at_step(run.global_step)
