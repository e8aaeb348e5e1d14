"""The ``amuse-lightning`` command's own words: ``--version``, commands, output, ``plot``."""

from __future__ import annotations

import re
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from amuse_lightning.cli import main
from tests.helpers.fashion import write_fake_fashion_mnist

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["amuse-lightning"])


def status_and_streams(args: list[str], capsys) -> tuple[int, str, str]:
    try:
        status = main(args)
    except SystemExit as exit_info:
        status = exit_info.code
    captured = capsys.readouterr()
    return status, captured.out, captured.err


@pytest.mark.xdist_group("multiprocess")  # fresh interpreters
def test_version_answers_without_importing_torch_lightning_or_timm():
    """``--version`` (through ``python -m amuse_lightning`` and through ``main``, the console
    script's function) reads installed metadata only: no torch, Lightning, timm or jsonargparse
    is imported on that path."""
    heavy = ("torch", "lightning", "timm", "jsonargparse", "numpy")
    check = (
        "import runpy, sys\n"
        "def status(call):\n"
        "    try:\n"
        "        return call()\n"
        "    except SystemExit as done:\n"
        "        return done.code\n"
        "sys.argv = ['amuse-lightning', '--version']\n"
        "module = lambda: runpy.run_module('amuse_lightning', run_name='__main__')\n"
        "assert status(module) in (0, None)\n"
        "from amuse_lightning.cli import main\n"
        "assert status(lambda: main(['--version'])) in (0, None)\n"
        f"loaded = sorted(m for m in {heavy!r} if m in sys.modules)\n"
        "assert not loaded, loaded\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", check], capture_output=True, text=True, timeout=120, cwd=REPO
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 2 and lines[0] == lines[1]
    assert lines[0].startswith("amuse-lightning 0.1.0 (torch ")


def test_a_mistyped_command_gets_the_closest_one_in_one_line(capsys):
    status, _, err = status_and_streams(["finsh", "--ckpt_path", "x.ckpt"], capsys)
    assert status == 2
    assert err == "amuse-lightning: error: unknown command 'finsh'; did you mean 'finish'?\n"
    status, _, err = status_and_streams(["train"], capsys)
    assert status == 2 and err.count("\n") == 1
    assert "the commands are fit, validate, test, predict, finish, plot" in err
    status, _, err = status_and_streams([], capsys)
    assert status == 2
    assert err == (
        "amuse-lightning: error: name a command: fit, validate, test, predict, finish, plot "
        "(amuse-lightning --help says more)\n"
    )


def test_top_level_help_names_finish_and_plot_in_the_usage_line(capsys):
    status, out, _ = status_and_streams(["--help"], capsys)
    assert status == 0
    assert out.startswith("usage: amuse-lightning ")
    assert "{fit,validate,test,predict,finish,plot}" in out.splitlines()[0]
    flat = " ".join(out.split())
    assert "finish: finish a run from its checkpoint" in flat and "plot: plot a run's" in flat


@pytest.fixture
def tiny_run(tmp_path) -> Path:
    """A 2-epoch fit of the demo config on fake data, logging every step; its version folder."""
    write_fake_fashion_mnist(tmp_path / "fmnist", n_train=64, n_test=16)
    status = main([
        "fit", "--config", "fashion_mnist_resnet", f"--data.init_args.root={tmp_path / 'fmnist'}",
        "--data.init_args.val_size=16", "--data.init_args.batch_size=16",
        "--model.init_args.width=4", "--trainer.accelerator=cpu", "--trainer.max_epochs=2",
        "--trainer.log_every_n_steps=1", "--test_after_fit=false",
    ])  # fmt: skip
    assert status == 0
    return next((tmp_path / "lightning_logs").rglob("metrics.csv")).parent


def test_a_redirected_fit_prints_a_line_per_epoch_no_progress_bar_and_where_metrics_go(
    tmp_path, capfd, caplog
):
    """stdout is not a terminal here: no progress bar updates, one summary line per epoch,
    the metrics file named at the end; no Lightning tip and no LeafSpec deprecation."""
    capfd.readouterr()
    write_fake_fashion_mnist(tmp_path / "fmnist", n_train=64, n_test=16)
    with pytest.warns() as caught:
        status = main([
            "fit", "--config", "fashion_mnist_resnet",
            f"--data.init_args.root={tmp_path / 'fmnist'}", "--data.init_args.val_size=16",
            "--data.init_args.batch_size=16", "--model.init_args.width=4",
            "--trainer.accelerator=cpu", "--trainer.max_epochs=2", "--test_after_fit=false",
        ])  # fmt: skip
        warnings.warn("sentinel", UserWarning, stacklevel=1)  # pytest.warns needs one
    assert status == 0
    out, err = capfd.readouterr()
    assert "\r" not in out and "it/s" not in out + err  # no progress bar
    epochs = [line for line in out.splitlines() if line.startswith("epoch ")]
    assert len(epochs) == 2, out
    # 48 training images in batches of 16: 3 steps an epoch
    pattern = r"epoch 2/2  step 6  train_loss \d\.\d{4}  val_acc\(x\) \d\.\d{4}  lr \S+"
    assert re.fullmatch(pattern, epochs[1]), epochs
    metrics = next((tmp_path / "lightning_logs").rglob("metrics.csv"))
    assert f"Metrics per step and epoch: {metrics.relative_to(tmp_path)}" in out
    logged = "\n".join([out, err, *caplog.messages])  # Lightning logs through `logging`
    assert "AMUSE partition of ResNetClassifier" in logged  # what the user asked to see stays
    assert "Tip:" not in logged and "litlogger" not in logged
    assert "to estimate number of stepping batches" not in logged
    messages = [str(w.message) for w in caught]
    assert not [m for m in messages if "LeafSpec" in m], messages


def test_plot_draws_the_validation_of_x_the_loss_and_the_schedule(tiny_run, capsys):
    capsys.readouterr()
    status, out, _ = status_and_streams(["plot", str(tiny_run)], capsys)
    assert status == 0, out
    png = tiny_run / "metrics.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert out.strip() == (
        f"Wrote {png} (val_acc, train_loss, amuse/lr_t/group0, amuse/beta_t/group0)"
    )
    # the experiment folder (latest version) and the CSV itself work too
    status, out, _ = status_and_streams(
        ["plot", str(tiny_run.parent), "--output", "curves.png"], capsys
    )
    assert status == 0 and Path("curves.png").is_file()


def test_plot_says_how_to_get_matplotlib_and_names_a_missing_run(tiny_run, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    status, _, err = status_and_streams(["plot", str(tiny_run)], capsys)
    assert status == 2
    assert err == (
        "amuse-lightning: error: 'amuse-lightning plot' needs matplotlib, which is not "
        "installed; pip install matplotlib\n"
    )
    status, _, err = status_and_streams(["plot", "nowhere"], capsys)
    assert status == 2 and err.startswith("amuse-lightning: error: no metrics.csv in nowhere;")
