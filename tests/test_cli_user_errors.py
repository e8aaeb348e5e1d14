"""What a user sees from ``amuse-lightning`` when a setting is wrong, and on success.

Each bad setting is reported when the config is parsed, before any data or model is built, as
one line ``amuse-lightning: error: <yaml key>: <what to change>`` with exit status 2 and no
traceback. A successful run exits with status 0 (the console script does ``sys.exit(main())``).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from amuse_lightning.cli import main, run_cli
from amuse_lightning.examples.data import make_synthetic_image_folder
from tests.helpers.fashion import write_fake_fashion_mnist

OPT = "--model.init_args.optimizer.init_args"
KEY = "model.init_args.optimizer.init_args"


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["amuse-lightning"])


def exit_status_and_stderr(args: list[str], capsys) -> tuple[int, str]:
    """``main(args)``'s status (or the parser's ``SystemExit`` code) and what went to stderr."""
    try:
        status = main(args)
    except SystemExit as exit_info:
        status = exit_info.code
    return status, capsys.readouterr().err


def fake_fashion(tmp_path: Path) -> list[str]:
    write_fake_fashion_mnist(tmp_path / "fmnist", n_train=64, n_test=16)
    return [f"--data.init_args.root={tmp_path / 'fmnist'}", "--data.init_args.val_size=16",
            "--data.init_args.batch_size=16", "--trainer.accelerator=cpu"]  # fmt: skip


def image_folder(tmp_path: Path) -> str:
    make_synthetic_image_folder(tmp_path / "imgs", num_classes=2, images_per_class=1)
    return f"--data.init_args.root={tmp_path / 'imgs'}"


BAD_SETTINGS = {
    "beta1": (
        ["--config", "fashion_mnist_resnet", f"{OPT}.beta1=2.0"],
        f"{KEY}.beta1: must be in (0, 1], got 2.0",
    ),
    "negative_lr": (
        ["--config", "fashion_mnist_resnet", f"{OPT}.lr=-1"],
        f"{KEY}.lr: must be >= 0, got -1.0",
    ),
    "direction": (
        ["--config", "fashion_mnist_resnet", f"{OPT}.direction=mun"],
        f"{KEY}.direction: must be one of ('muon', 'adamuon', 'spectral'), got 'mun'; "
        "did you mean 'muon'",
    ),
    "lr_not_a_number": (
        ["--config", "fashion_mnist_resnet", f"{OPT}.lr=abc"],
        f"{KEY}.lr: expected float, got abc",
    ),
    "misspelt_argument": (
        ["--config", "fashion_mnist_resnet", f"{OPT}.betaa=0.9"],
        f"{KEY}.betaa: not an argument; did you mean 'beta2' or 'beta1' or 'beta_final'?",
    ),
    "misspelt_model_argument": (
        ["--config", "fashion_mnist_resnet", "--model.init_args.widht=8"],
        "model.init_args.widht: not an argument; did you mean 'width'?",
    ),
    "trainer_type": (
        ["--config", "fashion_mnist_resnet", "--trainer.max_epochs=abc"],
        "trainer.max_epochs: expected int, got abc",
    ),
    "missing_fashion_root": (
        ["--config", "fashion_mnist_resnet", "--data.init_args.root=/nonexistent/fmnist"],
        "data.init_args.root: /nonexistent/fmnist does not exist; pass the folder holding the "
        "four Fashion-MNIST",
    ),
    "missing_imagenet_root": (
        ["--config", "imagenet_vit_s16_finetune"],
        "data.init_args.root: /data/imagenet does not exist; pass the dataset folder, e.g. "
        "--data.init_args.root /path/to/imagenet",
    ),
    "unknown_config_name": (
        ["--config", "fashion_mnist_resnt"],
        "--config: 'fashion_mnist_resnt' is neither a file nor a shipped config; did you mean "
        "'fashion_mnist_resnet'?",
    ),
    "partition_report": (
        ["--config", "fashion_mnist_resnet", "--partition_report=ful"],
        "partition_report: expected one of 'full', 'compact', 'none', got ful",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_SETTINGS))
def test_a_bad_setting_is_one_line_naming_the_key_and_exit_status_2(case, capsys):
    args, expected = BAD_SETTINGS[case]
    status, err = exit_status_and_stderr(["fit", *args], capsys)
    assert status == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"amuse-lightning: error: {expected}"), err


def test_unknown_timm_model_gets_the_closest_names_before_anything_is_built(tmp_path, capsys):
    args = ["fit", "--config", "imagenet_vit_s16_finetune", image_folder(tmp_path),
            "--model.init_args.model_name=vit_smal_patch16_224.augreg_in21k"]  # fmt: skip
    status, err = exit_status_and_stderr(args, capsys)
    assert status == 2 and len(err.strip().splitlines()) == 1, err
    assert err.startswith(
        "amuse-lightning: error: model.init_args.model_name: timm has no model "
        "'vit_smal_patch16_224.augreg_in21k'; did you mean 'vit_small_patch16_224'"
    )
    tag = [*args[:-1], "--model.init_args.model_name=vit_small_patch16_224.augreg_in21"]
    status, err = exit_status_and_stderr(tag, capsys)
    assert status == 2 and "did you mean 'augreg_in21k'" in err, err
    data_name = [*args[:-1], "--data.init_args.model_name=vit_smal_patch16_224"]
    status, err = exit_status_and_stderr(data_name, capsys)
    assert status == 2 and err.startswith("amuse-lightning: error: data.init_args.model_name:")


def test_an_error_raised_during_the_run_is_one_line_too(tmp_path, capsys):
    """A setting only the data can refute (val_size larger than the training set)."""
    args = ["fit", "--config", "fashion_mnist_resnet", *fake_fashion(tmp_path),
            "--data.init_args.val_size=5000", "--trainer.fast_dev_run=true"]  # fmt: skip
    status, err = exit_status_and_stderr(args, capsys)
    assert status == 2
    assert err.strip().splitlines()[-1] == (
        "amuse-lightning: error: val_size must be in [0, 64) for a training set of 64, got 5000"
    )
    assert "Traceback" not in err


def test_debug_variable_shows_the_traceback(monkeypatch, capsys):
    monkeypatch.setenv("AMUSE_LIGHTNING_DEBUG", "1")
    with pytest.raises(ValueError, match="beta1: must be in"):
        main(["fit", "--config", "fashion_mnist_resnet", f"{OPT}.beta1=2.0"])


def test_successful_run_returns_exit_status_0(tmp_path, capsys):
    args = ["fit", "--config", "fashion_mnist_resnet", *fake_fashion(tmp_path),
            "--trainer.fast_dev_run=true"]  # fmt: skip
    assert main(args) == 0
    assert "test_acc=" in capsys.readouterr().out


def test_version_and_help_describe_the_project(capsys):
    assert main(["--version"]) == 0  # answered before LightningCLI (tests/test_cli_commands.py)
    assert capsys.readouterr().out.startswith("amuse-lightning 0.1.0 (torch ")
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    out = " ".join(capsys.readouterr().out.split())  # help text is wrapped to the terminal
    assert exit_info.value.code == 0
    assert "AMUSE: Muon updates for hidden matrices" in out
    assert "fashion_mnist_resnet" in out and "--version" in out


def test_print_config_shows_the_warmup_that_runs(tmp_path, capsys):
    """Asked for 500 warmup steps (and no warmup_fraction, which the shipped config sets): the
    printed config and the optimizer both say 500."""
    args = ["fit", "--config", "fashion_mnist_resnet", *fake_fashion(tmp_path),
            f"{OPT}.warmup_steps=500", "--model.init_args.warmup_fraction=null"]  # fmt: skip
    with pytest.raises(SystemExit):
        run_cli([*args, "--print_config"])
    printed = capsys.readouterr().out
    assert "warmup_steps: 500" in printed and "warmup_fraction: null" in printed
    cli = run_cli([*args, "--trainer.fast_dev_run=true"])
    assert {g["warmup_steps"] for g in cli.trainer.optimizers[0].param_groups} == {500}


def test_warmup_fraction_next_to_explicit_warmup_steps_is_an_error(capsys):
    args = ["fit", "--config", "fashion_mnist_resnet", f"{OPT}.warmup_steps=500"]  # the
    # shipped config's warmup_fraction: 0.05 stays
    status, err = exit_status_and_stderr(args, capsys)
    assert status == 2
    assert err.strip() == (
        "amuse-lightning: error: model.init_args.warmup_fraction: 0.05 and the optimizer's "
        "warmup_steps=500 both set the warmup; keep one: warmup_fraction: null runs 500 "
        "warmup steps"
    )


def test_partition_report_option_reaches_the_model(tmp_path):
    base = ["--config", "fashion_mnist_resnet", *fake_fashion(tmp_path)]
    assert run_cli(base, run=False).model.partition_report == "compact"  # the mixin default
    full = run_cli([*base, "--partition_report=full"], run=False)
    assert full.model.partition_report == "full"
