"""What ``benchmarks/device_check.sh`` runs must work on a bare GPU image: torch, Lightning, timm,
torchmetrics and pytest, but none of the dev extras (schedulefree, hypothesis, pytest-xdist,
matplotlib) and not jsonargparse (the image measured had hypothesis; the GPU tests do not need
it). A ``sitecustomize`` hides those packages (no module spec, no distribution metadata, as if
never installed) from a fresh interpreter, which then collects the GPU tests and imports the
benchmarks the script starts.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
HIDDEN = ("schedulefree", "jsonargparse", "hypothesis", "xdist", "pytest_xdist", "matplotlib")
GPU_TESTS = ("tests/test_kernels.py", "tests/test_callback_gpu.py", "tests/test_captured.py")

SHIM = f"""
import sys

HIDDEN = {HIDDEN!r}


def _hidden(name):
    return name is not None and name.split(".")[0].replace("-", "_").lower() in HIDDEN


class _Hide:
    def __init__(self, finder):
        self.finder = finder

    def find_spec(self, name, path=None, target=None):
        return None if _hidden(name) else self.finder.find_spec(name, path, target)

    def find_distributions(self, *args, **kwargs):
        found = getattr(self.finder, "find_distributions", None)
        dists = found(*args, **kwargs) if found else ()
        return (d for d in dists if not _hidden(d.metadata["Name"]))

    def __getattr__(self, attr):
        return getattr(self.finder, attr)


sys.meta_path[:] = [_Hide(f) if hasattr(f, "find_spec") else f for f in sys.meta_path]
"""

CHECK_BENCHMARKS = """
import importlib.metadata, importlib.util, sys
sys.path.insert(0, "benchmarks")
for name in ("schedulefree", "jsonargparse", "hypothesis", "xdist", "matplotlib"):
    assert importlib.util.find_spec(name) is None, name
try:
    importlib.metadata.version("jsonargparse")
    raise AssertionError("jsonargparse metadata visible")
except importlib.metadata.PackageNotFoundError:
    pass
import step_pair, step_time, train_step
from amuse_lightning.examples.char_gpt import build_char_gpt
for name in ("amuse", "amuse_per_parameter", "amuse_compiled", "amuse_cudagraphs"):
    assert name in step_pair.OPTIMIZERS
print("imports ok")
"""


def bare_env(tmp_path: Path) -> dict[str, str]:
    (tmp_path / "sitecustomize.py").write_text(SHIM)
    path = os.pathsep.join([str(tmp_path), str(ROOT)])
    return {**os.environ, "PYTHONPATH": path}


@pytest.mark.xdist_group("multiprocess")  # starts interpreters
def test_gpu_tests_collect_without_the_dev_extras(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider",
         *GPU_TESTS],
        cwd=ROOT, env=bare_env(tmp_path), capture_output=True, text=True, timeout=240,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    for name in GPU_TESTS:
        assert f"{name}::test_cuda" in done.stdout, name


@pytest.mark.xdist_group("multiprocess")  # starts interpreters
def test_device_check_benchmarks_import_without_the_dev_extras(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-c", CHECK_BENCHMARKS],
        cwd=ROOT, env=bare_env(tmp_path), capture_output=True, text=True, timeout=240,
    )  # fmt: skip
    assert done.returncode == 0 and "imports ok" in done.stdout, done.stderr[-3000:]
    syntax = subprocess.run(["bash", "-n", str(ROOT / "benchmarks" / "device_check.sh")])
    assert syntax.returncode == 0
