"""Small models and accessors the partition tests share (the rules, the report, the groups)."""

from __future__ import annotations

import timm
import torch
from torch import nn

from amuse_lightning.partition import Partition


def sides(partition: Partition) -> dict[str, bool]:
    return {a.name: a.use_muon for a in partition.assignments}


def reasons(partition: Partition) -> dict[str, str]:
    return {a.name: a.reason for a in partition.assignments}


def tiny_vit(**kwargs) -> nn.Module:
    args = dict(pretrained=False, img_size=32, patch_size=8, depth=2, num_classes=10)
    return timm.create_model("vit_tiny_patch16_224", **{**args, **kwargs})


class CifarBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv_a = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.norm_a = nn.BatchNorm2d(cout)
        self.conv_b = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.norm_b = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.norm_a(self.conv_a(x)))
        return torch.relu(self.norm_b(self.conv_b(out)) + self.shortcut(x))


class SmallCifarResNet(nn.Module):
    """Names unlike torchvision on purpose: the stem and head must be found by structure."""

    def __init__(self, width: int = 8, classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width))
        self.stages = nn.Sequential(CifarBlock(width, width, 1), CifarBlock(width, 2 * width, 2))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.linear = nn.Linear(2 * width, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stages(torch.relu(self.stem(x)))
        return self.linear(self.pool(x).flatten(1))


class TiedLM(nn.Module):
    """A small transformer LM whose output layer reuses the token embedding."""

    def __init__(self, vocab: int = 50, dim: int = 16, head_first: bool = False) -> None:
        super().__init__()
        if head_first:  # the Linear registers the shared weight first
            self.lm_head = nn.Linear(dim, vocab, bias=False)
        self.tok_emb = nn.Embedding(vocab, dim)
        self.pos_embed = nn.Parameter(torch.zeros(1, 8, dim))
        self.blocks = nn.ModuleList(
            nn.TransformerEncoderLayer(dim, 2, 32, batch_first=True) for _ in range(2)
        )
        self.ln_f = nn.LayerNorm(dim)
        if not head_first:
            self.lm_head = nn.Linear(dim, vocab, bias=False)
        self.lm_head.weight = self.tok_emb.weight

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        h = self.tok_emb(idx) + self.pos_embed[:, : idx.shape[1]]
        for block in self.blocks:
            h = block(h)
        return self.lm_head(self.ln_f(h))


def assert_exact_cover(model: nn.Module, groups: list[dict]) -> None:
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    flat = [p for g in groups for p in g["params"]]
    assert len(flat) == len({id(p) for p in flat}) == len(trainable)
    assert {id(p) for p in flat} == trainable
    for g in groups:
        assert g["params"] and len(g["names"]) == len(g["params"])
