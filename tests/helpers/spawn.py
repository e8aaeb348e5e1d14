"""Start ``world`` gloo worker processes and collect what each rank saved."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.multiprocessing as mp


def spawn_ranks(
    worker: Callable[..., None], world: int, filename: str = "rank{rank}.pt"
) -> dict[int, Any]:
    """Run ``worker(rank, world, init_file, out_dir)`` on ``world`` processes and return
    ``{rank: torch.load(out_dir / filename.format(rank=rank))}``."""
    with tempfile.TemporaryDirectory() as tmp:
        init_file = os.path.join(tmp, "init")
        mp.spawn(worker, args=(world, init_file, tmp), nprocs=world, join=True)
        return {r: torch.load(Path(tmp) / filename.format(rank=r)) for r in range(world)}
