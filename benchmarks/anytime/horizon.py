"""The horizon study: the byte-level GPT of :mod:`.lm` at a width small enough for a CPU, taken
from 200 to 6,400 steps (budgets doubling; 32x round 1's longest LM budget of 200), to see how the
gap of ``x`` and of the finished model to budget-tuned Muon + cosine changes with run length.

Differences from :mod:`.lm`: width 64 (2 layers, 4 heads, context 64, batch 8; ~17 ms per step on
one idle core here), the corpus's default 6 MB (5.6 MB of training bytes: 6,400 steps of 8 x 64
bytes read 3.3 MB, so windows rarely repeat; round 1's 2 MB corpus leaves only 7 kB of validation
text), 512 evaluation windows (32 kB) per split. AMUSE warms up for a fixed 10 steps (5 % of the
shortest budget, as round 1's LM had): a warmup tied to the longest budget would hold ``x`` inside
warmup at the short budgets and so bend the gap-vs-horizon curve. The finisher is the variant
round 2 chose on the round-1 LM task (``fixed_variant``), not re-chosen here.

Compute cuts (a shared 2-core machine at loads of 4-7 and one session's time): seeds 1 and 2 run
only to 1,600 steps (3 seeds at 200-1,600, 1 seed at 3,200-6,400); Muon + cosine for
``t + round(f t)`` steps runs once, at the lr the sweep chose for ``t`` (``equal_lr_from_t``); no
screen of a longer AMUSE warmup; no 12,800-step budget.
"""

from __future__ import annotations

import dataclasses

from .lm import LMConfig, LMTask
from .probes import FinisherConfig
from .protocol import StudyConfig

HORIZON = LMConfig(
    width=64,
    depth=2,
    heads=4,
    context=64,
    batch_size=8,
    max_bytes=6_000_000,
    eval_windows=512,
    budgets=(200, 400, 800, 1600, 3200, 6400),
)
QUICK = LMConfig(
    width=32,
    depth=1,
    heads=2,
    context=32,
    batch_size=8,
    max_bytes=1_000_000,
    eval_windows=16,
    budgets=(8, 16, 32),
)
# the finisher chosen on the round-1 LM task (anytime_lm_finisher.json, meta.selection.variant)
LM_VARIANT = "y/linear/f=0.2/lr_x0.3"


class HorizonTask(LMTask):
    name = "horizon"

    def __init__(self, quick: bool = False) -> None:
        self.cfg = QUICK if quick else HORIZON
        grid = (3e-3, 1e-2) if quick else (3e-3, 1e-2, 3e-2)
        self.study = StudyConfig(
            budgets=self.cfg.budgets,
            lr_grid={"muon_cosine": grid, "amuse": grid},
            weight_decay=0.05,
            seeds=(0, 1) if quick else (0, 1, 2),
            workers=1,
        )
        short = max(2, round(0.05 * min(self.cfg.budgets)))
        self.finishing = FinisherConfig(
            # 0.1 added after AMUSE chose the top of the grid (3e-2) by the anytime criterion
            amuse_lrs=grid if quick else (*grid, 1e-1),
            amuse_settings=(("warmup_steps", short),),
            fixed_variant=LM_VARIANT,
            final_max_budget=16 if quick else 1600,
            equal_lr_from_t=True,
        )


class HorizonStartsTask(HorizonTask):
    """The horizon task's finisher grid, after the LM's variant fell behind ``x`` itself at the
    longest budgets (at 6,400 steps the finished model, from ``y``, scored 0.09 nats worse than
    ``x``): start ``x`` / ``y`` x lr factor 0.03 / 0.1 / 0.3 (linear, f = 0.2; 0.03 added when 0.1
    won at the bottom of 0.1 / 0.3), chosen on validation by
    the finisher protocol at the lr the horizon study chose for ``x`` (3e-2). The cosine runs
    are the horizon study's (``--resume`` from a copy of ``anytime_horizon.json``: same specs)."""

    name = "horizon_starts"

    def __init__(self, quick: bool = False) -> None:
        super().__init__(quick)
        self.finishing = dataclasses.replace(
            self.finishing,
            amuse_lrs=(1e-2,) if quick else (3e-2,),
            starts=("x", "y"),
            shapes=("linear",),
            fractions=(0.2,),
            lr_factors=(0.03, 0.1, 0.3),  # 0.03: 0.1 won at the bottom of (0.1, 0.3)
            fixed_variant=None,
        )
