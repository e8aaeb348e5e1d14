"""Test matrices with known spectra, exact matrix powers (float64 SVD / eigh), and the bands of
Muon's quintic Newton-Schulz.

Newton-Schulz acts on each singular value through the scalar quintic
f(x) = a x + b x^3 + c x^5 (singular vectors unchanged), so the bands below are the ranges of the
iterated scalar map, measured on a fine grid of x = s / ||G||_F in (0, 1]:

* 5 steps, x >= 1.31e-3: f^5(x) in [0.600, 1.2024]  -> FIVE_STEP_BAND, X_MIN_FOR_BAND
* any number of steps once inside: [0.6818, 1.1344] is invariant -> INVARIANT_BAND
"""

from __future__ import annotations

import math

import torch

FIVE_STEP_BAND = (0.60, 1.21)
X_MIN_FOR_BAND = 1.31e-3
INVARIANT_BAND = (0.68, 1.14)


def random_matrix(
    *shape: int, kappa: float = 1.0, dtype: torch.dtype = torch.float64, seed: int = 0
) -> torch.Tensor:
    """Matrices U diag(s) V^T with s log-uniform in [1/kappa, 1] (kappa = 1: orthogonal-like)."""
    gen = torch.Generator().manual_seed(seed)
    *batch, m, n = shape
    k = min(m, n)
    U, _ = torch.linalg.qr(torch.randn(*batch, m, k, generator=gen, dtype=torch.float64))
    V, _ = torch.linalg.qr(torch.randn(*batch, n, k, generator=gen, dtype=torch.float64))
    log_s = torch.rand(*batch, k, generator=gen, dtype=torch.float64) * math.log(kappa)
    s = torch.exp(-log_s)
    return ((U * s.unsqueeze(-2)) @ V.mT).to(dtype)


def random_spd(*shape: int, kappa: float, dtype: torch.dtype, seed: int = 0) -> torch.Tensor:
    *batch, d = shape
    Q = random_matrix(*batch, d, d, seed=seed)  # kappa = 1: orthogonal
    gen = torch.Generator().manual_seed(seed + 1)
    eig = torch.exp(-torch.rand(*batch, d, generator=gen, dtype=torch.float64) * math.log(kappa))
    return ((Q * eig.unsqueeze(-2)) @ Q.mT).to(dtype)


def eigh_power(A: torch.Tensor, p: float) -> torch.Tensor:
    L, Q = torch.linalg.eigh(A.double())
    return (Q * L.pow(p).unsqueeze(-2)) @ Q.mT


def svd_power(O: torch.Tensor, p: float) -> torch.Tensor:
    U, s, Vh = torch.linalg.svd(O.double(), full_matrices=False)
    return (U * s.pow(p).unsqueeze(-2)) @ Vh


def rel_err(x: torch.Tensor, ref: torch.Tensor) -> float:
    return ((x.double() - ref.double()).norm() / ref.double().norm()).item()


def singular_values(X: torch.Tensor) -> torch.Tensor:
    return torch.linalg.svdvals(X.double())
