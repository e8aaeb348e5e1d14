"""`make test` ends, red and naming the test, when a test crashes its worker or hangs.

A nested pytest runs with the flags of the Makefile's ``test`` target (``PYTEST_FLAGS``) and the
project's pytest settings (``pyproject.toml``: the per-test ``timeout``) over a few generated
test files: one test kills its worker with SIGSEGV (as the oneDNN AVX2 convolution crash did),
one sleeps forever. With the old flags (``--dist loadgroup`` and xdist's default worker restart)
the run hung after "node down: Not properly terminated".
"""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

FILES = {
    "test_fine.py": """
        import pytest

        @pytest.mark.parametrize("i", range(4))
        def test_fine(i):
            pass
    """,
    "test_crash.py": """
        import os
        import signal

        import pytest

        @pytest.mark.xdist_group("multiprocess")
        def test_segfaults():
            os.kill(os.getpid(), signal.SIGSEGV)

        @pytest.mark.xdist_group("multiprocess")
        def test_after_the_crash():
            pass
    """,
    "test_hang.py": """
        import time

        def test_sleeps_forever():
            time.sleep(3600)
    """,
}


def makefile_pytest_flags() -> list[str]:
    text = (ROOT / "Makefile").read_text()
    match = re.search(r"^PYTEST_FLAGS\s*:=\s*(.+)$", text, flags=re.MULTILINE)
    assert match, "the Makefile has no PYTEST_FLAGS line"
    assert "$(PYTEST_FLAGS)" in text.split("\ntest:", 1)[1].split("\n\n", 1)[0]
    return match.group(1).split()


def run_nested_suite(tmp_path: Path, files: list[str]) -> str:
    """The Makefile's pytest over ``files`` with a 5 s per-test timeout; its output."""
    for name in files:
        (tmp_path / name).write_text(textwrap.dedent(FILES[name]))
    command = [
        sys.executable, "-m", "pytest", *makefile_pytest_flags(), "-p", "no:cacheprovider",
        "-c", str(ROOT / "pyproject.toml"), "--rootdir", str(tmp_path), "-o", "timeout=5",
        *files,
    ]  # fmt: skip
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=240, cwd=tmp_path)
    except subprocess.TimeoutExpired as hung:
        pytest.fail(f"the nested pytest did not end within 240 s:\n{hung.stdout}")
    out = done.stdout + done.stderr
    assert done.returncode != 0, out
    assert "FAILED" in out, out
    return out


@pytest.mark.xdist_group("multiprocess")
def test_a_crashed_worker_fails_the_run_quickly_naming_the_test(tmp_path: Path) -> None:
    out = run_nested_suite(tmp_path, ["test_fine.py", "test_crash.py"])
    assert "crashed while running 'test_crash.py::test_segfaults'" in out, out


@pytest.mark.xdist_group("multiprocess")
def test_a_hung_test_is_stopped_and_named(tmp_path: Path) -> None:
    out = run_nested_suite(tmp_path, ["test_fine.py", "test_hang.py"])
    assert "crashed while running 'test_hang.py::test_sleeps_forever'" in out, out


def test_the_per_test_timeout_is_configured_with_the_thread_method() -> None:
    """A stuck native call never returns to Python, so only the thread method can end it."""
    text = (ROOT / "pyproject.toml").read_text()
    assert re.search(r"^timeout = \d+$", text, flags=re.MULTILINE)
    assert 'timeout_method = "thread"' in text
    assert "--max-worker-restart 0" in " ".join(makefile_pytest_flags())
