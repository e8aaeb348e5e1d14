"""AmuseCallback setup errors: each names what to change, and nothing is left half-swapped."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from lightning.pytorch.strategies import (
    DDPStrategy,
    FSDPStrategy,
    ModelParallelStrategy,
    SingleDeviceStrategy,
)
from lightning.pytorch.utilities.exceptions import MisconfigurationException

from amuse_lightning import AmuseCallback
from amuse_lightning.lightning.checks import check_strategy
from amuse_lightning.lightning.sharded import check_fsdp2_params
from tests.callback_testkit import Recorder, make_optimizer, trainer


class TwoOptimizers(Recorder):
    def __init__(self) -> None:
        super().__init__()
        self.automatic_optimization = False

    def configure_optimizers(self):
        return [make_optimizer(self, "amuse", 0.05), torch.optim.SGD(self.parameters(), lr=0.1)]

    def training_step(self, batch, batch_idx):
        return None


def test_second_optimizer_is_refused(tmp_path):
    with pytest.raises(MisconfigurationException, match="exactly one optimizer, got 2"):
        trainer(tmp_path, [AmuseCallback()]).fit(TwoOptimizers())


class WithScheduler(Recorder):
    def configure_optimizers(self):
        optimizer = make_optimizer(self, "amuse", 0.05)
        scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=2)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step"},
        }


def test_lr_scheduler_is_refused_with_the_fix_named(tmp_path):
    with pytest.raises(MisconfigurationException, match="allow_lr_scheduler=True") as info:
        trainer(tmp_path, [AmuseCallback()]).fit(WithScheduler())
    assert "StepLR" in str(info.value) and "warmup" in str(info.value)


def test_lr_scheduler_allowed_on_request(tmp_path):
    model = WithScheduler()
    trainer(tmp_path, [AmuseCallback(allow_lr_scheduler=True)], max_epochs=1).fit(model)
    # 6 steps, decayed every 2
    assert model.trainer.optimizers[0].param_groups[0]["lr"] == pytest.approx(0.05 * 0.1**3)


class PlainSGD(Recorder):
    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_optimizer_without_train_eval_is_refused(tmp_path):
    with pytest.raises(MisconfigurationException, match="schedule-free optimizer") as info:
        trainer(tmp_path, [AmuseCallback()]).fit(PlainSGD())
    assert "AMUSE" in str(info.value) and "SGD" in str(info.value)


def test_module_without_trainable_parameters_is_refused(tmp_path):
    model = Recorder()
    model.requires_grad_(False)
    with pytest.raises(MisconfigurationException, match="no trainable parameters"):
        trainer(tmp_path, [AmuseCallback()]).fit(model)


def test_fsdp_is_refused_naming_the_supported_strategies():
    with pytest.raises(MisconfigurationException, match="FSDPStrategy") as info:
        check_strategy(FSDPStrategy())
    assert "strategy='ddp'" in str(info.value) and "single device" in str(info.value)


def test_deepspeed_is_refused():
    class DeepSpeedStrategy(DDPStrategy):  # stands in for lightning's (needs deepspeed)
        pass

    with pytest.raises(MisconfigurationException, match="DeepSpeed"):
        check_strategy(DeepSpeedStrategy())


def test_strategy_checked_at_setup_before_anything_else():
    callback = AmuseCallback()
    fake_trainer = SimpleNamespace(strategy=FSDPStrategy())
    with pytest.raises(MisconfigurationException, match="does not support"):
        callback.setup(fake_trainer, Recorder(), "fit")


def test_single_device_ddp_and_model_parallel_are_accepted():
    check_strategy(SingleDeviceStrategy(device=torch.device("cpu")))
    check_strategy(DDPStrategy())
    check_strategy(ModelParallelStrategy())


def test_model_parallel_without_fully_shard_is_refused_naming_the_fix():
    with pytest.raises(MisconfigurationException, match="1 optimised tensor") as info:
        check_fsdp2_params([torch.nn.Parameter(torch.zeros(2, 2))])
    assert "fully_shard" in str(info.value) and "configure_model" in str(info.value)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"swap": "sometimes"}, "swap must be"),
        ({"y_copy_device": "disk"}, "y_copy_device"),
        ({"bn_recalibration_batches": 1.5}, "bn_recalibration_batches"),
    ],
)
def test_bad_options_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        AmuseCallback(**kwargs)


def test_failed_setup_leaves_weights_untouched(tmp_path):
    model = WithScheduler()
    before = model.snapshot()
    with pytest.raises(MisconfigurationException):
        trainer(tmp_path, [AmuseCallback()]).fit(model)
    after = model.snapshot()
    assert all(torch.equal(before[n], after[n]) for n in before)
    assert {g["train_mode"] for g in model.trainer.optimizers[0].param_groups} == {True}


class ForeignTensor(Recorder):
    def configure_optimizers(self):
        extra = torch.nn.Parameter(torch.zeros(3))
        return make_optimizer(torch.nn.ParameterList([*self.parameters(), extra]), "amuse", 0.05)


def test_optimizer_tensor_outside_the_module_is_refused(tmp_path):
    with pytest.raises(MisconfigurationException, match="not parameters of ForeignTensor"):
        trainer(tmp_path, [AmuseCallback()]).fit(ForeignTensor())
