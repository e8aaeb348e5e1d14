"""AmuseCallback on CUDA: 16-bit mixed precision and a y copy kept on the CPU (skipped without a
GPU)."""

from __future__ import annotations

import lightning.pytorch as pl
import pytest
import torch

from amuse_lightning import AmuseCallback
from tests.callback_testkit import (
    Recorder,
    check_evaluation_sees_x,
    check_training_sees_y,
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
    assert all(p.is_cuda for p in model.parameters())
    assert check_training_sees_y(model) == 6  # bit for bit, whatever the copy's device
    # CUDA lerp kernels may round differently from the oracle's: x up to rounding
    assert check_evaluation_sees_x(model, "val", exact=False) == 5
    copies = callback._state.weights.y_copy
    assert copies is not None
    assert {t.device.type for t in copies} == {"cpu" if copy_device == "cpu" else "cuda"}
