"""AMUSE: Anytime MUon with Stable gradient Evaluation (arXiv 2605.22432), plain PyTorch.

Three sequences per parameter (docs/algorithm.md#sequences): the fast sequence ``z`` moved by
the direction (``directions.py``), its Schedule-Free average ``x`` and the gradient point
``y = (1 - beta_t) z + beta_t x``. While training, the parameter holds ``y`` and the state holds
``z`` and ``beta`` (the beta that built ``y``); ``x = y + (1 - 1/beta) (z - y)`` is never stored.
One step of a group, ``t`` its 1-based count and ``T0 = warmup_steps`` (``schedule.py``)::

    lr_t    = lr * lr_scale * min(1, t / T0)
    c_t     = w_t / sum_{s<=t} w_s,            w_t = t^r lr_t^weight_lr_power
    beta_t  = beta1 (t <= T0),   1 - S_t^rho (1 - beta1) after warmup
    x_t     = y_t + (1 - 1/beta)(z_t - y_t)    (beta_t instead of beta if reference_compat)
    z_{t+1} = z_t (1 - lr_t wd) - lr_t U_t
    x_{t+1} = x_t + c_t (z_{t+1} - x_t)
    y_{t+1} = x_{t+1} + (1 - beta_t)(z_{t+1} - x_{t+1})

``kernels.py`` folds the last four lines into three in-place passes. ``weight_decay_at_y`` first
applies ``z -= lr_t wd_y y;  y -= lr_t wd_y (1 - beta) y``, which keeps ``x`` fixed. With
``reference_compat=True`` both this decay and the recovery of ``x_t`` use the new ``beta_t``, one
to one with the public reference code (there the decay moves ``x`` slightly when beta changes).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor
from torch.optim import Optimizer

from .captured import CompiledMuon, compile_mode
from .directions import MatrixMap, buffer_names, map_matrices
from .distributed import MatrixMapChoice, RankSplit, ShardedMatrixMap, check_dtensor_layout
from .guards import gradients_finite, params_with_grad
from .kernels import Workspace
from .paths import GroupMove, move_batched, move_over_lists, move_per_parameter
from .polar import AUTO_NS_DTYPE, ns_dtype_name
from .schedule import ScheduleStep, advance_group_schedule, store_schedule, warn_if_degenerate
from .validation import (
    LOW_PRECISION,
    NONFINITE_POLICIES,
    add_missing_group_keys,
    adopt_beta_final,
    check_param_dtype,
    dtype_refused,
    normalise_groups,
    plain_numbers,
    refuse_unplanned,
    resolve_beta_final,
    resolve_ns_dtype,
    resolved_rho,
    validate_group,
)

__all__ = ["AMUSE"]


class AMUSE(MatrixMapChoice, Optimizer):
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
        rho: how fast ``beta_t`` rises to 1 after warmup; ``0`` keeps it at ``beta1`` (SFMuon);
            ``None`` (default): 0.3, or 0 when ``beta_anneal_steps`` anneals beta instead.
        warmup_steps: ``T0 >= 1``, linear learning-rate warmup and the anchor of ``beta_t``.
        r, weight_lr_power: averaging weights ``w_t = t^r lr_t^weight_lr_power``.
        c_warmup_steps: ``x`` follows ``z`` (``c_t = 1``) for this many steps and averages from
            then on (ScheduleFree+'s c warm-up); ``0`` (default) averages from the first step.
        c_scale: ``kappa >= 1`` scales the averaging weight, ``c_t <- min(1, kappa c_t)``: a
            shorter window of recent ``z`` in ``x`` (Song et al.'s decoupled window); 1: off.
        beta_anneal_steps, beta_final: instead of the ``rho`` rise (``rho`` unset or 0 with it),
            ``1 - beta_t`` moves from ``1 - beta1`` to ``1 - beta_final`` in log space over
            ``beta_anneal_steps`` steps (ScheduleFree+); ``0`` (default): off; ``"auto"``: the
            run's planned optimizer steps, filled in by ``AmuseCallback`` when ``fit`` starts.
            ``beta_final="auto"`` (default): chosen from that length (0.9 up to 1,600 steps,
            0.965 from 6,400 on; :func:`~amuse_lightning.optim.schedule.length_aware_beta_final`),
            stored as that number once the length is known (a count changed later keeps it).
        momentum, nesterov: Muon's EMA momentum and Nesterov input.
        weight_decay: decoupled decay applied to ``z``.
        weight_decay_at_y: decay of ``y`` that keeps ``x`` fixed (applied before the step).
        beta2, eps: second-moment decay and epsilon of the AdamW fallback (and AdaMuon's eps).
        ns_steps, ns_dtype: Newton-Schulz iterations and the dtype they run in: ``"auto"``
            (default) takes the fastest exact-enough one of the group's device, bfloat16 on
            accelerators and on CPUs that multiply bf16 natively (AVX512-BF16, AMX), float32 on
            other CPUs, where bf16 is emulated and about 20x slower
            (:func:`~amuse_lightning.optim.hardware.fastest_ns_dtype`); or a torch dtype or its
            name (``"float32"``), used as given. Stored by name in the param groups: ``"auto"``
            is replaced by the name it resolved to when the group is added (at its first step
            for parameters on the ``meta`` device), so a state_dict resumes with that dtype.
        ns_coefficients: ``"quintic"`` (Muon's fixed 3.4445 / -4.7750 / 2.0315) or
            ``"polar_express"`` (per-iteration optimal coefficients, Amsel et al. 2025); per group.
        aux_update_type: Muon update scaling, ``"adamw"`` or ``"sgd"``.
        update_type: fallback update for non-Muon groups, ``"adamw"`` or ``"sgd"``.
        direction: Muon-side direction, ``"muon"``, ``"adamuon"`` or ``"spectral"``.
        spectral_power, spectral_input: ``p`` in {0, 0.25, 0.5, 1} and ``"momentum"`` or ``"rms"``
            for ``direction="spectral"``.
        reference_compat: recover ``x`` (and decay at ``y``) with the new ``beta_t`` as the public
            reference code does; the default uses the beta that built ``y``.
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
        foreach: ``True`` takes the batched path: same-shape matrices stacked into one
            Newton-Schulz and the elementwise work as foreach ops, in buffers kept between steps
            (fast on accelerators); ``False`` works one parameter at a time (fast on CPU);
            ``None`` (default) picks by device. Both give the same numbers (to rounding).
        compile: ``False`` (default) runs eagerly. ``True`` or a ``torch.compile`` mode name
            (``"default"``, ``"reduce-overhead"`` for CUDA graphs, ``"max-autotune"``, ...)
            captures each same-shape Muon stack's whole step (momentum, Newton-Schulz, the
            ``y``/``z`` move) with ``torch.compile``, once per stack shape, on the batched path
            (chosen whenever ``foreach`` is not ``False``). Same numbers as eager to rounding;
            the first step pays the compilation. Not saved in the state_dict.

    Modes follow Schedule-Free: ``eval()`` turns parameters into ``x`` in place, ``train()``
    back into ``y``; the mode is ``group["train_mode"]`` and is saved by ``state_dict()``.
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float = 1e-2,
        *,
        beta1: float = 0.8,
        rho: float | None = None,
        warmup_steps: int = 100,
        r: float = 0.0,
        weight_lr_power: float = 2.0,
        c_warmup_steps: int = 0,
        c_scale: float = 1.0,
        beta_anneal_steps: int | str = 0,
        beta_final: float | str = "auto",
        momentum: float = 0.95,
        nesterov: bool = True,
        weight_decay: float = 0.0,
        weight_decay_at_y: float = 0.0,
        beta2: float = 0.999,
        eps: float = 1e-10,
        ns_steps: int = 5,
        ns_dtype: torch.dtype | str = AUTO_NS_DTYPE,
        ns_coefficients: str = "quintic",
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
        compile: bool | str = False,
    ) -> None:
        if nonfinite not in NONFINITE_POLICIES:
            raise ValueError(f"nonfinite must be one of {NONFINITE_POLICIES}, got {nonfinite!r}")
        if distributed not in (None, True, False):
            raise ValueError(f"distributed must be None (auto), True or False, got {distributed!r}")
        compile_mode(compile)  # raises for anything else than a bool or a mode name
        if compile is not False and foreach is False:
            raise ValueError(
                "compile captures the batched path, but foreach=False selects the per-parameter "
                "path; leave foreach at None (or True) to compile"
            )
        defaults = dict(
            lr=lr, beta1=beta1, rho=rho, warmup_steps=warmup_steps, r=r,
            weight_lr_power=weight_lr_power, c_warmup_steps=c_warmup_steps, c_scale=c_scale,
            beta_anneal_steps=beta_anneal_steps, beta_final=beta_final, momentum=momentum,
            nesterov=nesterov,
            weight_decay=weight_decay, weight_decay_at_y=weight_decay_at_y, beta2=beta2, eps=eps,
            ns_steps=ns_steps, ns_dtype=ns_dtype_name(ns_dtype), ns_coefficients=ns_coefficients,
            aux_update_type=aux_update_type, update_type=update_type, direction=direction,
            spectral_power=spectral_power,
            spectral_input=spectral_input, lr_scale=1.0, reference_compat=reference_compat,
            averaging=averaging, train_mode=True, step=0, weight_sum=0.0, c_warmup=None,
            weight_sum_start=0.0, lr_t=0.0, c_t=0.0, beta_t=beta1,
        )  # fmt: skip
        self.nonfinite = nonfinite
        self.distributed = distributed
        self.process_group = process_group
        self.foreach = foreach
        self.compile = compile
        self._captured: CompiledMuon | None = None
        self._rank_split: RankSplit | None = None
        self._sharded_maps: dict[int, ShardedMatrixMap] = {}
        self._workspace = Workspace()
        super().__init__(normalise_groups(params), plain_numbers(defaults))

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a group; validated first so that a bad group leaves the optimizer unchanged.

        The group takes the optimizer's current mode (a group that never stepped has ``x = y``,
        so it joins an optimizer in eval mode as it is).
        """
        groups = normalise_groups([param_group])  # a flat group may split into two
        mode = all(g["train_mode"] for g in self.param_groups) if self.param_groups else True
        taken = {id(p) for g in self.param_groups for p in g["params"]}
        for offset, group in enumerate(groups):  # check every part before adding any
            group.setdefault("train_mode", mode)
            candidate = {**self.defaults, **group}
            group["rho"] = candidate["rho"] = resolved_rho(candidate)
            validate_group(candidate, len(self.param_groups) + offset)
            check_dtensor_layout(candidate["params"])
            if any(id(p) in taken for p in candidate["params"]):
                raise ValueError(
                    "some parameters of the new param group are already in another group; "
                    "each parameter may appear in only one group"
                )
            if candidate["averaging"]:
                warn_if_degenerate(candidate["warmup_steps"], candidate["rho"])
            if "ns_dtype" in group:  # stored by name: plain data for any state_dict reader
                group["ns_dtype"] = ns_dtype_name(group["ns_dtype"])
        for group in groups:
            super().add_param_group(group)
            resolve_ns_dtype(self.param_groups[-1])
            resolve_beta_final(self.param_groups[-1])

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load as torch's optimizers do; a compiled step is compiled afresh for the new state."""
        super().load_state_dict(state_dict)
        adopt_beta_final(self.defaults, self.param_groups)
        self._captured = None

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        attributes = dict(nonfinite="raise", distributed=None, process_group=None, foreach=None)
        attributes.update(compile=False, _captured=None, _rank_split=None, _sharded_maps={})
        attributes.update(_workspace=Workspace())
        for name, value in attributes.items():
            self.__dict__.setdefault(name, value)
        for group in self.param_groups:
            add_missing_group_keys(group)

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
        refuse_unplanned(self.param_groups)
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        work = [(group, *params_with_grad(group)) for group in self.param_groups]
        for group, params, _ in work:  # a module cast to 16 bits after the groups were added
            for p in params:
                if p.dtype in LOW_PRECISION and dtype_refused(group, p.dtype):
                    self._refuse_dtype(group, p)  # raises before any group moves
        if self.nonfinite != "off" and not gradients_finite(work, self.nonfinite):
            return loss
        for group, params, grads in work:
            self._step_group(group, params, grads)
        return loss

    def _init_group(self, group: dict, params: list[Tensor]) -> tuple[list, list, list]:
        """Create every missing state entry of ``params``; return ``(zs, betas, buffers)``.

        The state of a parameter is ``z`` (a copy of the parameter, so ``x_1 = y_1 = z_1``) and
        ``beta`` (the beta that built ``y``) when averaging, plus the direction's buffers named by
        :func:`~amuse_lightning.optim.directions.buffer_names` (zeros), each a list in that order.
        """
        names = buffer_names(group)
        zs, betas, buffers = [], [], [[] for _ in names]
        for p in params:
            state = self.state[p]
            if group["averaging"]:
                if "z" not in state:
                    state["z"] = p.detach().clone(memory_format=torch.preserve_format)
                    state["beta"] = group["beta_t"]
                zs.append(state["z"])
                betas.append(state["beta"])
            for name, tensors in zip(names, buffers, strict=True):
                if name not in state:
                    state[name] = torch.zeros_like(p, memory_format=torch.preserve_format)
                tensors.append(state[name])
        return zs, betas, buffers

    def _refuse_dtype(self, group: dict, param: Tensor) -> None:
        index = next(i for i, g in enumerate(self.param_groups) if g is group)
        j = next(k for k, q in enumerate(group["params"]) if q is param)
        names = group.get("names")
        check_param_dtype(group, param, names[j] if names else f"params[{j}]", index)

    def _step_group(self, group: dict[str, Any], params: list[Tensor], grads: list[Tensor]) -> None:
        """Advance the group's clock (every step, like Schedule-Free) and move its parameters.

        Parameters without a gradient keep y, z and the beta that built y, so their x stays exact.
        """
        resolve_ns_dtype(group)  # parameters that were on the meta device when added
        resolve_beta_final(group)  # a count set on the group by hand after it was added
        schedule = advance_group_schedule(group)
        if params:
            self._move(group, params, grads, schedule, self._matrix_map(params))
            if group["averaging"]:
                for p in params:
                    self.state[p]["beta"] = schedule.beta_t
        store_schedule(group, schedule)

    def _move(
        self, group: dict, params: list[Tensor], grads: list[Tensor], schedule: ScheduleStep,
        matrix_map: MatrixMap,
    ) -> None:  # fmt: skip
        """Build the group's :class:`~amuse_lightning.optim.paths.GroupMove` and run its path."""
        zs, betas, buffers = self._init_group(group, params)
        lr_t, beta_t = schedule.lr_t, schedule.beta_t
        if group["averaging"] and group["reference_compat"]:
            betas = [beta_t] * len(betas)  # the public code recovers x with the new beta_t
        move = GroupMove(
            params, grads, zs, betas, buffers, schedule.state.step, lr_t, beta_t, schedule.c_t,
            decay=1.0 - lr_t * group["weight_decay"], decay_y=lr_t * group["weight_decay_at_y"],
            averaging=group["averaging"],
        )  # fmt: skip
        if matrix_map is not map_matrices:  # a split across ranks needs the whole group
            move_over_lists(move, group, matrix_map)
        elif self._batched(params):
            move_batched(move, group, self._workspace, self._compiled_muon())
        else:
            move_per_parameter(move, group, self._workspace)

    def _batched(self, params: list[Tensor]) -> bool:
        """Batched on accelerators and whenever compiled, per parameter on CPU (``foreach``)."""
        if self.foreach is not None:
            return self.foreach
        return self.compile is not False or params[0].device.type != "cpu"

    def _compiled_muon(self) -> CompiledMuon | None:
        if self.compile is False:
            return None
        if self._captured is None:
            self._captured = CompiledMuon(compile_mode(self.compile))
        return self._captured

    # ------------------------------------------------------------- read-only views
    def workspace_bytes(self) -> int:
        """Bytes of the scratch buffers kept between steps (not part of the state_dict).

        The per-parameter path keeps what one matrix's Newton-Schulz needs (about torch Muon's
        own per-step temporaries); the batched path what its largest same-shape stack needs
        (the stacked inputs in the gradients' dtype, two iterates in ``ns_dtype`` and the Gram
        matrices) and, for the AdamW fallback, two copies of its largest batch. A compiled step
        keeps its own buffers inside torch.compile's caches; they are not counted here.
        """
        return self._workspace.nbytes()
