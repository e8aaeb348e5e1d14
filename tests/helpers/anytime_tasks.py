"""The quick vision task of the anytime studies on synthetic images (no dataset needed), for
the tests of the study code (``tests/test_benchmarks_smoke.py``, ``tests/test_peers_study.py``)."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

from anytime.vision import VisionTask


def tiny_vision() -> VisionTask:
    """``VisionTask(quick=True)`` with 64 random training images and 32 per evaluation split:
    BatchNorm, and augmentation drawn from torch's global generator."""
    task = VisionTask(quick=True)
    g = torch.Generator().manual_seed(0)
    task.train = (
        torch.randint(0, 256, (64, 1, 28, 28), dtype=torch.uint8, generator=g),
        torch.randint(0, 10, (64,), generator=g),
    )
    task.splits = {
        split: (torch.randn(32, 1, 28, 28, generator=g), torch.randint(0, 10, (32,), generator=g))
        for split in ("val", "test")
    }
    return task
