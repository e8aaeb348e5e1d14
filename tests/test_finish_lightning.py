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


def plain_finish_from(path, steps: int, start: str, batches=None) -> nn.Module:
    """The plain-PyTorch finisher on the state the checkpoint holds (y from its payload), fed
    ``batches`` (default: the batches of the steps after the checkpoint's)."""
    checkpoint = torch.load(path, weights_only=False)
    model = Recorder(data_by_step=True, record=False)
    model.load_state_dict(checkpoint["amuse"]["y"])
    optimizer = model.configure_optimizers()
    optimizer.load_state_dict(checkpoint["optimizer_states"][0])
    t = checkpoint["global_step"]
    if batches is None:
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


# ------------------------------------------------------------------ the data the cooldown sees
def test_from_an_epoch_end_checkpoint_the_cooldown_trains_on_the_runs_next_batches(tmp_path):
    """The source run trains on the loader's batches (not by step). From the epoch-end
    checkpoint the run goes on with batches 0, 1, 2 of the next epoch; the finisher must train
    on those. Before: it trained on 0, 0, 1 (a phantom replay of the finished epoch)."""
    pl.seed_everything(0)
    source = Recorder(record=False, n_train=24)  # 3 batches an epoch
    checkpoint = ModelCheckpoint(tmp_path / "ck", save_top_k=-1, filename="{epoch}-{step}")
    trainer(tmp_path, [AmuseCallback(), checkpoint], max_epochs=2,
            enable_checkpointing=True).fit(source)  # fmt: skip
    path = tmp_path / "ck" / "epoch=0-step=3.ckpt"
    model = Recorder(record=False, n_train=24)
    finish_checkpoint(model, path, tmp_path / "finished.ckpt", steps=3, start="y",
                      trainer_options={"accelerator": "cpu"})  # fmt: skip
    assert len(model.train_batches) == 3
    for ours, the_runs in zip(model.train_batches, source.train_batches[3:6], strict=True):
        assert torch.equal(ours, the_runs)
    written = torch.load(tmp_path / "finished.ckpt", weights_only=False)
    next_batches = list(Recorder(n_train=24).train_dataloader())
    expected = plain_finish_from(path, 3, "y", next_batches)
    for name, value in expected.state_dict().items():
        torch.testing.assert_close(written["state_dict"][name], value, rtol=0, atol=1e-6)


# ------------------------------------------------------------------ what is refused, in words
def test_the_output_is_never_the_source_checkpoint(tmp_path):
    _, path = source_run(tmp_path)
    source_bytes = path.read_bytes()
    link = tmp_path / "link.ckpt"
    link.symlink_to(path)
    spellings = [path, path.parent / "." / path.name, link, str(path)]
    for output in spellings:
        with pytest.raises(ValueError, match=r"is the source checkpoint .*Pass another output"):
            finish_checkpoint(Recorder(data_by_step=True, record=False), path, output)
    with pytest.raises(ValueError, match=r"is the source checkpoint"):
        finish_checkpoint(Recorder(data_by_step=True, record=False), link, path)
    assert path.read_bytes() == source_bytes


def test_an_existing_output_is_replaced_only_with_overwrite(tmp_path):
    _, path = source_run(tmp_path)
    output = tmp_path / "finished.ckpt"
    output.write_bytes(b"keep me")
    model = Recorder(data_by_step=True, record=False)
    with pytest.raises(ValueError, match=r"exists already; pass another output path, or "
                       r"overwrite=True to replace it"):  # fmt: skip
        finish_checkpoint(model, path, output, steps=1)
    assert output.read_bytes() == b"keep me"
    finish_checkpoint(model, path, output, steps=1, overwrite=True,
                      trainer_options={"accelerator": "cpu"})  # fmt: skip
    assert torch.load(output, weights_only=False)["amuse_finisher"]["steps"] == 1


def finished_run(tmp_path):
    _, path = source_run(tmp_path)
    finished = tmp_path / "finished.ckpt"
    finish_checkpoint(Recorder(data_by_step=True, record=False), path, finished, steps=2,
                      trainer_options={"accelerator": "cpu"})  # fmt: skip
    return path, finished, rf"holds a finished model .*use its own checkpoint \({path}\)"


def test_a_finished_checkpoint_is_not_finished_again(tmp_path):
    _, finished, message = finished_run(tmp_path)
    with pytest.raises(ValueError, match=message):
        finish_checkpoint(Recorder(data_by_step=True, record=False), finished,
                          tmp_path / "again.ckpt")  # fmt: skip
    assert not (tmp_path / "again.ckpt").exists()


def test_fit_refuses_to_resume_a_finished_checkpoint(tmp_path):
    """Before: it trained on silently as plain Muon (no averaging, the cooldown's last lr)."""
    _, finished, message = finished_run(tmp_path)
    model = Recorder(data_by_step=True)
    fit = trainer(tmp_path / "resume", [AmuseCallback()], max_epochs=3)
    with pytest.raises(ValueError, match=message + r".*Model.load_from_checkpoint"):
        fit.fit(model, ckpt_path=finished)
    assert model.of_kind("train") == []  # refused before any training step
