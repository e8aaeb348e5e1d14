"""Task 2: a small byte-level GPT pre-trained on the Python standard library's source text.

Model, corpus, batches and loss are the example's plain functions
(:mod:`amuse_lightning.examples.char_gpt`, :mod:`amuse_lightning.examples.text_data`): the
corpus is split by file into train / validation / test, training batches are random windows
drawn from ``(seed, step)``, evaluation uses fixed non-overlapping windows of the validation and
test files. Tied token embedding and output head, embeddings and norms go to the fallback through
``partition_parameters``. Score: minus the mean next-byte loss (nats).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import nn

from amuse_lightning import partition_parameters

from .probes import FinisherConfig
from .protocol import StudyConfig
from .vision import QUICK_FINISHING, SCREEN


@dataclass(frozen=True)
class LMConfig:
    width: int = 128
    depth: int = 2
    heads: int = 4
    context: int = 64
    batch_size: int = 8
    max_bytes: int = 2_000_000
    eval_windows: int = 64
    budgets: tuple[int, ...] = (25, 50, 100, 200)


QUICK = LMConfig(
    width=32,
    depth=1,
    heads=2,
    context=32,
    batch_size=8,
    max_bytes=1_000_000,
    eval_windows=16,
    budgets=(6, 12),
)


class LMTask:
    name = "lm"

    def __init__(self, quick: bool = False) -> None:
        self.cfg = QUICK if quick else LMConfig()
        grid = (3e-3, 1e-2) if quick else (3e-3, 1e-2, 3e-2)
        self.study = StudyConfig(
            budgets=self.cfg.budgets,
            # AdamW's grid one step lower (LM AdamW rates are lower), same size for every method;
            # 3e-4 added after AdamW chose the bottom (1e-3) at three budgets
            lr_grid={
                "adamw_cosine": grid if quick else (3e-4, 1e-3, 3e-3, 1e-2),
                "sf_adamw": grid if quick else (3e-4, 1e-3, *grid),  # 3e-3, then 1e-3 the bottom
                **{m: grid for m in ("muon_cosine", "amuse")},
            },
            weight_decay=0.05,
            seeds=(0, 1) if quick else (0, 1, 2),
            variants=SCREEN[:2] if quick else SCREEN,
            workers=1 if quick else 2,
        )
        # round 2: the lr round 1 chose for x (LayerNorm only: no averages tracked)
        self.finishing = (
            dataclasses.replace(QUICK_FINISHING, amuse_lrs=(1e-2,), ema_widths=())
            if quick
            else FinisherConfig(amuse_lrs=(1e-2,))
        )

    def setup(self) -> None:
        from amuse_lightning.examples.text_data import eval_windows, load_text_corpus

        corpus = load_text_corpus(max_bytes=self.cfg.max_bytes)
        self.train_ids = corpus.train
        self.splits = {
            "val": eval_windows(corpus.val, self.cfg.context, self.cfg.eval_windows),
            "test": eval_windows(corpus.test, self.cfg.context, self.cfg.eval_windows),
        }

    def build_model(self, seed: int) -> nn.Module:
        from amuse_lightning.examples.char_gpt import build_char_gpt

        c = self.cfg
        return build_char_gpt(width=c.width, depth=c.depth, heads=c.heads, context=c.context)

    def param_groups(self, model: nn.Module, weight_decay: float) -> list[dict]:
        return partition_parameters(model).param_groups(weight_decay=weight_decay)

    def train_batches(self, seed: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        from amuse_lightning.examples.text_data import sample_batch

        step = 0
        while True:
            yield sample_batch(self.train_ids, self.cfg.batch_size, self.cfg.context, seed, step)
            step += 1

    def loss(self, model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        from amuse_lightning.examples.char_gpt import lm_loss

        return lm_loss(model(batch[0]), batch[1])

    @torch.no_grad()
    def evaluate(self, model: nn.Module, split: str) -> dict[str, float]:
        model.eval()
        inputs, targets = self.splits[split]
        loss = self.loss(model, (inputs, targets)).item()
        return {"score": -loss, "loss": loss}

    def bn_batches(self, seed: int) -> None:
        return None  # LayerNorm only: nothing to re-estimate
