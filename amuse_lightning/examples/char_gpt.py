"""A small byte-level GPT and its LightningModule, trained with AMUSE.

:func:`build_char_gpt` makes a pre-norm decoder-only transformer: token embedding + learned
position embedding, ``depth`` blocks of ``x + attn(norm(x))`` and ``x + mlp(norm(x))`` (causal
self-attention through ``torch.nn.functional.scaled_dot_product_attention``; a GELU MLP of width
``mlp_ratio * width``), a final norm, and an output head ``lm_head`` (optionally tied to the
token embedding). It is plain PyTorch, usable in any training loop.

How :func:`amuse_lightning.partition.partition_parameters` splits it (the names are chosen for
its rules): the attention and MLP matrices go to Muon; ``token_embedding`` and
``position_embedding`` (``nn.Embedding``) go to the fallback update; ``lm_head`` (found by its
name, or as the Linear sharing the embedding's weight when tied) goes to the fallback; norms and
biases (1-D) to the fallback. A tied embedding/head matrix is one tensor, optimised once under
the name ``model.token_embedding.weight``.

:class:`CharGPTModule` logs ``train_loss``, ``val_loss`` / ``test_loss`` (mean next-byte
cross-entropy, nats per byte) and ``val_bpb`` / ``test_bpb`` (bits per byte, ``loss / ln 2``);
at the end of ``fit`` it prints ``val_loss=... val_bpb=...`` of the last validation, which
(with :class:`~amuse_lightning.AmuseCallback`) is the averaged model ``x``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from lightning.pytorch import LightningModule
from lightning.pytorch.cli import OptimizerCallable
from torch import nn
from torch.nn import functional
from torch.optim import Optimizer

from amuse_lightning.examples.warmup import (
    check_warmup_settings,
    configure_with_warmup,
)
from amuse_lightning.lightning.mixin import AmuseMixin
from amuse_lightning.partition import Partition

__all__ = [
    "LM_AMUSE_DEFAULTS",
    "CausalSelfAttention",
    "CharGPT",
    "CharGPTModule",
    "build_char_gpt",
]

LM_AMUSE_DEFAULTS: dict[str, float | str] = {
    "lr": 1e-2,
    "beta1": 0.8,
    "beta_anneal_steps": "auto",
}
"""AMUSE settings used when :class:`CharGPTModule` gets no ``optimizer``."""


def _norm(kind: str, width: int) -> nn.Module:
    if kind == "layernorm":
        return nn.LayerNorm(width)
    if kind == "rmsnorm":
        return nn.RMSNorm(width)
    raise ValueError(f"norm must be 'layernorm' or 'rmsnorm', got {kind!r}")


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention: one ``qkv`` projection, SDPA with ``is_causal``."""

    def __init__(self, width: int, heads: int, dropout: float = 0.0) -> None:
        super().__init__()
        if width % heads != 0:
            raise ValueError(f"width {width} must be divisible by heads {heads}")
        self.heads, self.dropout = heads, dropout
        self.qkv = nn.Linear(width, 3 * width, bias=False)
        self.proj = nn.Linear(width, width, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, width = x.shape
        q, k, v = self.qkv(x).view(batch, length, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
        dropout = self.dropout if self.training else 0.0
        out = functional.scaled_dot_product_attention(q, k, v, dropout_p=dropout, is_causal=True)
        return self.proj(out.transpose(1, 2).reshape(batch, length, width))


class MLP(nn.Module):
    """``up -> GELU -> down``, hidden width ``ratio * width``."""

    def __init__(self, width: int, ratio: int = 4) -> None:
        super().__init__()
        self.up = nn.Linear(width, ratio * width, bias=False)
        self.down = nn.Linear(ratio * width, width, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(functional.gelu(self.up(x)))


class Block(nn.Module):
    """Pre-norm residual block: ``x + attn(norm1(x))``, then ``x + mlp(norm2(x))``."""

    def __init__(self, width: int, heads: int, mlp_ratio: int, norm: str, dropout: float) -> None:
        super().__init__()
        self.norm1, self.norm2 = _norm(norm, width), _norm(norm, width)
        self.attn = CausalSelfAttention(width, heads, dropout)
        self.mlp = MLP(width, mlp_ratio)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop(self.attn(self.norm1(x)))
        return x + self.drop(self.mlp(self.norm2(x)))


class CharGPT(nn.Module):
    """Decoder-only transformer over byte/char ids; ``forward(ids (B, T)) -> logits (B, T, V)``.

    See :func:`build_char_gpt` for the arguments.
    """

    def __init__(
        self,
        vocab_size: int = 256,
        width: int = 128,
        depth: int = 4,
        heads: int = 4,
        context: int = 128,
        tie_embeddings: bool = True,
        mlp_ratio: int = 4,
        norm: str = "layernorm",
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        for name, value in (
            ("vocab_size", vocab_size),
            ("width", width),
            ("depth", depth),
            ("heads", heads),
            ("context", context),
            ("mlp_ratio", mlp_ratio),
        ):
            if value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        self.context, self.tie_embeddings = context, tie_embeddings
        self.token_embedding = nn.Embedding(vocab_size, width)
        self.position_embedding = nn.Embedding(context, width)
        self.drop = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(
            Block(width, heads, mlp_ratio, norm, dropout) for _ in range(depth)
        )
        self.norm = _norm(norm, width)
        self.lm_head = nn.Linear(width, vocab_size, bias=False)
        if tie_embeddings:
            self.lm_head.weight = self.token_embedding.weight
        self.reset_parameters(depth)

    def reset_parameters(self, depth: int) -> None:
        """GPT-2 init: N(0, 0.02) weights, residual output projections scaled by
        ``1 / sqrt(2 * depth)``, norms at 1 / 0."""
        for name, p in self.named_parameters():
            if p.ndim >= 2:
                residual = name.endswith(("attn.proj.weight", "mlp.down.weight"))
                nn.init.normal_(p, std=0.02 / math.sqrt(2 * depth) if residual else 0.02)
        for m in self.modules():
            if isinstance(m, (nn.LayerNorm, nn.RMSNorm)):
                m.reset_parameters()

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        length = ids.shape[-1]
        if length > self.context:
            raise ValueError(f"sequence length {length} exceeds the context {self.context}")
        positions = torch.arange(length, device=ids.device)
        x = self.drop(self.token_embedding(ids) + self.position_embedding(positions))
        for block in self.blocks:
            x = block(x)
        return self.lm_head(self.norm(x))


def build_char_gpt(
    vocab_size: int = 256,
    width: int = 128,
    depth: int = 4,
    heads: int = 4,
    context: int = 128,
    tie_embeddings: bool = True,
    mlp_ratio: int = 4,
    norm: str = "layernorm",
    dropout: float = 0.0,
) -> CharGPT:
    """A :class:`CharGPT`: ``depth`` pre-norm blocks of ``width`` channels and ``heads`` heads,
    a learned position table of ``context`` rows, ``norm`` ``"layernorm"`` or ``"rmsnorm"``,
    and the output head tied to the token embedding when ``tie_embeddings``."""
    return CharGPT(
        vocab_size, width, depth, heads, context, tie_embeddings, mlp_ratio, norm, dropout
    )


def lm_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy in nats per token."""
    return functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))


class CharGPTModule(AmuseMixin, LightningModule):
    """:class:`CharGPT` trained with AMUSE on next-byte prediction.

    Args:
        vocab_size, width, depth, heads, context, tie_embeddings, mlp_ratio, norm, dropout:
            the model (:func:`build_char_gpt`).
        optimizer: ``param_groups -> Optimizer`` (LightningCLI ``OptimizerCallable``); ``None``
            builds AMUSE with :data:`LM_AMUSE_DEFAULTS`.
        fallback_lr: lr of the fallback groups (embeddings, head, norms); ``None``: the
            optimizer's ``lr``.
        weight_decay: weight decay of the matrices (``None``: the optimizer's); 1-D tensors
            get none.
        warmup_fraction: ``warmup_steps = max(2, round(f * total optimizer steps))``; ``None``
            (default) keeps the optimizer's own ``warmup_steps``; setting both is an error
            (:mod:`amuse_lightning.examples.warmup`).
        muon_patterns, fallback_patterns: parameter-name globs forcing a side of the partition.
        print_summary: print ``val_loss=... val_bpb=...`` when ``fit`` ends (rank 0).
    """

    def __init__(
        self,
        vocab_size: int = 256,
        width: int = 128,
        depth: int = 4,
        heads: int = 4,
        context: int = 128,
        tie_embeddings: bool = True,
        mlp_ratio: int = 4,
        norm: str = "layernorm",
        dropout: float = 0.0,
        optimizer: OptimizerCallable | None = None,
        fallback_lr: float | None = None,
        weight_decay: float | None = None,
        warmup_fraction: float | None = None,
        muon_patterns: Sequence[str] = (),
        fallback_patterns: Sequence[str] = (),
        print_summary: bool = True,
    ) -> None:
        super().__init__()
        check_warmup_settings(warmup_fraction, optimizer)
        self.save_hyperparameters(ignore=["optimizer"])
        self.model = build_char_gpt(
            vocab_size, width, depth, heads, context, tie_embeddings, mlp_ratio, norm, dropout
        )
        self.optimizer = optimizer
        self.fallback_lr, self.weight_decay = fallback_lr, weight_decay
        self.warmup_fraction = warmup_fraction
        self.muon_patterns, self.fallback_patterns = tuple(muon_patterns), tuple(fallback_patterns)
        self.print_summary = print_summary

    # -- optimisation ------------------------------------------------------------------------

    def amuse_param_groups(self, partition: Partition) -> list[dict]:
        return partition.param_groups(weight_decay=self.weight_decay, fallback_lr=self.fallback_lr)

    @classmethod
    def check_init_args(cls, init_args: Mapping[str, Any]) -> None:
        """Check parsed ``init_args`` before anything is built (the CLI calls this)."""
        check_warmup_settings(init_args.get("warmup_fraction"), init_args.get("optimizer"))

    def configure_optimizers(self) -> Optimizer:
        """AmuseMixin's optimizer, with ``warmup_steps`` from ``warmup_fraction`` when set
        (:func:`~amuse_lightning.examples.warmup.configure_with_warmup`)."""
        return configure_with_warmup(self, LM_AMUSE_DEFAULTS)

    # -- steps -------------------------------------------------------------------------------

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.model(ids)

    def training_step(self, batch: Sequence[torch.Tensor], batch_idx: int) -> torch.Tensor:
        inputs, targets = batch
        loss = lm_loss(self(inputs), targets)
        self.log("train_loss", loss, prog_bar=True)
        return loss

    def _eval_step(self, batch: Sequence[torch.Tensor], stage: str) -> None:
        inputs, targets = batch
        loss = lm_loss(self(inputs), targets)
        size = targets.numel()
        self.log(f"{stage}_loss", loss, batch_size=size, sync_dist=True, prog_bar=True)
        self.log(f"{stage}_bpb", loss / math.log(2), batch_size=size, sync_dist=True)

    def validation_step(self, batch: Sequence[torch.Tensor], batch_idx: int) -> None:
        self._eval_step(batch, "val")

    def test_step(self, batch: Sequence[torch.Tensor], batch_idx: int) -> None:
        self._eval_step(batch, "test")

    def on_fit_end(self) -> None:
        self._print_metrics("val")

    def on_test_end(self) -> None:
        self._print_metrics("test")

    def _print_metrics(self, stage: str) -> None:
        metrics = self.trainer.callback_metrics
        loss = metrics.get(f"{stage}_loss")
        if self.print_summary and loss is not None and self.trainer.is_global_zero:
            print(
                f"{stage}_loss={float(loss):.4f} {stage}_bpb={float(loss) / math.log(2):.4f}",
                flush=True,
            )

    @torch.no_grad()
    def generate(
        self,
        prompt: bytes,
        new_bytes: int,
        temperature: float = 1.0,
        generator: torch.Generator | None = None,
    ) -> bytes:
        """Sample ``new_bytes`` bytes after ``prompt`` (temperature 0: greedy). An empty prompt
        starts after the document separator (byte 0), as a file does in the corpus."""
        start = list(prompt) or [0]
        ids = torch.tensor(start, device=self.device)[None]
        for _ in range(new_bytes):
            logits = self(ids[:, -self.model.context :])[0, -1]
            if temperature == 0:
                nxt = logits.argmax()
            else:
                probs = torch.softmax(logits.float() / temperature, dim=-1).cpu()
                nxt = torch.multinomial(probs, 1, generator=generator)[0].to(ids.device)
            ids = torch.cat([ids, nxt.view(1, 1)], dim=1)
        return bytes(ids[0, len(start) :].tolist())
