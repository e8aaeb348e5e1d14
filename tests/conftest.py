"""Session-wide test settings, applied the same way whatever order the test modules import in.

* torch uses one intra-op thread in every test process (``AMUSE_TEST_THREADS`` changes it).
  ``make test`` runs two pytest-xdist workers on a 2-core machine, so one thread each does not
  oversubscribe the cores, and the setting no longer depends on which test module was imported
  last (test modules used to set 1 or 2 at import).
* Hypothesis runs derandomised (profile ``ci``: the same examples on every run, no example
  database), so a red ``make test`` is reproducible. ``HYPOTHESIS_PROFILE=explore`` searches
  with fresh random examples instead.
* Every test that starts processes (``mp.spawn``, ``ddp_spawn``, a ``ModelParallelStrategy``
  script, a benchmark or CLI subprocess) carries ``@pytest.mark.xdist_group("multiprocess")``:
  with ``--dist loadgroup`` they run one after another on one worker, so two of them never pick
  rendezvous ports at the same time.
* No test module sets global state at import; the ``warnings`` filters for Lightning's
  small-data messages live in ``pyproject.toml``.
* torch.compile's on-disk cache (Inductor's) is kept apart per ``ATEN_CPU_CAPABILITY``:
  torch 2.14 reuses kernels across that setting, and on an AVX-512 CPU a kernel cached under
  ``ATEN_CPU_CAPABILITY=avx2`` crashed a later run without it (and one cached without it made
  the avx2 run's compiled steps NaN: ``tests/test_captured.py``). A ``TORCHINDUCTOR_CACHE_DIR``
  set by the caller is used as given.
"""

from __future__ import annotations

import getpass
import os
import tempfile

if "TORCHINDUCTOR_CACHE_DIR" not in os.environ:  # before torch: Inductor reads it lazily anyway
    _capability = os.environ.get("ATEN_CPU_CAPABILITY", "default").lower() or "default"
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = os.path.join(
        tempfile.gettempdir(), f"torchinductor_{getpass.getuser()}_aten-{_capability}"
    )

import pytest
import torch

try:
    from hypothesis import HealthCheck, settings
except ImportError:  # a bare GPU image runs the CUDA tests, which need no dev extra
    pass
else:
    settings.register_profile(
        "ci",
        derandomize=True,
        database=None,
        deadline=None,
        print_blob=True,
        suppress_health_check=[HealthCheck.too_slow],
    )
    settings.register_profile("explore", deadline=None)
    settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


def pytest_configure(config: pytest.Config) -> None:
    torch.set_num_threads(int(os.environ.get("AMUSE_TEST_THREADS", "1")))


@pytest.fixture(autouse=True)
def _same_thread_count() -> None:
    """Fail loudly if a test module changed the global thread count (at import or in a test)."""
    wanted = int(os.environ.get("AMUSE_TEST_THREADS", "1"))
    if torch.get_num_threads() != wanted:
        raise RuntimeError(
            f"torch.get_num_threads() is {torch.get_num_threads()}, not {wanted}: a test module "
            "set it; leave the thread count to tests/conftest.py"
        )
