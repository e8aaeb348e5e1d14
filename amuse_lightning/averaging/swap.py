"""WeightSwap: move a schedule-free optimizer's parameters between ``y`` and ``x``, exactly.

A schedule-free optimizer converts its parameters in place: ``optimizer.eval()`` turns ``y`` into
the averaged model ``x`` and ``optimizer.train()`` turns ``x`` back into
``y = (1 - beta) z + beta x``; ``group["train_mode"]`` says which one the parameters hold. The
round trip through ``train()`` moves ``y`` by rounding error; keeping a copy of ``y`` while ``x``
is in the parameters makes it bit-exact. FSDP2 parameters (DTensors) are handled shard by shard:
the conversions are elementwise and the copy of ``y`` is a copy of each rank's local shard.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from amuse_lightning.optim.distributed import is_dtensor


class WeightSwap:
    """Moves the parameters of one schedule-free optimizer between ``y`` and ``x``.

    ``to_x`` calls ``optimizer.eval()``; with ``exact=True`` it first copies ``y`` into buffers
    allocated once (outside ``inference_mode``, so they can be reused from any context, on
    ``copy_device``), and ``to_y`` then writes that copy back and marks every group
    ``train_mode=True``. That round trip is bit-exact, unlike ``optimizer.train()``, which
    recomputes ``y = (1 - beta) z + beta x`` in floating point.

    Args:
        optimizer: an optimizer with ``train()``/``eval()`` and ``group["train_mode"]``.
        exact: keep a copy of ``y`` (``True``) or convert in place (``False``).
        copy_device: ``"same"`` (the parameter's device) or ``"cpu"``.
    """

    def __init__(
        self, optimizer: torch.optim.Optimizer, exact: bool = True, copy_device: str = "same"
    ):
        self.optimizer = optimizer
        self.exact = exact
        self.copy_device = copy_device
        self._buffers: list[Tensor] | None = None
        self._copied: list[Tensor] | None = None  # the parameters the buffers belong to
        self._copy_valid = False

    @property
    def params(self) -> list[Tensor]:
        """The optimizer's parameters, group by group."""
        return [p for group in self.optimizer.param_groups for p in group["params"]]

    @property
    def local_params(self) -> list[Tensor]:
        """:attr:`params` with each DTensor replaced by this rank's shard (same storage)."""
        return _local(self.params)

    @property
    def holds_x(self) -> bool:
        """Whether the parameters hold ``x`` (every group in eval mode).

        A group whose conversion changes nothing (no parameter has ``z`` yet: never stepped,
        e.g. added by ``add_param_group`` during an evaluation or by ``BaseFinetuning``) holds
        ``x = y`` in either mode; its flag is first set to the mode of the other groups.
        """
        self._align_unconverted_groups()
        modes = {bool(group["train_mode"]) for group in self.optimizer.param_groups}
        if len(modes) > 1:
            raise RuntimeError(
                "The optimizer's param groups disagree on train_mode (some hold y, some x). "
                "Call optimizer.train() or optimizer.eval() on the whole optimizer, never on a "
                "single group."
            )
        return modes == {False}

    def _align_unconverted_groups(self) -> None:
        groups = self.optimizer.param_groups
        if len({bool(group["train_mode"]) for group in groups}) < 2:
            return
        unconverted = [_converts_nothing(self.optimizer, group) for group in groups]
        modes = {bool(g["train_mode"]) for g, free in zip(groups, unconverted, strict=True)
                 if not free}  # fmt: skip
        if len(modes) > 1:
            return  # groups that did step disagree: holds_x raises
        mode = modes.pop() if modes else bool(groups[0]["train_mode"])
        for group, free in zip(groups, unconverted, strict=True):
            if free:
                group["train_mode"] = mode

    @property
    def y_copy(self) -> list[Tensor] | None:
        """The stored ``y`` (aligned with :attr:`local_params`) while the parameters hold ``x``;
        a parameter added since the copy was made never stepped, so its ``y`` is itself."""
        if not (self._copy_valid and self.holds_x):
            return None
        assert self._buffers is not None and self._copied is not None
        stored = {id(p): value for p, value in zip(self._copied, self._buffers, strict=True)}
        return [
            stored.get(id(p), local.detach())
            for p, local in zip(self.params, self.local_params, strict=True)
        ]

    @torch.no_grad()
    def to_x(self, exact: bool | None = None) -> bool:
        """Turn ``y`` into ``x``; returns ``False`` when the parameters already held ``x``."""
        if self.holds_x:
            return False
        self._copy_valid = False
        if self.exact if exact is None else exact:
            self._store_y()
        self.optimizer.eval()
        return True

    @torch.no_grad()
    def to_y(self) -> bool:
        """Bring ``y`` back (exactly when a copy exists); returns ``False`` if nothing to do."""
        if not self.holds_x:
            self._copy_valid = False
            return False
        if self._copy_valid:
            assert self._buffers is not None and self._copied is not None
            _copy_all(_local(self._copied), self._buffers)
            for group in self.optimizer.param_groups:
                group["train_mode"] = True
        else:
            self.optimizer.train()
        self._copy_valid = False
        if not self.exact:
            self._buffers = self._copied = None
        return True

    @torch.no_grad()
    def set_y_copy(self, values: list[Tensor]) -> None:
        """Record ``values`` as the ``y`` that belongs to the ``x`` now in the parameters."""
        self._allocate()
        assert self._buffers is not None
        _copy_all(self._buffers, values)
        self._copy_valid = True

    def _allocate(self) -> None:
        params = self.params
        copied = self._copied
        if copied is not None and [id(p) for p in copied] == [id(p) for p in params]:
            return
        self._copied = params
        with torch.inference_mode(False):
            self._buffers = [
                torch.empty_like(p, device="cpu" if self.copy_device == "cpu" else p.device)
                for p in _local(params)
            ]

    def _store_y(self) -> None:
        self.set_y_copy([p.detach() for p in self.local_params])


def _local(params: list[Tensor]) -> list[Tensor]:
    """Each DTensor replaced by this rank's shard (same storage)."""
    return [p.to_local() if is_dtensor(p) else p for p in params]


def _converts_nothing(optimizer: torch.optim.Optimizer, group: dict[str, Any]) -> bool:
    """Whether ``train()``/``eval()`` leave ``group``'s parameters unchanged (no ``z`` yet)."""
    return all("z" not in optimizer.state.get(p, {}) for p in group["params"])


def _copy_all(targets: list[Tensor], sources: list[Tensor]) -> None:
    """``target.copy_(source)`` for every pair; one fused call when everything shares a device."""
    if all(t.device == s.device for t, s in zip(targets, sources, strict=True)):
        torch._foreach_copy_(targets, sources)
        return
    for target, source in zip(targets, sources, strict=True):
        target.copy_(source)
