"""The Lightning finisher: a checkpoint in, a finished checkpoint out, the source untouched."""

from __future__ import annotations

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from torch import nn

from amuse_lightning import AmuseCallback
from amuse_lightning.averaging import finish
from amuse_lightning.lightning.finish import finish_checkpoint
from tests.callback_testkit import Recorder, step_batch, trainer


def source_run(tmp_path, **model_kwargs) -> tuple[Recorder, object]:
    """Two epochs of 6 steps with an epoch-end checkpoint after each; batches by step."""
    pl.seed_everything(0)
    model = Recorder(data_by_step=True, record=False, **model_kwargs)
    checkpoint = ModelCheckpoint(tmp_path / "ck", save_top_k=-1, filename="{epoch}-{step}")
    callbacks = [AmuseCallback(), checkpoint]
    fit = trainer(tmp_path, callbacks, max_epochs=2, enable_checkpointing=True)
    fit.fit(model)
    return model, tmp_path / "ck" / "epoch=0-step=6.ckpt"


def plain_finish_from(path, steps: int, start: str) -> nn.Module:
    """The plain-PyTorch finisher on the state the checkpoint holds (y from its payload)."""
    checkpoint = torch.load(path, weights_only=False)
    model = Recorder(data_by_step=True, record=False)
    model.load_state_dict(checkpoint["amuse"]["y"])
    optimizer = model.configure_optimizers()
    optimizer.load_state_dict(checkpoint["optimizer_states"][0])
    t = checkpoint["global_step"]
    batches = [step_batch(t + i) for i in range(steps)]
    return finish(optimizer, model, batches,
                  lambda m, b: nn.functional.mse_loss(m(b[0]).float(), b[1]),
                  steps=steps, start=start)  # fmt: skip


@pytest.mark.parametrize("start", ["x", "y"])
def test_finished_checkpoint_equals_the_plain_pytorch_finisher(tmp_path, start):
    _, path = source_run(tmp_path)
    source_bytes = path.read_bytes()
    model = Recorder(data_by_step=True, record=False)
    result = finish_checkpoint(model, path, tmp_path / "finished.ckpt", fraction=0.5,
                               start=start, trainer_options={"accelerator": "cpu"})  # fmt: skip
    assert (result.source_step, result.cooldown.steps, result.total_steps) == (6, 3, 9)
    written = torch.load(tmp_path / "finished.ckpt", weights_only=False)
    assert written["global_step"] == 9
    assert written["amuse_finisher"]["steps"] == 3 and written["amuse_finisher"]["start"] == start
    expected = plain_finish_from(path, 3, start)
    for name, value in expected.state_dict().items():
        torch.testing.assert_close(written["state_dict"][name], value, rtol=0, atol=1e-6)
    loaded = Recorder.load_from_checkpoint(tmp_path / "finished.ckpt")
    for name, value in loaded.state_dict().items():
        assert torch.equal(value, written["state_dict"][name])
    assert path.read_bytes() == source_bytes  # the source checkpoint is only read


def test_batchnorm_is_re_estimated_at_the_finished_weights(tmp_path):
    _, path = source_run(tmp_path, batchnorm=True)
    model = Recorder(data_by_step=True, record=False, batchnorm=True)
    finish_checkpoint(
        model, path, tmp_path / "finished.ckpt", steps=2, bn_recalibration_batches=4,
        trainer_options={"accelerator": "cpu"},
    )  # fmt: skip
    written = torch.load(tmp_path / "finished.ckpt", weights_only=False)
    assert written["state_dict"]["net.1.num_batches_tracked"].item() == 4


def test_a_checkpoint_without_optimizer_state_is_refused_clearly(tmp_path):
    _, path = source_run(tmp_path)
    weights_only = tmp_path / "weights.ckpt"
    checkpoint = torch.load(path, weights_only=False)
    del checkpoint["optimizer_states"]
    torch.save(checkpoint, weights_only)
    with pytest.raises(ValueError, match=r"has no optimizer state .* use a full Lightning"):
        finish_checkpoint(Recorder(), weights_only, tmp_path / "out.ckpt")
    assert not (tmp_path / "out.ckpt").exists()
