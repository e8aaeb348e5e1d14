"""Tests for amuse_lightning.optim.polar, the roots: the coupled Newton iteration for ``A^{1/2}``
and ``A^{-1/2}``, ``A^{-1/4}``, and the spectral powers ``Psi_p`` built on them. References come
from torch.linalg.svd / eigh in fp64 (``tests/helpers/matrices.py``).
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from amuse_lightning.optim.polar import (
    SUPPORTED_POWERS,
    coupled_newton_sqrt,
    inverse_fourth_root,
    newton_schulz,
    spectral_power,
)
from tests.helpers.matrices import (
    FIVE_STEP_BAND,
    eigh_power,
    random_matrix,
    random_spd,
    rel_err,
    singular_values,
    svd_power,
)

# ----------------------------------------------------------------------- coupled Newton roots


def regularised(A: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    d = A.shape[-1]
    trace = A.diagonal(dim1=-2, dim2=-1).sum(-1)
    return A + ((eps + 1e-4 * trace / d)[..., None, None]) * torch.eye(d, dtype=A.dtype)


@pytest.mark.parametrize("shape", [(8,), (3, 32), (2, 2, 16)])
@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-4), (torch.float64, 1e-9)])
def test_coupled_sqrt_matches_eigh_of_regularised_matrix(shape, dtype, tol):
    A = random_spd(*shape, shape[-1], kappa=100.0, dtype=dtype)
    sqrt_A, inv_sqrt_A = coupled_newton_sqrt(A)
    assert sqrt_A.dtype == dtype and inv_sqrt_A.dtype == dtype
    A_r = regularised(A.double())
    assert rel_err(sqrt_A, eigh_power(A_r, 0.5)) < tol
    assert rel_err(inv_sqrt_A, eigh_power(A_r, -0.5)) < tol


def test_coupled_sqrt_close_to_true_roots_up_to_regularisation_bias():
    # kappa = 10: the 1e-4 tr(A)/d shift moves each eigenvalue by < 1e-3 relative.
    A = random_spd(4, 24, kappa=10.0, dtype=torch.float32)
    sqrt_A, inv_sqrt_A = coupled_newton_sqrt(A)
    assert rel_err(sqrt_A, eigh_power(A, 0.5)) < 1e-3
    assert rel_err(inv_sqrt_A, eigh_power(A, -0.5)) < 1e-3
    eye = torch.eye(24).expand(4, 24, 24)
    torch.testing.assert_close(sqrt_A @ inv_sqrt_A, eye, atol=1e-4, rtol=0)


def test_coupled_sqrt_scale_free_and_input_untouched():
    A = random_spd(2, 16, kappa=50.0, dtype=torch.float32)
    before = A.clone()
    small, _ = coupled_newton_sqrt(A * 1e-6, eps=0.0)
    big, _ = coupled_newton_sqrt(A * 1e6, eps=0.0)
    assert torch.equal(A, before)
    assert rel_err(small * 1e3, eigh_power(regularised(A.double(), 0.0), 0.5)) < 1e-4
    assert rel_err(big * 1e-3, eigh_power(regularised(A.double(), 0.0), 0.5)) < 1e-4


def test_coupled_sqrt_without_symmetrising_still_converges():
    A = random_spd(3, 16, kappa=30.0, dtype=torch.float64)
    sqrt_A, _ = coupled_newton_sqrt(A, symmetrize_every=0)
    assert rel_err(sqrt_A, eigh_power(regularised(A), 0.5)) < 1e-9


@pytest.mark.parametrize(
    "bad, match",
    [(torch.randn(3, 4), "square"), (torch.randn(4), "at least 2 dims")],
)
def test_coupled_sqrt_rejects_bad_shapes(bad, match):
    with pytest.raises(ValueError, match=match):
        coupled_newton_sqrt(bad)


@pytest.mark.parametrize("kappa, tol", [(10.0, 1e-3), (100.0, 5e-3)])
def test_inverse_fourth_root_matches_eigh(kappa, tol):
    A = random_spd(3, 32, kappa=kappa, dtype=torch.float32)
    out = inverse_fourth_root(A)
    assert out.dtype == torch.float32
    assert rel_err(out, eigh_power(A, -0.25)) < tol


def test_inverse_fourth_root_fp64_is_the_root_of_the_double_regularisation():
    A = random_spd(2, 12, kappa=100.0, dtype=torch.float64)
    S = eigh_power(regularised(A), 0.5)
    expected = eigh_power(regularised(S), -0.5)
    assert rel_err(inverse_fourth_root(A), expected) < 1e-9


# ---------------------------------------------------------------------------- spectral_power


@pytest.mark.parametrize("power", [0.5, 0.25])
@pytest.mark.parametrize("shape", [(40, 16), (16, 40), (24, 24), (3, 20, 36), (2, 2, 36, 20)])
def test_spectral_power_matches_svd(power, shape):
    O = random_matrix(*shape, kappa=10.0, dtype=torch.float32, seed=5) * 3.0
    out = spectral_power(O, power)
    assert out.shape == O.shape and out.dtype == O.dtype
    assert rel_err(out, svd_power(O, power)) < 1e-3


def regularised_half_power(s: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """Singular values of Psi_{1/2} as implemented: exact scalar model of both regularisations.

    With x = s / ||s|| and lambda = x^2 (eigenvalues of the normalised Gram matrix, mean 1/k):
    S = (lambda + eps + 1e-4 mean(lambda))^{1/2}, R = (S + eps + 1e-4 mean(S))^{-1/2},
    output x R ||s||^{1/2}. Against s^{1/2} this is damped by about 1e-4 mean(x^2) / (4 x^2).
    """
    norm = s.norm(dim=-1, keepdim=True)
    lam = (s / norm) ** 2
    S = (lam + eps + 1e-4 * lam.mean(-1, keepdim=True)).sqrt()
    R = (S + eps + 1e-4 * S.mean(-1, keepdim=True)).rsqrt()
    return (s / norm) * R * norm.sqrt()


@settings(max_examples=25, deadline=None)
@given(
    m=st.integers(1, 24),
    n=st.integers(1, 24),
    power=st.sampled_from([0.5, 0.25]),
    scale=st.floats(1e-4, 1e4),
    kappa=st.floats(1.0, 30.0),
    seed=st.integers(0, 2**16),
)
def test_spectral_power_property(m, n, power, scale, kappa, seed):
    # Singular vectors are kept and every singular value follows the regularised scalar model to
    # fp32 accuracy (measured worst case 1e-6 relative over 300 random draws).
    O = random_matrix(2, m, n, kappa=kappa, dtype=torch.float32, seed=seed) * scale
    s = singular_values(O)
    expected = regularised_half_power(s)
    if power == 0.25:
        expected = regularised_half_power(expected)
    out = spectral_power(O, power)
    torch.testing.assert_close(singular_values(out), expected, rtol=2e-5, atol=0)
    U, _, Vh = torch.linalg.svd(O.double(), full_matrices=False)
    torch.testing.assert_close(
        out.double(), (U * expected.unsqueeze(-2)) @ Vh, rtol=0, atol=1e-4 * scale**power
    )


def test_spectral_power_regularisation_bias_is_small_for_moderate_conditioning():
    # kappa(O) = 10 worst case: one singular value 10x below the others. The 1e-4 tr/d shift then
    # damps that direction by < 3e-3 (measured 2.9e-3 at k = 24) and the others by < 2e-4
    # (measured 1.1e-4 for p = 1/4).
    s = torch.ones(24, dtype=torch.float64)
    s[-1] = 0.1
    Q = random_matrix(30, 24, seed=9)  # orthonormal columns
    O = (Q * s).float()
    for power in (0.5, 0.25):
        s_out = singular_values(spectral_power(O, power))
        rel = (s_out - s.pow(power)).abs() / s.pow(power)
        assert rel[-1] < 3e-3
        assert rel[:-1].max() < 2e-4


def test_spectral_power_is_p_homogeneous_at_tiny_scales():
    # Gradients can be ~1e-6; the absolute eps inside the coupled iteration must not swamp them.
    O = random_matrix(2, 30, 12, kappa=10.0, dtype=torch.float32, seed=6)
    for power in (0.5, 0.25):
        tiny = spectral_power(O * 1e-6, power)
        assert rel_err(tiny, svd_power(O * 1e-6, power)) < 1e-3


def test_spectral_power_zero_is_newton_schulz():
    O = random_matrix(3, 20, 30, kappa=10.0, dtype=torch.float32, seed=7)
    out = spectral_power(O, 0, ns_dtype=torch.float32)
    torch.testing.assert_close(out, newton_schulz(O, dtype=torch.float32), atol=0, rtol=0)
    s_out = singular_values(out)
    assert FIVE_STEP_BAND[0] <= s_out.min() and s_out.max() <= FIVE_STEP_BAND[1]


def test_spectral_power_one_is_an_independent_copy():
    O = torch.randn(2, 6, 9)
    before = O.clone()
    out = spectral_power(O, 1.0)
    assert torch.equal(out, O) and out.data_ptr() != O.data_ptr()
    out.add_(1.0)
    assert torch.equal(O, before)


@pytest.mark.parametrize("power", [0.5, 0.25])
def test_spectral_power_low_precision_and_zero_inputs(power):
    O = random_matrix(2, 32, 16, kappa=5.0, dtype=torch.float32, seed=8)
    before = O.clone()
    out = spectral_power(O.to(torch.bfloat16), power)
    assert out.dtype == torch.bfloat16
    assert rel_err(out, svd_power(O, power)) < 2e-2
    assert torch.equal(O, before)
    zero = spectral_power(torch.zeros(2, 8, 5), power)
    assert torch.equal(zero, torch.zeros(2, 8, 5))


@pytest.mark.parametrize("power", [0.75, 2, -0.5, 1 / 3])
def test_spectral_power_rejects_unsupported_powers(power):
    with pytest.raises(ValueError, match=r"\{0, 0\.25, 0\.5, 1\}"):
        spectral_power(torch.randn(4, 4), power)


def test_supported_powers_constant():
    assert SUPPORTED_POWERS == (0.0, 0.25, 0.5, 1.0)
    for power in SUPPORTED_POWERS:
        assert spectral_power(torch.randn(6, 4), power).shape == (6, 4)
