"""``amuse-lightning finish``: a run's checkpoint in, a finished checkpoint out."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest
import torch

from amuse_lightning.examples.classifier import ResNetClassifier
from amuse_lightning.lightning.cli import main
from tests.helpers.fashion import write_fake_fashion_mnist


@pytest.fixture
def run(tmp_path, monkeypatch) -> tuple[list[str], Path]:
    """A 2-epoch fit of the shipped Fashion-MNIST config on fake data: settings, last.ckpt."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["amuse-lightning"])
    write_fake_fashion_mnist(tmp_path / "fmnist", n_train=96, n_test=32)
    settings = [
        "--config", "fashion_mnist_resnet", "--trainer.accelerator=cpu", "--seed_everything=1",
        f"--data.init_args.root={tmp_path / 'fmnist'}", "--data.init_args.val_size=32",
        "--data.init_args.batch_size=16", "--model.init_args.width=8",
        "--model.init_args.optimizer.init_args.warmup_steps=2",
        "--trainer.enable_progress_bar=false",
    ]  # fmt: skip
    assert main(["fit", *settings, "--trainer.max_epochs=2"]) == 0
    last = next(tmp_path.rglob("last.ckpt"))
    return settings, last


def test_finish_writes_a_finished_checkpoint_and_leaves_the_source(run, capsys):
    settings, last = run
    before = last.read_bytes()
    capsys.readouterr()
    status = main(["finish", *settings, "--ckpt_path", str(last), "--fraction", "0.5",
                   "--shape", "1-sqrt", "--bn_batches", "2"])  # fmt: skip
    assert status == 0
    out = capsys.readouterr().out
    line = re.search(r"Finished .* \(step 8\) with a 4-step 1-sqrt cooldown from x \(total 12 "
                     r"steps, \+50%\); wrote (\S+)\.$", out, re.MULTILINE)  # fmt: skip
    assert line is not None, out
    finished = Path(line.group(1))
    assert finished == last.with_name("last-finished.ckpt")
    checkpoint = torch.load(finished, weights_only=False)
    assert checkpoint["global_step"] == 12
    assert checkpoint["amuse_finisher"]["shape"] == "1-sqrt"
    assert "val_acc" in out  # the finished model was validated
    assert last.read_bytes() == before
    model = ResNetClassifier.load_from_checkpoint(finished)  # a normal Lightning checkpoint
    bn = [k for k in model.state_dict() if k.endswith("num_batches_tracked")]
    assert {int(model.state_dict()[k]) for k in bn} == {2}  # re-estimated at the end


def test_finish_takes_the_config_that_fit_saved(run, capsys):
    """The run's own saved config (``config.yaml``, like ``fit --print_config``) carries fit's
    ``ckpt_path`` / ``weights_only``; ``finish --config`` builds the run from it unchanged."""
    _, last = run
    saved = next(last.parents[2].rglob("config.yaml"))
    assert "ckpt_path: null" in saved.read_text()
    capsys.readouterr()
    status = main(["finish", "--config", str(saved), "--ckpt_path", str(last), "--fraction",
                   "0.25", "--output", str(last.with_name("from-config.ckpt")),
                   "--validate", "false"])  # fmt: skip
    assert status == 0, capsys.readouterr().err
    assert "with a 2-step linear cooldown from x" in capsys.readouterr().out
    assert torch.load(last.with_name("from-config.ckpt"), weights_only=False)["global_step"] == 10


def test_finish_refuses_a_checkpoint_without_optimizer_state_in_one_line(run, capsys, tmp_path):
    settings, last = run
    checkpoint = torch.load(last, weights_only=False)
    del checkpoint["optimizer_states"]
    weights = tmp_path / "weights.ckpt"
    torch.save(checkpoint, weights)
    capsys.readouterr()
    assert main(["finish", *settings, "--ckpt_path", str(weights)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "has no optimizer state" in err[0], err
    assert main(["finish", *settings, "--ckpt_path", str(tmp_path / "missing.ckpt")]) == 2
    assert "ckpt_path: " in capsys.readouterr().err


def test_finish_options_are_checked_before_anything_is_built(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["finish", "--ckpt_path", "x.ckpt", "--fraction", "1.5"])
    assert exit_info.value.code == 2
    assert "--fraction: must be in (0, 1]" in capsys.readouterr().err
