"""Small MLPs, the Muon/fallback group splitter and a reference training loop.

The distributed tests run these on several processes and again in one process on the global
batch; both sides must build the model, the groups and the batches the same way, so they live
here.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from amuse_lightning import AMUSE

WORLD = 2
STEPS = 3
GLOBAL_BATCH = 16


def make_model() -> nn.Module:
    """A 4-layer tanh MLP (6 -> 4) with seed-0 weights."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 16), nn.Tanh(), nn.Linear(16, 16), nn.Tanh(),
        nn.Linear(16, 4),
    )  # fmt: skip


def make_uneven_model() -> nn.Module:
    """A 15-row matrix so that the two row shards differ in size (8 and 7 rows)."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 15), nn.Tanh(), nn.Linear(15, 4)
    )


def split_groups(params: Iterable[nn.Parameter]) -> list[dict]:
    """The plain rule for a toy model: matrices to Muon, everything else to the fallback."""
    params = list(params)
    return [
        {"params": [p for p in params if p.ndim >= 2], "use_muon": True},
        {"params": [p for p in params if p.ndim < 2], "use_muon": False},
    ]


def make_optimizer(model: nn.Module, **kwargs) -> AMUSE:
    """AMUSE over :func:`split_groups` of ``model`` with the settings the distributed tests use."""
    return AMUSE(
        split_groups(model.parameters()), lr=0.05, warmup_steps=2, ns_dtype=torch.float32, **kwargs
    )


def global_batch(step: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Global batch ``step`` of :data:`GLOBAL_BATCH` rows; a function of the step only."""
    gen = torch.Generator().manual_seed(100 + step)
    return torch.randn(GLOBAL_BATCH, 6, generator=gen), torch.randn(GLOBAL_BATCH, 4, generator=gen)


def run_steps(model: nn.Module, opt: AMUSE, rank: int, world: int) -> list[list[torch.Tensor]]:
    """Train STEPS steps on this rank's slice of each global batch; parameters after every step."""
    history = []
    for step in range(STEPS):
        x, y = global_batch(step)
        x, y = x.chunk(world)[rank], y.chunk(world)[rank]
        opt.zero_grad()
        nn.functional.mse_loss(model(x), y).backward()
        opt.step()
        history.append([p.detach().clone() for g in opt.param_groups for p in g["params"]])
    return history


def matrix_shapes(model: nn.Module) -> tuple[tuple[int, ...], ...]:
    """Shapes of the tensors :func:`split_groups` sends to Muon, in parameter order."""
    return tuple(tuple(p.shape) for p in model.parameters() if p.ndim >= 2)
