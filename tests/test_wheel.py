"""What a pip user gets: the wheel's contents and the installed ``amuse-lightning`` command.

The wheel is built from a copy of the package sources (so the checkout gets no build files),
installed without dependencies into a fresh virtual environment that borrows the test
interpreter's installed packages (torch, Lightning, timm) through a ``.pth`` file, and its
console script runs a shipped config by bare name in a fresh folder, away from the checkout.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import venv
import zipfile
from pathlib import Path

import pytest

from amuse_lightning.cli.config import shipped_configs
from tests.helpers.fashion import write_fake_fashion_mnist

REPO = Path(__file__).resolve().parents[1]


def build_wheel(out: Path) -> Path:
    src = out / "src"
    shutil.copytree(
        REPO / "amuse_lightning",
        src / "amuse_lightning",
        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"),
    )
    (src / "docs").mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE", "docs/pypi.md"):
        shutil.copy(REPO / name, src / name)
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "-w", str(out / "dist"), str(src)],
        check=True, capture_output=True, timeout=300,
    )  # fmt: skip
    (wheel,) = (out / "dist").glob("amuse_lightning-*.whl")
    return wheel


def install_into_fresh_venv(wheel: Path, where: Path) -> Path:
    """A venv without pip; the wheel goes in with this interpreter's pip (``--python``)."""
    venv.create(where, with_pip=False)
    python = where / "bin" / "python"
    site = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True, capture_output=True, text=True,
    ).stdout.strip()  # fmt: skip
    Path(site, "borrowed-packages.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps",
         "--no-index", "-q", str(wheel)],
        check=True, capture_output=True, timeout=300,
    )  # fmt: skip
    return where / "bin"


@pytest.mark.slow
@pytest.mark.xdist_group("multiprocess")
def test_wheel_installs_and_its_command_runs_a_shipped_config_by_name(tmp_path):
    pytest.importorskip("setuptools", minversion="77")  # SPDX `license`; torch pulls a new one
    wheel = build_wheel(tmp_path / "build")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {f"amuse_lightning/configs/{c}.yaml" for c in shipped_configs()} <= names
    assert "amuse_lightning/py.typed" in names
    dist_info = next(n.split("/")[0] for n in names if n.endswith(".dist-info/METADATA"))
    assert f"{dist_info}/licenses/LICENSE" in names
    metadata = zipfile.ZipFile(wheel).read(f"{dist_info}/METADATA").decode()
    assert "License-Expression: Apache-2.0" in metadata
    # the package index shows docs/pypi.md, whose links are absolute (README's relative ones
    # would break there)
    assert "Five minutes after installing torch and this wheel" in metadata
    assert "](docs/" not in metadata and "](#" not in metadata
    entry_points = zipfile.ZipFile(wheel).read(f"{dist_info}/entry_points.txt").decode()
    assert "amuse-lightning = amuse_lightning.cli:main" in entry_points

    bin_dir = install_into_fresh_venv(wheel, tmp_path / "venv")
    run_dir = tmp_path / "run"
    write_fake_fashion_mnist(run_dir / "fmnist", n_train=64, n_test=16)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["OMP_NUM_THREADS"] = "1"

    def command(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [str(bin_dir / "amuse-lightning"), *args],
            cwd=run_dir, env=env, capture_output=True, text=True, timeout=300,
        )  # fmt: skip

    where = subprocess.run(
        [str(bin_dir / "python"), "-c", "import amuse_lightning; print(amuse_lightning.__file__)"],
        cwd=run_dir, env=env, capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    assert where.startswith(str(tmp_path / "venv")), "the wheel, not the checkout, is imported"
    version = command("--version")
    assert version.returncode == 0 and version.stdout.startswith("amuse-lightning 0.1.0")
    typo = command("finsh")
    assert typo.returncode == 2
    assert (
        typo.stderr == "amuse-lightning: error: unknown command 'finsh'; did you mean 'finish'?\n"
    )

    fit = command(
        "fit", "--config", "fashion_mnist_resnet", "--data.init_args.root=fmnist",
        "--data.init_args.val_size=16", "--data.init_args.batch_size=16",
        "--trainer.fast_dev_run=true", "--trainer.accelerator=cpu",
    )  # fmt: skip
    assert fit.returncode == 0, fit.stdout[-2000:] + fit.stderr[-3000:]
    assert "test_acc=" in fit.stdout and "AmuseLightningCLI object" not in fit.stdout + fit.stderr

    bad = command("fit", "--config", "fashion_mnist_resnet", "--data.init_args.root=missing")
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines() == [
        "amuse-lightning: error: data.init_args.root: missing does not exist; pass the folder "
        "holding the four Fashion-MNIST *-ubyte.gz files (an existing empty folder to download "
        "into), or root: null for Debian's /usr/share/datasets/fashion-mnist or a download "
        "into ./data"
    ]
