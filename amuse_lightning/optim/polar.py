"""Batched matrix functions without an SVD: the hot path of the Muon family.

* :func:`newton_schulz` - quintic Newton-Schulz, an approximate polar factor ``U V^T``.
* :func:`coupled_newton_sqrt` - coupled Newton iteration for ``A^{1/2}`` and ``A^{-1/2}``.
* :func:`inverse_fourth_root` - ``A^{-1/4}`` from two coupled runs.
* :func:`spectral_power` - ``Psi_p(O) = U Sigma^p V^T`` for ``p in {0, 1/4, 1/2, 1}``.

Every function takes a stack ``(..., m, n)`` of same-shape matrices and runs one batched matrix
product per iteration (no Python loop over matrices, no host synchronisation), on CPU or CUDA.
"""

from __future__ import annotations

import functools
import math

import torch
from torch import Tensor

__all__ = [
    "AUTO_NS_DTYPE",
    "NS_COEFFICIENTS",
    "NS_COEFFICIENT_SETS",
    "NS_DTYPES",
    "SUPPORTED_POWERS",
    "as_matrix",
    "coupled_newton_sqrt",
    "inverse_fourth_root",
    "newton_schulz",
    "newton_schulz_",
    "ns_dtype_name",
    "ns_schedule",
    "spectral_power",
]

NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)
"""``(a, b, c)`` of the quintic ``f(x) = a x + b x^3 + c x^5`` applied to each singular value."""

NS_COEFFICIENT_SETS = ("quintic", "polar_express")
"""Names accepted by ``ns_coefficients``: Muon's fixed quintic, or Polar Express's per-step ones."""

# Polar Express (Amsel, Persson, Musco, Gower 2025, arXiv 2505.16932), degree 5, lower bound 1e-3:
# the minimax-optimal odd quintic for each iteration, from the paper's Algorithm 1. From the
# eighth iteration on, the optimal polynomial is numerically the last one (it converges to 1).
_POLAR_EXPRESS = (
    (8.28721201814563, -23.595886519098837, 17.300387312530933),
    (4.107059111542203, -2.9478499167379106, 0.5448431082926601),
    (3.9486908534822946, -2.908902115962949, 0.5518191394370137),
    (3.3184196573706015, -2.488488024314874, 0.51004894012372),
    (2.300652019954817, -1.6689039845747493, 0.4188073119525673),
    (1.891301407787398, -1.2679958271945868, 0.37680408948524835),
    (1.8750014808534479, -1.2500016453999487, 0.3750001645474248),
    (1.875, -1.25, 0.375),
)
POLAR_EXPRESS_SAFETY = 1.01
"""Polar Express's safety factor: the input is divided by ``1.01 ||X||_F`` and every polynomial
but the last is evaluated at ``x / 1.01`` (``a / s, b / s^3, c / s^5``), so that rounding in
bf16 cannot push a singular value past the interval the polynomials were optimised for."""

Coefficients = tuple[tuple[float, float, float], ...]


@functools.lru_cache(maxsize=64)
def ns_schedule(name: str, steps: int) -> tuple[Coefficients, float]:
    """The ``(a, b, c)`` of each of ``steps`` iterations and the input's norm divisor factor.

    ``"quintic"``: Muon's ``(3.4445, -4.7750, 2.0315)`` every step, input ``X / ||X||_F``.
    ``"polar_express"``: the per-step optimal quintics with the safety scaling above (steps beyond
    the table repeat its last polynomial), input ``X / (1.01 ||X||_F)``.
    """
    if name == "quintic":
        return (NS_COEFFICIENTS,) * steps, 1.0
    if name == "polar_express":
        s = POLAR_EXPRESS_SAFETY
        table = [(a / s, b / s**3, c / s**5) for a, b, c in _POLAR_EXPRESS[:-1]]
        table.append(_POLAR_EXPRESS[-1])
        table += [table[-1]] * max(0, steps - len(table))
        return tuple(table[:steps]), s
    raise ValueError(f"ns_coefficients must be one of {NS_COEFFICIENT_SETS}, got {name!r}")


NS_DTYPES = {
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
    "float32": torch.float32,
    "float64": torch.float64,
}
"""Newton-Schulz dtypes by name; groups store the name (plain data for any state_dict reader)."""


AUTO_NS_DTYPE = "auto"
"""``ns_dtype="auto"``: the fastest exact-enough dtype of the parameters' device
(:func:`~amuse_lightning.optim.hardware.fastest_ns_dtype`), stored by name once decided."""


def ns_dtype_name(dtype: torch.dtype | str) -> str:
    """``torch.bfloat16`` or ``"bfloat16"`` -> ``"bfloat16"``; ``"auto"`` stays ``"auto"``;
    anything else -> ValueError."""
    name = str(dtype).removeprefix("torch.") if isinstance(dtype, torch.dtype) else dtype
    if name != AUTO_NS_DTYPE and name not in NS_DTYPES:
        raise ValueError(
            f"ns_dtype must be {AUTO_NS_DTYPE!r} or one of {tuple(NS_DTYPES)} (or the torch "
            f"dtype), got {dtype!r}"
        )
    return name


SUPPORTED_POWERS = (0.0, 0.25, 0.5, 1.0)
"""The exponents ``p`` that :func:`spectral_power` implements."""


def as_matrix(t: Tensor) -> Tensor:
    """View a parameter-shaped tensor as a matrix ``(shape[0], prod(shape[1:]))``.

    A conv kernel ``(out, in, kh, kw)`` becomes ``(out, in*kh*kw)``; a 2-D tensor is returned as is.
    The result is a view whenever ``t`` is contiguous.
    """
    if t.ndim < 2:
        raise ValueError(
            f"as_matrix needs a tensor with at least 2 dims, got shape {tuple(t.shape)}; "
            "route vectors and scalars to the fallback (non-matrix) update instead"
        )
    if t.ndim == 2:
        return t
    return t.reshape(t.shape[0], math.prod(t.shape[1:]))


def _as_stack(X: Tensor) -> Tensor:
    """Reshape ``(..., m, n)`` to ``(batch, m, n)`` so that ``torch.baddbmm`` applies."""
    return X.reshape(math.prod(X.shape[:-2]), X.shape[-2], X.shape[-1])


def _check_matrix_stack(X: Tensor, name: str) -> None:
    if X.ndim < 2:
        raise ValueError(
            f"{name} must have shape (..., m, n) with at least 2 dims, got {tuple(X.shape)}"
        )


def newton_schulz(
    G: Tensor,
    steps: int = 5,
    dtype: torch.dtype = torch.bfloat16,
    eps: float = 1e-7,
    out_dtype: torch.dtype | None = None,
    coefficients: str = "quintic",
) -> Tensor:
    """Approximate the polar factor ``U V^T`` of each ``G = U S V^T`` in a stack ``(..., m, n)``.

    In ``dtype``, on the wide orientation (``X = G^T`` when ``m > n``)::

        X <- X / (||X||_F + eps)                       (per matrix)
        repeat `steps` times:  A = X X^T;  B = b A + c A A;  X = a X + B X

    with ``(a, b, c) = NS_COEFFICIENTS`` (``coefficients="quintic"``), or Polar Express's per-step
    coefficients and its ``1.01`` norm factor (``"polar_express"``, see :func:`ns_schedule`). Each
    step maps every singular value ``x`` to ``f(x) = a x + b x^3 + c x^5`` and keeps the singular
    vectors. The quintic trades exactness for
    speed: it does not converge to 1. After 5 steps every normalised singular value
    ``x = s / ||G||_F >= 1.31e-3`` lands in ``[0.60, 1.21]`` (``x >= 1.5e-3``: ``[0.68, 1.21]``),
    and further steps keep it in the invariant band ``[0.68, 1.14]``; smaller ones stay smaller.

    Returns a new tensor in ``out_dtype`` (default ``G.dtype``; ``dtype`` skips the cast back);
    ``G`` is not modified. A zero matrix maps to zero.
    """
    _check_matrix_stack(G, "newton_schulz input")
    schedule, norm_factor = ns_schedule(coefficients, steps)
    wide = G.shape[-2] <= G.shape[-1]
    X = _as_stack(G).to(dtype)
    if not wide:
        X = X.mT
    norm = torch.linalg.matrix_norm(X, keepdim=True)
    X = X / ((norm if norm_factor == 1.0 else norm * norm_factor) + eps)
    # A single matrix takes the 2-D kernels (addmm), which are faster than a batch of one on CPU.
    single = X.shape[0] == 1
    if single:
        X = X[0]
    fused = torch.addmm if single else torch.baddbmm
    for a, b, c in schedule:
        A = X @ X.mT
        B = fused(A, A, A, beta=b, alpha=c)
        X = fused(X, B, X, beta=a)
    if not wide:
        X = X.mT
    return X.reshape(G.shape).to(G.dtype if out_dtype is None else out_dtype)


def newton_schulz_(
    X: Tensor,
    spare: Tensor,
    gram: Tensor,
    poly: Tensor,
    schedule: Coefficients,
    norm_factor: float = 1.0,
    eps: float = 1e-7,
) -> Tensor:
    """:func:`newton_schulz` of a wide matrix ``X`` (``m <= n``), or of a stack ``(B, m, n)`` of
    them, in caller-owned buffers.

    ``X`` (overwritten) holds the input, ``spare`` is a second buffer of its shape, ``gram`` and
    ``poly`` are ``(m, m)`` (``(B, m, m)`` for a stack); all four share ``X``'s dtype. Each
    iteration writes ``gram = X X^T``, ``poly = b gram + c gram^2`` and ``spare = a X + poly X``
    (then the two iterates swap roles), so nothing is allocated but the norms (one number per
    matrix). Returns whichever of ``X`` and ``spare`` holds the result; the same numbers as
    :func:`newton_schulz` on that matrix or stack.
    """
    norm = torch.linalg.matrix_norm(X, keepdim=True)
    X.div_((norm if norm_factor == 1.0 else norm * norm_factor) + eps)
    mm, addmm = (torch.mm, torch.addmm) if X.ndim == 2 else (torch.bmm, torch.baddbmm)
    for a, b, c in schedule:
        mm(X, X.mT, out=gram)
        addmm(gram, gram, gram, beta=b, alpha=c, out=poly)
        addmm(X, poly, X, beta=a, out=spare)
        X, spare = spare, X
    return X


def _compute_dtype(A: Tensor) -> torch.dtype:
    return torch.float64 if A.dtype == torch.float64 else torch.float32


def _symmetrize(X: Tensor) -> Tensor:
    return 0.5 * (X + X.mT)


def coupled_newton_sqrt(
    A: Tensor, iters: int = 15, eps: float = 1e-7, symmetrize_every: int = 3
) -> tuple[Tensor, Tensor]:
    """Return ``(A^{1/2}, A^{-1/2})`` for a stack of SPD matrices ``A`` of shape ``(..., d, d)``.

    Coupled Newton(-Schulz) iteration, in fp32 (fp64 if ``A`` is fp64)::

        A_r = A + (eps + 1e-4 tr(A) / d) I,   s = ||A_r||_F,   Y = A_r / s,   Z = I
        repeat `iters` times:  T = (3 I - Z Y) / 2;   Y = Y T;   Z = T Z
        return sqrt(s) Y, Z / sqrt(s)        # -> A_r^{1/2}, A_r^{-1/2}

    ``Y`` and ``Z`` are symmetrised every ``symmetrize_every`` iterations (0 turns that off).
    The results are the roots of the regularised ``A_r``, so directions with eigenvalues near
    ``1e-4 tr(A)/d`` are damped. An eigenvalue ``lambda`` of ``A_r / s`` needs about
    ``log(1/lambda) / log(2.25) + 4`` iterations, so 15 iterations resolve ``lambda >~ 1e-4``;
    unresolved tiny eigenvalues give under-estimates (never blow-ups). Output in ``A.dtype``.
    """
    _check_matrix_stack(A, "coupled_newton_sqrt input")
    if A.shape[-1] != A.shape[-2]:
        raise ValueError(
            f"coupled_newton_sqrt needs square matrices (..., d, d), got {tuple(A.shape)}"
        )
    if symmetrize_every < 0:
        raise ValueError(f"symmetrize_every must be >= 0 (0 disables), got {symmetrize_every}")
    d = A.shape[-1]
    work = _as_stack(A).to(_compute_dtype(A))
    eye = torch.eye(d, dtype=work.dtype, device=work.device)
    trace = work.diagonal(dim1=-2, dim2=-1).sum(-1)
    shift = (eps + 1e-4 * trace / d)[:, None, None]
    A_r = work + shift * eye
    s = torch.linalg.matrix_norm(A_r, keepdim=True)
    Y = A_r / s
    Z = eye.expand_as(Y)
    for i in range(1, iters + 1):
        T = torch.baddbmm(eye, Z, Y, beta=1.5, alpha=-0.5)
        Y = Y @ T
        Z = T @ Z
        if symmetrize_every and i % symmetrize_every == 0:
            Y, Z = _symmetrize(Y), _symmetrize(Z)
    root_s = s.sqrt()
    sqrt_A = (Y * root_s).reshape(A.shape).to(A.dtype)
    inv_sqrt_A = (Z / root_s).reshape(A.shape).to(A.dtype)
    return sqrt_A, inv_sqrt_A


def inverse_fourth_root(A: Tensor, iters: int = 15, eps: float = 1e-7) -> Tensor:
    """Return ``A^{-1/4}`` for a stack of SPD matrices ``A`` of shape ``(..., d, d)``.

    Two coupled Newton runs (:func:`coupled_newton_sqrt`)::

        S = A^{1/2}            (first run, the Y output)
        A^{-1/4} = S^{-1/2}    (second run on S, the Z output)

    The second run starts from ``A^{1/2}`` rather than from ``A^{-1/2}`` (whose square root is
    also ``A^{-1/4}``): both have condition number ``sqrt(kappa(A))``, but this way the second
    run's regularisation only touches the small-eigenvalue directions of ``A``, which carry little
    weight in ``O A^{-1/4}``. Measured in fp32 on ``A = O^T O``, relative error of ``O A^{-1/4}``:
    both orders stay below 2e-4 for well-conditioned ``O``; for ``kappa(O) >= 1e3`` this order gives
    1.1e-2..1.6e-2 against 1.6e-2..2.7e-2 for the other (the regularisation bias dominates).
    Computed in fp32 (fp64 for fp64 input); output in ``A.dtype``.
    """
    work = A.to(_compute_dtype(A))
    sqrt_A, _ = coupled_newton_sqrt(work, iters=iters, eps=eps)
    _, inv_fourth = coupled_newton_sqrt(sqrt_A, iters=iters, eps=eps)
    return inv_fourth.to(A.dtype)


def _half_power(O: Tensor, newton_iters: int) -> Tensor:
    """``Psi_{1/2}(O) = U Sigma^{1/2} V^T`` through the smaller Gram matrix.

    ``O G^{-1/4}`` with ``G = O^T O`` when ``n <= m``, else ``G^{-1/4} O`` with ``G = O O^T``.
    ``O`` is first divided by its Frobenius norm (``Psi_p`` is ``p``-homogeneous) so that the
    regularisation inside the coupled iteration is relative to ``O``'s scale, not absolute.
    """
    norm = torch.linalg.matrix_norm(O, keepdim=True)
    unit = O / norm.clamp_min(torch.finfo(O.dtype).tiny)
    if O.shape[-1] <= O.shape[-2]:
        out = unit @ inverse_fourth_root(unit.mT @ unit, iters=newton_iters)
    else:
        out = inverse_fourth_root(unit @ unit.mT, iters=newton_iters) @ unit
    return out * norm.sqrt()


def spectral_power(
    O: Tensor,
    power: float,
    ns_steps: int = 5,
    ns_dtype: torch.dtype = torch.bfloat16,
    newton_iters: int = 15,
    coefficients: str = "quintic",
) -> Tensor:
    """``Psi_p(O) = U Sigma^p V^T`` for ``O = U Sigma V^T`` of shape ``(..., m, n)``, no SVD.

    * ``p = 0``: :func:`newton_schulz` (Muon; singular values land in its band, not exactly 1);
    * ``p = 1/2``: ``O G^{-1/4}`` with the smaller Gram matrix ``G`` (see :func:`_half_power`);
    * ``p = 1/4``: the ``p = 1/2`` transform applied twice, ``Psi_{1/2}(Psi_{1/2}(O))``;
    * ``p = 1``: a copy of ``O``.

    ``p = 1/2, 1/4`` run in fp32 (fp64 for fp64 input). The regularisation of the coupled
    iteration damps singular values far below the others: with ``x = s / ||O||_F`` over ``k``
    singular values, ``Psi_{1/2}`` returns about ``s^{1/2} (1 - 1e-4 / (4 k x^2))``; e.g. one value
    10x below 23 others comes out 0.3% low (this term plus a smaller one from the second run).
    Output in ``O.dtype``; ``O`` is untouched.
    """
    _check_matrix_stack(O, "spectral_power input")
    if power not in SUPPORTED_POWERS:
        allowed = ", ".join(f"{p:g}" for p in SUPPORTED_POWERS)
        raise ValueError(f"spectral_power: power must be one of {{{allowed}}}, got {power!r}")
    if power == 0:
        return newton_schulz(O, steps=ns_steps, dtype=ns_dtype, coefficients=coefficients)
    if power == 1:
        return O.clone()
    out = _half_power(O.to(_compute_dtype(O)), newton_iters)
    if power == 0.25:
        out = _half_power(out, newton_iters)
    return out.to(O.dtype)
