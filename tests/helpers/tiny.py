"""A tiny conv net, its Muon/fallback groups, fixed batches and a training loop: what the
optimizer API tests (``tests/test_amuse_*.py``) train."""

from __future__ import annotations

import torch
from torch import nn


def tiny_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 16, 8), nn.ReLU(),
        nn.Linear(8, 3),
    )  # fmt: skip


def groups_of(model: nn.Module) -> list[dict]:
    params = list(model.parameters())
    return [
        {"params": [p for p in params if p.ndim >= 2], "use_muon": True},
        {"params": [p for p in params if p.ndim < 2], "use_muon": False},
    ]


def batch(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(16, 1, 4, 4, generator=gen), torch.randint(0, 3, (16,), generator=gen)


def train_steps(model: nn.Module, opt: torch.optim.Optimizer, start: int, stop: int) -> None:
    for i in range(start, stop):
        x, y = batch(i)
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()


def params_of(model: nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in model.parameters()]
