"""The places that lean on Lightning internals: one private attribute, one module name.

Everything else in the Lightning layer uses public API. One thing has none: before the fit loop
sets up its data (the sanity check runs first), a train dataloader passed as
``trainer.fit(model, train_dataloaders=loader)`` is only reachable through the fit loop's data
source, and without it a module's own ``train_dataloader`` cannot be told apart from it.
:func:`private_attribute` reads it and, should a Lightning release rename it, fails with an error
that names the attribute and the way around it instead of an ``AttributeError`` deep inside a
hook.

:func:`sweep_at_applied_rates` makes Lightning's learning-rate finder (``LearningRateFinder``,
also what ``Tuner.lr_find`` adds) sweep the rates AMUSE applies: the finder replaces every
callback by its own while it sweeps, so the only way in is its public ``lr_find`` method, which
gets a thin wrapper on the finder instance (taken off again at ``teardown``).
"""

from __future__ import annotations

from typing import Any

import lightning

from amuse_lightning.lightning.planned import fill_planned_steps

__all__ = ["private_attribute", "remove_lr_finder_wrappers", "sweep_at_applied_rates"]

_WRAPPED = "_amuse_sweeps_applied_rates"


def private_attribute(owner: Any, path: str, workaround: str) -> Any:
    """``owner.<path>`` (dotted) for a private Lightning attribute; a clear ``RuntimeError``
    naming the attribute, the Lightning version and ``workaround`` if it is missing."""
    value = owner
    try:
        for name in path.split("."):
            value = getattr(value, name)
    except AttributeError as error:
        raise RuntimeError(
            f"amuse-lightning reads the private attribute {type(owner).__name__}.{path}, which "
            f"lightning {lightning.__version__} does not have (written against lightning 2.6). "
            f"{workaround}"
        ) from error
    return value


def sweep_at_applied_rates(callbacks: list[Any]) -> None:
    """Wrap the ``lr_find`` of every ``LearningRateFinder`` in ``callbacks`` so that during its
    range test a schedule-free optimizer's warm-up is off (and AMUSE's rise of ``beta_t``,
    anchored at the end of warm-up): the rate applied at every step is then the rate the finder
    sets and records, instead of that rate times ``t / warmup_steps``. The settings come back
    after the sweep. The finder sweeps from its own ``on_fit_start``, which may run before
    AmuseCallback's, so ``beta_anneal_steps="auto"`` is filled in here first."""
    from lightning.pytorch.callbacks import LearningRateFinder

    for callback in callbacks:
        if isinstance(callback, LearningRateFinder) and _WRAPPED not in callback.__dict__:
            original = callback.lr_find

            def lr_find(trainer: Any, pl_module: Any, _original: Any = original) -> Any:
                for optimizer in trainer.optimizers:
                    fill_planned_steps(unwrap(optimizer), trainer)
                saved = [_without_warmup(unwrap(o)) for o in trainer.optimizers]
                try:
                    return _original(trainer, pl_module)
                finally:  # the finder restored the optimizer from its own checkpoint,
                    # written after the warm-up was switched off: put the settings back
                    for optimizer, groups in zip(trainer.optimizers, saved, strict=False):
                        _restore(unwrap(optimizer), groups)

            callback.lr_find = lr_find
            callback.__dict__[_WRAPPED] = True


def remove_lr_finder_wrappers(callbacks: list[Any]) -> None:
    """Undo :func:`sweep_at_applied_rates`."""
    for callback in callbacks:
        if callback.__dict__.pop(_WRAPPED, False):
            del callback.__dict__["lr_find"]


def _without_warmup(optimizer: Any) -> list[dict[str, Any]]:
    """Switch warm-up (and the rise or annealing of ``beta_t``) off in every group; returns the
    values to put back."""
    off = {"warmup_steps": 1, "rho": 0.0, "beta_anneal_steps": 0}
    saved = []
    for group in optimizer.param_groups:
        saved.append({k: group[k] for k in off if k in group})
        group.update({k: v for k, v in off.items() if k in group})
    return saved


def _restore(optimizer: Any, saved: list[dict[str, Any]]) -> None:
    for group, values in zip(optimizer.param_groups, saved, strict=True):
        group.update(values)


def unwrap(optimizer: Any) -> Any:
    """The torch optimizer behind a ``LightningOptimizer`` (anything else as it is)."""
    return getattr(optimizer, "optimizer", optimizer)
