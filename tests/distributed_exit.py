"""Ending multi-process test workers without gloo's exit-time abort."""

from __future__ import annotations

import os
import sys

import torch.distributed as dist


def finish_worker() -> None:
    """Barrier, destroy the process group, then leave without C++ static destructors.

    Under load, gloo's background threads sometimes abort a finished worker at interpreter exit
    ("terminate called without an active exception", SIGABRT) after all results were written;
    ``os._exit`` after an orderly shutdown avoids that flake without hiding real failures, which
    raise before this is reached.
    """
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
