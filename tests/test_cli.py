"""The ``amuse-lightning`` CLI and the shipped configs, offline on generated data."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch

from amuse_lightning import AmuseCallback
from amuse_lightning.cli import AmuseLightningCLI, main, run_cli
from amuse_lightning.examples.classifier import ResNetClassifier, TimmClassifier
from amuse_lightning.examples.data import FashionMNISTDataModule, make_synthetic_image_folder
from tests.helpers.fashion import write_fake_fashion_mnist

REPO = Path(__file__).resolve().parents[1]
# Image-classifier configs; configs/char_gpt.yaml (a language model) is in test_char_gpt.py.
CONFIGS = sorted(c for c in (REPO / "configs").glob("*.yaml") if c.stem != "char_gpt")
VIT_CONFIGS = [c for c in CONFIGS if "vit" in c.name]
RESNET_CONFIGS = [c for c in CONFIGS if "resnet" in c.name]

SYNTHETIC_DATA = "amuse_lightning.examples.data.SyntheticImageDataModule"
TINY_VIT = [
    "--model.init_args.model_name=vit_tiny_patch16_224",
    "--model.init_args.pretrained=false",
    "--model.init_args.model_kwargs={img_size: 32}",
    "--data.init_args.model_name=vit_tiny_patch16_224",
    "--data.init_args.img_size=32",
    "--data.init_args.num_workers=0",
    "--data.init_args.batch_size=4",
    "--trainer.precision=32-true",
    "--trainer.devices=1",
]


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    """Run every CLI call in tmp_path (logs, checkpoints, data/) with a clean sys.argv."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["amuse-lightning"])


def synthetic_data(num_classes: int, in_channels: int, image_size: int) -> list[str]:
    return [
        f"--data={SYNTHETIC_DATA}",
        f"--data.num_classes={num_classes}",
        f"--data.in_channels={in_channels}",
        f"--data.image_size={image_size}",
        "--data.num_train=96",
        "--data.val_size=32",
        "--data.num_test=32",
        "--data.batch_size=16",
    ]


def config_overrides(config: Path, tmp_path: Path) -> list[str]:
    """Offline, CPU-sized stand-ins for a config's data and model."""
    if config.name.startswith("fashion"):
        write_fake_fashion_mnist(tmp_path / "fmnist", n_train=96, n_test=32)
        return [
            f"--data.init_args.root={tmp_path / 'fmnist'}",
            "--data.init_args.val_size=32",
            "--data.init_args.batch_size=16",
        ]
    if "resnet" in config.name:
        classes = 100 if "cifar100" in config.name else 10
        small_model = ["--model.init_args.width=4", "--model.init_args.num_blocks=[1, 1, 1, 1]"]
        return small_model + synthetic_data(classes, 3, 32)
    make_synthetic_image_folder(tmp_path / "imgs", num_classes=3, images_per_class=4)
    return [
        f"--data.init_args.root={tmp_path / 'imgs'}",
        "--model.init_args.num_classes=3",
        *TINY_VIT,
    ]


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: p.stem)
def test_every_config_prints_through_the_cli(config, capsys):
    with pytest.raises(SystemExit) as exit_info:
        run_cli(["fit", "--config", str(config), "--print_config"])
    assert exit_info.value.code in (0, None)
    printed = capsys.readouterr().out
    assert "class_path: amuse_lightning.AMUSE" in printed
    assert "amuse_lightning.AmuseCallback" in printed


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: p.stem)
def test_every_config_instantiates_with_one_amuse_callback(config, tmp_path):
    overrides = []
    if config in VIT_CONFIGS:  # the data folder is checked when the config is parsed
        make_synthetic_image_folder(tmp_path / "imgs", num_classes=2, images_per_class=1)
        overrides = ["--model.init_args.pretrained=false", f"--data.init_args.root={tmp_path}/imgs"]
    cli = AmuseLightningCLI(args=["--config", str(config), *overrides], run=False)
    expected = TimmClassifier if config in VIT_CONFIGS else ResNetClassifier
    assert isinstance(cli.model, expected)
    assert sum(isinstance(cb, AmuseCallback) for cb in cli.trainer.callbacks) == 1
    assert cli.trainer.checkpoint_callback.monitor == "val_acc"


def test_amuse_callback_is_added_once_and_can_be_turned_off():
    def count(args):
        cli = AmuseLightningCLI(args=args, run=False)
        return sum(isinstance(cb, AmuseCallback) for cb in cli.trainer.callbacks)

    model = ["--model=amuse_lightning.examples.classifier.ResNetClassifier"]
    data = synthetic_data(10, 3, 8)
    assert count(model + data) == 1  # added by default
    assert count([*model, *data, "--trainer.callbacks=amuse_lightning.AmuseCallback"]) == 1
    assert count([*model, *data, "--amuse_callback=false"]) == 0
    baseline = ["--model.optimizer=torch.optim.SGD", "--model.optimizer.lr=0.1"]
    assert count(model + data + baseline) == 0  # not schedule-free: nothing to swap


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: p.stem)
def test_fast_dev_run_of_every_example(config, tmp_path, capsys):
    args = [
        "fit",
        "--config",
        str(config),
        *config_overrides(config, tmp_path),
        "--trainer.fast_dev_run=true",
        "--trainer.accelerator=cpu",
        "--test_after_fit=true",
    ]
    cli = run_cli(args)
    out = capsys.readouterr().out
    assert cli.trainer.global_step == 1
    assert "Fit finished after" in out
    assert re.search(r"^test_acc=[01]\.\d{4}$", out, flags=re.MULTILINE)


def test_fit_then_test_and_predict_from_the_anytime_checkpoint(tmp_path, capsys):
    """A real (short) fit: the printed test_acc of the final x equals what `test` and `predict`
    get from last.ckpt, i.e. the checkpoint holds the averaged model the fit ended with."""
    config = REPO / "configs" / "fashion_mnist_resnet.yaml"
    common = ["--config", str(config), "--trainer.accelerator=cpu", "--seed_everything=1"]
    data = config_overrides(config, tmp_path)
    assert main(["fit", *common, *data, "--trainer.max_epochs=3", "--model.init_args.width=8"]) == 0
    out = capsys.readouterr().out
    fit_acc = re.search(r"^test_acc=(\S+)$", out, flags=re.MULTILINE).group(1)
    assert float(fit_acc) > 0.5  # 10 easy classes, 3 epochs of 6 steps: well above chance
    summary = re.search(r"Fit finished after 3 epochs.*", out).group(0)
    last = Path(re.search(r"anytime checkpoint \(x at the end\): (\S+)\.$", summary).group(1))
    assert last.name == "last.ckpt" and last.is_file()
    assert re.search(r"best val_acc = \d\.\d{4} in \S+\.ckpt", summary)

    run_dir = last.parent.parent
    saved = ["--config", str(run_dir / "config.yaml"), "--ckpt_path", str(last)]
    assert main(["test", *saved]) == 0
    assert re.search(r"^test_acc=(\S+)$", capsys.readouterr().out, re.MULTILINE).group(1) == (
        fit_acc
    )
    assert main(["predict", *saved]) == 0
    assert f"predicted 32 samples; predict_acc={fit_acc}" in capsys.readouterr().out

    # Plain Lightning, no CLI and no callback: the checkpoint's weights are x already.
    model = ResNetClassifier.load_from_checkpoint(last)
    data = FashionMNISTDataModule(root=str(tmp_path / "fmnist"), val_size=32, batch_size=16)
    trainer = pl.Trainer(logger=False, enable_progress_bar=False, accelerator="cpu")
    assert f"{trainer.test(model, data, verbose=False)[0]['test_acc']:.4f}" == fit_acc


@pytest.mark.xdist_group("multiprocess")
def test_module_entry_point_answers_help_listing_every_command():
    """``python -m amuse_lightning --help``; the installed console script is checked from a
    wheel in tests/test_wheel.py (a development venv's script may predate a move)."""
    result = subprocess.run(
        [sys.executable, "-m", "amuse_lightning", "--help"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "{fit,validate,test,predict,finish,plot}" in result.stdout
    fit_help = subprocess.run(
        [sys.executable, "-m", "amuse_lightning", "fit", "--help"],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert fit_help.returncode == 0 and "--test_after_fit" in fit_help.stdout


def test_fit_summary_reports_the_metric_the_run_has(tmp_path):
    from lightning.pytorch import Trainer
    from lightning.pytorch.callbacks import ModelCheckpoint

    from amuse_lightning.cli.summary import fit_summary, summary_metric

    plain = Trainer(default_root_dir=tmp_path, logger=False, enable_checkpointing=False)
    assert summary_metric(plain) == "val_acc"  # nothing logged yet: the classifiers' metric
    plain.callback_metrics.update({"val_loss": torch.tensor(1.25)})
    assert summary_metric(plain) == "val_loss"
    assert "last val_loss (averaged model x) = 1.2500" in fit_summary(plain)
    monitored = Trainer(
        default_root_dir=tmp_path, logger=False, callbacks=[ModelCheckpoint(monitor="val_bpb")]
    )
    monitored.callback_metrics.update({"val_acc": torch.tensor(0.5)})
    assert summary_metric(monitored) == "val_bpb"


def test_a_command_beside_lightning_cli_is_dispatched_and_listed(monkeypatch, capsys):
    """How a new subcommand (e.g. `finish`) plugs in: an entry in EXTRA_COMMANDS."""
    from amuse_lightning.cli import commands as cli
    from amuse_lightning.lightning.errors import ConfigError

    seen = []

    def run(argv: list[str]) -> int:
        seen.append(argv)
        if argv == ["--bad"]:
            raise ConfigError("is not a flag of demo", key="--bad")
        return 0

    monkeypatch.setitem(cli.EXTRA_COMMANDS, "demo", cli.Command("a test command", run))
    assert main(["demo", "a.ckpt", "--steps=3"]) == 0 and seen == [["a.ckpt", "--steps=3"]]
    assert main(["demo", "--bad"]) == 2
    assert capsys.readouterr().err == "amuse-lightning: error: --bad: is not a flag of demo\n"
    with pytest.raises(SystemExit):
        main(["--help"])
    assert "demo: a test command" in " ".join(capsys.readouterr().out.split())
