"""The save hook stand-in: ``x`` in checkpoints written with ``save_weights_only=True``.

``save_weights_only=True`` makes Lightning skip every callback's ``on_save_checkpoint``, but it
still calls the LightningModule's. :func:`install_module_save_hook` therefore puts a thin
stand-in for ``pl_module.on_save_checkpoint`` on the module instance; it calls ``write_x`` first,
then the module's own hook. :func:`remove_module_save_hook` takes it away.

The stand-in is given two callables, never the callback: ``write_x(trainer, module,
checkpoint)`` and ``is_attached(trainer)`` (is the owner of ``write_x`` one of this Trainer's
callbacks?). Bound methods are held through :class:`weakref.WeakMethod`, so the module does not
keep the callback (and through it the optimizer) alive, and ``copy.deepcopy`` or pickling the
module during ``fit`` does not drag them along: a copy gets a detached stand-in that only calls
the module's own hook. Only public Lightning API is used (``LightningModule.trainer``).
"""

from __future__ import annotations

import inspect
import weakref
from collections.abc import Callable
from typing import Any

from lightning.pytorch import LightningModule, Trainer

__all__ = ["WriteX", "install_module_save_hook", "remove_module_save_hook"]

WriteX = Callable[[Trainer, LightningModule, dict[str, Any]], None]
IsAttached = Callable[[Trainer], bool]
_HOOK = "on_save_checkpoint"


def _weak(fn: Callable | None) -> Callable[[], Callable | None]:
    """A weak reference for bound methods (the usual case), a plain closure over anything else."""
    if fn is None:
        return lambda: None
    if inspect.ismethod(fn):
        return weakref.WeakMethod(fn)
    return lambda: fn


class _ModuleSaveHook:
    """Replaces ``pl_module.on_save_checkpoint`` on the instance: lets ``write_x`` put ``x`` into
    checkpoints the callback hook did not see, then calls the module's own hook."""

    def __init__(
        self,
        module: LightningModule,
        write_x: WriteX | None,
        is_attached: IsAttached | None,
        instance_hook: Callable[[dict[str, Any]], None] | None,
    ) -> None:
        self.module = module
        self._write_x = _weak(write_x)
        self._is_attached = _weak(is_attached)
        self.instance_hook = instance_hook  # an instance attribute the user had set, if any

    def writes_with(self, write_x: WriteX) -> bool:
        """Whether this stand-in calls ``write_x`` (bound methods compare by owner and function)."""
        return self._write_x() == write_x

    def __call__(self, checkpoint: dict[str, Any]) -> None:
        write_x, is_attached = self._write_x(), self._is_attached()
        if write_x is not None and is_attached is not None:
            try:
                trainer = self.module.trainer
            except RuntimeError:  # not attached to a Trainer
                trainer = None
            if trainer is not None and is_attached(trainer):
                write_x(trainer, self.module, checkpoint)
        if self.instance_hook is not None:
            self.instance_hook(checkpoint)
        else:
            type(self.module).on_save_checkpoint(self.module, checkpoint)

    def __reduce__(self) -> tuple[Any, ...]:
        """Copies and pickles are detached: they only call the module's own hook."""
        return (_ModuleSaveHook, (self.module, None, None, self.instance_hook))


def install_module_save_hook(
    pl_module: LightningModule, write_x: WriteX, is_attached: IsAttached
) -> None:
    """Put the stand-in on ``pl_module`` (replacing one another owner left behind)."""
    current = pl_module.__dict__.get(_HOOK)
    if isinstance(current, _ModuleSaveHook):
        if current.writes_with(write_x):
            return
        current = current.instance_hook
    hook = _ModuleSaveHook(pl_module, write_x, is_attached, current)
    object.__setattr__(pl_module, _HOOK, hook)


def remove_module_save_hook(pl_module: LightningModule, write_x: WriteX) -> None:
    """Restore ``pl_module.on_save_checkpoint`` if the stand-in calling ``write_x`` is on it."""
    hook = pl_module.__dict__.get(_HOOK)
    if not isinstance(hook, _ModuleSaveHook) or not hook.writes_with(write_x):
        return
    if hook.instance_hook is not None:
        object.__setattr__(pl_module, _HOOK, hook.instance_hook)
    else:
        del pl_module.__dict__[_HOOK]
