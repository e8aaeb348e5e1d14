"""What AmuseCallback logs each step: the schedule every param group carries.

AMUSE keeps ``beta_t``, the warmed-up ``lr_t`` and the averaging weight ``c_t`` of its last step
in each param group; Meta's ``schedulefree`` optimizers keep ``scheduled_lr``. The callback logs
them as ``amuse/{beta_t,lr_t,c_t}/group{i}`` with ``LightningModule.log_dict``, so they reach the
loggers every ``log_every_n_steps`` like any other step metric.
"""

from __future__ import annotations

import torch

__all__ = ["schedule_metrics"]

# logged name -> the keys an optimizer may store it under (AMUSE first, then schedulefree)
_SCHEDULE_KEYS: dict[str, tuple[str, ...]] = {
    "beta_t": ("beta_t",),
    "lr_t": ("lr_t", "scheduled_lr"),
    "c_t": ("c_t",),
}


def schedule_metrics(optimizer: torch.optim.Optimizer) -> dict[str, float]:
    """``{"amuse/{beta_t,lr_t,c_t}/group{i}": value}`` for what each param group carries."""
    metrics = {}
    for index, group in enumerate(optimizer.param_groups):
        for name, keys in _SCHEDULE_KEYS.items():
            key = next((k for k in keys if k in group), None)
            if key is not None:
                metrics[f"amuse/{name}/group{index}"] = float(group[key])
    return metrics
