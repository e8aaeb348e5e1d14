"""The save hook stand-in: ``x`` in checkpoints written with ``save_weights_only=True``.

``save_weights_only=True`` makes Lightning skip every callback's ``on_save_checkpoint``, but it
still calls the LightningModule's. :func:`install_module_save_hook` therefore puts a thin
stand-in for ``pl_module.on_save_checkpoint`` on the module instance (it lets the callback write
``x`` first, then calls the module's own hook); :func:`remove_module_save_hook` takes it away.
Only public hooks are used. While the module is attached to a Trainer without the callback, the
stand-in only calls the module's hook.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from lightning.pytorch import LightningModule

if TYPE_CHECKING:
    from amuse_lightning.lightning.callback import AmuseCallback


class _ModuleSaveHook:
    """Replaces ``pl_module.on_save_checkpoint`` on the instance: writes ``x`` for checkpoints
    the callback hook did not see (``save_weights_only=True``), then calls the module's hook."""

    def __init__(
        self,
        callback: AmuseCallback,
        module: LightningModule,
        original: Callable[[dict[str, Any]], None],
        had_instance_attribute: bool,
    ):
        self.callback = callback
        self.module = module
        self.original = original
        self.had_instance_attribute = had_instance_attribute

    def __call__(self, checkpoint: dict[str, Any]) -> None:
        trainer = self.module._trainer
        if trainer is not None and any(cb is self.callback for cb in trainer.callbacks):
            self.callback._write_checkpoint(trainer, self.module, checkpoint, full=False)
        self.original(checkpoint)


def install_module_save_hook(callback: AmuseCallback, pl_module: LightningModule) -> None:
    """Put the stand-in on ``pl_module`` (replacing one another callback left behind)."""
    current = pl_module.__dict__.get("on_save_checkpoint")
    if isinstance(current, _ModuleSaveHook):
        if current.callback is callback:
            return
        current = current.original
    original = pl_module.on_save_checkpoint if current is None else current
    hook = _ModuleSaveHook(callback, pl_module, original, current is not None)
    object.__setattr__(pl_module, "on_save_checkpoint", hook)


def remove_module_save_hook(callback: AmuseCallback, pl_module: LightningModule) -> None:
    """Restore ``pl_module.on_save_checkpoint`` if ``callback``'s stand-in is on it."""
    hook = pl_module.__dict__.get("on_save_checkpoint")
    if not isinstance(hook, _ModuleSaveHook) or hook.callback is not callback:
        return
    if hook.had_instance_attribute:
        object.__setattr__(pl_module, "on_save_checkpoint", hook.original)
    else:
        del pl_module.__dict__["on_save_checkpoint"]
