"""AmuseCallback swap: training sees y, every evaluation sees x, y comes back bit for bit."""

from __future__ import annotations

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.demos.boring_classes import BoringModel

from amuse_lightning import AmuseCallback, AmuseMixin, default_amuse_factory
from amuse_lightning.lightning.callback import WeightSwap
from tests.callback_testkit import (
    Recorder,
    assert_same,
    check_evaluation_sees_x,
    check_training_sees_y,
    differs,
    expected_x,
    make_optimizer,
    params_only,
    step_batch,
    trainer,
)

OPTIMIZERS = ["amuse", "schedulefree"]


@pytest.mark.parametrize("optimizer", OPTIMIZERS)
@pytest.mark.parametrize("copy_device", ["same", "cpu"])
def test_training_sees_y_and_validation_sees_x(tmp_path, optimizer, copy_device):
    pl.seed_everything(0)
    model = Recorder(optimizer=optimizer)
    callback = AmuseCallback(y_copy_device=copy_device)
    trainer(tmp_path, [callback], max_epochs=2, val_check_interval=0.5).fit(model)

    assert check_training_sees_y(model) == 12
    # sanity check (1 batch) + 2 validations per epoch of 2 batches each
    assert check_evaluation_sees_x(model, "val") == 9
    vals = [(step, entry) for step, entry in model.of_kind("val")]
    assert all(entry["__modes__"] == {False} for _, entry in vals)
    # the test is only meaningful if x and y really differ during training
    last_val = next(i for i in reversed(range(len(model.events))) if model.events[i][0] == "val")
    seen, y_then = model.events[last_val][2], model.last_y_before(last_val)
    assert differs(params_only(seen), params_only(y_then))


@pytest.mark.parametrize("optimizer", OPTIMIZERS)
def test_after_fit_module_holds_x_and_test_predict_see_it(tmp_path, optimizer):
    pl.seed_everything(0)
    model = Recorder(optimizer=optimizer)
    callback = AmuseCallback()
    fit_trainer = trainer(tmp_path, [callback], max_epochs=1)
    fit_trainer.fit(model)

    final_x = expected_x(model.of_kind("step_end")[-1][1])
    assert_same(model.snapshot(), final_x)
    opt = fit_trainer.optimizers[0]
    assert {g["train_mode"] for g in opt.param_groups} == {False}

    fit_trainer.test(model)
    fit_trainer.predict(model)
    fit_trainer.validate(model)
    for kind in ("test", "predict", "val"):
        assert_same(params_only(model.of_kind(kind)[-1][1]), final_x)
    # no double conversion: still x, still eval mode
    assert_same(model.snapshot(), final_x)
    assert {g["train_mode"] for g in opt.param_groups} == {False}


def test_training_sees_y_with_gradient_accumulation(tmp_path):
    pl.seed_everything(0)
    model = Recorder()
    # validation every 3 batches falls inside an accumulation window of 2
    trainer(
        tmp_path, [AmuseCallback()], max_epochs=1, accumulate_grad_batches=2, val_check_interval=3
    ).fit(model)
    assert check_training_sees_y(model) == 6
    assert check_evaluation_sees_x(model, "val") == 5
    assert model.trainer.global_step == 3


def test_training_sees_y_with_bf16_mixed(tmp_path):
    pl.seed_everything(0)
    model = Recorder()
    trainer(
        tmp_path, [AmuseCallback()], max_epochs=1, precision="bf16-mixed", val_check_interval=0.5
    ).fit(model)
    assert check_training_sees_y(model) == 6
    assert check_evaluation_sees_x(model, "val") == 5
    assert all(p.dtype == torch.float32 for p in model.parameters())


def test_inplace_swap_sees_x_and_y_in_train_mode(tmp_path):
    pl.seed_everything(0)
    model = Recorder()
    trainer(tmp_path, [AmuseCallback(swap="inplace")], max_epochs=1, val_check_interval=0.5).fit(
        model
    )
    # in place, y after an evaluation equals the old y only up to rounding
    for index, (kind, _, entry) in enumerate(model.events):
        if kind == "train":
            assert entry["__modes__"] == {True}
            assert_same(params_only(entry), params_only(model.last_y_before(index)), exact=False)
    assert check_evaluation_sees_x(model, "val") == 5


class ManualRecorder(Recorder):
    def __init__(self) -> None:
        super().__init__()
        self.automatic_optimization = False

    def training_step(self, batch, batch_idx):
        optimizer = self.optimizers()
        loss = super().training_step(batch, batch_idx)
        optimizer.zero_grad()
        self.manual_backward(loss)
        optimizer.step()
        return loss


def test_manual_optimization_is_supported(tmp_path):
    pl.seed_everything(0)
    model = ManualRecorder()
    trainer(tmp_path, [AmuseCallback()], max_epochs=1, val_check_interval=0.5).fit(model)
    assert check_training_sees_y(model) == 6
    assert check_evaluation_sees_x(model, "val") == 5
    assert_same(model.snapshot(), expected_x(model.of_kind("step_end")[-1][1]))


def make_stepped(optimizer_kind: str, steps: int = 5) -> tuple[Recorder, torch.optim.Optimizer]:
    torch.manual_seed(0)
    model = Recorder(record=False)
    optimizer = make_optimizer(model, optimizer_kind, lr=0.05)
    if hasattr(optimizer, "train"):
        optimizer.train()
    for step in range(steps):
        inputs, targets = step_batch(step)
        optimizer.zero_grad()
        torch.nn.functional.mse_loss(model(inputs), targets).backward()
        optimizer.step()
    return model, optimizer


@pytest.mark.parametrize("optimizer_kind", OPTIMIZERS)
@pytest.mark.parametrize("copy_device", ["same", "cpu"])
def test_ten_thousand_exact_swaps_leave_y_unchanged(optimizer_kind, copy_device):
    model, optimizer = make_stepped(optimizer_kind)
    y = model.snapshot()
    swap = WeightSwap(optimizer, exact=True, copy_device=copy_device)
    for _ in range(10_000):
        assert swap.to_x()
        assert swap.to_y()
    assert_same(model.snapshot(), y)
    assert {g["train_mode"] for g in optimizer.param_groups} == {True}
    # and x really differed from y
    swap.to_x()
    assert differs(model.snapshot(), y)
    swap.to_y()


def test_exact_swap_works_across_inference_mode():
    """The y copy is allocated outside inference_mode, so it can be refilled later anywhere."""
    model, optimizer = make_stepped("amuse")
    y = model.snapshot()
    swap = WeightSwap(optimizer)
    with torch.inference_mode():
        swap.to_x()
        swap.to_y()
    swap.to_x()  # refills the same buffers outside inference mode
    x = model.snapshot()
    swap.to_y()
    assert_same(model.snapshot(), y)
    with torch.inference_mode():
        swap.to_x()
    assert_same(model.snapshot(), x)
    swap.to_y()
    assert_same(model.snapshot(), y)


def test_inplace_round_trip_drifts_but_stays_close():
    model, optimizer = make_stepped("amuse")
    y = model.snapshot()
    swap = WeightSwap(optimizer, exact=False)
    for _ in range(50):
        swap.to_x()
        swap.to_y()
    assert_same(model.snapshot(), y, exact=False)


def test_to_x_and_to_y_are_idempotent():
    model, optimizer = make_stepped("amuse")
    y = model.snapshot()
    swap = WeightSwap(optimizer)
    assert swap.to_x() and not swap.to_x()
    assert swap.holds_x
    assert swap.to_y() and not swap.to_y()
    assert_same(model.snapshot(), y)


@pytest.mark.parametrize("swap_mode", ["copy", "inplace"])
def test_exception_in_validation_leaves_y_and_train_mode(tmp_path, swap_mode):
    pl.seed_everything(0)
    model = Recorder(fail_at={"val": 3})
    fit_trainer = trainer(
        tmp_path, [AmuseCallback(swap=swap_mode)], max_epochs=2, val_check_interval=0.5
    )
    with pytest.raises(RuntimeError, match="planned failure in val"):
        fit_trainer.fit(model)
    y = params_only(model.y_at_step(3))
    assert_same(model.snapshot(), y, exact=swap_mode == "copy")
    assert {g["train_mode"] for g in fit_trainer.optimizers[0].param_groups} == {True}


def test_exception_in_test_and_predict_after_fit_keeps_x_consistent(tmp_path):
    pl.seed_everything(0)
    model = Recorder()
    fit_trainer = trainer(tmp_path, [AmuseCallback()], max_epochs=1)
    fit_trainer.fit(model)
    x = model.snapshot()
    model.fail_at = {"test": fit_trainer.global_step}
    with pytest.raises(RuntimeError, match="planned failure in test"):
        fit_trainer.test(model)
    assert_same(model.snapshot(), x)
    assert {g["train_mode"] for g in fit_trainer.optimizers[0].param_groups} == {False}


def test_standalone_test_after_interrupted_fit_sees_x_then_gets_y_back(tmp_path):
    """A fit that crashed leaves y (train mode); test() then shows x and puts y back."""
    pl.seed_everything(0)
    model = Recorder(fail_at={"train": 4})
    fit_trainer = trainer(tmp_path, [AmuseCallback()], max_epochs=1, num_sanity_val_steps=0)
    with pytest.raises(RuntimeError, match="planned failure in train"):
        fit_trainer.fit(model)
    y = params_only(model.y_at_step(4))
    assert_same(model.snapshot(), y)

    model.fail_at = {"test": 4}
    with pytest.raises(RuntimeError, match="planned failure in test"):
        fit_trainer.test(model)
    assert_same(model.snapshot(), y)

    fit_trainer.test(model)
    assert_same(params_only(model.of_kind("test")[-1][1]), expected_x(model.y_at_step(4)))
    assert_same(model.snapshot(), y)
    assert {g["train_mode"] for g in fit_trainer.optimizers[0].param_groups} == {True}


class OptimizerModeMeddler(Recorder):
    """Follows an old Schedule-Free recipe: calls optimizer.eval() itself at epoch end."""

    def on_train_epoch_end(self) -> None:
        self.optimizers().optimizer.eval()


def test_manual_eval_call_is_repaired_before_the_next_training_batch(tmp_path):
    pl.seed_everything(0)
    model = OptimizerModeMeddler()
    with pytest.warns(UserWarning, match="something called optimizer.eval"):
        trainer(tmp_path, [AmuseCallback()], max_epochs=2, num_sanity_val_steps=0).fit(model)
    for kind, _, entry in model.events:
        if kind == "train":
            assert entry["__modes__"] == {True}


def test_fresh_trainer_without_optimizer_evaluates_weights_as_they_are(tmp_path):
    model = BoringModel()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainer(tmp_path, [AmuseCallback()]).test(model)
    assert_same({n: p.detach() for n, p in model.named_parameters()}, before)


class MixinRecorder(AmuseMixin, Recorder):
    """The partition-driven configure_optimizers of AmuseMixin instead of the test's own."""

    optimizer = default_amuse_factory(lr=0.05, warmup_steps=2, ns_dtype=torch.float32)


def test_with_amuse_mixin(tmp_path, recwarn):
    pl.seed_everything(0)
    model = MixinRecorder()
    trainer(tmp_path, [AmuseCallback()], max_epochs=1, val_check_interval=0.5).fit(model)
    assert check_training_sees_y(model) == 6
    assert check_evaluation_sees_x(model, "val") == 5
    assert_same(model.snapshot(), expected_x(model.of_kind("step_end")[-1][1]))
    assert not [w for w in recwarn if "no AmuseCallback" in str(w.message)]


def test_public_names_resolve_to_the_lightning_layer():
    import amuse_lightning
    import amuse_lightning.lightning as layer
    from amuse_lightning.lightning import callback, factories, mixin

    assert amuse_lightning.AmuseCallback is layer.AmuseCallback is callback.AmuseCallback
    assert amuse_lightning.AmuseMixin is layer.AmuseMixin is mixin.AmuseMixin
    assert layer.default_amuse_factory is factories.default_amuse_factory
    assert amuse_lightning.default_amuse_factory(lr=0.1).kwargs == {"lr": 0.1}
    with pytest.raises(AttributeError, match="no attribute 'AmuseCallbak'"):
        layer.AmuseCallbak  # noqa: B018
