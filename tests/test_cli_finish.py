"""``amuse-lightning finish``: a run's checkpoint in, a finished checkpoint out."""

from __future__ import annotations

import re
import sys
import warnings
from pathlib import Path

import pytest
import torch

from amuse_lightning.cli import AmuseLightningCLI, main
from amuse_lightning.examples.classifier import ResNetClassifier
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
    out = capsys.readouterr().out.splitlines()
    assert re.fullmatch(r"Finished .*last\.ckpt \(step 8\) with a 4-step 1-sqrt cooldown from x "
                        r"\(total 12 steps, \+50%\)\.", out[-3]), out  # fmt: skip
    # x's validation metric before and the finished model's after, then where it went
    assert re.fullmatch(r"val_acc: \d\.\d{4} \(x at step 8\) -> \d\.\d{4} \(finished, step 12\)",
                        out[-2]), out  # fmt: skip
    finished = Path(out[-1].removeprefix("Wrote "))
    assert out[-1].startswith("Wrote ") and finished == last.with_name("last-finished.ckpt")
    checkpoint = torch.load(finished, weights_only=False)
    assert checkpoint["global_step"] == 12
    assert checkpoint["amuse_finisher"]["shape"] == "1-sqrt"
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
    assert main(["finish", "--ckpt_path", "x.ckpt", "--fraction", "1.5"]) == 2
    assert capsys.readouterr().err == (
        "amuse-lightning: error: --fraction: must be in (0, 1], got 1.5\n"
    )
    assert main(["finish", "--ckpt_path", "x.ckpt", "--lr_factor", "often"]) == 2
    assert capsys.readouterr().err == (
        "amuse-lightning: error: --lr_factor: must be a number > 0 or auto, got often\n"
    )


# ----------------------------------------------------------------- refusals, before building
def refusal(args: list[str], capsys, monkeypatch) -> str:
    """``main(["finish", *args])`` must exit 2 with one line on stderr before building the
    run (building is made to fail loudly); returns that line."""

    def no_build(*_: object, **__: object) -> None:
        raise AssertionError("the run was built before the refusal")

    monkeypatch.setattr(AmuseLightningCLI, "instantiate_classes", no_build)
    capsys.readouterr()
    status = main(["finish", *args])
    err = capsys.readouterr().err
    assert status == 2 and err.count("\n") == 1, err
    assert err.startswith("amuse-lightning: error: ")
    return err.removeprefix("amuse-lightning: error: ").strip()


def test_finish_refuses_a_negative_bn_batches_by_the_flag_typed(run, capsys, monkeypatch):
    _, last = run
    line = refusal(["--ckpt_path", str(last), "--bn_batches", "-1"], capsys, monkeypatch)
    assert line == "--bn_batches: must be an integer >= 0 (0: off), got -1"


def test_finish_refuses_to_write_over_the_source_checkpoint(run, capsys, monkeypatch):
    settings, last = run
    before = last.read_bytes()
    same = last.parent / "." / last.name
    for output in (last, same):
        line = refusal([*settings, "--ckpt_path", str(last), "--output", str(output),
                        "--overwrite"], capsys, monkeypatch)  # fmt: skip
        assert line == (
            f"--output: {output} is the checkpoint being finished; pass another path (the "
            "source stays the run's resumable state)"
        )
    assert last.read_bytes() == before


def test_finish_refuses_an_existing_output_unless_overwrite(run, capsys, monkeypatch, tmp_path):
    settings, last = run
    taken = tmp_path / "taken.ckpt"
    taken.write_bytes(b"keep me")
    line = refusal([*settings, "--ckpt_path", str(last), "--output", str(taken)], capsys,
                   monkeypatch)  # fmt: skip
    assert line == f"--output: {taken} exists; pass --overwrite to replace it, or another --output"
    assert taken.read_bytes() == b"keep me"
    monkeypatch.undo()
    monkeypatch.chdir(tmp_path)
    status = main(["finish", *settings, "--ckpt_path", str(last), "--output", str(taken),
                   "--overwrite", "--steps", "1", "--validate", "false"])  # fmt: skip
    assert status == 0
    assert torch.load(taken, weights_only=False)["global_step"] == 9


def test_finish_refuses_a_checkpoint_that_finish_wrote(run, capsys, monkeypatch):
    settings, last = run
    assert main(["finish", *settings, "--ckpt_path", str(last), "--steps", "1",
                 "--validate", "false"]) == 0  # fmt: skip
    finished = last.with_name("last-finished.ckpt")
    line = refusal([*settings, "--ckpt_path", str(finished)], capsys, monkeypatch)
    assert line == (
        f"--ckpt_path: {finished} was written by 'amuse-lightning finish' (a finished model, "
        f"from {last}); finish the run's own checkpoint ({last}) instead"
    )
    assert not last.with_name("last-finished-finished.ckpt").exists()


def test_finish_refuses_the_config_of_another_model_naming_the_checkpoints_class(
    run, capsys, monkeypatch
):
    _, last = run
    line = refusal(["--config", "char_gpt", "--ckpt_path", str(last)], capsys, monkeypatch)
    assert line == (
        "--config: the config builds amuse_lightning.examples.char_gpt.CharGPTModule, but "
        f"{last} holds a amuse_lightning.examples.classifier.ResNetClassifier; pass the run's "
        f"--config (e.g. {last.parent.parent / 'config.yaml'})"
    )


def test_finish_refuses_a_model_of_another_size_before_loading(run, capsys):
    settings, last = run
    wider = [s for s in settings if "width" not in s] + ["--model.init_args.width=16"]
    capsys.readouterr()
    assert main(["finish", *wider, "--ckpt_path", str(last)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert err.startswith(
        f"amuse-lightning: error: --config: the weights in {last} do not fit the model the "
        "config builds (ResNetClassifier): model.conv1.weight is 8x1x3x3 there and 16x1x3x3 "
        "here; the checkpoint's amuse_lightning.examples.classifier.ResNetClassifier was "
        "trained with width=8; pass the run's --config"
    ), err


def test_finish_without_config_uses_the_config_fit_saved_beside_the_run(run, capsys):
    _, last = run
    saved = last.parent.parent / "config.yaml"
    capsys.readouterr()
    status = main(["finish", "--ckpt_path", str(last), "--steps", "2", "--validate", "false"])
    assert status == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    assert f"Building the run from {saved} (saved by fit)" in out
    assert torch.load(last.with_name("last-finished.ckpt"), weights_only=False)["global_step"] == 10


def test_finish_without_config_and_no_saved_one_says_what_to_pass(
    run, capsys, monkeypatch, tmp_path
):
    _, last = run
    alone = tmp_path / "elsewhere" / "last.ckpt"
    alone.parent.mkdir()
    alone.write_bytes(last.read_bytes())
    line = refusal(["--ckpt_path", str(alone)], capsys, monkeypatch)
    assert line == (
        f"--config: no config.yaml saved beside {alone}; pass the run's --config (e.g. "
        f"{alone.parent / 'config.yaml'})"
    )


def test_finish_prints_no_warning_the_user_did_not_cause(run, capfd, caplog, monkeypatch):
    """The command line reaches LightningCLI once (no "args ... and command line arguments"),
    the finisher's own choices raise nothing (dropped checkpoint callbacks, a mid-epoch
    checkpoint, save_checkpoint's weights_only note), and Lightning's tips stay out."""
    settings, last = run
    monkeypatch.setattr(sys, "argv", ["amuse-lightning", "finish", *settings])
    # 4 batches an epoch, validation (and so last.ckpt) every 2 steps: step 6 is mid-epoch
    mid_run = ["--trainer.max_steps=6", "--trainer.val_check_interval=2",
               "--trainer.logger.init_args.save_dir=mid", "--test_after_fit=false"]  # fmt: skip
    assert main(["fit", *settings, *mid_run]) == 0
    mid_epoch = next(Path("mid").rglob("last.ckpt"))
    assert torch.load(mid_epoch, weights_only=False)["global_step"] == 6
    capfd.readouterr()
    caplog.clear()  # the fits' own lines (their warm-up among them) are theirs
    with pytest.warns() as caught:
        for source in (last, mid_epoch):
            status = main(["finish", *settings, "--ckpt_path", str(source), "--steps", "2"])
            assert status == 0
        warnings.warn("sentinel", UserWarning, stacklevel=1)  # pytest.warns needs one
    out, err = capfd.readouterr()
    messages = [str(w.message) for w in caught if str(w.message) != "sentinel"]
    assert messages == [], messages
    logged = "\n".join([out, err, *caplog.messages])  # Lightning logs through `logging`
    assert "Restored all states from the checkpoint" in logged  # Lightning's own lines stay
    for words in ("command line arguments", "callbacks used to create the checkpoint",
                  "ended before the epoch ended", "weights_only", "Tip:", "LeafSpec",
                  "warmup_fraction=", "warmup_steps="):  # fmt: skip
        assert words not in logged, words  # the warm-up comes back with the optimizer state


def test_finish_prints_the_device_lines_once(run, capfd, caplog):
    """finish builds a Trainer for each of its three passes; Lightning's device lines (``GPU
    available: ...``) come once, as from one fit, and its other lines stay."""
    settings, last = run
    capfd.readouterr()
    caplog.clear()
    assert main(["finish", *settings, "--ckpt_path", str(last), "--steps", "2"]) == 0
    out, err = capfd.readouterr()
    logged = "\n".join([out, err, *caplog.messages])
    assert logged.count("GPU available: ") == 1, logged
    assert logged.count("TPU available: ") == 1, logged
    assert "Restored all states from the checkpoint" in logged
    caplog.clear()  # a second finish in the same process prints them again, once
    assert main(["finish", *settings, "--ckpt_path", str(last), "--steps", "2",
                 "--output", "again.ckpt"]) == 0  # fmt: skip
    assert sum("GPU available: " in m for m in caplog.messages) == 1


def test_the_mid_epoch_resume_warning_is_dropped_only_for_the_example_datamodules():
    """The examples' batches are functions of the epoch and step, so they resume exactly; a
    user's loader may really restart the epoch, and then the warning is the user's to see."""
    from amuse_lightning.cli.quiet import EXAMPLE_RESUME_WARNING, quiet_finish
    from amuse_lightning.examples.data import FashionMNISTDataModule

    message = "You're resuming from a checkpoint that ended before the epoch ended and ..."
    assert re.match(EXAMPLE_RESUME_WARNING, message)

    class UserData:
        pass

    for datamodule, kept in ((FashionMNISTDataModule(), 0), (UserData(), 1), (None, 1)):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            with quiet_finish(datamodule):
                warnings.warn(message, UserWarning, stacklevel=1)
        assert len(caught) == kept, type(datamodule)
