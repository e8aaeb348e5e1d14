"""AMUSE: Anytime MUon with Stable gradient Evaluation (arXiv 2605.22432), plain PyTorch.

Three sequences per parameter (docs/algorithm.md#sequences): the fast sequence ``z`` moved by the
direction, its Schedule-Free average ``x`` and the gradient point ``y = (1 - beta_t) z + beta_t x``.
While training, the parameter holds ``y`` and the state holds ``z``; ``x`` is recovered as
``x = y + (1 - 1/beta) (z - y)`` with the beta that built ``y``. One step of a group::

    lr_t    = lr * lr_scale * min(1, t / T0)
    c_t     = w_t / sum_{s<=t} w_s,            w_t = t^r lr_t^weight_lr_power
    beta_t  = beta1 (t <= T0),   1 - S_t^rho (1 - beta1) after warmup
    z_{t+1} = z_t (1 - lr_t wd) - lr_t U_t
    x_{t+1} = x_t + c_t (z_{t+1} - x_t)
    y_{t+1} = x_{t+1} + (1 - beta_t)(z_{t+1} - x_{t+1})
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor
from torch.optim import Optimizer

from .directions import MatrixMap, compute_direction, map_matrices, muon_parts, ns_dtype_name
from .distributed import (
    RankSplit,
    ShardedMatrixMap,
    check_dtensor_layout,
    is_dtensor,
    split_world_size,
)
from .schedule import ScheduleState, ScheduleStep, advance_schedule, warn_if_degenerate
from .validation import NONFINITE_POLICIES, normalise_groups, validate_group

__all__ = ["AMUSE", "SFMuon"]


class AMUSE(Optimizer):
    """AMUSE: Muon directions for matrices, Schedule-Free averaging, no learning-rate schedule.

    Args:
        params: parameters or param-group dicts. Group keys: ``use_muon`` (or timm's
            ``use_fallback``), ``direction`` (``"muon"``, ``"adamuon"``, ``"spectral"``),
            ``update_type`` (fallback: ``"adamw"`` or ``"sgd"``), ``aux_update_type`` (Muon
            scaling: ``"adamw"`` or ``"sgd"``), ``lr``, ``lr_scale``, ``weight_decay`` and any
            argument below. A flat list is split: matrices to Muon, the rest to the fallback.
        lr: base learning rate of both groups (with ``aux_update_type="adamw"`` the Muon update
            has RMS 0.2, so AdamW-like learning rates serve both).
        beta1: interpolation ``beta`` during warmup, in (0, 1]; ``beta = 1`` evaluates at x.
        rho: how fast ``beta_t`` rises to 1 after warmup; ``0`` keeps it at ``beta1`` (SFMuon).
        warmup_steps: ``T0 >= 1``, linear learning-rate warmup and the anchor of ``beta_t``.
        r, weight_lr_power: averaging weights ``w_t = t^r lr_t^weight_lr_power``.
        momentum, nesterov: Muon's EMA momentum and Nesterov input.
        weight_decay: decoupled decay applied to ``z``.
        weight_decay_at_y: decay of ``y`` that keeps ``x`` fixed (applied before the step).
        beta2, eps: second-moment decay and epsilon of the AdamW fallback (and AdaMuon's eps).
        ns_steps, ns_dtype: Newton-Schulz iterations and the dtype they run in (a torch dtype or
            its name, e.g. ``"float32"``; stored by name in the param groups).
        aux_update_type: Muon update scaling, ``"adamw"`` or ``"sgd"``.
        update_type: fallback update for non-Muon groups, ``"adamw"`` or ``"sgd"``.
        direction: Muon-side direction, ``"muon"``, ``"adamuon"`` or ``"spectral"``.
        spectral_power, spectral_input: ``p`` in {0, 0.25, 0.5, 1} and ``"momentum"`` or ``"rms"``
            for ``direction="spectral"``.
        reference_compat: recover ``x`` with the new ``beta_t`` as the public reference code does.
        averaging: ``False`` runs the bare direction (no z, no averaging; params are the iterate),
            to compare a direction with its own paper.
        nonfinite: non-finite gradients: ``"raise"`` (names the parameter), ``"skip"`` (warn and
            skip the whole step; state untouched) or ``"off"`` (no check, no host sync).
        distributed: split the Newton-Schulz work across data-parallel ranks (each rank
            orthogonalises its share, results are all-gathered; see ``distributed.py``).
            ``None`` (default): split when torch.distributed is initialised with more than one
            rank in ``process_group``; ``False``: every rank computes every matrix. Splitting
            assumes data-parallel replicas (the same gradients on every rank, as after DDP's
            all-reduce); pass ``False`` if ranks train different models or unsynced gradients.
        process_group: the data-parallel group to split over (default: the world).
            FSDP2 (DTensor) parameters: Newton-Schulz runs on whole matrices gathered over
            the parameters' own 1-D mesh (split over its ranks unless ``distributed=False``);
            everything elementwise runs on the local shards, and the state is sharded alike.
        foreach: ``True`` runs each step's elementwise work as foreach ops over the whole group
            and stacks same-shape matrices for Newton-Schulz (fast on accelerators); ``False``
            works one parameter at a time (fast on CPU); ``None`` (default) picks by device.
            Both give the same numbers.

    Modes follow Schedule-Free: ``eval()`` turns parameters into ``x`` in place, ``train()``
    back into ``y``; the mode is ``group["train_mode"]`` and is saved by ``state_dict()``.
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float = 1e-2,
        *,
        beta1: float = 0.8,
        rho: float = 0.3,
        warmup_steps: int = 100,
        r: float = 0.0,
        weight_lr_power: float = 2.0,
        momentum: float = 0.95,
        nesterov: bool = True,
        weight_decay: float = 0.0,
        weight_decay_at_y: float = 0.0,
        beta2: float = 0.999,
        eps: float = 1e-10,
        ns_steps: int = 5,
        ns_dtype: torch.dtype | str = torch.bfloat16,
        aux_update_type: str = "adamw",
        update_type: str = "adamw",
        direction: str = "muon",
        spectral_power: float = 0.0,
        spectral_input: str = "momentum",
        reference_compat: bool = False,
        averaging: bool = True,
        nonfinite: str = "raise",
        distributed: bool | None = None,
        process_group: dist.ProcessGroup | None = None,
        foreach: bool | None = None,
    ) -> None:
        if nonfinite not in NONFINITE_POLICIES:
            raise ValueError(f"nonfinite must be one of {NONFINITE_POLICIES}, got {nonfinite!r}")
        if distributed not in (None, True, False):
            raise ValueError(f"distributed must be None (auto), True or False, got {distributed!r}")
        defaults = dict(
            lr=lr, beta1=beta1, rho=rho, warmup_steps=warmup_steps, r=r,
            weight_lr_power=weight_lr_power, momentum=momentum, nesterov=nesterov,
            weight_decay=weight_decay, weight_decay_at_y=weight_decay_at_y, beta2=beta2, eps=eps,
            ns_steps=ns_steps, ns_dtype=ns_dtype_name(ns_dtype), aux_update_type=aux_update_type,
            update_type=update_type, direction=direction, spectral_power=spectral_power,
            spectral_input=spectral_input, lr_scale=1.0, reference_compat=reference_compat,
            averaging=averaging, train_mode=True, step=0, weight_sum=0.0, c_warmup=None,
            lr_t=0.0, c_t=0.0, beta_t=beta1,
        )  # fmt: skip
        self.nonfinite = nonfinite
        self.distributed = distributed
        self.process_group = process_group
        self.foreach = foreach
        self._rank_split: RankSplit | None = None
        self._sharded_maps: dict[int, ShardedMatrixMap] = {}
        super().__init__(normalise_groups(params), defaults)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a group; validated first so that a bad group leaves the optimizer unchanged."""
        for group in normalise_groups([param_group]):
            candidate = {**self.defaults, **group}
            validate_group(candidate, len(self.param_groups))
            check_dtensor_layout(candidate["params"])
            if candidate["averaging"]:
                warn_if_degenerate(candidate["warmup_steps"], candidate["rho"])
            if "ns_dtype" in group:  # stored by name: plain data for any state_dict reader
                group["ns_dtype"] = ns_dtype_name(group["ns_dtype"])
            super().add_param_group(group)

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        self.__dict__.setdefault("nonfinite", "raise")
        self.__dict__.setdefault("distributed", None)
        self.__dict__.setdefault("process_group", None)
        self.__dict__.setdefault("foreach", None)
        self.__dict__.setdefault("_rank_split", None)
        self.__dict__.setdefault("_sharded_maps", {})

    def _matrix_map(self, params: list[Tensor]) -> MatrixMap:
        """``map_matrices``, or a :class:`RankSplit` over ``process_group`` when splitting.

        FSDP2 (DTensor) parameters get a :class:`ShardedMatrixMap` over their own mesh.
        """
        if params and is_dtensor(params[0]):
            return self._sharded_map(params[0])
        if self.distributed is False:
            return map_matrices
        if split_world_size(self.process_group) == 1:
            if self.distributed:
                raise RuntimeError(
                    "AMUSE(distributed=True) needs torch.distributed initialised with more than "
                    "one rank; call init_process_group first or use distributed=None (auto)"
                )
            return map_matrices
        if self._rank_split is None:
            self._rank_split = RankSplit(self.process_group)
        return self._rank_split

    def _sharded_map(self, param: Tensor) -> ShardedMatrixMap:
        mesh = param.device_mesh
        key = id(mesh)
        if key not in self._sharded_maps:
            split = None
            if self.distributed is not False and mesh.size() > 1:
                split = RankSplit(mesh.get_group())
            self._sharded_maps[key] = ShardedMatrixMap(split)
        return self._sharded_maps[key]

    # ----------------------------------------------------------------- modes
    @torch.no_grad()
    def eval(self) -> None:
        """Parameters ``y -> x`` in place: ``x = y + (1 - 1/beta)(z - y)``. Idempotent."""
        for group in self.param_groups:
            if group["train_mode"]:
                self._convert(group, to_x=True)
                group["train_mode"] = False

    @torch.no_grad()
    def train(self) -> None:
        """Parameters ``x -> y`` in place: ``y = x + (1 - beta)(z - x)``. Idempotent."""
        for group in self.param_groups:
            if not group["train_mode"]:
                self._convert(group, to_x=False)
                group["train_mode"] = True

    def _convert(self, group: dict[str, Any], *, to_x: bool) -> None:
        params, zs, weights = [], [], []
        for p in group["params"]:
            state = self.state.get(p)
            if not state or "z" not in state:
                continue  # never stepped: x = y = z
            beta = state["beta"]
            params.append(p)
            zs.append(state["z"])
            weights.append(1.0 - 1.0 / beta if to_x else 1.0 - beta)
        if params:
            torch._foreach_lerp_(params, zs, weights)

    # ------------------------------------------------------------------ step
    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """One AMUSE step; ``closure`` (if given) runs under ``torch.enable_grad()``."""
        if not all(group["train_mode"] for group in self.param_groups):
            raise RuntimeError(
                "AMUSE.step() was called in eval mode (parameters hold the average x). Call "
                "optimizer.train() before training steps; AmuseCallback does this for Lightning."
            )
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        work = [(group, *self._params_with_grad(group)) for group in self.param_groups]
        if self.nonfinite != "off" and not self._gradients_finite(work):
            return loss
        for group, params, grads in work:
            self._step_group(group, params, grads)
        return loss

    def _params_with_grad(self, group: dict[str, Any]) -> tuple[list[Tensor], list[Tensor]]:
        params, grads = [], []
        for p in group["params"]:
            if p.grad is None:
                continue
            if p.grad.is_sparse:
                raise RuntimeError("AMUSE does not support sparse gradients; use a dense module.")
            if torch.is_complex(p.grad):
                raise RuntimeError(
                    "AMUSE does not support complex parameters; view them as real "
                    "(torch.view_as_real) before optimising."
                )
            params.append(p)
            grads.append(p.grad)
        return params, grads

    def _gradients_finite(self, work: list[tuple[dict, list[Tensor], list[Tensor]]]) -> bool:
        grads = [g for _, _, group_grads in work for g in group_grads]
        if not grads:
            return True
        # A 2-norm is one fast pass (the inf-norm is ~10x slower on CPU); it can overflow only for
        # absurdly large finite gradients, which the exact per-tensor check below then clears.
        low = [g for g in grads if g.dtype in (torch.float16, torch.bfloat16)]
        high = [g for g in grads if g.dtype not in (torch.float16, torch.bfloat16)]
        norms = list(torch._foreach_norm(low, 2, dtype=torch.float32)) if low else []
        norms += list(torch._foreach_norm(high, 2)) if high else []
        by_device: dict[torch.device, list[Tensor]] = {}
        for norm in norms:
            by_device.setdefault(norm.device, []).append(norm)
        if all(bool(torch.stack(norms).isfinite().all()) for norms in by_device.values()):
            return True
        name = self._first_nonfinite(work)
        if name is None:
            return True
        if self.nonfinite == "raise":
            raise FloatingPointError(
                f"non-finite gradient in {name}; nothing was updated. Fix the loss or the "
                "learning rate, or construct AMUSE(..., nonfinite='skip') to skip such steps."
            )
        warnings.warn(f"skipping AMUSE step: non-finite gradient in {name}", stacklevel=3)
        return False

    def _first_nonfinite(self, work: list[tuple[dict, list[Tensor], list[Tensor]]]) -> str | None:
        for group_index, (group, params, grads) in enumerate(work):
            for p, g in zip(params, grads, strict=True):
                if not bool(torch.isfinite(g).all()):
                    names = group.get("names")
                    index = next(i for i, q in enumerate(group["params"]) if q is p)
                    if names is not None and index < len(names):
                        return f"parameter {names[index]!r} (shape {tuple(p.shape)})"
                    return (
                        f"param_groups[{group_index}]['params'][{index}] (shape {tuple(p.shape)})"
                    )
        return None

    def _step_group(self, group: dict[str, Any], params: list[Tensor], grads: list[Tensor]) -> None:
        """Advance the group's clock (every step, like Schedule-Free) and move its parameters.

        Parameters without a gradient keep y, z and the beta that built y, so their x stays exact.
        """
        schedule = advance_schedule(
            ScheduleState(group["step"], group["weight_sum"], group["c_warmup"]),
            lr=group["lr"] * group["lr_scale"],
            warmup_steps=group["warmup_steps"],
            beta1=group["beta1"],
            rho=group["rho"],
            r=group["r"],
            weight_lr_power=group["weight_lr_power"],
        )
        if params:
            self._update(group, params, grads, schedule)
        group.update(
            step=schedule.state.step,
            weight_sum=schedule.state.weight_sum,
            c_warmup=schedule.state.c_warmup,
            lr_t=schedule.lr_t,
            c_t=schedule.c_t,
            beta_t=schedule.beta_t,
        )

    def _update(
        self, group: dict, params: list[Tensor], grads: list[Tensor], schedule: ScheduleStep
    ) -> None:
        """Foreach over the whole group, or one parameter at a time (see ``foreach``)."""
        matrix_map = self._matrix_map(params)
        if self._per_tensor(params, matrix_map):
            for p, g in zip(params, grads, strict=True):
                self._update_tensors(group, [p], [g], schedule, matrix_map)
        else:
            self._update_tensors(group, params, grads, schedule, matrix_map)

    def _per_tensor(self, params: list[Tensor], matrix_map: MatrixMap) -> bool:
        """Per-parameter on CPU by default: each temporary is freed and reused while still in
        cache, which beats foreach's group-wide temporaries there (``benchmarks/step_time.py``).
        A split across ranks needs the whole group at once."""
        if matrix_map is not map_matrices:
            return False
        if self.foreach is not None:
            return not self.foreach
        return params[0].device.type == "cpu"

    def _update_tensors(
        self,
        group: dict,
        params: list[Tensor],
        grads: list[Tensor],
        schedule: ScheduleStep,
        matrix_map: MatrixMap,
    ) -> None:
        t, lr_t = schedule.state.step, schedule.lr_t
        states = [self.state[p] for p in params]
        if not group["averaging"]:
            updates, scale = self._direction(group, grads, states, t, matrix_map)
            self._move_z(params, updates, group, lr_t, scale)
            return
        zs = self._z_buffers(params, states, group)
        self._decay_at_y(params, zs, states, group, lr_t)
        self._recover_x(params, zs, states, group, schedule.beta_t)
        updates, scale = self._direction(group, grads, states, t, matrix_map)
        self._move_z(zs, updates, group, lr_t, scale)
        self._average_and_interpolate(params, zs, schedule.c_t, schedule.beta_t)
        for state in states:
            state["beta"] = schedule.beta_t

    @staticmethod
    def _direction(
        group: dict, grads: list[Tensor], states: list[dict], t: int, matrix_map: MatrixMap
    ) -> tuple[list[Tensor], float]:
        """The update ``U`` and a scale still to fold into the move of z.

        One Muon matrix on the local map (the CPU per-parameter path) keeps the Newton-Schulz
        output in its dtype and folds Muon's scale into the add: two passes over the matrix
        fewer, as torch's Muon does. Everything else comes back scaled.
        """
        one_muon_matrix = len(grads) == 1 and group["use_muon"] and group["direction"] == "muon"
        if one_muon_matrix and matrix_map is map_matrices:
            (ortho,), (scale,) = muon_parts(grads, states, group, keep_ns_dtype=True)
            return [ortho], scale
        return compute_direction(grads, states, group, t, matrix_map), 1.0

    def _z_buffers(self, params: list[Tensor], states: list[dict], group: dict) -> list[Tensor]:
        """``z`` starts as a copy of the parameter, so ``x_1 = y_1 = z_1``."""
        for p, state in zip(params, states, strict=True):
            if "z" not in state:
                state["z"] = p.detach().clone(memory_format=torch.preserve_format)
                state["beta"] = group["beta_t"]
        return [state["z"] for state in states]

    @staticmethod
    def _decay_at_y(
        params: list[Tensor], zs: list[Tensor], states: list[dict], group: dict, lr_t: float
    ) -> None:
        """``z -= lr_t wd_y y;  y -= lr_t wd_y (1 - beta) y`` (x unchanged)."""
        decay = group["weight_decay_at_y"] * lr_t
        if decay == 0.0:
            return
        torch._foreach_add_(zs, params, alpha=-decay)
        torch._foreach_mul_(params, [1.0 - decay * (1.0 - s["beta"]) for s in states])

    @staticmethod
    def _recover_x(
        params: list[Tensor], zs: list[Tensor], states: list[dict], group: dict, beta_t: float
    ) -> None:
        """Parameters ``y_t -> x_t`` with the beta that built ``y_t`` (or ``beta_t`` in compat)."""
        if group["reference_compat"]:
            weights: float | list[float] = 1.0 - 1.0 / beta_t
        else:
            weights = [1.0 - 1.0 / s["beta"] for s in states]
        torch._foreach_lerp_(params, zs, weights)

    @staticmethod
    def _move_z(
        zs: list[Tensor], updates: list[Tensor], group: dict, lr_t: float, scale: float = 1.0
    ) -> None:
        """``z <- z (1 - lr_t wd) - lr_t U`` (decoupled decay; equals AdamW's ``U + wd z``)."""
        if group["weight_decay"] != 0.0:
            torch._foreach_mul_(zs, 1.0 - lr_t * group["weight_decay"])
        torch._foreach_add_(zs, updates, alpha=-lr_t * scale)

    @staticmethod
    def _average_and_interpolate(
        params: list[Tensor], zs: list[Tensor], c_t: float, beta_t: float
    ) -> None:
        """``y_{t+1} = beta_t x_{t+1} + (1 - beta_t) z_{t+1}`` with ``x_{t+1} = lerp(x_t, z, c_t)``.

        Both in one lerp from ``x_t``: ``y_{t+1} = lerp(x_t, z_{t+1}, 1 - beta_t (1 - c_t))``.
        """
        torch._foreach_lerp_(params, zs, 1.0 - beta_t * (1.0 - c_t))


class SFMuon(AMUSE):
    """Schedule-Free Muon with a fixed interpolation: AMUSE with ``rho = 0`` (``beta = beta1``)."""

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float = 1e-2,
        *,
        beta: float = 0.9,
        **kwargs: Any,
    ) -> None:
        if "rho" in kwargs or "beta1" in kwargs:
            raise TypeError("SFMuon fixes rho=0 and takes `beta`; use AMUSE for a rising beta_t.")
        super().__init__(params, lr, beta1=beta, rho=0.0, **kwargs)
