"""A Lightning ``Trainer`` for tests: CPU, one device, no logger, checkpoints or progress bar."""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl


def quiet_trainer(**kwargs: Any) -> pl.Trainer:
    """``pl.Trainer`` with quiet test defaults; ``kwargs`` override any of them."""
    defaults: dict[str, Any] = dict(
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
        devices=1,
    )
    return pl.Trainer(**{**defaults, **kwargs})
