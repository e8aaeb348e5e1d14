"""AmuseCallback on CUDA: 16-bit mixed precision, a y copy kept on the CPU, and where the weights
are after ``fit`` (skipped without a GPU; imports nothing beyond the runtime dependencies and
pytest, so it runs on a bare GPU image).

Device placement after ``fit`` is Lightning's, not the callback's: at the end of every
``trainer.fit`` / ``validate`` / ``test`` / ``predict`` the strategy's teardown
(``lightning.pytorch.strategies.Strategy.teardown``) moves the LightningModule and the optimizer
state to the CPU, and the next ``trainer.test`` / ``trainer.predict`` moves the module back to the
device. So after ``fit`` the module holds ``x`` on the CPU, and ``test()`` / ``predict()`` see that
same ``x`` on the GPU.
"""

from __future__ import annotations

import lightning.pytorch as pl
import pytest
import torch

from amuse_lightning import AmuseCallback
from tests.callback_testkit import (
    Recorder,
    check_evaluation_sees_x,
    check_training_sees_y,
    expected_x,
    params_only,
    trainer,
)

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.mark.parametrize("precision", ["16-mixed", "bf16-mixed", "32-true"])
@pytest.mark.parametrize("copy_device", ["same", "cpu"])
def test_cuda_training_sees_y_and_evaluation_sees_x(tmp_path, precision, copy_device):
    pl.seed_everything(0)
    model = Recorder()
    callback = AmuseCallback(y_copy_device=copy_device)
    run = trainer(
        tmp_path,
        [callback],
        accelerator="gpu",
        devices=1,
        precision=precision,
        max_epochs=1,
        val_check_interval=0.5,
    )
    run.fit(model)
    assert check_training_sees_y(model) == 6  # bit for bit, whatever the copy's device
    # CUDA lerp kernels may round differently from the oracle's: x up to rounding
    assert check_evaluation_sees_x(model, "val", exact=False) == 5
    copies = callback.weights.y_copy
    assert copies is not None
    assert {t.device.type for t in copies} == {"cpu" if copy_device == "cpu" else "cuda"}

    # Lightning's teardown moved the module, holding x of the last step, to the CPU
    assert {p.device.type for p in model.parameters()} == {"cpu"}
    last = expected_x(model.last_y_before(len(model.events)))
    after_fit = {name: p.detach().clone() for name, p in model.named_parameters()}
    for name, x in last.items():
        torch.testing.assert_close(after_fit[name], x.cpu(), msg=name)

    # test() and predict() after fit run on the GPU and see exactly that x
    run.test(model, verbose=False)
    run.predict(model)
    for kind in ("test", "predict"):
        entries = model.of_kind(kind)
        assert len(entries) == 2, kind  # two batches each
        for _, entry in entries:
            weights = params_only(entry)
            assert {t.device.type for t in weights.values()} == {"cuda"}, kind
            assert all(torch.equal(weights[n].cpu(), after_fit[n]) for n in after_fit), kind
