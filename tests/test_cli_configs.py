"""The shipped configs as a user changes them: run length, warm-up, callbacks, offline ViT."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from amuse_lightning import AmuseCallback
from amuse_lightning.cli import main, run_cli
from amuse_lightning.examples import models
from amuse_lightning.examples.data import make_synthetic_image_folder
from amuse_lightning.examples.pretrained import _connects
from tests.helpers.fashion import write_fake_fashion_mnist

REPO = Path(__file__).resolve().parents[1]
OPT = "--model.init_args.optimizer.init_args"


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["amuse-lightning"])


def demo(tmp_path: Path, n_train: int = 96) -> list[str]:
    """The shipped demo config on fake data: 80 training images, batches of 16 (5 an epoch)."""
    write_fake_fashion_mnist(tmp_path / "fmnist", n_train=n_train, n_test=16)
    return ["--config", "fashion_mnist_resnet", f"--data.init_args.root={tmp_path / 'fmnist'}",
            "--data.init_args.val_size=16", "--data.init_args.batch_size=16",
            "--model.init_args.width=4", "--trainer.accelerator=cpu",
            "--test_after_fit=false"]  # fmt: skip


def warmup_of(cli) -> set[int]:
    return {g["warmup_steps"] for g in cli.trainer.optimizers[0].param_groups}


def test_every_shipped_config_sets_its_warmup_as_a_fraction_of_the_run():
    for config in sorted((REPO / "amuse_lightning" / "configs").glob("*.yaml")):
        text = config.read_text()
        assert re.search(r"^    warmup_fraction: 0\.05$", text, re.MULTILINE), config.name
        assert not re.search(r"^\s+warmup_steps:", text, re.MULTILINE), config.name


def test_the_demo_cut_to_20_steps_warms_up_for_5_percent_of_them(tmp_path, recwarn):
    """``--trainer.max_steps 20`` used to keep the config's 86 warm-up steps: the whole run was
    warm-up. Now the warm-up follows the run: max(2, round(0.05 * 20)) = 2 steps."""
    cli = run_cli(["fit", *demo(tmp_path), "--trainer.max_steps=20"])
    assert cli.trainer.global_step == 20
    assert warmup_of(cli) == {2}
    assert not [w for w in recwarn if "covers the whole run" in str(w.message)]


def test_a_warmup_as_long_as_the_run_is_a_warning_naming_both_numbers(tmp_path):
    args = ["fit", *demo(tmp_path), "--trainer.max_steps=20", f"{OPT}.warmup_steps=86",
            "--model.init_args.warmup_fraction=null"]  # fmt: skip
    with pytest.warns(UserWarning, match=r"warmup_steps=86 covers the whole run of 20 optimizer"):
        cli = run_cli(args)
    assert warmup_of(cli) == {86}


def test_a_callback_setting_in_the_configs_list_is_overridable_by_class_or_position(
    tmp_path, capsys
):
    base = demo(tmp_path)
    cli = run_cli([*base, "--trainer.callbacks.AmuseCallback.bn_recalibration_batches=3",
                   "--trainer.callbacks.2.filename=final"], run=False)  # fmt: skip
    (amuse,) = [cb for cb in cli.trainer.callbacks if isinstance(cb, AmuseCallback)]
    assert amuse.bn_recalibration_batches == 3
    assert [cb.filename for cb in cli.trainer.checkpoint_callbacks][-1] == "final"
    with pytest.raises(SystemExit):
        run_cli(["fit", *base, "--trainer.callbacks.AmuseCallback.bn_recalibration_batches",
                 "7", "--print_config"])  # fmt: skip
    assert "bn_recalibration_batches: 7" in capsys.readouterr().out
    # two ModelCheckpoints in the demo config: a class name that is not unique is refused
    assert main(["fit", *base, "--trainer.callbacks.ModelCheckpoint.monitor=val_loss"]) == 2
    assert capsys.readouterr().err == (
        "amuse-lightning: error: --trainer.callbacks.ModelCheckpoint.monitor: the config lists "
        "2 ModelCheckpoint callbacks (0: AmuseCallback, 1: ModelCheckpoint, 2: ModelCheckpoint);"
        " name one by its position: --trainer.callbacks.1.monitor or "
        "--trainer.callbacks.2.monitor\n"
    )
    assert main(["fit", *base, "--trainer.callbacks.AmuseCallback.bn_batches=3"]) == 2
    assert capsys.readouterr().err.startswith(
        "amuse-lightning: error: --trainer.callbacks.AmuseCallback.bn_batches: not an argument "
        "of AmuseCallback"
    )


def vit_offline(tmp_path: Path, **env: str) -> subprocess.CompletedProcess:
    make_synthetic_image_folder(tmp_path / "imgs", num_classes=2, images_per_class=1)
    empty = tmp_path / "empty-cache"
    empty.mkdir(exist_ok=True)
    environment = {
        k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "HF_ENDPOINT")
    }
    environment.update(HF_HUB_CACHE=str(empty), TORCH_HOME=str(empty), **env)
    return subprocess.run(
        [sys.executable, "-m", "amuse_lightning", "fit", "--config", "imagenet_vit_s16_finetune",
         f"--data.init_args.root={tmp_path / 'imgs'}"],
        cwd=tmp_path, env=environment, capture_output=True, text=True, timeout=300,
    )  # fmt: skip


@pytest.mark.xdist_group("multiprocess")  # fresh interpreters (the hub reads its env at import)
def test_the_pretrained_vit_config_offline_fails_at_once_saying_what_to_set(tmp_path):
    hint = (
        "set model.init_args.pretrained_file to a local weights file (.safetensors, .npz or "
        ".pth), or pretrained: false to start from random weights"
    )
    offline = vit_offline(tmp_path, HF_HUB_OFFLINE="1")
    assert offline.returncode == 2, offline.stderr[-3000:]
    (line,) = offline.stderr.strip().splitlines()
    assert line.startswith(
        "amuse-lightning: error: model.init_args.pretrained: timm's weights for "
        "vit_small_patch16_224.augreg_in21k (timm/vit_small_patch16_224.augreg_in21k) are not in "
        "the Hugging Face cache"
    ) and line.endswith(f"HF_HUB_OFFLINE is set; {hint}"), line
    with socket.socket() as closed:  # a port nothing listens on: the hub is unreachable
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    unreachable = vit_offline(tmp_path, HF_ENDPOINT=f"http://127.0.0.1:{port}")
    assert unreachable.returncode == 2, unreachable.stderr[-3000:]
    (line,) = unreachable.stderr.strip().splitlines()
    assert f"127.0.0.1:{port} did not answer within 3 s (offline?); {hint}" in line


def test_an_unreachable_host_is_told_within_the_timeout():
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    started = time.perf_counter()
    assert not _connects("127.0.0.1", port, timeout=2.0)
    assert not _connects("unresolvable.invalid", 443, timeout=2.0)
    assert time.perf_counter() - started < 5.0


def test_the_example_resnets_parameter_count_is_the_one_the_docs_give():
    small = models.CifarResNet(num_classes=10, in_channels=3, width=16, num_blocks=(1, 1, 1, 1))
    demo_net = models.CifarResNet(num_classes=10, in_channels=1, width=16, num_blocks=(1, 1, 1, 1))
    count = sum(p.numel() for p in small.parameters())
    demo_count = sum(p.numel() for p in demo_net.parameters())
    assert (count, demo_count) == (308_826, 308_538)
    assert f"{count:,} parameters" in models.__doc__ and f"{demo_count:,}" in models.__doc__
