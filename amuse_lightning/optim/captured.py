"""Muon's batched step captured by ``torch.compile``: one graph per same-shape stack (opt-in).

Eagerly, the batched path (``paths.move_batched``) launches per stack a foreach momentum update,
the Nesterov inputs, two casts, ``2 + 3 ns_steps`` matrix products and four or five foreach
passes over ``y`` and ``z``; on a GPU at ViT sizes those launches, not the arithmetic, set the
step time. Captured, the elementwise work fuses into a few kernels around the matrix products,
and with ``mode="reduce-overhead"`` (CUDA) the whole step replays as one CUDA graph.

The step of ``B`` same-shape matrices (gradients ``g_k``, momenta ``m_k``, parameters ``y_k``,
states ``z_k``; ``O`` is the stack of Newton-Schulz results in the gradients' dtype)::

    m_k <- m_k + (1 - mu)(g_k - m_k)         u_k = g_k + mu (m_k - g_k)   (or m_k)
    O   = NS(u)                               (ns_dtype, wide orientation, as newton_schulz)
    y_k <- T lerp(y_k, z_k, q_k) - a_y O_k    z_k <- d z_k - a_z O_k

which is ``kernels.schedule_free_update_foreach_`` with ``a_z = lr_t s``, ``a_y = w a_z``,
``T = P + Q``, ``q_k = Q_k / T`` and ``d = 1 - lr_t wd`` (without averaging only the ``z`` line,
on the parameter). Those per-step numbers enter as one small tensor on the parameters' device,
so a stack's graph is compiled on its first step and replayed on every later one. The results
equal the eager path's to rounding: the fused elementwise kernels and the compiler's own
matrix-product calls may round differently (``tests/test_captured.py`` states the tolerances).
"""

from __future__ import annotations

import types
from collections.abc import Callable

import torch
from torch import Tensor

from .directions import muon_scale, ns_dtype
from .kernels import interpolation_weights
from .paths import GroupMove
from .polar import Coefficients, as_matrix, ns_schedule

__all__ = ["COMPILE_MODES", "CompiledMuon", "compile_mode", "muon_stack_step"]

COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
"""The ``torch.compile`` modes ``AMUSE(compile=...)`` accepts (``True`` means ``"default"``)."""


def compile_mode(value: bool | str) -> str | None:
    """``AMUSE(compile=value)`` as a ``torch.compile`` mode (``None``: eager); else ValueError."""
    if value is False:
        return None
    if value is True:
        return "default"
    if isinstance(value, str) and value in COMPILE_MODES:
        return value
    raise ValueError(f"compile must be True, False or one of {COMPILE_MODES}, got {value!r}")


def muon_stack_step(
    ys: list[Tensor], zs: list[Tensor], grads: list[Tensor], momenta: list[Tensor],
    numbers: Tensor, *, momentum: float, nesterov: bool, dtype: torch.dtype,
    schedule: Coefficients, norm_factor: float, averaging: bool, eps: float = 1e-7,
) -> None:  # fmt: skip
    """The whole step of one same-shape stack (module docstring), in place; traced by Dynamo.

    ``numbers`` holds ``(a_y, a_z, d, T, q_1, ..., q_B)`` in the parameters' dtype.
    """
    G = torch.stack([as_matrix(g) for g in grads])
    M = torch.lerp(torch.stack([as_matrix(m) for m in momenta]), G, 1.0 - momentum)
    U = torch.lerp(G, M, momentum) if nesterov else M
    wide = U.shape[-2] <= U.shape[-1]
    X = U.to(dtype) if wide else U.mT.to(dtype)
    norm = torch.linalg.matrix_norm(X, keepdim=True)
    X = X / ((norm if norm_factor == 1.0 else norm * norm_factor) + eps)
    for a, b, c in schedule:
        A = X @ X.mT
        B = torch.baddbmm(A, A, A, beta=b, alpha=c)
        X = torch.baddbmm(X, B, X, beta=a)
    O = (X if wide else X.mT).to(G.dtype)
    for k, m in enumerate(momenta):
        m.copy_(M[k].view(m.shape))
    Z = torch.stack([as_matrix(z) for z in (zs if averaging else ys)])
    Z_new = Z * numbers[2] - numbers[1] * O
    if averaging:
        Y = torch.stack([as_matrix(y) for y in ys])
        Y_new = torch.lerp(Y, Z, numbers[4:].view(-1, 1, 1)) * numbers[3] - numbers[0] * O
        for k, (y, z) in enumerate(zip(ys, zs, strict=True)):
            y.copy_(Y_new[k].view(y.shape))
            z.copy_(Z_new[k].view(z.shape))
    else:
        for k, y in enumerate(ys):
            y.copy_(Z_new[k].view(y.shape))


def _own_copy(fn: Callable) -> Callable:
    """``fn`` with a code object of its own. torch.compile keeps the graphs of a function, and
    counts its recompilations (at most ``recompile_limit``, 8), per code object, process-wide;
    parameters keep static shapes, so every stack shape is a graph of its own. A copy per stack
    gives each its own cache: a ResNet's dozen shapes, or several optimizers, never hit the limit.
    """
    copy = types.FunctionType(
        fn.__code__.replace(), fn.__globals__, fn.__name__, fn.__defaults__, fn.__closure__
    )
    copy.__kwdefaults__ = fn.__kwdefaults__
    return copy


class CompiledMuon:
    """Moves one same-shape Muon stack of a :class:`~amuse_lightning.optim.paths.GroupMove`
    through :func:`muon_stack_step`, compiled once per stack (``paths.move_batched`` calls it).

    Attributes:
        mode: the ``torch.compile`` mode.
        stacks: how many stacks (shape, count, dtype, device) have a compiled step so far.
    """

    def __init__(self, mode: str | None = "default") -> None:
        self.mode = mode
        self._steps: dict[tuple, Callable] = {}

    @property
    def stacks(self) -> int:
        return len(self._steps)

    def _step(self, move: GroupMove) -> Callable:
        first = move.params[0]
        key = (tuple(first.shape), len(move.params), first.dtype, first.device)
        if key not in self._steps:
            if self.mode == "reduce-overhead" and first.device.type == "cuda":
                self._mark_static(move)
            own = _own_copy(muon_stack_step)
            self._steps[key] = torch.compile(own, mode=self.mode, fullgraph=True)
        return self._steps[key]

    def _mark_static(self, move: GroupMove) -> None:
        """CUDA graphs replay fixed addresses, and cudagraph trees skip a graph that writes into
        inputs they may not keep: the tensors the step writes (y, z, momenta) are the
        optimizer's own and stay put, so say so. (Gradients are copied in at every replay.)"""
        for t in (*move.params, *move.zs, *move.buffers[0]):
            torch._dynamo.mark_static_address(t)

    def __call__(self, move: GroupMove, group: dict) -> None:
        rows, cols = as_matrix(move.params[0]).shape
        a_z = move.lr * muon_scale(rows, cols, group["aux_update_type"])
        if move.averaging:
            weights = [
                interpolation_weights(b, move.beta_t, move.c_t, move.decay) for b in move.betas
            ]
            w = weights[0][2]
            total = 1.0 - w * (1.0 - move.decay)  # P + Q, the same for every tensor
            values = [w * a_z, a_z, move.decay, total] + [Q / total for _, Q, _ in weights]
        else:
            values = [0.0, a_z, move.decay, 1.0]
        first = move.params[0]
        numbers = torch.tensor(values, dtype=first.dtype).to(first.device, non_blocking=True)
        schedule, norm_factor = ns_schedule(group["ns_coefficients"], group["ns_steps"])
        self._step(move)(
            move.params, move.zs, move.grads, move.buffers[0], numbers,
            momentum=group["momentum"], nesterov=group["nesterov"], dtype=ns_dtype(group),
            schedule=schedule, norm_factor=norm_factor, averaging=move.averaging,
        )  # fmt: skip
